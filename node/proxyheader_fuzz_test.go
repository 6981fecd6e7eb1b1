package node

import (
	"bufio"
	"bytes"
	"net"
	"testing"

	"github.com/pires/go-proxyproto"
)

// FuzzProxyHeader feeds arbitrary bytes to the PROXY header reader used on
// trusted listeners: it must never panic, and bytes after a valid header
// must come back unchanged as the session's first bytes.
func FuzzProxyHeader(f *testing.F) {
	src, _ := net.ResolveTCPAddr("tcp", "203.0.113.9:5555")
	dst, _ := net.ResolveTCPAddr("tcp", "192.0.2.1:143")
	for _, v := range []byte{1, 2} {
		b, _ := proxyproto.HeaderProxyFromAddrs(v, src, dst).Format()
		f.Add(b, []byte("a LOGIN x y\r\n"))
	}
	f.Add([]byte("PROXY UNKNOWN\r\n"), []byte("x"))
	f.Add([]byte("PROXY TCP6 ::1 ::2 1 2\r\n"), []byte(""))
	f.Add([]byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"), []byte("zz"))
	f.Add([]byte("GET / HTTP/1.0\r\n"), []byte(""))
	f.Fuzz(func(t *testing.T, header, tail []byte) {
		in := append(append([]byte(nil), header...), tail...)
		r := bytes.NewReader(in)
		h, rest, err := parseProxyHeader(bufio.NewReaderSize(r, 512))
		if err != nil {
			return
		}
		// What the session sees next (the over-read bytes, then the rest of
		// the stream) is exactly what followed the header.
		unread := make([]byte, r.Len())
		r.Read(unread)
		if next := append(rest, unread...); !bytes.HasSuffix(in, next) {
			t.Fatalf("session would see %q, not a suffix of the input", next)
		}
		if h != nil && h.SourceAddr == nil {
			t.Fatal("PROXY command without source address")
		}
	})
}

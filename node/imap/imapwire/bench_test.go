package imapwire

import (
	"bufio"
	"testing"
)

// loop yields b over and over.
type loop struct {
	b   []byte
	off int
}

func (l *loop) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], l.b[l.off:])
		n += c
		l.off = (l.off + c) % len(l.b)
	}
	return n, nil
}

func benchCommand(b *testing.B, in string) {
	r := NewReader(bufio.NewReader(&loop{b: []byte(in)}), Limits{}, func() error { return nil })
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, err := r.ReadCommand(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadCommandLogin(b *testing.B) {
	benchCommand(b, "a001 LOGIN \"alice@example.com\" \"correct horse battery staple\"\r\n")
}

func BenchmarkReadCommandLoginLiteral(b *testing.B) {
	benchCommand(b, "a001 LOGIN {17+}\r\nalice@example.com {28}\r\ncorrect horse battery staple\r\n")
}

func BenchmarkReadCommandID(b *testing.B) {
	benchCommand(b, "a001 ID (\"name\" \"Thunderbird\" \"version\" \"115.3.1\" \"os\" \"Linux\" \"vendor\" NIL)\r\n")
}

func BenchmarkReadResponse(b *testing.B) {
	in := "* OK [CAPABILITY " + dovecotCaps + "] Dovecot (Debian) ready.\r\n"
	r := NewResponseReader(bufio.NewReader(&loop{b: []byte(in)}), 0, 0)
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, err := r.Read(); err != nil {
			b.Fatal(err)
		}
	}
}

package session

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/portico-mail/portico/routing"
)

// dialAndRead dials b through a Dialer and returns the PROXY header the
// backend received (nil when the first bytes were not one).
func dialAndRead(t *testing.T, forward routing.ForwardMode, remote, local netip.AddrPort) *proxyproto.Header {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan *proxyproto.Header, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		h, err := proxyproto.Read(bufio.NewReader(c))
		if err != nil {
			h = nil
		}
		got <- h
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	b := &routing.Backend{ID: "b", Host: "127.0.0.1", IMAPPort: port, TLS: routing.TLSNone, Forward: forward}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := (&Dialer{}).Dial(ctx, b, routing.IMAP, remote, local)
	if err != nil {
		t.Fatal(err)
	}
	if forward != routing.ForwardProxy {
		// Nothing is sent: the backend speaks first.
		_, _ = s.WriteString("x\r\n")
		_ = s.Flush()
	}
	defer s.Close()
	return <-got
}

// A login's connection carries the client's addresses; a connection the
// node makes on its own behalf (a health probe) carries LOCAL, which the
// backend accepts from a trusted proxy and logs with the node's address.
func TestDialProxyHeader(t *testing.T) {
	client := netip.MustParseAddrPort("198.51.100.7:40000")
	local := netip.MustParseAddrPort("192.0.2.10:143")
	h := dialAndRead(t, routing.ForwardProxy, client, local)
	if h == nil || h.Command != proxyproto.PROXY || h.Version != 2 {
		t.Fatalf("login: header %+v, want PROXY v2", h)
	}
	src, dst, ok := h.TCPAddrs()
	if !ok || src.String() != client.String() || dst.String() != local.String() {
		t.Fatalf("login: header addresses %v -> %v", src, dst)
	}

	h = dialAndRead(t, routing.ForwardProxy, netip.AddrPort{}, netip.AddrPort{})
	if h == nil || h.Command != proxyproto.LOCAL || h.Version != 2 {
		t.Fatalf("own connection: header %+v, want LOCAL v2", h)
	}

	if h := dialAndRead(t, routing.ForwardID, client, local); h != nil {
		t.Fatalf("forward: id sent a PROXY header %+v", h)
	}
}

// Dialing a closed port, or a backend without a port for the protocol,
// fails with an error (the probe then counts a failure).
func TestDialRefusedAndUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close() // nobody listens there now
	b := &routing.Backend{ID: "gone", Host: "127.0.0.1", IMAPPort: port, Forward: routing.ForwardProxy}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := (&Dialer{}).Dial(ctx, b, routing.IMAP, netip.AddrPort{}, netip.AddrPort{}); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
	b.IMAPPort = 0
	if _, err := (&Dialer{}).Dial(ctx, b, routing.IMAP, netip.AddrPort{}, netip.AddrPort{}); err == nil {
		t.Fatal("dial of a backend without an IMAP port succeeded")
	}
}

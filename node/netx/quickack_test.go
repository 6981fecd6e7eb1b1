package netx

import (
	"net"
	"testing"
)

// QuickAck works on a connected socket (its effect on the timing of ACKs
// is asserted end to end by integration's TestBackendLoginLatency).
func TestQuickAck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			_, _ = c.Write([]byte("x"))
		}
	}()
	tc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConn(tc.(*net.TCPConn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("a\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := c.QuickAck(); err != nil {
		t.Fatal(err)
	}
}

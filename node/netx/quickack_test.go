package netx

import (
	"bufio"
	"net"
	"sort"
	"testing"
	"time"
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

// nagleServer answers every request of two pipelined commands ("a", then
// "b") as Cyrus does: two small writes with Nagle's algorithm on, so the
// second waits until the first is acknowledged.
func nagleServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c *net.TCPConn) {
				defer c.Close()
				_ = c.SetNoDelay(false)
				_, _ = c.Write([]byte("* OK ready\r\n"))
				br := bufio.NewReader(c)
				for {
					if _, err := br.ReadString('\n'); err != nil { // a
						return
					}
					if _, err := br.ReadString('\n'); err != nil { // b
						return
					}
					_, _ = c.Write([]byte("a OK first\r\n"))
					_, _ = c.Write([]byte("b OK second\r\n"))
				}
			}(c.(*net.TCPConn))
		}
	}()
	return ln.Addr().String()
}

// pipelined sends two commands in one write to a nagleServer and returns
// how long both replies took; arm arms the quick ACK after the write.
func pipelined(t *testing.T, addr string, arm func(*Conn)) time.Duration {
	t.Helper()
	tc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConn(tc.(*net.TCPConn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := NewGate(1).Hold(nil)
	h.Acquire()
	defer h.Close()
	c.SetHold(h)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Write([]byte("a NOOP\r\nb NOOP\r\n")); err != nil {
		t.Fatal(err)
	}
	if arm != nil {
		arm(c)
	}
	for _, want := range []string{"a OK first\r\n", "b OK second\r\n"} {
		line, err := br.ReadString('\n')
		if err != nil || line != want {
			t.Fatalf("read %q, %v; want %q", line, err, want)
		}
	}
	return time.Since(start)
}

func median(t *testing.T, n int, f func() time.Duration) time.Duration {
	ds := make([]time.Duration, n)
	for i := range ds {
		ds[i] = f()
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[n/2]
}

// A peer that holds its second reply until the first is acknowledged
// (Nagle) gets the ACK when the reader is about to wait: no delayed-ACK
// stall (40 ms or more on Linux).
func TestQuickAckOnWaitNagle(t *testing.T) {
	addr := nagleServer(t)
	const n = 9
	plain := median(t, n, func() time.Duration { return pipelined(t, addr, nil) })
	if plain < 35*time.Millisecond {
		t.Skipf("no delayed-ACK stall here without quick ACKs (median %v): nothing to show", plain)
	}
	onWait := median(t, n, func() time.Duration {
		return pipelined(t, addr, func(c *Conn) { _ = c.QuickAckOnWait() })
	})
	t.Logf("two pipelined replies, Nagle on the peer: median %v without quick ACK, %v with QuickAckOnWait", plain, onWait)
	if onWait >= 35*time.Millisecond {
		t.Errorf("with QuickAckOnWait the replies took %v (median): the delayed ACK still stalls them", onWait)
	}
}

// Replies that arrive together leave the quick ACK unused: no setsockopt.
func TestQuickAckOnWaitUnusedWhenNotWaiting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			br := bufio.NewReader(c)
			_, _ = br.ReadString('\n')
			_, _ = c.Write([]byte("a OK first\r\nb OK second\r\n"))
			_, _ = br.ReadString('\n') // until the client closes
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
	h := NewGate(1).Hold(nil)
	h.Acquire()
	defer h.Close()
	c.SetHold(h)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("a NOOP\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = c.QuickAckOnWait()
	br := bufio.NewReaderSize(c, 4096)
	for range 2 {
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	// Both replies came in one read (or the first read waited before any
	// byte came): either way no read waited after bytes had arrived.
	if st := c.held; st == nil || !st.quickAck {
		t.Errorf("the quick ACK was used although no read waited after data arrived")
	}
}

//go:build linux

package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/relay"
)

const bigSize = 16 << 20 // more than the socket buffers hold: the relay must wait for the client

// backend is a tiny IMAP server: a greeting, LOGIN, NOOP and BIG (a 16 MiB
// literal), counting its open connections.
type backend struct {
	ln   net.Listener
	live atomic.Int64
}

func startBackend(t *testing.T) *backend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.live.Add(1)
			go b.serve(c)
		}
	}()
	return b
}

func (b *backend) serve(c net.Conn) {
	defer b.live.Add(-1)
	defer c.Close()
	r := bufio.NewReader(c)
	io.WriteString(c, "* OK [CAPABILITY IMAP4rev1] test backend\r\n")
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return
		}
		f := strings.Fields(l)
		if len(f) < 2 {
			return
		}
		switch strings.ToUpper(f[1]) {
		case "LOGIN":
			if len(f) != 4 || f[3] != "secret" {
				io.WriteString(c, f[0]+" NO bad password\r\n")
				continue
			}
			io.WriteString(c, "* CAPABILITY IMAP4rev1 IDLE\r\n"+f[0]+" OK logged in as "+f[2]+"\r\n")
		case "NOOP":
			io.WriteString(c, f[0]+" OK NOOP done\r\n")
		case "BIG":
			io.WriteString(c, "* 1 FETCH (BODY[] {"+itoa(bigSize)+"}\r\n")
			c.Write(make([]byte, bigSize))
			io.WriteString(c, ")\r\n"+f[0]+" OK BIG done\r\n")
		default:
			io.WriteString(c, f[0]+" BAD unknown\r\n")
		}
	}
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// startProxy runs floorproxy in mode against be and returns its address
// and, for the epoll modes, the count of its open sessions.
func startProxy(t *testing.T, mode string, be *backend) (string, func() int64) {
	baddr := be.ln.Addr().(*net.TCPAddr)
	switch mode {
	case "goroutine":
		ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go serveGoroutine(ln.(*net.TCPListener), baddr)
		return ln.Addr().String(), nil
	case "evloop":
		l, addr, err := serveEvloop("127.0.0.1:0", baddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Close)
		return addr.String(), nil
	case "epoll", "epoll-syscall", "epoll-park", "epoll-handoff", "epoll-handoff-fd", "epoll-coro", "epoll-park-coro":
		park := mode == "epoll-park" || mode == "epoll-handoff" || mode == "epoll-handoff-fd" || mode == "epoll-park-coro"
		l, err := newLoop("127.0.0.1:0", baddr, mode != "epoll-syscall", park, false)
		if err != nil {
			t.Fatal(err)
		}
		l.coro = strings.HasSuffix(mode, "-coro")
		if mode == "epoll-handoff" {
			if l.handoff, err = relay.NewEngine(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(l.handoff.Close)
		}
		if mode == "epoll-handoff-fd" {
			if l.handoff, err = relay.NewEngine(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(l.handoff.Close)
			if l.handoffFD, err = netx.NewWaiter(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = l.handoffFD.Close() })
			l.backendAddr = baddr
		}
		go l.run() // runs until the test binary exits
		return l.addr(), l.live.Load
	}
	t.Fatalf("mode %q", mode)
	return "", nil
}

type client struct {
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &client{c: c, r: bufio.NewReader(c)}
}

func (c *client) line(t *testing.T) string {
	t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading: %v (got %q)", err, l)
	}
	return l
}

func (c *client) send(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		t.Fatal(err)
	}
}

// login runs loadimap's dialogue and a NOOP through the proxy.
func login(t *testing.T, addr, user string) *client {
	t.Helper()
	c := dial(t, addr)
	if l := c.line(t); l != "* OK ready\r\n" {
		t.Fatalf("greeting %q", l)
	}
	c.send(t, "a LOGIN "+user+" secret\r\n")
	if l := c.line(t); l != "* CAPABILITY IMAP4rev1 IDLE\r\n" {
		t.Fatalf("untagged line before the login reply %q", l)
	}
	if l := c.line(t); l != "a OK logged in as "+user+"\r\n" {
		t.Fatalf("login reply %q", l)
	}
	c.send(t, "n NOOP\r\n")
	if l := c.line(t); l != "n OK NOOP done\r\n" {
		t.Fatalf("NOOP reply %q", l)
	}
	return c
}

func openFDs(t *testing.T) int {
	d, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(d)
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("still waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestFloorProxy(t *testing.T) {
	for _, mode := range []string{"goroutine", "epoll", "epoll-syscall", "epoll-park", "epoll-handoff", "epoll-handoff-fd", "epoll-coro", "epoll-park-coro", "evloop"} {
		t.Run(mode, func(t *testing.T) {
			be := startBackend(t)
			addr, live := startProxy(t, mode, be)
			fds, gs := openFDs(t), runtime.NumGoroutine()

			// Logins and a relayed round trip, several sessions at once.
			var cs []*client
			for _, u := range []string{"alice", "bob", "carol"} {
				cs = append(cs, login(t, addr, u))
			}
			if n := be.live.Load(); n != 3 {
				t.Fatalf("backend has %d connections, want 3", n)
			}

			// A response larger than the socket buffers, read late.
			big := cs[0]
			big.send(t, "b BIG\r\n")
			time.Sleep(200 * time.Millisecond)
			if l := big.line(t); l != "* 1 FETCH (BODY[] {"+itoa(bigSize)+"}\r\n" {
				t.Fatalf("BIG header %q", l)
			}
			if n, err := io.CopyN(io.Discard, big.r, bigSize); err != nil {
				t.Fatalf("BIG literal: %d bytes, %v", n, err)
			}
			if l := big.line(t); l != ")\r\n" {
				t.Fatalf("BIG tail %q", l)
			}
			if l := big.line(t); l != "b OK BIG done\r\n" {
				t.Fatalf("BIG reply %q", l)
			}

			// Clients that go early: right after the greeting, in the middle
			// of the LOGIN line, right after it (the backend login then runs
			// to its end), and one that sends something else than LOGIN.
			c := dial(t, addr)
			c.line(t)
			c.c.Close()
			c = dial(t, addr)
			c.line(t)
			c.send(t, "a LOG")
			c.c.Close()
			c = dial(t, addr)
			c.line(t)
			c.send(t, "a LOGIN early secret\r\n")
			c.c.Close()
			c = dial(t, addr)
			c.line(t)
			c.send(t, "x CAPABILITY\r\n")
			if l := c.line(t); l != "x BAD only LOGIN\r\n" {
				t.Fatalf("reply to CAPABILITY %q", l)
			}
			if _, err := c.r.ReadByte(); err != io.EOF {
				t.Fatalf("after BAD: %v, want EOF", err)
			}
			c.c.Close()
			// A wrong password: the backend's NO goes back; the session stays
			// open (the proxy relays whatever comes next) until the client goes.
			c = dial(t, addr)
			c.line(t)
			c.send(t, "a LOGIN dave wrong\r\n")
			if l := c.line(t); l != "a NO bad password\r\n" {
				t.Fatalf("reply to a wrong password %q", l)
			}
			c.c.Close()

			// The proxy keeps serving.
			cs = append(cs, login(t, addr, "erin"))
			for _, c := range cs {
				c.c.Close()
			}

			// Nothing left behind: every backend connection is closed, and
			// so are the proxy's descriptors and goroutines.
			waitFor(t, "backend connections to close", func() bool { return be.live.Load() == 0 })
			// node/relay keeps the pipes it spliced through for reuse (two
			// descriptors each, process-wide): at most one per direction here.
			pooled := 0
			if mode == "epoll-handoff" || mode == "epoll-handoff-fd" {
				pooled = 4
			}
			waitFor(t, "descriptors to close", func() bool { return openFDs(t) <= fds+pooled })
			if !waitQuiet(func() bool { return runtime.NumGoroutine() <= gs }) {
				buf := make([]byte, 1<<20)
				t.Fatalf("goroutines %d > %d\n%s", runtime.NumGoroutine(), gs, buf[:runtime.Stack(buf, true)])
			}
			if live != nil {
				waitFor(t, "the loop's sessions to end", func() bool { return live() == 0 })
			}
			login(t, addr, "frank").c.Close()
		})
	}
}

func TestParseLogin(t *testing.T) {
	for _, tc := range []struct {
		line, tag string
		ok        bool
	}{
		{"a LOGIN u p\r\n", "a ", true},
		{"A1 login u p\r\n", "A1 ", true},
		{"a LOGOUT\r\n", "a ", false},
		{"a LOGIN\r\n", "a ", false},
		{"LOGIN\r\n", "", false},
		{" LOGIN u p\r\n", "", false},
	} {
		tag, ok := parseLogin([]byte(tc.line))
		if string(tag) != tc.tag || ok != tc.ok {
			t.Errorf("parseLogin(%q) = %q, %v; want %q, %v", tc.line, tag, ok, tc.tag, tc.ok)
		}
	}
	if e := taggedEnd([]byte("* x\r\na OK y\r\nrest"), []byte("a ")); e != 13 {
		t.Errorf("taggedEnd = %d, want 13", e)
	}
	if e := taggedEnd([]byte("* x\r\na OK y"), []byte("a ")); e != -1 {
		t.Errorf("taggedEnd of an incomplete line = %d, want -1", e)
	}
}

func waitQuiet(cond func() bool) bool {
	for end := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(end) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

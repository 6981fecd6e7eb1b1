package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// testEventLoop: every listener of startServer runs on the event loops
// (PORTICO_TEST_EVENT_LOOP=1; scripts/test.sh runs this package both
// ways).
var testEventLoop = os.Getenv("PORTICO_TEST_EVENT_LOOP") != ""

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoHandler greets with the client address it was given, answers each
// line with "? line", and on "login" hands off to a backend connection that
// echoes. It runs on the shared pre-login scaffold (session.Dialogue), like
// the real protocols.
type echoHandler struct{ backend string }

func (h echoHandler) TooManyConnections() string {
	return "* BYE [UNAVAILABLE] Too many connections, try again later.\r\n"
}

func (h echoHandler) Serve(ctx context.Context, c *session.Client) (*session.Handoff, session.End) {
	return session.NewDialogue(ctx, c).Run(&echoConn{backend: h.backend, c: c})
}

type echoConn struct {
	backend string
	c       *session.Client
}

func (e *echoConn) Greet() { e.c.Stream.WriteString("* OK " + e.c.Remote.String() + "\r\n") }

func (e *echoConn) Bye(reason string) {
	if reason == session.EndShutdown {
		e.c.Stream.WriteString("* BYE shutting down\r\n")
	}
}

func (e *echoConn) Next() (*session.Handoff, error) {
	line, err := e.c.Stream.R.ReadString('\n')
	if err != nil {
		return nil, err
	}
	// "login", "login USER" or "login USER shared|steered" (default user
	// "u", backend "b"; a named user's backend is "b-USER"; shared: from a
	// shared_storage pool, steered: there by affinity).
	if f := strings.Fields(line); len(f) > 0 && f[0] == "login" && len(f) <= 3 {
		user, backend := "u", "b"
		if len(f) >= 2 {
			user, backend = f[1], "b-"+f[1]
		}
		shared, steered := len(f) == 3 && (f[2] == "shared" || f[2] == "steered"), len(f) == 3 && f[2] == "steered"
		conn, err := net.Dial("tcp", e.backend)
		if err != nil {
			return nil, err
		}
		nc, _ := netx.NewConn(conn.(*net.TCPConn), nil)
		e.c.Stream.WriteString("OK\r\n")
		return &session.Handoff{Client: e.c, Backend: netx.NewStream(nc), User: user, BackendID: backend,
			SharedStorage: shared, Steered: steered}, nil
	}
	e.c.Stream.WriteString("? " + line)
	return nil, nil
}

func echoBackend(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func startServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	engine, err := relay.NewEngine()
	if err != nil {
		t.Fatal(err)
	}
	env := &session.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for i := range cfg.Listeners {
		if cfg.Listeners[i].Limits.MaxLine == 0 {
			cfg.Listeners[i].Limits = session.DefaultLimits(routing.IMAP)
		}
		cfg.Listeners[i].Protocol = routing.IMAP
		cfg.Listeners[i].TLS = routing.TLSNone
		if testEventLoop {
			cfg.Listeners[i].EventLoop = true
		}
	}
	s := NewServer(cfg, env, map[routing.Protocol]session.Handler{routing.IMAP: echoHandler{echoBackend(t)}}, nil, engine)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		engine.Close()
	})
	return s
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func readLine(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	s, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("read: %v (%q)", err, s)
	}
	return s
}

func TestConnectionLimits(t *testing.T) {
	s := startServer(t, Config{MaxConnections: 3, MaxConnectionsPerIP: 2,
		Listeners: []ListenerConfig{{Name: "l", Address: "127.0.0.1:0"}}})
	addr := s.Addrs()["l"].String()
	_, br1 := dial(t, addr)
	readLine(t, br1)
	_, br2 := dial(t, addr)
	readLine(t, br2)
	// Third from the same IP: over the per-IP limit.
	_, br3 := dial(t, addr)
	if got := readLine(t, br3); !strings.HasPrefix(got, "* BYE [UNAVAILABLE] Too many connections") {
		t.Fatalf("per-IP limit: %q", got)
	}
	// The refused connection holds a slot of the total until the server
	// has written its refusal and closed it.
	waitConnections(t, s, 2)
	// From another loopback address: allowed by per-IP, but the total is 3.
	c4, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c4.Close()
	br4 := bufio.NewReader(c4)
	if got := readLine(t, br4); !strings.HasPrefix(got, "* OK 127.0.0.2") {
		t.Fatalf("other IP: %q", got)
	}
	c5, _ := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}).Dial("tcp", addr)
	defer c5.Close()
	if got := readLine(t, bufio.NewReader(c5)); !strings.Contains(got, "Too many connections") {
		t.Fatalf("total limit: %q", got)
	}
	// Closing one frees a slot (per-IP counter released).
	c4.Close()
	waitConnections(t, s, 2)
	c6, _ := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).Dial("tcp", addr)
	defer c6.Close()
	if got := readLine(t, bufio.NewReader(c6)); !strings.HasPrefix(got, "* OK") {
		t.Fatalf("after release: %q", got)
	}
}

// waitConnections waits until the server counts at most n connections.
func waitConnections(t *testing.T, s *Server, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.Connections() > n {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections counted, want %d", s.Connections(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestProxyProtocol(t *testing.T) {
	s := startServer(t, Config{Listeners: []ListenerConfig{
		{Name: "trusted", Address: "127.0.0.1:0", ProxyProtocol: true, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
		{Name: "untrusted", Address: "127.0.0.1:0", ProxyProtocol: true, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
	}})
	src, _ := net.ResolveTCPAddr("tcp", "203.0.113.9:5555")
	dst, _ := net.ResolveTCPAddr("tcp", "192.0.2.1:143")
	for _, v := range []byte{1, 2} {
		c, br := dial(t, s.Addrs()["trusted"].String())
		// Header and the first command in one packet: the command survives.
		h := proxyproto.HeaderProxyFromAddrs(v, src, dst)
		b, _ := h.Format()
		c.Write(append(b, "hello\r\n"...))
		if got := readLine(t, br); got != "* OK 203.0.113.9:5555\r\n" {
			t.Fatalf("v%d: %q", v, got)
		}
		if got := readLine(t, br); got != "? hello\r\n" {
			t.Fatalf("v%d pipelined: %q", v, got)
		}
	}
	// From an untrusted peer the header is not parsed: it is just data.
	c, br := dial(t, s.Addrs()["untrusted"].String())
	if got := readLine(t, br); !strings.HasPrefix(got, "* OK 127.0.0.1:") {
		t.Fatalf("untrusted: %q", got)
	}
	c.Write([]byte("PROXY TCP4 203.0.113.9 192.0.2.1 5555 143\r\n"))
	if got := readLine(t, br); !strings.HasPrefix(got, "? PROXY") {
		t.Fatalf("untrusted header: %q", got)
	}
	// A trusted peer that sends no header is dropped.
	c, br = dial(t, s.Addrs()["trusted"].String())
	c.Write([]byte("a LOGIN x y\r\n"))
	if _, err := br.ReadString('\n'); err == nil {
		t.Fatal("no header from a trusted peer was accepted")
	}
}

func TestShutdown(t *testing.T) {
	engine, _ := relay.NewEngine()
	defer engine.Close()
	lim := session.DefaultLimits(routing.IMAP)
	s := NewServer(Config{ShutdownGrace: 300 * time.Millisecond, Listeners: []ListenerConfig{{Name: "l", Address: "127.0.0.1:0", Protocol: routing.IMAP, Limits: lim}}},
		&session.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil))},
		map[routing.Protocol]session.Handler{routing.IMAP: echoHandler{echoBackend(t)}}, nil, engine)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	addr := s.Addrs()["l"].String()
	_, pre := dial(t, addr)
	readLine(t, pre)
	relayed, rbr := dial(t, addr)
	readLine(t, rbr)
	relayed.Write([]byte("login\r\n"))
	readLine(t, rbr)
	relayed.Write([]byte("ping\r\n"))
	if got := readLine(t, rbr); got != "ping\r\n" {
		t.Fatalf("relay: %q", got)
	}
	start := time.Now()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, pre); got != "* BYE shutting down\r\n" {
		t.Fatalf("pre-auth session got %q", got)
	}
	// The relayed session was allowed to run for the grace period, then closed.
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("shutdown returned after %v, before the grace period", d)
	}
	if _, err := rbr.ReadString('\n'); !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Fatalf("relayed session not closed: %v", err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("still accepting after shutdown")
	}
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && !errors.Is(err, os.ErrDeadlineExceeded)
}

// A listener binds an address this host does not have (yet): the VIP
// before it is acquired.
func TestListenNonlocalAddress(t *testing.T) {
	s := startServer(t, Config{Listeners: []ListenerConfig{{Name: "vip", Address: "198.18.255.77:0"}}})
	if a := s.Addrs()["vip"]; a == nil || !strings.HasPrefix(a.String(), "198.18.255.77:") {
		t.Fatalf("bound %v", a)
	}
}

// stubHandler reads one line: "panic" panics, anything else ends the
// session; its refusal line is its own.
type stubHandler struct{}

func (stubHandler) TooManyConnections() string { return "-ERR stub: full\r\n" }

func (stubHandler) Serve(ctx context.Context, c *session.Client) (*session.Handoff, session.End) {
	c.ArmReadDeadline()
	line, err := c.Stream.R.ReadString('\n')
	if strings.TrimSpace(line) == "panic" {
		panic("stub handler panics")
	}
	return nil, session.End{Reason: session.EndLogout, Err: err}
}

// A connection over a limit gets the protocol handler's refusal line (node
// has no protocol text of its own), and a handler that panics gives back
// everything its connection held: the limit counts, the pre-login count.
func TestRefusalLineAndPanicCleanup(t *testing.T) {
	engine, err := relay.NewEngine()
	if err != nil {
		t.Fatal(err)
	}
	defer engine.Close()
	s := NewServer(Config{MaxConnections: 1, MaxConnectionsPerIP: 1, Listeners: []ListenerConfig{
		{Name: "l", Address: "127.0.0.1:0", Protocol: routing.POP3, Limits: session.DefaultLimits(routing.POP3)},
	}}, &session.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil))},
		map[routing.Protocol]session.Handler{routing.POP3: stubHandler{}}, nil, engine)
	rec := &recorder{}
	s.SetObserver(rec)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	addr := s.Addrs()["l"].String()
	st := s.ListenerStats()[0]

	c1, _ := dial(t, addr)
	waitUntil(t, "the first session", func() bool { return st.Preauth.Load() == 1 })
	_, br2 := dial(t, addr)
	if got := readLine(t, br2); got != "-ERR stub: full\r\n" {
		t.Fatalf("refusal %q", got)
	}
	c1.Write([]byte("panic\r\n"))
	waitUntil(t, "the cleanup after the panic", func() bool {
		return s.Connections() == 0 && st.Preauth.Load() == 0 && len(rec.snapshot().preauth) == 1
	})
	if got := rec.snapshot().preauth[0]; got != session.EndError {
		t.Fatalf("ended for %q", got)
	}
	// Both limits have their slot back.
	c3, _ := dial(t, addr)
	waitUntil(t, "another session", func() bool { return st.Preauth.Load() == 1 })
	c3.Write([]byte("QUIT\r\n"))
	waitUntil(t, "its end", func() bool { return s.Connections() == 0 && len(rec.snapshot().preauth) == 2 })
	if got := rec.snapshot().refused; len(got) != 1 || got[0] != RefusedMaxConnections {
		t.Fatalf("refused %v", got)
	}
}

// Zero timeouts stand for their defaults, at start and after a reload.
func TestConfigDefaults(t *testing.T) {
	s := startServer(t, Config{Listeners: []ListenerConfig{{Name: "l", Address: "127.0.0.1:0"}}})
	d := DefaultConfig()
	if c := s.conf(); c.ProxyHeaderTimeout != d.ProxyHeaderTimeout || c.EndTimeout != d.EndTimeout {
		t.Fatalf("at start: %v, %v", c.ProxyHeaderTimeout, c.EndTimeout)
	}
	if err := s.Reconfigure(Config{Listeners: s.conf().Listeners, EndTimeout: 0}); err != nil {
		t.Fatal(err)
	}
	if c := s.conf(); c.ProxyHeaderTimeout != d.ProxyHeaderTimeout || c.EndTimeout != d.EndTimeout {
		t.Fatalf("after a reload: %v, %v", c.ProxyHeaderTimeout, c.EndTimeout)
	}
	if d.MaxConnections != DefaultMaxConnections() || d.ProxyHeaderTimeout != 5*time.Second || d.EndTimeout != 10*time.Second {
		t.Fatalf("DefaultConfig %+v", d)
	}
}

// PreauthOn counts the sessions that have not logged in by the local
// address they came in on: one greeted is counted, one logged in or gone
// is not.
func TestPreauthOn(t *testing.T) {
	s := startServer(t, Config{Listeners: []ListenerConfig{{Name: "a", Address: "127.0.0.1:0"}}})
	lo := func(a netip.Addr) bool { return a == netip.MustParseAddr("127.0.0.1") }
	other := func(a netip.Addr) bool { return a == netip.MustParseAddr("198.18.0.1") }
	c1, br1 := dial(t, s.Addrs()["a"].String())
	readLine(t, br1)
	c2, br2 := dial(t, s.Addrs()["a"].String())
	readLine(t, br2)
	if n := s.PreauthOn(lo); n != 2 || s.PreauthOn(other) != 0 {
		t.Fatalf("PreauthOn: %d (other %d), want 2", n, s.PreauthOn(other))
	}
	fmt.Fprintf(c1, "login\r\n")
	if l := readLine(t, br1); l != "OK\r\n" {
		t.Fatalf("login: %q", l)
	}
	c2.Close()
	deadline := time.Now().Add(10 * time.Second)
	for s.PreauthOn(lo) != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := s.PreauthOn(lo); n != 0 {
		t.Fatalf("PreauthOn after a login and a close: %d", n)
	}
}

// A listening socket is transparent (where the test may set it, as root):
// the connections it accepts can answer from an address the host no
// longer has (vip/DESIGN.md, planned moves).
func TestListenerTransparent(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("IP_TRANSPARENT needs CAP_NET_ADMIN")
	}
	s := startServer(t, Config{Listeners: []ListenerConfig{{Name: "a", Address: "127.0.0.1:0"}, {Name: "b", Address: "[::1]:0"}}})
	for _, name := range []string{"a", "b"} {
		c, br := dial(t, s.Addrs()[name].String())
		readLine(t, br)
		c.Close()
	}
	s.mu.Lock()
	lns := s.listeners
	s.mu.Unlock()
	for _, l := range lns {
		var control func(func(fd uintptr)) error
		if ll, ok := l.ln.(*loopListener); ok {
			control = func(f func(fd uintptr)) error { f(uintptr(ll.fd)); return nil }
		} else {
			rc, err := l.ln.(*net.TCPListener).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			control = rc.Control
		}
		var v int
		var gerr error
		control(func(fd uintptr) {
			if strings.Contains(l.ln.Addr().String(), "[") {
				v, gerr = unix.GetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT)
			} else {
				v, gerr = unix.GetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT)
			}
		})
		if gerr != nil || v != 1 {
			t.Errorf("%v: transparent %d (%v)", l.ln.Addr(), v, gerr)
		}
	}
}

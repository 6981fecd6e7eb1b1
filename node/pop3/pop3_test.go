package pop3

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseCommand(t *testing.T) {
	cases := []struct {
		in       string
		name, ok string
		arg      string
	}{
		{"user alice", "USER", "y", "alice"},
		{"PASS pass with spaces ", "PASS", "y", "pass with spaces "},
		{"CAPA", "CAPA", "y", ""},
		{"AUTH PLAIN AGFsaWNlAHNlY3JldA==", "AUTH", "y", "PLAIN AGFsaWNlAHNlY3JldA=="},
		{"", "", "", ""},
		{" USER x", "", "", ""},
		{"US\x00ER x", "", "", ""},
		{strings.Repeat("A", 41), "", "", ""},
	}
	for _, c := range cases {
		cmd, ok := parseCommand([]byte(c.in))
		if ok != (c.ok == "y") || cmd.Name != c.name || cmd.Arg != c.arg {
			t.Errorf("%q: got %+v %v", c.in, cmd, ok)
		}
	}
}

func TestReadLine(t *testing.T) {
	in := "one\r\nbare\n" + strings.Repeat("x", 5000) + "\r\nafter\r\nlast"
	br := bufio.NewReaderSize(strings.NewReader(in), 64)
	var scratch []byte
	for _, want := range []string{"one", "bare"} {
		l, err := readLine(br, 1024, &scratch)
		if err != nil || string(l) != want {
			t.Fatalf("got %q %v, want %q", l, err, want)
		}
	}
	if _, err := readLine(br, 1024, &scratch); err != ErrLineTooLong {
		t.Fatalf("long line: %v", err)
	}
	if l, err := readLine(br, 1024, &scratch); err != nil || string(l) != "after" {
		t.Fatalf("after long line: %q %v", l, err)
	}
	if _, err := readLine(br, 1024, &scratch); err != io.ErrUnexpectedEOF {
		t.Fatalf("unterminated: %v", err)
	}
	if cap(scratch) > 2048 {
		t.Fatalf("scratch grew to %d for a discarded line", cap(scratch))
	}
}

// fakeBackend is a scripted POP3 server.
type fakeBackend struct {
	ln    net.Listener
	capa  string
	mu    sync.Mutex
	lines []string
	wg    sync.WaitGroup
}

func newFakeBackend(t *testing.T, capa string) *fakeBackend {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	fb := &fakeBackend{ln: ln, capa: capa}
	fb.wg.Add(1)
	go func() {
		defer fb.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fb.wg.Add(1)
			go fb.serve(c)
		}
	}()
	t.Cleanup(func() { ln.Close(); fb.wg.Wait() })
	return fb
}

func (fb *fakeBackend) received() string {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return strings.Join(fb.lines, "\n")
}

func (fb *fakeBackend) serve(c net.Conn) {
	defer fb.wg.Done()
	defer c.Close()
	br := bufio.NewReader(c)
	io.WriteString(c, "+OK fake ready\r\n")
	user := ""
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return
		}
		l = strings.TrimRight(l, "\r\n")
		fb.mu.Lock()
		fb.lines = append(fb.lines, l)
		fb.mu.Unlock()
		cmd, arg, _ := strings.Cut(l, " ")
		switch strings.ToUpper(cmd) {
		case "CAPA":
			io.WriteString(c, "+OK\r\n"+fb.capa+".\r\n")
		case "XCLIENT":
			io.WriteString(c, "+OK\r\n")
		case "AUTH":
			if arg == "PLAIN "+session.PlainResponse(session.Credentials{User: "alice", Password: "secret"}) {
				io.WriteString(c, "+OK Logged in.\r\n")
			} else {
				io.WriteString(c, "-ERR [AUTH] Authentication failed.\r\n")
			}
		case "USER":
			user = arg
			io.WriteString(c, "+OK\r\n")
		case "PASS":
			if user == "alice" && arg == "secret" {
				io.WriteString(c, "+OK Logged in.\r\n")
			} else {
				io.WriteString(c, "-ERR [AUTH] Authentication failed.\r\n")
			}
		case "STAT":
			io.WriteString(c, "+OK 0 0\r\n")
		case "QUIT":
			io.WriteString(c, "+OK bye\r\n")
			return
		default:
			io.WriteString(c, "-ERR ?\r\n")
		}
	}
}

type rig struct {
	ln      net.Listener
	lis     *session.Listener
	env     *session.Env
	wg      sync.WaitGroup
	results chan *session.Handoff
	pending chan []byte
}

func newRig(t *testing.T, port int, forward routing.ForwardMode, lis *session.Listener) *rig {
	tbl, _ := routing.NewTable(routing.TableSpec{
		Backends:    []routing.Backend{{ID: "b1", Host: "127.0.0.1", POP3Port: port, Forward: forward}},
		Pools:       []routing.Pool{{Name: "p", Backends: []string{"b1"}}},
		DefaultPool: "p",
	})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	r := &rig{ln: ln, lis: lis, results: make(chan *session.Handoff, 8), pending: make(chan []byte, 8),
		env: &session.Env{Director: session.RouteDirector{Router: routing.NewStatic(tbl)}, Dialer: &session.Dialer{},
			Log: slog.New(slog.NewTextHandler(io.Discard, nil))}}
	h := New(Options{})
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				nc, _ := netx.NewConn(c.(*net.TCPConn), nil)
				cl := &session.Client{ID: "SID1", Listener: r.lis, Env: r.env, Stream: netx.NewStream(nc),
					Remote: netip.MustParseAddrPort("198.51.100.7:4242"), Local: netip.MustParseAddrPort("127.0.0.1:110"), Log: r.env.Log}
				ho, _ := h.Serve(context.Background(), cl)
				if ho != nil {
					r.pending <- cl.Stream.Detach()
					ho.Backend.Close()
				}
				cl.Stream.Close()
				r.results <- ho
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); r.wg.Wait() })
	return r
}

func listener(mode routing.TLSMode, cfg *tls.Config, allowPlain bool) *session.Listener {
	lim := session.DefaultLimits(routing.POP3)
	lim.AuthFailureDelay = 10 * time.Millisecond
	lim.BackendTimeout = 2 * time.Second
	return &session.Listener{Name: "t", Protocol: routing.POP3, TLS: mode, TLSConfig: cfg, AllowPlaintextAuth: allowPlain, Limits: lim}
}

type client struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	cl := &client{t: t, c: c, br: bufio.NewReader(c)}
	if g := cl.line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting %q", g)
	}
	return cl
}

func (c *client) line() string {
	c.t.Helper()
	s, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (%q)", err, s)
	}
	return s
}

func (c *client) cmd(send, wantPrefix string) string {
	c.t.Helper()
	io.WriteString(c.c, send)
	got := c.line()
	if !strings.HasPrefix(got, wantPrefix) {
		c.t.Fatalf("%q: got %q, want prefix %q", send, got, wantPrefix)
	}
	return got
}

func (c *client) multiline() []string {
	var out []string
	for {
		l := strings.TrimRight(c.line(), "\r\n")
		if l == "." {
			return out
		}
		out = append(out, l)
	}
}

func TestUserPassAndPipelining(t *testing.T) {
	fb := newFakeBackend(t, "USER\r\n")
	r := newRig(t, fb.ln.Addr().(*net.TCPAddr).Port, routing.ForwardNone, listener(routing.TLSNone, nil, true))
	c := dial(t, r.ln.Addr().String())
	c.cmd("CAPA\r\n", "+OK")
	caps := strings.Join(c.multiline(), ",")
	if !strings.Contains(caps, "USER") || !strings.Contains(caps, "SASL PLAIN LOGIN") || strings.Contains(caps, "STLS") {
		t.Fatalf("capa %q", caps)
	}
	c.cmd("PASS x\r\n", "-ERR USER first")
	c.cmd("USER alice\r\n", "+OK")
	c.cmd("PASS wrong\r\n", "-ERR [AUTH]")
	c.cmd("USER alice\r\n", "+OK")
	// PASS with a command pipelined behind it: the STAT belongs to the
	// backend after login.
	c.cmd("PASS secret\r\nSTAT\r\n", "+OK Logged in.")
	if ho := <-r.results; ho == nil || ho.User != "alice" {
		t.Fatalf("handoff %+v", ho)
	}
	if p := <-r.pending; string(p) != "STAT\r\n" {
		t.Fatalf("pipelined bytes %q", p)
	}
}

func TestAuthPlainLoginAndXCLIENT(t *testing.T) {
	fb := newFakeBackend(t, "SASL PLAIN\r\nXCLIENT\r\n")
	r := newRig(t, fb.ln.Addr().(*net.TCPAddr).Port, routing.ForwardID, listener(routing.TLSNone, nil, true))
	c := dial(t, r.ln.Addr().String())
	c.cmd("AUTH\r\n", "+OK")
	if m := c.multiline(); strings.Join(m, " ") != "PLAIN LOGIN" {
		t.Fatalf("mechanisms %q", m)
	}
	c.cmd("AUTH CRAM-MD5\r\n", "-ERR Unsupported")
	c.cmd("AUTH PLAIN\r\n", "+ ")
	c.cmd("*\r\n", "-ERR Authentication cancelled")
	c.cmd("AUTH PLAIN\r\n", "+ ")
	c.cmd("!!!\r\n", "-ERR Invalid base64")
	c.cmd("AUTH LOGIN\r\n", "+ VXNlcm5hbWU6")
	c.cmd("YWxpY2U=\r\n", "+ UGFzc3dvcmQ6")
	c.cmd("c2VjcmV0\r\n", "+OK Logged in.")
	<-r.results
	<-r.pending
	if got := fb.received(); !strings.Contains(got, "XCLIENT ADDR=198.51.100.7 PORT=4242 SESSION=SID1") {
		t.Fatalf("no XCLIENT: %s", got)
	}
	c2 := dial(t, r.ln.Addr().String())
	c2.cmd("AUTH PLAIN "+session.PlainResponse(session.Credentials{User: "alice", Password: "secret"})+"\r\n", "+OK Logged in.")
	<-r.results
	<-r.pending
}

func TestErrorsAndLimits(t *testing.T) {
	fb := newFakeBackend(t, "USER\r\n")
	r := newRig(t, fb.ln.Addr().(*net.TCPAddr).Port, routing.ForwardNone, listener(routing.TLSNone, nil, true))
	c := dial(t, r.ln.Addr().String())
	c.cmd("USER alice\r\n", "+OK")
	c.cmd("PASS a\r\n", "-ERR [AUTH]")
	c.cmd("USER alice\r\n", "+OK")
	c.cmd("PASS b\r\n", "-ERR [AUTH]")
	c.cmd("USER alice\r\n", "+OK")
	c.cmd("PASS c\r\n", "-ERR [AUTH] Authentication failed.")
	if got := c.line(); !strings.Contains(got, "Too many authentication failures") {
		t.Fatalf("%q", got)
	}
	<-r.results

	c = dial(t, r.ln.Addr().String())
	c.cmd("FOO\r\n", "-ERR Unknown")
	c.cmd(strings.Repeat("x", 9000)+"\r\n", "-ERR Line too long")
	c.cmd("\x01\x02\r\n", "-ERR Unknown")
	c.cmd("NOOP\r\n", "-ERR")
	c.cmd("STLS\r\n", "-ERR STLS not available")
	if got := c.line(); !strings.HasPrefix(got, "-ERR Too many invalid commands") {
		t.Fatalf("%q", got)
	}
	<-r.results
}

func TestStartTLSPolicyAndInjection(t *testing.T) {
	cfg := &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
	fb := newFakeBackend(t, "USER\r\n")
	r := newRig(t, fb.ln.Addr().(*net.TCPAddr).Port, routing.ForwardNone, listener(routing.TLSStartTLS, cfg, false))
	c := dial(t, r.ln.Addr().String())
	c.cmd("CAPA\r\n", "+OK")
	if caps := strings.Join(c.multiline(), ","); strings.Contains(caps, "USER") || !strings.Contains(caps, "STLS") {
		t.Fatalf("capa before TLS %q", caps)
	}
	c.cmd("USER alice\r\n", "-ERR [AUTH] Plaintext")
	c.cmd("AUTH PLAIN\r\n", "-ERR [AUTH] Plaintext")
	// Injection: a command behind STLS must not run.
	c.cmd("STLS\r\nUSER alice\r\n", "+OK Begin TLS")
	if rest, _ := io.ReadAll(c.br); strings.Contains(string(rest), "+OK") {
		t.Fatalf("injected command answered: %q", rest)
	}
	<-r.results

	c = dial(t, r.ln.Addr().String())
	c.cmd("STLS\r\n", "+OK")
	tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true})
	tcl := &client{t: t, c: tc, br: bufio.NewReader(tc)}
	tcl.cmd("CAPA\r\n", "+OK")
	if caps := strings.Join(tcl.multiline(), ","); !strings.Contains(caps, "USER") || strings.Contains(caps, "STLS") {
		t.Fatalf("capa after TLS %q", caps)
	}
	tcl.cmd("USER alice\r\n", "+OK")
	tcl.cmd("PASS secret\r\n", "+OK Logged in.")
	<-r.results
	<-r.pending
}

func TestBackendUnavailableAndGarbage(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	r := newRig(t, port, routing.ForwardNone, listener(routing.TLSNone, nil, true))
	c := dial(t, r.ln.Addr().String())
	c.cmd("USER alice\r\n", "+OK")
	c.cmd("PASS secret\r\n", "-ERR [SYS/TEMP]")
	c.cmd("QUIT\r\n", "+OK")
	<-r.results

	// A backend that sends binary garbage without line ends.
	g, _ := net.Listen("tcp", "127.0.0.1:0")
	gdone := make(chan struct{})
	defer func() { g.Close(); <-gdone }()
	go func() {
		defer close(gdone)
		c, err := g.Accept()
		if err == nil {
			c.Write([]byte(strings.Repeat("\x00\xff garbage", 2000)))
			io.Copy(io.Discard, c) // until the proxy gives up and closes
			c.Close()
		}
	}()
	lis := listener(routing.TLSNone, nil, true)
	lis.Limits.BackendTimeout = 500 * time.Millisecond
	r2 := newRig(t, g.Addr().(*net.TCPAddr).Port, routing.ForwardNone, lis)
	c = dial(t, r2.ln.Addr().String())
	c.cmd("USER alice\r\n", "+OK")
	c.cmd("PASS secret\r\n", "-ERR [SYS/TEMP]")
	c.cmd("QUIT\r\n", "+OK")
	<-r2.results
}

func selfSigned(t testing.TB) tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

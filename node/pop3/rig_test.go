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
	"encoding/base64"
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

var discardLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// ---- fake backend ----

// fakeBackend is a small scripted POP3 server.
type fakeBackend struct {
	Greeting     string            // default "+OK fake ready"
	Capa         []string          // default USER and SASL PLAIN; STLS is added when TLS is set
	NoCapa       bool              // answer CAPA with -ERR
	TLS          *tls.Config       // offer STLS
	Users        map[string]string // default alice/secret, bob/"my secret pw"
	AuthReply    string            // if set, the answer to every PASS / AUTH
	XCLIENTReply string            // default "+OK Updated"
	Mode         string            // "" (normal), "silent", "garbage"
	// Tokens maps bearer tokens to their user: AUTH OAUTHBEARER and
	// XOAUTH2 log in with a token of the user the message names, and
	// anything else gets the error challenge, then -ERR.
	Tokens map[string]string

	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	n     int      // connections accepted
	lines []string // received lines, "tls: " prefixed under TLS
}

func startBackend(t *testing.T, fb *fakeBackend) *fakeBackend {
	t.Helper()
	if fb.Greeting == "" {
		fb.Greeting = "+OK fake ready"
	}
	if fb.Capa == nil {
		fb.Capa = []string{"USER", "SASL PLAIN"}
	}
	if fb.Users == nil {
		fb.Users = map[string]string{"alice": "secret", "bob": "my secret pw"}
	}
	if fb.XCLIENTReply == "" {
		fb.XCLIENTReply = "+OK Updated"
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fb.ln, fb.conns = ln, map[net.Conn]struct{}{}
	fb.wg.Add(1)
	go func() {
		defer fb.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fb.mu.Lock()
			fb.n++
			fb.conns[c] = struct{}{}
			fb.mu.Unlock()
			fb.wg.Add(1)
			go func() {
				defer fb.wg.Done()
				fb.serve(c)
				fb.mu.Lock()
				delete(fb.conns, c)
				fb.mu.Unlock()
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		fb.mu.Lock()
		for c := range fb.conns {
			c.Close()
		}
		fb.mu.Unlock()
		fb.wg.Wait()
	})
	return fb
}

func (fb *fakeBackend) port() int { return fb.ln.Addr().(*net.TCPAddr).Port }

func (fb *fakeBackend) received() []string {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return append([]string(nil), fb.lines...)
}

func (fb *fakeBackend) connections() int {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return fb.n
}

func (fb *fakeBackend) serve(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	switch fb.Mode {
	case "silent":
		_, _ = io.Copy(io.Discard, c)
		return
	case "garbage":
		_, _ = c.Write([]byte(strings.Repeat("\x00\xff garbage", 2000)))
		_, _ = io.Copy(io.Discard, c)
		return
	}
	var conn net.Conn = c
	br := bufio.NewReader(conn)
	send := func(s string) { _, _ = io.WriteString(conn, s+"\r\n") }
	send(fb.Greeting)
	isTLS, user := false, ""
	check := func(u, p string) {
		switch {
		case fb.AuthReply != "":
			send(fb.AuthReply)
		case u != "" && fb.Users[u] == p:
			send("+OK Logged in.")
		default:
			send("-ERR [AUTH] Authentication failed.")
		}
	}
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return
		}
		l = strings.TrimRight(l, "\r\n")
		fb.mu.Lock()
		if isTLS {
			fb.lines = append(fb.lines, "tls: "+l)
		} else {
			fb.lines = append(fb.lines, l)
		}
		fb.mu.Unlock()
		cmd, arg, _ := strings.Cut(l, " ")
		switch strings.ToUpper(cmd) {
		case "CAPA":
			if fb.NoCapa {
				send("-ERR Unknown command.")
				continue
			}
			send("+OK")
			for _, c := range fb.Capa {
				send(c)
			}
			if fb.TLS != nil && !isTLS {
				send("STLS")
			}
			send(".")
		case "STLS":
			if fb.TLS == nil || isTLS {
				send("-ERR no")
				continue
			}
			send("+OK Begin TLS negotiation now.")
			tc := tls.Server(c, fb.TLS)
			if tc.Handshake() != nil {
				return
			}
			conn, br, isTLS, user = tc, bufio.NewReader(tc), true, ""
		case "XCLIENT":
			send(fb.XCLIENTReply)
		case "AUTH":
			mech, ir, _ := strings.Cut(arg, " ")
			if mech = strings.ToUpper(mech); mech == "OAUTHBEARER" || mech == "XOAUTH2" {
				if ir == "" {
					send("+ ")
					if ir, err = br.ReadString('\n'); err != nil {
						return
					}
					ir = strings.TrimRight(ir, "\r\n")
					fb.mu.Lock()
					fb.lines = append(fb.lines, ir)
					fb.mu.Unlock()
				}
				dec, _ := base64.StdEncoding.DecodeString(ir)
				if m, err := session.ParseBearer(mech, dec); err == nil && fb.Tokens[m.Token] == m.User {
					send("+OK Logged in.")
					continue
				}
				send("+ " + base64.StdEncoding.EncodeToString([]byte(`{"status":"invalid_token"}`)))
				d, err := br.ReadString('\n')
				if err != nil {
					return
				}
				fb.mu.Lock()
				fb.lines = append(fb.lines, strings.TrimRight(d, "\r\n"))
				fb.mu.Unlock()
				send("-ERR [AUTH] Authentication failed.")
				continue
			}
			dec, err := base64.StdEncoding.DecodeString(ir)
			parts := strings.Split(string(dec), "\x00")
			if !strings.EqualFold(mech, "PLAIN") || err != nil || len(parts) != 3 {
				send("-ERR [AUTH] Invalid")
				continue
			}
			check(parts[1], parts[2])
		case "USER":
			user = arg
			send("+OK")
		case "PASS":
			check(user, arg)
		case "STAT":
			send("+OK 0 0")
		case "QUIT":
			send("+OK bye")
			return
		default:
			send("-ERR Unknown command.")
		}
	}
}

// ---- proxy rig ----

// result is what one Serve call produced.
type result struct {
	ho      *session.Handoff
	end     session.End
	pending []byte // client bytes read ahead at the hand-off
}

// rig runs the handler on a TCP listener. After a hand-off it optionally
// relays bytes both ways (a stand-in for node/relay).
type rig struct {
	t       *testing.T
	ln      net.Listener
	lis     *session.Listener
	env     *session.Env
	h       *Handler
	relay   bool
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	results chan result

	mu     sync.Mutex
	events []session.LoginEvent
}

func testListener(mode routing.TLSMode, cfg *tls.Config, allowPlain bool) *session.Listener {
	lim := session.DefaultLimits(routing.POP3)
	lim.AuthFailureDelay = 10 * time.Millisecond
	lim.BackendTimeout = 3 * time.Second
	return &session.Listener{Name: "t", Protocol: routing.POP3, TLS: mode, TLSConfig: cfg, AllowPlaintextAuth: allowPlain, Limits: lim}
}

// backendAt is a backend entry for a fake backend (or any port).
func backendAt(port int, forward routing.ForwardMode) routing.Backend {
	return routing.Backend{ID: "b1", Host: "127.0.0.1", POP3Port: port, Forward: forward}
}

// newRig routes every user to the given backends; with none, no user has
// a route.
func newRig(t *testing.T, lis *session.Listener, opts Options, backends ...routing.Backend) *rig {
	t.Helper()
	spec := routing.TableSpec{Backends: backends}
	if len(backends) > 0 {
		spec.Pools = []routing.Pool{{Name: "p", Backends: []string{backends[0].ID}}}
		spec.DefaultPool = "p"
	}
	tbl, err := routing.NewTable(spec)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, ln: ln, lis: lis, h: New(opts), results: make(chan result, 16)}
	r.env = &session.Env{
		Director: session.RouteDirector{Router: routing.NewStatic(tbl)},
		Dialer:   &session.Dialer{}, Log: discardLog,
		OnLogin: func(_ *session.Client, ev session.LoginEvent) {
			r.mu.Lock()
			r.events = append(r.events, ev)
			r.mu.Unlock()
		},
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
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
				r.serve(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		r.cancel()
		r.wg.Wait()
	})
	return r
}

func (r *rig) serve(tc *net.TCPConn) {
	nc, err := netx.NewConn(tc, nil)
	if err != nil {
		tc.Close()
		return
	}
	cl := &session.Client{
		ID: "SID1", Listener: r.lis, Env: r.env, Stream: netx.NewStream(nc),
		Remote: netip.MustParseAddrPort("198.51.100.7:4242"), Local: netip.MustParseAddrPort("192.0.2.1:110"),
		Peer: tc.RemoteAddr().(*net.TCPAddr).AddrPort(), Log: discardLog, Started: time.Now(),
	}
	ho, end := r.h.Serve(r.ctx, cl)
	res := result{ho: ho, end: end}
	if ho != nil {
		res.pending = cl.Stream.Detach()
		toClient := ho.Backend.Detach()
		if r.relay {
			relayBoth(cl.Stream.NetConn(), ho.Backend.NetConn(), res.pending, toClient)
		}
		_ = ho.Backend.Close()
	}
	_ = cl.Stream.Close()
	r.results <- res
}

// relayBoth copies both ways until either side ends.
func relayBoth(c, b net.Conn, toB, toC []byte) {
	_, _ = b.Write(toB)
	_, _ = c.Write(toC)
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(b, c)
		b.Close()
		close(done)
	}()
	_, _ = io.Copy(c, b)
	c.Close()
	<-done
}

func (r *rig) addr() string { return r.ln.Addr().String() }

func (r *rig) result() result {
	r.t.Helper()
	select {
	case res := <-r.results:
		return res
	case <-time.After(10 * time.Second):
		r.t.Fatal("no result from Serve")
		return result{}
	}
}

func (r *rig) loginEvents() []session.LoginEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]session.LoginEvent(nil), r.events...)
}

// ---- test client ----

type client struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

// dial connects and reads the greeting.
func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	cl := &client{t: t, c: c, br: bufio.NewReader(c)}
	if g := cl.line(); !strings.HasPrefix(g, "+OK ") {
		t.Fatalf("greeting %q", g)
	}
	return cl
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *client) line() string {
	c.t.Helper()
	s, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (%q)", err, s)
	}
	return s
}

// cmd sends a line (CRLF added) and checks the reply starts with want.
func (c *client) cmd(send, want string) string {
	c.t.Helper()
	c.send(send + "\r\n")
	return c.expect(want)
}

func (c *client) expect(want string) string {
	c.t.Helper()
	got := c.line()
	if !strings.HasPrefix(got, want) {
		c.t.Fatalf("got %q, want prefix %q", got, want)
	}
	return got
}

func (c *client) multiline() []string {
	c.t.Helper()
	var out []string
	for {
		l := strings.TrimSuffix(c.line(), "\r\n")
		if l == "." {
			return out
		}
		out = append(out, l)
	}
}

// eof checks the server closed the connection without saying more.
func (c *client) eof() {
	c.t.Helper()
	rest, err := io.ReadAll(c.br)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		c.t.Fatalf("waiting for close: %v", err)
	}
	if len(rest) > 0 {
		c.t.Fatalf("unexpected data before close: %q", rest)
	}
}

func selfSigned(t testing.TB) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func plainIR(authz, user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(authz + "\x00" + user + "\x00" + pass))
}

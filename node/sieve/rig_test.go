package sieve

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
	"strconv"
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

// fakeBackend is a small scripted ManageSieve server.
type fakeBackend struct {
	Caps      []string          // capability lines; default IMPLEMENTATION, SASL "PLAIN"
	TLS       *tls.Config       // offer STARTTLS
	XCLIENT   bool              // announce XCLIENT
	Users     map[string]string // default alice/secret
	AuthReply string            // if set, the answer to every AUTHENTICATE
	// Tokens maps bearer tokens to their user: AUTHENTICATE "OAUTHBEARER"
	// and "XOAUTH2" log in with a token of the user the message names,
	// and anything else gets the error challenge (a literal when
	// LiteralChallenge), then NO.
	Tokens           map[string]string
	LiteralChallenge bool

	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	lines []string // received lines, "tls: " prefixed under TLS
}

func startBackend(t *testing.T, fb *fakeBackend) *fakeBackend {
	t.Helper()
	if fb.Caps == nil {
		fb.Caps = []string{`"IMPLEMENTATION" "fake"`, `"SASL" "PLAIN"`, `"VERSION" "1.0"`}
	}
	if fb.Users == nil {
		fb.Users = map[string]string{"alice": "secret"}
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

func (fb *fakeBackend) serve(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var conn net.Conn = c
	br := bufio.NewReader(conn)
	send := func(s string) { _, _ = io.WriteString(conn, s+"\r\n") }
	isTLS := false
	caps := func() {
		for _, l := range fb.Caps {
			send(l)
		}
		if fb.TLS != nil && !isTLS {
			send(`"STARTTLS"`)
		}
		if fb.XCLIENT {
			send(`"XCLIENT"`)
		}
	}
	caps()
	send(`OK "fake ready."`)
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return
		}
		l = strings.TrimRight(l, "\r\n")
		// Read a literal the line announces (the AUTHENTICATE response).
		if n, ok := trailingLiteral([]byte(l)); ok {
			b := make([]byte, n)
			if _, err := io.ReadFull(br, b); err != nil {
				return
			}
			rest, _ := br.ReadString('\n')
			l = l[:strings.LastIndexByte(l, '{')] + strconv.Quote(string(b)) + strings.TrimRight(rest, "\r\n")
		}
		fb.mu.Lock()
		if isTLS {
			fb.lines = append(fb.lines, "tls: "+l)
		} else {
			fb.lines = append(fb.lines, l)
		}
		fb.mu.Unlock()
		cmd, arg, _ := strings.Cut(l, " ")
		switch strings.ToUpper(cmd) {
		case "STARTTLS":
			send(`OK "Begin TLS negotiation now."`)
			tc := tls.Server(c, fb.TLS)
			if tc.Handshake() != nil {
				return
			}
			conn, br, isTLS = tc, bufio.NewReader(tc), true
			caps()
			send(`OK "TLS negotiation successful."`)
		case "XCLIENT":
			send(`OK "Updated"`)
		case "AUTHENTICATE":
			if fb.AuthReply != "" {
				send(fb.AuthReply)
				continue
			}
			mech, ir, _ := strings.Cut(arg, " ")
			ir, _ = strconv.Unquote(ir)
			if m, _ := strconv.Unquote(mech); m == "OAUTHBEARER" || m == "XOAUTH2" {
				dec, _ := base64.StdEncoding.DecodeString(ir)
				if bm, err := session.ParseBearer(m, dec); err == nil && fb.Tokens[bm.Token] == bm.User {
					send(`OK "Logged in."`)
					continue
				}
				ch := base64.StdEncoding.EncodeToString([]byte(`{"status":"invalid_token"}`))
				if fb.LiteralChallenge {
					send("{" + strconv.Itoa(len(ch)) + "}")
					send(ch)
				} else {
					send(`"` + ch + `"`)
				}
				d, err := br.ReadString('\n')
				if err != nil {
					return
				}
				fb.mu.Lock()
				fb.lines = append(fb.lines, strings.TrimRight(d, "\r\n"))
				fb.mu.Unlock()
				send(`NO "Authentication failed."`)
				continue
			}
			dec, err := base64.StdEncoding.DecodeString(ir)
			parts := strings.Split(string(dec), "\x00")
			if mech != `"PLAIN"` || err != nil || len(parts) != 3 || fb.Users[parts[1]] != parts[2] || parts[1] == "" {
				send(`NO "Authentication failed."`)
				continue
			}
			send(`OK "Logged in."`)
		case "LISTSCRIPTS":
			send(`"a" ACTIVE`)
			send(`{3}`)
			_, _ = io.WriteString(conn, "b\"c\r\n")
			send(`OK "Listscripts completed."`)
		case "LOGOUT":
			send(`OK "Logout completed."`)
			return
		default:
			send(`NO "Unknown command."`)
		}
	}
}

// ---- proxy rig ----

type result struct {
	ho      *session.Handoff
	end     session.End
	pending []byte
}

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
}

func testListener(mode routing.TLSMode, cfg *tls.Config, allowPlain bool) *session.Listener {
	lim := session.DefaultLimits(routing.Sieve)
	lim.AuthFailureDelay = 10 * time.Millisecond
	lim.BackendTimeout = 3 * time.Second
	lim.MaxLine = 1024
	lim.MaxLiteral = 1024
	return &session.Listener{Name: "t", Protocol: routing.Sieve, TLS: mode, TLSConfig: cfg, AllowPlaintextAuth: allowPlain, Limits: lim}
}

func backendAt(port int, forward routing.ForwardMode) routing.Backend {
	return routing.Backend{ID: "b1", Host: "127.0.0.1", SievePort: port, Forward: forward}
}

func newRig(t *testing.T, lis *session.Listener, backends ...routing.Backend) *rig {
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
	r := &rig{t: t, ln: ln, lis: lis, h: New(Options{}), results: make(chan result, 16)}
	r.env = &session.Env{
		Director: session.RouteDirector{Router: routing.NewStatic(tbl)},
		Dialer:   &session.Dialer{}, Log: discardLog,
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
		Remote: netip.MustParseAddrPort("198.51.100.7:4242"), Local: netip.MustParseAddrPort("192.0.2.1:4190"),
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

// ---- test client ----

type client struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

// dial connects and reads the greeting's capabilities up to its OK.
func dial(t *testing.T, addr string) (*client, []string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	cl := &client{t: t, c: c, br: bufio.NewReader(c)}
	caps, ok := cl.response()
	if !strings.HasPrefix(ok, "OK ") {
		t.Fatalf("greeting ended with %q", ok)
	}
	return cl, caps
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
	return strings.TrimRight(s, "\r\n")
}

// response reads lines up to a status line; it returns the lines before
// it and the status line.
func (c *client) response() ([]string, string) {
	c.t.Helper()
	var data []string
	for {
		l := c.line()
		if isStatus([]byte(l)) {
			return data, l
		}
		data = append(data, l)
	}
}

// cmd sends a line (CRLF added) and checks the status line starts with
// want.
func (c *client) cmd(send, want string) ([]string, string) {
	c.t.Helper()
	c.send(send + "\r\n")
	return c.expect(want)
}

func (c *client) expect(want string) ([]string, string) {
	c.t.Helper()
	data, st := c.response()
	if !strings.HasPrefix(st, want) {
		c.t.Fatalf("got %q (after %q), want prefix %q", st, data, want)
	}
	return data, st
}

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

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

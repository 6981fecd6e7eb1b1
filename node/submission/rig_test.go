package submission

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
	"fmt"
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

// fakeBackend is a small scripted submission server: EHLO, STARTTLS,
// XCLIENT (when announced), AUTH PLAIN, and after login MAIL, RCPT, DATA,
// BDAT, RSET, NOOP, QUIT with the messages kept.
type fakeBackend struct {
	Ext       []string          // EHLO extensions; default PIPELINING, 8BITMIME, CHUNKING, AUTH PLAIN LOGIN
	TLS       *tls.Config       // offer STARTTLS
	XCLIENT   string            // if set, announce "XCLIENT <this>"
	Users     map[string]string // default alice/secret
	AuthReply string            // if set, the answer to every AUTH
	// Tokens maps bearer tokens to their user: AUTH OAUTHBEARER and
	// XOAUTH2 log in with a token of the user the message names, anything
	// else gets the error challenge, then 535.
	Tokens   map[string]string
	Greeting string // default "220 fake ESMTP"

	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	lines []string // received command lines, "tls: " prefixed under TLS
	msgs  []string // message contents received (DATA, BDAT)
}

func startBackend(t *testing.T, fb *fakeBackend) *fakeBackend {
	t.Helper()
	if fb.Ext == nil {
		fb.Ext = []string{"PIPELINING", "8BITMIME", "CHUNKING", "AUTH PLAIN LOGIN"}
	}
	if fb.Users == nil {
		fb.Users = map[string]string{"alice": "secret"}
	}
	if fb.Greeting == "" {
		fb.Greeting = "220 fake ESMTP"
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

func (fb *fakeBackend) messages() []string {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return append([]string(nil), fb.msgs...)
}

func (fb *fakeBackend) serve(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	var conn net.Conn = c
	br := bufio.NewReader(conn)
	bw := bufio.NewWriter(conn)
	send := func(s string) { _, _ = bw.WriteString(s + "\r\n") }
	flush := func() { _ = bw.Flush() }
	isTLS, authed, ok := false, false, false
	var chunks strings.Builder
	ehlo := func(name string) {
		lines := []string{"fake greets " + name}
		lines = append(lines, fb.Ext...)
		if fb.TLS != nil && !isTLS {
			lines = append(lines, "STARTTLS")
		}
		if fb.XCLIENT != "" {
			lines = append(lines, "XCLIENT "+fb.XCLIENT)
		}
		for i, l := range lines {
			sep := "-"
			if i == len(lines)-1 {
				sep = " "
			}
			send("250" + sep + l)
		}
	}
	send(fb.Greeting)
	flush()
	for {
		if br.Buffered() == 0 {
			flush()
		}
		l, err := br.ReadString('\n')
		if err != nil {
			flush()
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
		verb, arg, _ := strings.Cut(l, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			ehlo(arg)
		case "STARTTLS":
			send("220 2.0.0 Ready to start TLS")
			flush()
			tc := tls.Server(c, fb.TLS)
			if tc.Handshake() != nil {
				return
			}
			conn, isTLS = tc, true
			br, bw = bufio.NewReader(tc), bufio.NewWriter(tc)
		case "XCLIENT":
			if fb.XCLIENT == "" {
				send("550 5.7.0 Error: insufficient authorization")
				continue
			}
			if strings.Contains(arg, "LOGIN=") {
				authed = true
			}
			send(fb.Greeting)
		case "AUTH":
			if fb.AuthReply != "" {
				send(fb.AuthReply)
				continue
			}
			mech, ir, _ := strings.Cut(arg, " ")
			if mech == "OAUTHBEARER" || mech == "XOAUTH2" {
				readLine := func() (string, bool) {
					flush()
					l, err := br.ReadString('\n')
					if err != nil {
						return "", false
					}
					l = strings.TrimRight(l, "\r\n")
					fb.mu.Lock()
					fb.lines = append(fb.lines, l)
					fb.mu.Unlock()
					return l, true
				}
				if ir == "" {
					send("334 ")
					if ir, ok = readLine(); !ok {
						return
					}
				}
				dec, _ := base64.StdEncoding.DecodeString(ir)
				if m, err := session.ParseBearer(mech, dec); err == nil && fb.Tokens[m.Token] == m.User {
					authed = true
					send("235 2.7.0 Authentication successful")
					continue
				}
				send("334 " + base64.StdEncoding.EncodeToString([]byte(`{"status":"invalid_token"}`)))
				if _, ok = readLine(); !ok {
					return
				}
				send("535 5.7.8 Error: authentication failed: invalid token")
				continue
			}
			dec, err := base64.StdEncoding.DecodeString(ir)
			parts := strings.Split(string(dec), "\x00")
			if mech != "PLAIN" || err != nil || len(parts) != 3 || parts[1] == "" || fb.Users[parts[1]] != parts[2] {
				send("535 5.7.8 Error: authentication failed: bad credentials")
				continue
			}
			authed = true
			send("235 2.7.0 Authentication successful")
		case "MAIL":
			if !authed {
				send("530 5.7.0 Authentication required")
				continue
			}
			send("250 2.1.0 Ok")
		case "RCPT":
			send("250 2.1.5 Ok")
		case "DATA":
			send("354 End data with <CR><LF>.<CR><LF>")
			flush()
			var msg strings.Builder
			for {
				dl, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if dl == ".\r\n" {
					break
				}
				msg.WriteString(strings.TrimPrefix(dl, "."))
			}
			fb.mu.Lock()
			fb.msgs = append(fb.msgs, msg.String())
			fb.mu.Unlock()
			send("250 2.0.0 Ok: queued")
		case "BDAT":
			a := strings.Fields(arg)
			n, _ := strconv.Atoi(a[0])
			buf := make([]byte, n)
			if _, err := io.ReadFull(br, buf); err != nil {
				return
			}
			chunks.Write(buf)
			if len(a) > 1 {
				fb.mu.Lock()
				fb.msgs = append(fb.msgs, chunks.String())
				fb.mu.Unlock()
				chunks.Reset()
				send("250 2.0.0 Ok: queued")
			} else {
				send(fmt.Sprintf("250 2.0.0 Ok: %d bytes", n))
			}
		case "RSET", "NOOP":
			send("250 2.0.0 Ok")
		case "QUIT":
			send("221 2.0.0 Bye")
			flush()
			return
		default:
			send("502 5.5.2 Error: command not recognized")
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
	lim := session.DefaultLimits(routing.Submission)
	lim.AuthFailureDelay = 10 * time.Millisecond
	lim.BackendTimeout = 3 * time.Second
	lim.MaxLine = 1024
	lim.MaxLiteral = 1024
	return &session.Listener{Name: "t", Protocol: routing.Submission, TLS: mode, TLSConfig: cfg, AllowPlaintextAuth: allowPlain, Limits: lim}
}

func backendAt(port int, forward routing.ForwardMode) routing.Backend {
	return routing.Backend{ID: "b1", Host: "127.0.0.1", SubmissionPort: port, Forward: forward}
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
	r := &rig{t: t, ln: ln, lis: lis, h: New(Options{Hostname: "proxy.example"}), results: make(chan result, 16)}
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
		Remote: netip.MustParseAddrPort("198.51.100.7:4242"), Local: netip.MustParseAddrPort("192.0.2.1:587"),
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
	cl.expect("220 proxy.example ESMTP")
	return cl
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// reply reads one reply; it returns its lines (without CRLF).
func (c *client) reply() []string {
	c.t.Helper()
	var lines []string
	for {
		s, err := c.br.ReadString('\n')
		if err != nil {
			c.t.Fatalf("read: %v (%q after %q)", err, s, lines)
		}
		s = strings.TrimRight(s, "\r\n")
		lines = append(lines, s)
		if len(s) < 4 || s[3] != '-' {
			return lines
		}
	}
}

// cmd sends a line (CRLF added) and checks that the reply's last line
// starts with want.
func (c *client) cmd(send, want string) []string {
	c.t.Helper()
	c.send(send + "\r\n")
	return c.expect(want)
}

func (c *client) expect(want string) []string {
	c.t.Helper()
	r := c.reply()
	if !strings.HasPrefix(r[len(r)-1], want) {
		c.t.Fatalf("got %q, want prefix %q", r, want)
	}
	return r
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

// startTLS upgrades the client after a 220 to STARTTLS.
func (c *client) startTLS() {
	c.t.Helper()
	tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		c.t.Fatal(err)
	}
	c.c, c.br = tc, bufio.NewReader(tc)
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

func tlsServerConfig(t *testing.T) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
}

func plainIR(authz, user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(authz + "\x00" + user + "\x00" + pass))
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

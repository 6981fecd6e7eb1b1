// Package testrig is the test scaffolding the POP3, ManageSieve and
// submission front ends' tests share: a fake backend's listener and
// record of what it received (each protocol scripts its own dialogue), a
// proxy running a session.Handler on a loopback listener with a static
// routing table, and the plumbing of a test client (each protocol reads
// its own replies). Only tests import it.
package testrig

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

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// DiscardLog is a logger that writes nothing.
var DiscardLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// ---- fake backend ----

// Backend is a fake backend's listener on a loopback port: it accepts
// connections, runs the protocol's script on each (serve), records what
// the script says it received, and closes everything when the test ends.
type Backend struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	n     int      // connections accepted
	lines []string // recorded lines
}

// StartBackend listens and runs serve on each connection accepted until
// the test ends; serve returns when its dialogue is over and the
// connection is closed after it.
func StartBackend(t *testing.T, serve func(net.Conn)) *Backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{ln: ln, conns: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.n++
			b.conns[c] = struct{}{}
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				serve(c)
				b.mu.Lock()
				delete(b.conns, c)
				b.mu.Unlock()
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

// Port is the port the backend listens on.
func (b *Backend) Port() int { return b.ln.Addr().(*net.TCPAddr).Port }

// Close stops listening (a backend that went down); connections already
// accepted go on.
func (b *Backend) Close() { b.ln.Close() }

// Record notes a line the backend received.
func (b *Backend) Record(line string) {
	b.mu.Lock()
	b.lines = append(b.lines, line)
	b.mu.Unlock()
}

// Received returns the lines recorded so far.
func (b *Backend) Received() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.lines...)
}

// Connections is how many connections the backend accepted.
func (b *Backend) Connections() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}

// ---- proxy ----

// Listener is a listener of protocol p for tests: the protocol's default
// limits with a 10 ms failed-login delay and a 3 s backend timeout.
func Listener(p routing.Protocol, mode routing.TLSMode, cfg *tls.Config, allowPlain bool) *session.Listener {
	lim := session.DefaultLimits(p)
	lim.AuthFailureDelay = 10 * time.Millisecond
	lim.BackendTimeout = 3 * time.Second
	return &session.Listener{Name: "t", Protocol: p, TLS: mode, TLSConfig: cfg, AllowPlaintextAuth: allowPlain, Limits: lim}
}

// Result is what one Serve call produced.
type Result struct {
	Handoff *session.Handoff
	End     session.End
	Pending []byte // client bytes read ahead at the hand-off
}

// Proxy runs a session.Handler on a loopback listener, every user routed
// to the backends it was given. After a hand-off it relays bytes both
// ways if Relay is set (a stand-in for node/relay), then closes both
// connections and reports the Result.
type Proxy struct {
	Env     *session.Env
	Relay   bool
	Results chan Result
	// Cancel cancels the context of every session (a shutdown).
	Cancel context.CancelFunc

	t     *testing.T
	ln    net.Listener
	lis   *session.Listener
	h     session.Handler
	local netip.AddrPort
	ctx   context.Context
	wg    sync.WaitGroup

	mu     sync.Mutex
	events []session.LoginEvent
}

// NewProxy serves lis with h; sessions have the client address
// 198.51.100.7:4242 and the local address local. Every user is routed to
// the first of backends; with none, no user has a route.
func NewProxy(t *testing.T, lis *session.Listener, h session.Handler, local netip.AddrPort, backends ...routing.Backend) *Proxy {
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
	p := &Proxy{t: t, ln: ln, lis: lis, h: h, local: local, Results: make(chan Result, 16)}
	p.Env = &session.Env{
		Director: session.RouteDirector{Router: routing.NewStatic(tbl)},
		Dialer:   &session.Dialer{}, Log: DiscardLog,
		OnLogin: func(_ *session.Client, ev session.LoginEvent) {
			p.mu.Lock()
			p.events = append(p.events, ev)
			p.mu.Unlock()
		},
	}
	p.ctx, p.Cancel = context.WithCancel(context.Background())
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.serve(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.Cancel()
		p.wg.Wait()
	})
	return p
}

func (p *Proxy) serve(tc *net.TCPConn) {
	nc, err := netx.NewConn(tc, nil)
	if err != nil {
		tc.Close()
		return
	}
	cl := &session.Client{
		ID: "SID1", Listener: p.lis, Env: p.Env, Stream: netx.NewStream(nc),
		Remote: netip.MustParseAddrPort("198.51.100.7:4242"), Local: p.local,
		Peer: tc.RemoteAddr().(*net.TCPAddr).AddrPort(), Log: DiscardLog, Started: time.Now(),
	}
	ho, end := p.h.Serve(p.ctx, cl)
	res := Result{Handoff: ho, End: end}
	if ho != nil {
		res.Pending = cl.Stream.Detach()
		toClient := ho.Backend.Detach()
		if p.Relay {
			relayBoth(cl.Stream.NetConn(), ho.Backend.NetConn(), res.Pending, toClient)
		}
		_ = ho.Backend.Close()
	}
	_ = cl.Stream.Close()
	p.Results <- res
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

// Addr is the address the proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Result waits for the next session's Result.
func (p *Proxy) Result() Result {
	p.t.Helper()
	select {
	case res := <-p.Results:
		return res
	case <-time.After(10 * time.Second):
		p.t.Fatal("no result from Serve")
		return Result{}
	}
}

// LoginEvents returns the login events so far.
func (p *Proxy) LoginEvents() []session.LoginEvent {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]session.LoginEvent(nil), p.events...)
}

// LastEventErr returns the error of the last login event ("" if none).
func (p *Proxy) LastEventErr() string {
	ev := p.LoginEvents()
	if len(ev) == 0 || ev[len(ev)-1].Err == nil {
		return ""
	}
	return ev[len(ev)-1].Err.Error()
}

// ---- test client ----

// Client is a test client's connection; the protocol's tests read and
// check its replies.
type Client struct {
	T    *testing.T
	Conn net.Conn
	R    *bufio.Reader
}

// DialRaw connects to addr, with a 10 s deadline, closed when the test
// ends.
func DialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// Dial connects a Client to addr (DialRaw); it reads nothing.
func Dial(t *testing.T, addr string) *Client {
	t.Helper()
	c := DialRaw(t, addr)
	return &Client{T: t, Conn: c, R: bufio.NewReader(c)}
}

// Send writes s as it is.
func (c *Client) Send(s string) {
	c.T.Helper()
	if _, err := io.WriteString(c.Conn, s); err != nil {
		c.T.Fatalf("write: %v", err)
	}
}

// ReadLine reads one line, its CRLF included.
func (c *Client) ReadLine() string {
	c.T.Helper()
	s, err := c.R.ReadString('\n')
	if err != nil {
		c.T.Fatalf("read: %v (%q)", err, s)
	}
	return s
}

// EOF checks the server closed the connection without saying more.
func (c *Client) EOF() {
	c.T.Helper()
	rest, err := io.ReadAll(c.R)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		c.T.Fatalf("waiting for close: %v", err)
	}
	if len(rest) > 0 {
		c.T.Fatalf("unexpected data before close: %q", rest)
	}
}

// StartTLS upgrades the client's connection (after the server's yes to
// STARTTLS or STLS), trusting any certificate.
func (c *Client) StartTLS() {
	c.T.Helper()
	tc := tls.Client(c.Conn, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		c.T.Fatal(err)
	}
	c.Conn, c.R = tc, bufio.NewReader(tc)
}

// ---- credentials and certificates ----

// SelfSigned is a certificate for localhost and 127.0.0.1, valid for an
// hour either side of now.
func SelfSigned(t testing.TB) tls.Certificate {
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

// B64 is s in base64.
func B64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// PlainIR is a SASL PLAIN response in base64.
func PlainIR(authz, user, pass string) string { return B64(authz + "\x00" + user + "\x00" + pass) }

// OAuthBearer is an OAUTHBEARER client message in base64 (RFC 7628 §3.1).
func OAuthBearer(user, token string) string {
	return B64("n,a=" + user + ",\x01auth=Bearer " + token + "\x01\x01")
}

// XOAuth2 is an XOAUTH2 client message in base64.
func XOAuth2(user, token string) string {
	return B64("user=" + user + "\x01auth=Bearer " + token + "\x01\x01")
}

// TLSServerConfig serves a SelfSigned certificate.
func TLSServerConfig(t testing.TB) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{SelfSigned(t)}}
}

// ---- throttle ----

// Throttle is a session.Throttle that blocks every user (All) or those
// in Block, and records failed attempts, each answered with Delay.
type Throttle struct {
	All   bool
	Block map[string]bool
	Delay time.Duration

	mu     sync.Mutex
	failed []string // "address user"
}

// Begin implements session.Throttle.
func (f *Throttle) Begin(_ context.Context, ip netip.Addr, user string) (session.ThrottleAttempt, string) {
	if f.All || f.Block[user] {
		return nil, "ip"
	}
	return &throttleAttempt{f: f, ip: ip, user: user}, ""
}

// Failures returns the failed attempts recorded: "address user".
func (f *Throttle) Failures() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.failed...)
}

// throttleAttempt records how an attempt ended.
type throttleAttempt struct {
	f    *Throttle
	ip   netip.Addr
	user string
}

func (p *throttleAttempt) Failed() time.Duration {
	p.f.mu.Lock()
	defer p.f.mu.Unlock()
	p.f.failed = append(p.f.failed, p.ip.String()+" "+p.user)
	return p.f.Delay
}

func (p *throttleAttempt) Succeeded() {}

func (p *throttleAttempt) Release() {}

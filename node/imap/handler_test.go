package imap

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
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

// fakeBackend is a minimal scripted IMAP server.
type fakeBackend struct {
	ln       net.Listener
	greeting string
	password string
	mu       sync.Mutex
	lines    []string // every line received
	wg       sync.WaitGroup
}

func newFakeBackend(t *testing.T, greeting string) *fakeBackend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fb := &fakeBackend{ln: ln, greeting: greeting, password: "secret"}
	fb.wg.Add(1)
	go fb.serve()
	t.Cleanup(func() { ln.Close(); fb.wg.Wait() })
	return fb
}

func (fb *fakeBackend) port() int { return fb.ln.Addr().(*net.TCPAddr).Port }

func (fb *fakeBackend) received() string {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return strings.Join(fb.lines, "\n")
}

func (fb *fakeBackend) serve() {
	defer fb.wg.Done()
	for {
		c, err := fb.ln.Accept()
		if err != nil {
			return
		}
		fb.wg.Add(1)
		go func() {
			defer fb.wg.Done()
			defer c.Close()
			br := bufio.NewReader(c)
			io.WriteString(c, fb.greeting+"\r\n")
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				line = strings.TrimRight(line, "\r\n")
				fb.mu.Lock()
				fb.lines = append(fb.lines, line)
				fb.mu.Unlock()
				f := strings.Fields(line)
				if len(f) < 2 {
					continue
				}
				switch strings.ToUpper(f[1]) {
				case "CAPABILITY":
					io.WriteString(c, "* CAPABILITY IMAP4rev1 ID AUTH=PLAIN SASL-IR\r\n"+f[0]+" OK done\r\n")
				case "ID":
					io.WriteString(c, "* ID NIL\r\n"+f[0]+" OK ID done\r\n")
				case "AUTHENTICATE":
					if len(f) == 4 && f[3] == session.PlainResponse(session.Credentials{User: "alice", Password: fb.password}) {
						io.WriteString(c, f[0]+" OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
						continue
					}
					io.WriteString(c, f[0]+" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
				case "NOOP":
					io.WriteString(c, f[0]+" OK NOOP done\r\n")
				case "LOGOUT":
					io.WriteString(c, "* BYE bye\r\n"+f[0]+" OK done\r\n")
					return
				default:
					io.WriteString(c, f[0]+" BAD what\r\n")
				}
			}
		}()
	}
}

type rig struct {
	ln      net.Listener
	handler *Handler
	env     *session.Env
	lis     *session.Listener
	wg      sync.WaitGroup
	results chan *session.Handoff
	ctx     context.Context // the sessions'; cancel is a shutdown
	cancel  context.CancelFunc
	mu      sync.Mutex
	ends    []session.End // of the sessions that did not log in
}

// ended returns how the sessions that did not log in ended, so far.
func (r *rig) ended() []session.End {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]session.End(nil), r.ends...)
}

func newRig(t *testing.T, backendPort int, lis *session.Listener) *rig {
	return newRigEnv(t, backendPort, lis, nil)
}

// newRigEnv is newRig with setEnv changing the sessions' Env before the
// first connection.
func newRigEnv(t *testing.T, backendPort int, lis *session.Listener, setEnv func(*session.Env)) *rig {
	tbl, err := routing.NewTable(routing.TableSpec{
		Backends:    []routing.Backend{{ID: "b1", Host: "127.0.0.1", IMAPPort: backendPort, Forward: routing.ForwardID}},
		Pools:       []routing.Pool{{Name: "p", Backends: []string{"b1"}}},
		DefaultPool: "p",
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{ln: ln, handler: New(Options{}), lis: lis, results: make(chan *session.Handoff, 16),
		env: &session.Env{Director: session.RouteDirector{Router: routing.NewStatic(tbl)}, Dialer: &session.Dialer{},
			Log: slog.New(slog.NewTextHandler(io.Discard, nil))}}
	if setEnv != nil {
		setEnv(r.env)
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
				nc, _ := netx.NewConn(c.(*net.TCPConn), nil)
				cl := &session.Client{ID: "TEST", Listener: r.lis, Env: r.env, Stream: netx.NewStream(nc),
					Remote: netip.MustParseAddrPort("198.51.100.7:4242"), Local: netip.MustParseAddrPort("127.0.0.1:143"), Log: r.env.Log}
				h, end := r.handler.Serve(r.ctx, cl)
				if h != nil {
					h.Backend.Close()
				} else {
					r.mu.Lock()
					r.ends = append(r.ends, end)
					r.mu.Unlock()
				}
				cl.Stream.Close()
				r.results <- h
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); r.cancel(); r.wg.Wait() })
	return r
}

func listener(tlsMode routing.TLSMode, cfg *tls.Config, allowPlain bool) *session.Listener {
	lim := session.DefaultLimits(routing.IMAP)
	lim.AuthFailureDelay = 10 * time.Millisecond
	lim.BackendTimeout = 2 * time.Second
	return &session.Listener{Name: "t", Protocol: routing.IMAP, TLS: tlsMode, TLSConfig: cfg, AllowPlaintextAuth: allowPlain, Limits: lim}
}

// runDialogTail reads the rest of a dialogue (after runDialog, whose reader
// buffered nothing past its last line) and checks it is want, then the end.
func runDialogTail(t *testing.T, c net.Conn, want string) {
	t.Helper()
	rest, err := io.ReadAll(c)
	if err != nil || string(rest) != want+"\r\n" {
		t.Fatalf("got %q (%v), want %q then the end", rest, err, want)
	}
}

// dialog sends each client line and checks that the response (up to and
// including the tagged line, or a BYE) contains the wanted text.
type step struct{ send, want string }

func runDialog(t *testing.T, c net.Conn, steps []step) {
	t.Helper()
	br := bufio.NewReader(c)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	greet, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(greet, "* OK [CAPABILITY ") {
		t.Fatalf("greeting %q %v", greet, err)
	}
	for _, s := range steps {
		if s.send != "" {
			if _, err := io.WriteString(c, s.send); err != nil {
				t.Fatalf("send %q: %v", s.send, err)
			}
		}
		if s.want == "" {
			continue
		}
		var got strings.Builder
		for !strings.Contains(got.String(), s.want) {
			line, err := br.ReadString('\n')
			got.WriteString(line)
			if err != nil {
				t.Fatalf("after %q: want %q, got %q (%v)", s.send, s.want, got.String(), err)
			}
		}
	}
}

func TestLoginAndHandoff(t *testing.T) {
	fb := newFakeBackend(t, "* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN SASL-IR] fake")
	r := newRig(t, fb.port(), listener(routing.TLSNone, nil, true))
	c, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	runDialog(t, c, []step{
		{"a CAPABILITY\r\n", "a OK"},
		{"b ID (\"name\" \"test\" \"x-originating-ip\" \"6.6.6.6\")\r\n", "b OK"},
		{"c LOGIN alice wrong\r\n", "c NO [AUTHENTICATIONFAILED]"},
		{"d LOGIN {5}\r\n", "+ "},
		{"alice {6+}\r\nsecret\r\ne NOOP\r\n", "d OK [CAPABILITY IMAP4rev1 IDLE] Logged in"},
	})
	h := <-r.results
	if h == nil || h.User != "alice" || h.BackendID != "b1" {
		t.Fatalf("handoff %+v", h)
	}
	got := fb.received()
	if !strings.Contains(got, `"x-originating-ip" "198.51.100.7"`) || strings.Contains(got, "6.6.6.6") || !strings.Contains(got, `"name" "test"`) {
		t.Errorf("ID forwarded wrongly: %s", got)
	}
	if strings.Contains(got, "wrong") || strings.Contains(got, "secret") {
		t.Errorf("password sent in clear instead of SASL PLAIN: %s", got)
	}
}

func TestErrorsEndSession(t *testing.T) {
	fb := newFakeBackend(t, "* OK fake")
	r := newRig(t, fb.port(), listener(routing.TLSNone, nil, true))
	c, _ := net.Dial("tcp", r.ln.Addr().String())
	defer c.Close()
	runDialog(t, c, []step{
		{"a SELECT INBOX\r\n", "a BAD"},
		{"b FOO\r\n", "b BAD"},
		{"\"\r\n", "* BAD"},
		{"c LOGIN\r\n", "c BAD"},
		{"d " + strings.Repeat("x", 9000) + "\r\n", "BAD [TOOBIG]"},
		{"", "* BYE Too many invalid IMAP commands."},
	})
	if h := <-r.results; h != nil {
		t.Fatal("handoff after errors")
	}
	if e := r.ended(); len(e) != 1 || e[0].Reason != session.EndTooManyErrors || e[0].ProtocolErrors != 5 {
		t.Fatalf("ended %+v", e)
	}
}

// LOGOUT, and a non-synchronizing literal over the limit (the stream cannot
// be resynchronised): each ends the session for its reason.
func TestLogoutAndFatalLiteral(t *testing.T) {
	r := newRig(t, 1, listener(routing.TLSNone, nil, true))
	c, _ := net.Dial("tcp", r.ln.Addr().String())
	defer c.Close()
	runDialog(t, c, []step{
		{"a FOO\r\n", "a BAD"},
		{"b LOGOUT\r\n", "b OK Logout completed."},
	})
	<-r.results
	c, _ = net.Dial("tcp", r.ln.Addr().String())
	defer c.Close()
	runDialog(t, c, []step{
		{"a LOGIN alice {9000+}\r\n", "a BAD [TOOBIG] Literal too large."},
		{"", "* BYE Non-synchronizing literal too large."},
	})
	<-r.results
	e := r.ended()
	if len(e) != 2 || e[0].Reason != session.EndLogout || e[0].ProtocolErrors != 1 || e[0].Err != nil ||
		e[1].Reason != session.EndProtocolError || e[1].ProtocolErrors != 1 {
		t.Fatalf("ended %+v", e)
	}
}

// A shutdown or drain ends a session waiting for a command at once, with a
// BYE, through its context alone (nothing interrupts the connection from
// outside here): it does not linger until preauth_timeout.
func TestShutdownThroughContext(t *testing.T) {
	r := newRig(t, 1, listener(routing.TLSNone, nil, true))
	c, _ := net.Dial("tcp", r.ln.Addr().String())
	defer c.Close()
	runDialog(t, c, []step{{"a NOOP\r\n", "a OK"}})
	start := time.Now()
	r.cancel()
	runDialogTail(t, c, "* BYE [UNAVAILABLE] Server shutting down.")
	<-r.results
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("ended %v after the shutdown", d)
	}
	if e := r.ended(); len(e) != 1 || e[0].Reason != session.EndShutdown || e[0].State != session.StateCommand {
		t.Fatalf("ended %+v", e)
	}
}

func TestStartTLSRequiredAndInjection(t *testing.T) {
	cert := selfSigned(t)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	fb := newFakeBackend(t, "* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN SASL-IR] fake")
	r := newRig(t, fb.port(), listener(routing.TLSStartTLS, cfg, false))
	c, _ := net.Dial("tcp", r.ln.Addr().String())
	defer c.Close()
	br := bufio.NewReader(c)
	greet, _ := br.ReadString('\n')
	if !strings.Contains(greet, "STARTTLS") || !strings.Contains(greet, "LOGINDISABLED") || strings.Contains(greet, "AUTH=PLAIN") {
		t.Fatalf("greeting %q", greet)
	}
	io.WriteString(c, "a LOGIN alice secret\r\n")
	line, _ := br.ReadString('\n')
	if !strings.HasPrefix(line, "a NO [PRIVACYREQUIRED]") {
		t.Fatalf("plaintext login: %q", line)
	}
	// STARTTLS with a command injected behind it in the same packet.
	io.WriteString(c, "b STARTTLS\r\nc LOGIN alice secret\r\n")
	line, _ = br.ReadString('\n')
	if !strings.HasPrefix(line, "b OK") {
		t.Fatalf("starttls: %q", line)
	}
	// The injected bytes went into the TLS handshake, which fails: the
	// session ends without ever running the injected LOGIN.
	rest, _ := io.ReadAll(br)
	if strings.Contains(string(rest), "c OK") || strings.Contains(string(rest), "c NO") {
		t.Fatalf("injected command executed: %q", rest)
	}
	if h := <-r.results; h != nil {
		t.Fatal("handoff")
	}
	if strings.Contains(fb.received(), "AUTHENTICATE") {
		t.Fatal("backend saw a login")
	}
}

func TestStartTLSThenLogin(t *testing.T) {
	cert := selfSigned(t)
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	fb := newFakeBackend(t, "* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN SASL-IR] fake")
	r := newRig(t, fb.port(), listener(routing.TLSStartTLS, cfg, false))
	c, _ := net.Dial("tcp", r.ln.Addr().String())
	defer c.Close()
	br := bufio.NewReader(c)
	br.ReadString('\n')
	io.WriteString(c, "a STARTTLS\r\n")
	if line, _ := br.ReadString('\n'); !strings.HasPrefix(line, "a OK") {
		t.Fatal(line)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	tbr := bufio.NewReader(tc)
	io.WriteString(tc, "b CAPABILITY\r\n")
	capa, _ := tbr.ReadString('\n')
	if strings.Contains(capa, "STARTTLS") || strings.Contains(capa, "LOGINDISABLED") || !strings.Contains(capa, "AUTH=PLAIN") {
		t.Fatalf("capabilities after TLS: %q", capa)
	}
	tbr.ReadString('\n')
	// AUTHENTICATE PLAIN without initial response, then cancel, then with.
	io.WriteString(tc, "c AUTHENTICATE PLAIN\r\n")
	if line, _ := tbr.ReadString('\n'); line != "+ \r\n" {
		t.Fatalf("continuation %q", line)
	}
	io.WriteString(tc, "*\r\n")
	if line, _ := tbr.ReadString('\n'); !strings.HasPrefix(line, "c BAD") {
		t.Fatalf("cancel %q", line)
	}
	io.WriteString(tc, "d AUTHENTICATE PLAIN\r\n")
	tbr.ReadString('\n')
	io.WriteString(tc, session.PlainResponse(session.Credentials{User: "alice", Password: "secret"})+"\r\n")
	if line, _ := tbr.ReadString('\n'); !strings.HasPrefix(line, "d OK [CAPABILITY") {
		t.Fatalf("login %q", line)
	}
	if h := <-r.results; h == nil {
		t.Fatal("no handoff")
	}
}

func TestBackendUnavailable(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close() // nothing listens there now
	r := newRig(t, port, listener(routing.TLSNone, nil, true))
	c, _ := net.Dial("tcp", r.ln.Addr().String())
	defer c.Close()
	runDialog(t, c, []step{
		{"a LOGIN alice secret\r\n", "a NO [UNAVAILABLE]"},
		{"b NOOP\r\n", "b OK"},
		{"c LOGOUT\r\n", "c OK"},
	})
	<-r.results
}

func TestBackendSilent(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c) // never answers
		}
	}()
	lis := listener(routing.TLSNone, nil, true)
	lis.Limits.BackendTimeout = 300 * time.Millisecond
	r := newRig(t, ln.Addr().(*net.TCPAddr).Port, lis)
	c, _ := net.Dial("tcp", r.ln.Addr().String())
	defer c.Close()
	start := time.Now()
	runDialog(t, c, []step{{"a LOGIN alice secret\r\n", "a NO [UNAVAILABLE]"}, {"b LOGOUT\r\n", "b OK"}})
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("took %v", d)
	}
	<-r.results
}

func TestTooManyAuthFailures(t *testing.T) {
	fb := newFakeBackend(t, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] fake")
	r := newRig(t, fb.port(), listener(routing.TLSNone, nil, true))
	c, _ := net.Dial("tcp", r.ln.Addr().String())
	defer c.Close()
	runDialog(t, c, []step{
		{"a LOGIN alice x\r\n", "a NO"},
		{"b LOGIN alice y\r\n", "b NO"},
		{"c LOGIN alice z\r\n", "* BYE Too many authentication failures."},
	})
	<-r.results
	if e := r.ended(); len(e) != 1 || e[0].Reason != session.EndTooManyAuthFailures || e[0].State != session.StateLogin {
		t.Fatalf("ended %+v", e)
	}
}

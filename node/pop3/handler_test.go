package pop3

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

func TestGreetingAndCAPA(t *testing.T) {
	r := newRig(t, testListener(routing.TLSNone, nil, true), Options{Greeting: "Hello there."})
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	cl := &client{&testrig.Client{T: t, Conn: c, R: bufio.NewReader(c)}}
	cl.expect("+OK Hello there.\r\n")
	cl.cmd("capa", "+OK")
	want := "USER,SASL PLAIN LOGIN,RESP-CODES,AUTH-RESP-CODE,PIPELINING,IMPLEMENTATION Portico"
	if got := strings.Join(cl.multiline(), ","); got != want {
		t.Fatalf("CAPA %q, want %q", got, want)
	}
	cl.cmd("AUTH", "+OK")
	if m := strings.Join(cl.multiline(), " "); m != "PLAIN LOGIN" {
		t.Fatalf("AUTH list %q", m)
	}
	cl.cmd("QUIT", "+OK Logging out.")
	cl.EOF()
	if res := r.Result(); res.Handoff != nil || res.End.Reason != session.EndLogout || res.End.Err != nil {
		t.Fatalf("QUIT: %+v", res)
	}
}

func TestUserPassRetryAndHandoff(t *testing.T) {
	fb := startBackend(t, &fakeBackend{Capa: []string{"USER"}})
	r := newRig(t, testListener(routing.TLSNone, nil, true), Options{}, backendAt(fb.Port(), routing.ForwardNone))
	r.Relay = true
	c := dial(t, r.Addr())
	c.cmd("PASS secret", "-ERR USER first.")
	c.cmd("USER", "-ERR USER needs a user name.")
	c.cmd("USER alice", "+OK")
	// The backend's refusal is passed through.
	c.cmd("PASS wrong", "-ERR [AUTH] Authentication failed.\r\n")
	c.cmd("PASS secret", "-ERR USER first.") // USER does not survive a PASS
	c.cmd("user alice", "+OK")
	// Commands pipelined after PASS belong to the backend: they stay in
	// the buffer for the relay, never run by the proxy.
	c.Send("PASS secret\r\nSTAT\r\n")
	c.expect("+OK Logged in.\r\n")
	c.expect("+OK 0 0\r\n")
	c.cmd("QUIT", "+OK bye")
	res := r.Result()
	if res.Handoff == nil || res.Handoff.User != "alice" || res.Handoff.BackendID != "b1" || string(res.Pending) != "STAT\r\n" {
		t.Fatalf("handoff %+v pending %q end %+v", res.Handoff, res.Pending, res.End)
	}
	got := strings.Join(fb.Received(), "|")
	if want := "CAPA|USER alice|PASS wrong|CAPA|USER alice|PASS secret|STAT|QUIT"; got != want {
		t.Fatalf("backend got %q, want %q", got, want)
	}
	ev := r.LoginEvents()
	if len(ev) != 2 || ev[0].Result != session.ResultBadCreds || ev[1].Result != session.ResultOK {
		t.Fatalf("events %+v", ev)
	}
}

func TestPasswordWithSpaces(t *testing.T) {
	fb := startBackend(t, &fakeBackend{Capa: []string{"USER"}})
	r := newRig(t, testListener(routing.TLSNone, nil, true), Options{}, backendAt(fb.Port(), routing.ForwardNone))
	c := dial(t, r.Addr())
	c.cmd("USER bob", "+OK")
	c.cmd("PASS my secret pw", "+OK Logged in.")
	if res := r.Result(); res.Handoff == nil {
		t.Fatal("no handoff")
	}
}

func TestAuthPlain(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	r := newRig(t, testListener(routing.TLSNone, nil, true), Options{}, backendAt(fb.Port(), routing.ForwardNone))

	c := dial(t, r.Addr())
	c.cmd("AUTH CRAM-MD5", "-ERR Unsupported authentication mechanism.")
	c.cmd("AUTH PLAIN", "+ \r\n")
	c.cmd("*", "-ERR Authentication cancelled.")
	c.cmd("AUTH PLAIN", "+ \r\n")
	c.cmd("!!!", "-ERR Invalid base64 data.")
	c.cmd("AUTH PLAIN !!!", "-ERR Invalid base64 data.")
	c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "wrong"), "-ERR [AUTH] Authentication failed.")
	// Without initial response.
	c.cmd("auth plain", "+ \r\n")
	c.cmd(testrig.PlainIR("", "alice", "secret"), "+OK Logged in.")
	if res := r.Result(); res.Handoff == nil || res.Handoff.User != "alice" {
		t.Fatalf("%+v", res)
	}

	// With initial response, and pipelined bytes after it.
	c = dial(t, r.Addr())
	c.Send("AUTH PLAIN " + testrig.PlainIR("", "alice", "secret") + "\r\nLIST\r\n")
	c.expect("+OK Logged in.")
	if res := r.Result(); res.Handoff == nil || string(res.Pending) != "LIST\r\n" {
		t.Fatalf("%+v pending %q", res, res.Pending)
	}

	// An authorization identity routes by it and reaches the backend.
	c = dial(t, r.Addr())
	c.cmd("AUTH PLAIN "+testrig.PlainIR("bob", "alice", "secret"), "+OK Logged in.")
	if res := r.Result(); res.Handoff == nil || res.Handoff.User != "bob" {
		t.Fatalf("%+v", res)
	}
	if got := fb.Received(); got[len(got)-1] != "AUTH PLAIN "+testrig.PlainIR("bob", "alice", "secret") {
		t.Fatalf("backend got %q", got)
	}
}

func TestAuthLogin(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	r := newRig(t, testListener(routing.TLSNone, nil, true), Options{}, backendAt(fb.Port(), routing.ForwardNone))
	c := dial(t, r.Addr())
	c.cmd("AUTH LOGIN", "+ VXNlcm5hbWU6\r\n") // "Username:"
	c.cmd("*", "-ERR Authentication cancelled.")
	c.cmd("AUTH LOGIN", "+ VXNlcm5hbWU6\r\n")
	c.cmd("Ym9i", "+ UGFzc3dvcmQ6\r\n") // "bob", then "Password:"
	c.cmd("bXkgc2VjcmV0IHB3", "+OK Logged in.")
	if res := r.Result(); res.Handoff == nil || res.Handoff.User != "bob" {
		t.Fatalf("%+v", res)
	}
	// The user name as initial response.
	c = dial(t, r.Addr())
	c.cmd("AUTH LOGIN YWxpY2U=", "+ UGFzc3dvcmQ6\r\n")
	c.cmd("c2VjcmV0", "+OK Logged in.")
	if res := r.Result(); res.Handoff == nil || res.Handoff.User != "alice" {
		t.Fatalf("%+v", res)
	}
}

func TestMaxAuthFailures(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	r := newRig(t, testListener(routing.TLSNone, nil, true), Options{}, backendAt(fb.Port(), routing.ForwardNone))
	c := dial(t, r.Addr())
	for i, pw := range []string{"a", "b", "c"} {
		c.cmd("USER alice", "+OK")
		c.cmd("PASS "+pw, "-ERR [AUTH] Authentication failed.")
		if i < 2 {
			continue
		}
		c.expect("-ERR Too many authentication failures.\r\n")
		c.EOF()
	}
	if res := r.Result(); res.Handoff != nil || res.End.Reason != session.EndTooManyAuthFailures {
		t.Fatalf("%+v", res)
	}
}

func TestTooManyErrors(t *testing.T) {
	r := newRig(t, testListener(routing.TLSNone, nil, true), Options{})
	c := dial(t, r.Addr())
	c.cmd("FOO", "-ERR Unknown command.")
	c.cmd("NOOP", "-ERR Unknown command.")
	c.cmd("\x01\x02", "-ERR Unknown command.")
	c.cmd("STLS", "-ERR STLS not available.")
	c.cmd("CAPA", "+OK") // valid commands do not count
	c.multiline()
	c.cmd("APOP alice 0123456789abcdef", "-ERR APOP is not supported.")
	c.expect("-ERR Too many invalid commands.\r\n")
	c.EOF()
	if res := r.Result(); res.End.Reason != session.EndTooManyErrors || res.End.ProtocolErrors != 5 {
		t.Fatalf("%+v", res)
	}
}

func TestOverlongLine(t *testing.T) {
	lis := testListener(routing.TLSNone, nil, true)
	lis.Limits.MaxLine = 100
	r := newRig(t, lis, Options{})
	c := dial(t, r.Addr())
	// Sent in one piece: the rest of the line is discarded, not run.
	c.cmd(strings.Repeat("x", 200)+" QUIT", "-ERR Line too long.")
	c.cmd("USER "+strings.Repeat("u", 93), "+OK") // 100 bytes with CRLF
	c.cmd("USER "+strings.Repeat("u", 94), "-ERR Line too long.")
	// A long SASL response ends the exchange.
	c.cmd("AUTH PLAIN", "+ ")
	c.cmd(strings.Repeat("A", 200), "-ERR Line too long.")
	c.cmd("CAPA", "+OK")
	c.multiline()
	// Slowly, in pieces, far beyond the buffer size.
	for i := 0; i < 10; i++ {
		c.Send(strings.Repeat("y", 1000))
	}
	c.cmd("", "-ERR Line too long.")
	c.cmd("QUIT", "+OK Logging out.")
	if res := r.Result(); res.End.Reason != session.EndLogout || res.End.ProtocolErrors != 4 {
		t.Fatalf("%+v", res.End)
	}
}

func TestCredentialsTooLong(t *testing.T) {
	lis := testListener(routing.TLSNone, nil, true)
	lis.Limits.MaxLiteral = 20
	fb := startBackend(t, &fakeBackend{})
	r := newRig(t, lis, Options{}, backendAt(fb.Port(), routing.ForwardNone))
	c := dial(t, r.Addr())
	c.cmd("USER alice", "+OK")
	c.cmd("PASS "+strings.Repeat("p", 20), "-ERR Credentials too long.")
	c.cmd("USER alice", "+OK")
	c.cmd("PASS secret", "+OK Logged in.")
	r.Result()
}

func TestPlaintextRefusedBeforeSTLS(t *testing.T) {
	cfg := &tls.Config{Certificates: []tls.Certificate{testrig.SelfSigned(t)}}
	fb := startBackend(t, &fakeBackend{})
	r := newRig(t, testListener(routing.TLSStartTLS, cfg, false), Options{}, backendAt(fb.Port(), routing.ForwardNone))
	c := dial(t, r.Addr())
	c.cmd("CAPA", "+OK")
	if got, want := strings.Join(c.multiline(), ","), "STLS,RESP-CODES,AUTH-RESP-CODE,PIPELINING,IMPLEMENTATION Portico"; got != want {
		t.Fatalf("CAPA before TLS %q, want %q", got, want)
	}
	refused := "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.\r\n"
	c.cmd("USER alice", refused)
	c.cmd("PASS secret", refused)
	c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), refused)
	c.cmd("STLS", "+OK Begin TLS negotiation.")
	tc := tls.Client(c.Conn, &tls.Config{InsecureSkipVerify: true})
	tcl := &client{&testrig.Client{T: t, Conn: tc, R: bufio.NewReader(tc)}}
	tcl.cmd("CAPA", "+OK")
	if got, want := strings.Join(tcl.multiline(), ","), "USER,SASL PLAIN LOGIN,RESP-CODES,AUTH-RESP-CODE,PIPELINING,IMPLEMENTATION Portico"; got != want {
		t.Fatalf("CAPA after TLS %q, want %q", got, want)
	}
	tcl.cmd("STLS", "-ERR STLS not available.")
	tcl.cmd("USER alice", "+OK")
	tcl.cmd("PASS secret", "+OK Logged in.")
	if res := r.Result(); res.Handoff == nil || res.Handoff.Client.TLSState() == nil {
		t.Fatalf("%+v", res)
	}
	if fb.Connections() != 1 {
		t.Fatalf("%d backend connections", fb.Connections())
	}
}

// USER given before STLS is forgotten by it.
func TestSTLSForgetsUser(t *testing.T) {
	cfg := &tls.Config{Certificates: []tls.Certificate{testrig.SelfSigned(t)}}
	r := newRig(t, testListener(routing.TLSStartTLS, cfg, true), Options{})
	c := dial(t, r.Addr())
	c.cmd("CAPA", "+OK")
	if caps := strings.Join(c.multiline(), ","); !strings.Contains(caps, "STLS") || !strings.Contains(caps, "USER") {
		t.Fatalf("CAPA %q", caps)
	}
	c.cmd("USER alice", "+OK")
	c.cmd("STLS extra", "-ERR STLS not available.")
	c.cmd("STLS", "+OK Begin TLS negotiation.")
	tc := tls.Client(c.Conn, &tls.Config{InsecureSkipVerify: true})
	tcl := &client{&testrig.Client{T: t, Conn: tc, R: bufio.NewReader(tc)}}
	tcl.cmd("PASS secret", "-ERR USER first.")
	tcl.cmd("QUIT", "+OK")
	r.Result()
}

// Commands sent right behind STLS are handshake bytes, never commands.
func TestSTLSInjection(t *testing.T) {
	cfg := &tls.Config{Certificates: []tls.Certificate{testrig.SelfSigned(t)}}
	fb := startBackend(t, &fakeBackend{})
	r := newRig(t, testListener(routing.TLSStartTLS, cfg, true), Options{}, backendAt(fb.Port(), routing.ForwardNone))
	c := dial(t, r.Addr())
	c.Send("STLS\r\nUSER alice\r\nPASS secret\r\n")
	c.expect("+OK Begin TLS negotiation.\r\n")
	rest, _ := io.ReadAll(c.R) // a TLS alert at most
	if strings.Contains(string(rest), "+OK") || strings.Contains(string(rest), "-ERR") {
		t.Fatalf("injected commands answered: %q", rest)
	}
	res := r.Result()
	if res.Handoff != nil || res.End.Reason != session.EndTLSHandshake || res.End.Err == nil || !strings.Contains(res.End.Err.Error(), "STLS") {
		t.Fatalf("%+v", res)
	}
	if n := fb.Connections(); n != 0 {
		t.Fatalf("injected login reached the backend (%d connections)", n)
	}
}

// A client may send its TLS ClientHello right behind STLS without waiting
// for +OK: the read-ahead bytes feed the handshake.
func TestSTLSPipelinedHandshake(t *testing.T) {
	cfg := &tls.Config{Certificates: []tls.Certificate{testrig.SelfSigned(t)}}
	r := newRig(t, testListener(routing.TLSStartTLS, cfg, false), Options{})
	c := dial(t, r.Addr())
	pc := &pipelinedSTLS{Conn: c.Conn, br: c.R, t: t}
	tc := tls.Client(pc, &tls.Config{InsecureSkipVerify: true})
	tcl := &client{&testrig.Client{T: t, Conn: tc, R: bufio.NewReader(tc)}}
	tcl.cmd("CAPA", "+OK")
	if caps := strings.Join(tcl.multiline(), ","); !strings.HasPrefix(caps, "USER,") {
		t.Fatalf("CAPA %q", caps)
	}
	tcl.cmd("QUIT", "+OK")
	r.Result()
}

// pipelinedSTLS prepends "STLS" to the first write (the ClientHello) and
// swallows the +OK before the first read.
type pipelinedSTLS struct {
	net.Conn
	br            *bufio.Reader
	t             *testing.T
	wrote, readOK bool
}

func (p *pipelinedSTLS) Write(b []byte) (int, error) {
	if !p.wrote {
		p.wrote = true
		if _, err := p.Conn.Write(append([]byte("STLS\r\n"), b...)); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	return p.Conn.Write(b)
}

func (p *pipelinedSTLS) Read(b []byte) (int, error) {
	if !p.readOK {
		p.readOK = true
		if l, err := p.br.ReadString('\n'); err != nil || l != "+OK Begin TLS negotiation.\r\n" {
			p.t.Errorf("STLS answer %q %v", l, err)
		}
	}
	return p.br.Read(b)
}

func TestInactivityTimeout(t *testing.T) {
	lis := testListener(routing.TLSNone, nil, true)
	lis.Limits.PreAuthTimeout = 200 * time.Millisecond
	r := newRig(t, lis, Options{})
	c := dial(t, r.Addr())
	c.expect("-ERR Disconnected for inactivity.\r\n")
	c.EOF()
	if res := r.Result(); res.End.Reason != session.EndTimeout || !errors.Is(res.End.Err, os.ErrDeadlineExceeded) {
		t.Fatalf("%+v", res)
	}
	// Also in the middle of a line.
	c = dial(t, r.Addr())
	c.Send("CAP")
	c.expect("-ERR Disconnected for inactivity.\r\n")
	c.EOF()
	r.Result()
}

func TestShutdown(t *testing.T) {
	r := newRig(t, testListener(routing.TLSNone, nil, true), Options{})
	c := dial(t, r.Addr())
	c.cmd("CAPA", "+OK")
	c.multiline()
	r.Cancel()
	c.expect("-ERR [SYS/TEMP] Server shutting down.\r\n")
	c.EOF()
	if res := r.Result(); res.End.Reason != session.EndShutdown {
		t.Fatalf("%+v", res)
	}
}

// Shutdown while a login waits for a silent backend.
func TestShutdownDuringLogin(t *testing.T) {
	fb := startBackend(t, &fakeBackend{Mode: "silent"})
	r := newRig(t, testListener(routing.TLSNone, nil, true), Options{}, backendAt(fb.Port(), routing.ForwardNone))
	c := dial(t, r.Addr())
	c.cmd("USER alice", "+OK")
	c.Send("PASS secret\r\n")
	time.Sleep(100 * time.Millisecond)
	r.Cancel()
	c.expect("-ERR [SYS/TEMP] Backend server unavailable, try again later.\r\n")
	c.expect("-ERR [SYS/TEMP] Server shutting down.\r\n")
	c.EOF()
	r.Result()
}

func TestNoRouteIsAuthFailure(t *testing.T) {
	r := newRig(t, testListener(routing.TLSNone, nil, true), Options{})
	c := dial(t, r.Addr())
	c.cmd("USER nobody", "+OK")
	c.cmd("PASS x", "-ERR [AUTH] Authentication failed.\r\n")
	c.cmd("QUIT", "+OK")
	r.Result()
	if ev := r.LoginEvents(); len(ev) != 1 || ev[0].Result != session.ResultBadCreds {
		t.Fatalf("%+v", ev)
	}
}

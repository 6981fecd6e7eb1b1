package submission

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// Before TLS: the EHLO reply offers STARTTLS and no AUTH; mail commands
// and AUTH are refused with enhanced codes. After STARTTLS the client must
// say EHLO again, which then offers AUTH and no STARTTLS; the login goes
// through and a message is relayed.
func TestSTARTTLSThenAuthAndRelay(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	lis := testListener(routing.TLSStartTLS, testrig.TLSServerConfig(t), false)
	lis.Limits.MaxErrors = 10
	r := newRig(t, lis, backendAt(fb.Port(), routing.ForwardNone))
	r.Relay = true
	c := dial(t, r.Addr())
	got := c.cmd("EHLO client.example", "250 ")
	want := []string{"250-proxy.example", "250-SIZE", "250-PIPELINING", "250-8BITMIME", "250-ENHANCEDSTATUSCODES", "250-CHUNKING", "250 STARTTLS"}
	if !slices.Equal(got, want) {
		t.Fatalf("EHLO before TLS: %q", got)
	}
	c.cmd("MAIL FROM:<alice@example.com>", "530 5.7.0 Authentication required")
	c.cmd("RCPT TO:<bob@example.com>", "530 5.7.0 ")
	c.cmd("DATA", "530 5.7.0 ")
	c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "538 5.7.11 ")
	c.cmd("STARTTLS", "220 2.0.0 ")
	c.StartTLS()
	c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "503 5.5.1 Error: send HELO/EHLO first")
	got = c.cmd("ehlo client.example", "250 ")
	want = []string{"250-proxy.example", "250-SIZE", "250-PIPELINING", "250-8BITMIME", "250-ENHANCEDSTATUSCODES", "250-CHUNKING", "250 AUTH PLAIN LOGIN"}
	if !slices.Equal(got, want) {
		t.Fatalf("EHLO after TLS: %q", got)
	}
	c.cmd("STARTTLS", "503 5.5.1 TLS already active")
	c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "235 2.7.0 Authentication successful")
	// Relayed to the backend from here.
	c.cmd("MAIL FROM:<alice@example.com>", "250 2.1.0")
	c.cmd("RCPT TO:<bob@example.com>", "250 2.1.5")
	c.cmd("DATA", "354 ")
	c.cmd("Subject: hi\r\n\r\n..dot\r\n.", "250 2.0.0 Ok: queued")
	c.cmd("QUIT", "221 ")
	res := r.Result()
	if res.Handoff == nil || res.Handoff.User != "alice" {
		t.Fatalf("no hand-off: %+v", res)
	}
	if msgs := fb.messages(); !slices.Equal(msgs, []string{"Subject: hi\r\n\r\n.dot\r\n"}) {
		t.Fatalf("messages %q", msgs)
	}
	rec := fb.Received()
	if !slices.Contains(rec, "AUTH PLAIN "+testrig.PlainIR("", "alice", "secret")) || !slices.Contains(rec, "EHLO proxy.example") {
		t.Fatalf("backend saw %q", rec)
	}
	for _, l := range rec {
		if strings.HasPrefix(l, "XCLIENT") {
			t.Fatalf("XCLIENT to a forward: none backend: %q", rec)
		}
	}
	if res.Handoff.ProtocolErrors != 6 {
		t.Fatalf("protocol errors %d", res.Handoff.ProtocolErrors)
	}
}

// AUTH LOGIN with and without an initial response, PLAIN without one,
// cancellation and bad base64 (counted), and an empty line as an empty
// response.
func TestAuthExchanges(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	lis := testListener(routing.TLSNone, nil, true)
	lis.Limits.MaxErrors = 10
	r := newRig(t, lis, backendAt(fb.Port(), routing.ForwardNone))
	c := dial(t, r.Addr())
	if got := c.cmd("EHLO c", "250 "); got[len(got)-1] != "250 AUTH PLAIN LOGIN" {
		t.Fatalf("EHLO %q", got)
	}
	c.cmd("AUTH CRAM-MD5", "504 5.5.4 ")
	c.cmd("AUTH", "501 5.5.4 ")
	c.cmd("AUTH PLAIN", "334 ")
	c.cmd("*", "501 5.7.0 Authentication cancelled")
	c.cmd("AUTH PLAIN *", "501 5.7.0 ")
	c.cmd("AUTH PLAIN !!!", "501 5.5.2 ")
	c.cmd("AUTH LOGIN", "334 "+testrig.B64("Username:"))
	c.cmd(testrig.B64("alice"), "334 "+testrig.B64("Password:"))
	c.cmd(testrig.B64("wrong"), "535 5.7.8 Error: authentication failed")
	c.cmd("AUTH LOGIN "+testrig.B64("alice"), "334 "+testrig.B64("Password:"))
	c.cmd(testrig.B64("secret"), "235 ")
	res := r.Result()
	if res.Handoff == nil {
		t.Fatalf("no login: %+v", res.End)
	}
	if res.Handoff.ProtocolErrors != 5 {
		t.Fatalf("protocol errors %d", res.Handoff.ProtocolErrors)
	}
	rec := fb.Received()
	if n := countPrefix(rec, "AUTH PLAIN "); n != 2 {
		t.Fatalf("backend AUTHs %d: %q", n, rec)
	}
}

func countPrefix(lines []string, p string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, p) {
			n++
		}
	}
	return n
}

// The backend's 535 is relayed; max_auth_failures ends the session with
// 421. A backend that is down, or refuses for its own reasons (4xx, or an
// AUTH it does not offer), gives a temporary 454, never 535, and does not
// count.
func TestFailures(t *testing.T) {
	t.Run("wrong password", func(t *testing.T) {
		fb := startBackend(t, &fakeBackend{})
		r := newRig(t, testListener(routing.TLSNone, nil, true), backendAt(fb.Port(), routing.ForwardNone))
		c := dial(t, r.Addr())
		c.cmd("HELO c", "250 proxy.example")
		for i := 0; i < 3; i++ {
			c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "bad"), "535 5.7.8 Error: authentication failed: bad credentials")
		}
		c.expect("421 4.7.0 Too many authentication failures")
		c.EOF()
		if res := r.Result(); res.End.Reason != session.EndTooManyAuthFailures {
			t.Fatalf("end %+v", res.End)
		}
	})
	t.Run("backend down", func(t *testing.T) {
		fb := startBackend(t, &fakeBackend{})
		port := fb.Port()
		fb.Close()
		r := newRig(t, testListener(routing.TLSNone, nil, true), backendAt(port, routing.ForwardNone))
		c := dial(t, r.Addr())
		c.cmd("EHLO c", "250 ")
		for i := 0; i < 4; i++ {
			c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "454 4.7.0 Temporary authentication failure")
		}
		c.cmd("QUIT", "221 ")
	})
	for _, tc := range []struct{ name, reply string }{
		{"temporary", "454 4.7.0 Temporary authentication failure: auth server down"},
		{"needs TLS", "538 5.7.11 Encryption required for requested authentication mechanism"},
		{"not enabled", "503 5.5.1 Error: authentication not enabled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fb := startBackend(t, &fakeBackend{AuthReply: tc.reply})
			r := newRig(t, testListener(routing.TLSNone, nil, true), backendAt(fb.Port(), routing.ForwardNone))
			c := dial(t, r.Addr())
			c.cmd("EHLO c", "250 ")
			for i := 0; i < 4; i++ {
				c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "454 4.7.0 Temporary authentication failure, try again later")
			}
		})
	}
	t.Run("no AUTH offered", func(t *testing.T) {
		fb := startBackend(t, &fakeBackend{Ext: []string{"PIPELINING"}})
		r := newRig(t, testListener(routing.TLSNone, nil, true), backendAt(fb.Port(), routing.ForwardNone))
		c := dial(t, r.Addr())
		c.cmd("EHLO c", "250 ")
		c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "454 4.7.0 ")
		if countPrefix(fb.Received(), "AUTH") != 0 {
			t.Fatalf("AUTH sent anyway: %q", fb.Received())
		}
	})
	t.Run("bad greeting", func(t *testing.T) {
		fb := startBackend(t, &fakeBackend{Greeting: "554 5.3.2 go away"})
		r := newRig(t, testListener(routing.TLSNone, nil, true), backendAt(fb.Port(), routing.ForwardNone))
		c := dial(t, r.Addr())
		c.cmd("EHLO c", "250 ")
		c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "454 4.7.0 ")
	})
	t.Run("no route", func(t *testing.T) {
		r := newRig(t, testListener(routing.TLSNone, nil, true))
		c := dial(t, r.Addr())
		c.cmd("EHLO c", "250 ")
		c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "535 5.7.8 Authentication credentials invalid")
	})
}

// With forward: id and a backend announcing XCLIENT, the client's
// address, port, HELO name, protocol and the address it reached go first
// (only the attributes announced; values xtext-encoded), then EHLO with
// the client's name, then AUTH.
func TestXCLIENT(t *testing.T) {
	fb := startBackend(t, &fakeBackend{XCLIENT: "NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT", TLS: testrig.TLSServerConfig(t)})
	b := backendAt(fb.Port(), routing.ForwardID)
	b.TLS, b.InsecureSkipVerify = routing.TLSStartTLS, true
	r := newRig(t, testListener(routing.TLSNone, nil, true), b)
	c := dial(t, r.Addr())
	c.cmd("EHLO c+l=ient.example", "250 ")
	c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "235 2.7.0")
	r.Result()
	want := []string{
		"EHLO proxy.example", "STARTTLS", "tls: EHLO proxy.example",
		"tls: XCLIENT ADDR=198.51.100.7 PORT=4242 NAME=[UNAVAILABLE] HELO=c+2Bl+3Dient.example PROTO=ESMTP DESTADDR=192.0.2.1 DESTPORT=587",
		"tls: EHLO c+l=ient.example", "tls: AUTH PLAIN " + testrig.PlainIR("", "alice", "secret"),
	}
	if got := fb.Received(); !slices.Equal(got, want) {
		t.Fatalf("backend saw\n%q\nwant\n%q", got, want)
	}

	// Only ADDR and the attributes announced; HELO -> PROTO=SMTP.
	fb2 := startBackend(t, &fakeBackend{XCLIENT: "ADDR PROTO"})
	r2 := newRig(t, testListener(routing.TLSNone, nil, true), backendAt(fb2.Port(), routing.ForwardID))
	c2 := dial(t, r2.Addr())
	c2.cmd("HELO old.example", "250 ")
	c2.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "235 ")
	r2.Result()
	if got := fb2.Received(); !slices.Contains(got, "XCLIENT ADDR=198.51.100.7 PROTO=SMTP") || !slices.Contains(got, "EHLO old.example") {
		t.Fatalf("backend saw %q", got)
	}
}

// verified is a Director that checked the password itself (as an
// auth_http server does).
type verified struct{ b routing.Backend }

func (v verified) Direct(_ context.Context, a *session.Attempt) (*session.Target, error) {
	if a.Creds.Password != "secret" {
		return nil, &session.Refusal{Kind: session.RefuseAuth, Text: "bad", Reply: "Invalid login or password", Code: "535 5.7.8", Wait: time.Millisecond}
	}
	b := v.b
	return &session.Target{Backend: &b, Creds: a.Creds, Verified: true}, nil
}

// XCLIENT LOGIN: a verified login is passed as LOGIN= and no AUTH is
// sent; a passthrough login on the same listener still sends AUTH with
// the password (only the backend can check it). A refusal of the
// Director comes with its code.
func TestXCLIENTLogin(t *testing.T) {
	fb := startBackend(t, &fakeBackend{XCLIENT: "ADDR PORT HELO LOGIN"})
	b := backendAt(fb.Port(), routing.ForwardID)
	lis := testListener(routing.TLSNone, nil, true)
	lis.Extra = &ListenerOptions{XCLIENTLogin: true}
	lis.Director = verified{b}
	r := newRig(t, lis, b)
	r.Relay = true
	c := dial(t, r.Addr())
	c.cmd("EHLO c", "250 ")
	c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "nope"), "535 5.7.8 Invalid login or password")
	c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "235 2.7.0 Authentication successful")
	c.cmd("MAIL FROM:<alice@example.com>", "250 ")
	c.cmd("QUIT", "221 ")
	r.Result()
	got := fb.Received()
	if !slices.Contains(got, "XCLIENT ADDR=198.51.100.7 PORT=4242 HELO=c LOGIN=alice") || countPrefix(got, "AUTH") != 0 {
		t.Fatalf("backend saw %q", got)
	}

	fb2 := startBackend(t, &fakeBackend{XCLIENT: "ADDR PORT HELO LOGIN"})
	lis2 := testListener(routing.TLSNone, nil, true)
	lis2.Extra = &ListenerOptions{XCLIENTLogin: true}
	r2 := newRig(t, lis2, backendAt(fb2.Port(), routing.ForwardID))
	c2 := dial(t, r2.Addr())
	c2.cmd("EHLO c", "250 ")
	c2.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "235 ")
	r2.Result()
	got = fb2.Received()
	if !slices.Contains(got, "XCLIENT ADDR=198.51.100.7 PORT=4242 HELO=c") || countPrefix(got, "AUTH PLAIN") != 1 {
		t.Fatalf("passthrough on an xclient_login listener: backend saw %q", got)
	}

	// A backend without XCLIENT cannot take an XCLIENT LOGIN login.
	fb3 := startBackend(t, &fakeBackend{})
	b3 := backendAt(fb3.Port(), routing.ForwardID)
	lis3 := testListener(routing.TLSNone, nil, true)
	lis3.Extra = &ListenerOptions{XCLIENTLogin: true}
	lis3.Director = verified{b3}
	r3 := newRig(t, lis3, b3)
	c3 := dial(t, r3.Addr())
	c3.cmd("EHLO c", "250 ")
	c3.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "454 4.7.0 ")
}

// Commands pipelined after AUTH stay in the client's stream for the relay.
func TestPipelinedAfterAuth(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	r := newRig(t, testListener(routing.TLSNone, nil, true), backendAt(fb.Port(), routing.ForwardNone))
	c := dial(t, r.Addr())
	c.Send("EHLO c\r\nAUTH PLAIN " + testrig.PlainIR("", "alice", "secret") + "\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")
	c.expect("250 ")
	c.expect("235 ")
	res := r.Result()
	if string(res.Pending) != "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n" {
		t.Fatalf("pending %q", res.Pending)
	}
}

// A plaintext command pipelined after STARTTLS feeds the TLS handshake
// and is never run.
func TestSTARTTLSInjection(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	lis := testListener(routing.TLSStartTLS, testrig.TLSServerConfig(t), true)
	r := newRig(t, lis, backendAt(fb.Port(), routing.ForwardNone))
	c := dial(t, r.Addr())
	c.cmd("EHLO c", "250 ")
	c.Send("STARTTLS\r\nAUTH PLAIN " + testrig.PlainIR("", "alice", "secret") + "\r\n")
	c.expect("220 2.0.0 ")
	res := r.Result()
	if res.Handoff != nil || res.End.Reason != session.EndTLSHandshake {
		t.Fatalf("injected AUTH: %+v %+v", res.Handoff, res.End)
	}
	if len(fb.Received()) != 0 {
		t.Fatalf("backend saw %q", fb.Received())
	}
}

// Implicit TLS (port 465): the greeting comes over TLS, AUTH is offered at
// once, STARTTLS never.
func TestImplicitTLS(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	lis := testListener(routing.TLSImplicit, testrig.TLSServerConfig(t), false)
	r := newRig(t, lis, backendAt(fb.Port(), routing.ForwardNone))
	c := &client{&testrig.Client{T: t, Conn: testrig.DialRaw(t, r.Addr())}}
	c.StartTLS()
	c.expect("220 proxy.example ESMTP")
	if got := c.cmd("EHLO c", "250 AUTH PLAIN LOGIN"); slices.Contains(got, "250-STARTTLS") {
		t.Fatalf("EHLO %q", got)
	}
	c.cmd("STARTTLS", "503 5.5.1 ")
	c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "235 ")
	r.Result()
}

package sieve

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

func TestGreetingCapabilityNoopLogout(t *testing.T) {
	lis := testListener(routing.TLSStartTLS, testrig.TLSServerConfig(t), false)
	r := newRig(t, lis)
	c, caps := dial(t, r.Addr())
	want := []string{`"IMPLEMENTATION" "Portico"`, `"SASL" ""`, `"SIEVE" "` + DefaultExtensions + `"`, `"NOTIFY" "mailto"`, `"STARTTLS"`, `"VERSION" "1.0"`}
	if !slices.Equal(caps, want) {
		t.Fatalf("greeting capabilities %q, want %q", caps, want)
	}
	if got, _ := c.cmd("capability", "OK "); !slices.Equal(got, want) {
		t.Fatalf("CAPABILITY %q", got)
	}
	c.cmd("NOOP", "OK ")
	if _, st := c.cmd(`NOOP "a \"tag\""`, "OK (TAG "); st != `OK (TAG "a \"tag\"") "Done"` {
		t.Fatalf("NOOP tag: %q", st)
	}
	c.cmd("PUTSCRIPT \"x\" {3+}\r\nabc", `NO "Authenticate first.`)
	c.cmd("LOGOUT", "OK ")
	c.EOF()
	if res := r.Result(); res.End.Reason != session.EndLogout || res.End.ProtocolErrors != 1 {
		t.Fatalf("end %+v", res.End)
	}
}

// AUTHENTICATE before STARTTLS is refused where plaintext authentication
// is off; after STARTTLS the capabilities are re-issued with the SASL
// mechanisms and without STARTTLS, and the login goes through.
func TestPlaintextRefusedThenSTARTTLS(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	lis := testListener(routing.TLSStartTLS, testrig.TLSServerConfig(t), false)
	r := newRig(t, lis, backendAt(fb.Port(), routing.ForwardNone))
	r.Relay = true
	c, _ := dial(t, r.Addr())
	c.cmd(`AUTHENTICATE "PLAIN" "`+testrig.PlainIR("", "alice", "secret")+`"`, `NO (ENCRYPT-NEEDED) `)
	c.cmd("STARTTLS", "OK ")
	c.StartTLS()
	caps, st := c.response()
	want := []string{`"IMPLEMENTATION" "Portico"`, `"SASL" "PLAIN LOGIN"`, `"SIEVE" "` + DefaultExtensions + `"`, `"NOTIFY" "mailto"`, `"VERSION" "1.0"`}
	if !slices.Equal(caps, want) || !strings.HasPrefix(st, "OK ") {
		t.Fatalf("after STARTTLS: %q %q", caps, st)
	}
	c.cmd(`STARTTLS`, `NO "STARTTLS not available`)
	c.cmd(`AUTHENTICATE "PLAIN" "`+testrig.PlainIR("", "alice", "secret")+`"`, `OK "Logged in."`)
	// Relayed: a response with a literal comes through whole.
	data, _ := c.cmd("LISTSCRIPTS", "OK ")
	if !slices.Equal(data, []string{`"a" ACTIVE`, `{3}`, `b"c`}) {
		t.Fatalf("LISTSCRIPTS %q", data)
	}
	c.cmd("LOGOUT", "OK ")
	res := r.Result()
	if res.Handoff == nil || res.Handoff.User != "alice" {
		t.Fatalf("no hand-off: %+v", res)
	}
	if got := fb.Received(); !slices.Contains(got, `AUTHENTICATE "PLAIN" "`+testrig.PlainIR("", "alice", "secret")+`"`) {
		t.Fatalf("backend saw %q", got)
	}
}

func TestAuthenticateContinuations(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	r := newRig(t, testListener(routing.TLSNone, nil, true), backendAt(fb.Port(), routing.ForwardNone))
	for _, tc := range []struct {
		name string
		run  func(c *client)
	}{
		{"plain quoted", func(c *client) {
			c.Send("AUTHENTICATE \"PLAIN\"\r\n")
			if ch := c.line(); ch != `""` {
				t.Fatalf("challenge %q", ch)
			}
			c.cmd(`"`+testrig.PlainIR("", "alice", "secret")+`"`, "OK ")
		}},
		{"plain literal", func(c *client) {
			ir := testrig.PlainIR("", "alice", "secret")
			c.Send("AUTHENTICATE PLAIN\r\n")
			c.line()
			c.Send("{" + itoa(len(ir)) + "+}\r\n" + ir + "\r\n")
			c.expect("OK ")
		}},
		{"plain sync literal initial response", func(c *client) {
			ir := testrig.PlainIR("", "alice", "secret")
			c.cmd("AUTHENTICATE \"PLAIN\" {"+itoa(len(ir))+"}\r\n"+ir, "OK ")
		}},
		{"login", func(c *client) {
			c.Send("AUTHENTICATE \"LOGIN\"\r\n")
			if ch := c.line(); ch != `"`+testrig.B64("Username:")+`"` {
				t.Fatalf("challenge %q", ch)
			}
			c.Send(`"` + testrig.B64("alice") + "\"\r\n")
			if ch := c.line(); ch != `"`+testrig.B64("Password:")+`"` {
				t.Fatalf("challenge %q", ch)
			}
			c.cmd(`"`+testrig.B64("secret")+`"`, "OK ")
		}},
		{"login initial response", func(c *client) {
			c.Send("AUTHENTICATE \"LOGIN\" \"" + testrig.B64("alice") + "\"\r\n")
			c.line()
			c.cmd(`"`+testrig.B64("secret")+`"`, "OK ")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := dial(t, r.Addr())
			tc.run(c)
			if res := r.Result(); res.Handoff == nil || res.Handoff.User != "alice" {
				t.Fatalf("no hand-off: %+v", res.End)
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestAuthenticateFailures(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	lis := testListener(routing.TLSNone, nil, true)
	r := newRig(t, lis, backendAt(fb.Port(), routing.ForwardNone))
	c, _ := dial(t, r.Addr())
	c.cmd(`AUTHENTICATE "PLAIN" "`+testrig.PlainIR("", "alice", "wrong")+`"`, `NO "Authentication failed."`)
	c.Send("AUTHENTICATE \"PLAIN\"\r\n")
	c.line()
	c.cmd(`"*"`, `NO "Authentication cancelled.`)
	c.cmd(`AUTHENTICATE "CRAM-MD5"`, `NO "Unsupported`)
	c.cmd(`AUTHENTICATE "PLAIN" "%%%"`, `NO "Invalid base64`)
	c.cmd(`AUTHENTICATE "PLAIN" "`+testrig.PlainIR("", "alice", "x")+`"`, `NO "Authentication failed."`)
	// A response that is not a string aborts the exchange.
	c.Send("AUTHENTICATE \"PLAIN\"\r\n")
	c.line()
	c.cmd(`NOTASTRING`, `NO "Syntax error.`)
	c.cmd(`AUTHENTICATE "PLAIN" "`+testrig.PlainIR("", "alice", "y")+`"`, `NO "Authentication failed."`)
	c.expect(`BYE "Too many authentication failures.`)
	c.EOF()
	if res := r.Result(); res.End.Reason != session.EndTooManyAuthFailures {
		t.Fatalf("end %+v", res.End)
	}
}

func TestBackendTryLaterIsUnavailable(t *testing.T) {
	fb := startBackend(t, &fakeBackend{AuthReply: `NO (TRYLATER) "host x: auth service down"`})
	r := newRig(t, testListener(routing.TLSNone, nil, true), backendAt(fb.Port(), routing.ForwardNone))
	c, _ := dial(t, r.Addr())
	c.cmd(`AUTHENTICATE "PLAIN" "`+testrig.PlainIR("", "alice", "secret")+`"`, `NO (TRYLATER) "Backend server unavailable`)
	c.cmd("LOGOUT", "OK ")
}

func TestNoRouteLooksLikeBadPassword(t *testing.T) {
	r := newRig(t, testListener(routing.TLSNone, nil, true))
	c, _ := dial(t, r.Addr())
	c.cmd(`AUTHENTICATE "PLAIN" "`+testrig.PlainIR("", "nobody", "x")+`"`, `NO "Authentication failed."`)
}

// The proxy logs in at the backend over STARTTLS and passes the client's
// address with XCLIENT when the backend announces it.
func TestBackendSTARTTLSAndXCLIENT(t *testing.T) {
	fb := startBackend(t, &fakeBackend{TLS: testrig.TLSServerConfig(t), XCLIENT: true})
	be := backendAt(fb.Port(), routing.ForwardID)
	be.TLS, be.InsecureSkipVerify = routing.TLSStartTLS, true
	r := newRig(t, testListener(routing.TLSNone, nil, true), be)
	c, _ := dial(t, r.Addr())
	c.cmd(`AUTHENTICATE "PLAIN" "`+testrig.PlainIR("", "alice", "secret")+`"`, `OK "Logged in."`)
	if res := r.Result(); res.Handoff == nil {
		t.Fatalf("no hand-off: %+v", res.End)
	}
	got := fb.Received()
	if len(got) != 3 || got[0] != "STARTTLS" || got[1] != "tls: XCLIENT ADDR=198.51.100.7 PORT=4242 SESSION=SID1" ||
		!strings.HasPrefix(got[2], `tls: AUTHENTICATE "PLAIN" `) {
		t.Fatalf("backend saw %q", got)
	}
}

// Without XCLIENT announced, forward: id logs in without it.
func TestForwardIDWithoutXCLIENT(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	r := newRig(t, testListener(routing.TLSNone, nil, true), backendAt(fb.Port(), routing.ForwardID))
	c, _ := dial(t, r.Addr())
	c.cmd(`AUTHENTICATE "PLAIN" "`+testrig.PlainIR("", "alice", "secret")+`"`, `OK "Logged in."`)
	r.Result()
	if got := fb.Received(); len(got) != 1 {
		t.Fatalf("backend saw %q", got)
	}
}

// Commands pipelined after AUTHENTICATE are not read by the proxy: they
// wait for the relay.
func TestPipelinedAfterLogin(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	r := newRig(t, testListener(routing.TLSNone, nil, true), backendAt(fb.Port(), routing.ForwardNone))
	c, _ := dial(t, r.Addr())
	c.Send(`AUTHENTICATE "PLAIN" "` + testrig.PlainIR("", "alice", "secret") + "\"\r\nLISTSCRIPTS\r\n")
	c.expect("OK ")
	if res := r.Result(); string(res.Pending) != "LISTSCRIPTS\r\n" {
		t.Fatalf("pending %q", res.Pending)
	}
}

// ---- hostile input ----

func TestLongLineEndsSession(t *testing.T) {
	r := newRig(t, testListener(routing.TLSNone, nil, true))
	c, _ := dial(t, r.Addr())
	c.Send("NOOP \"" + strings.Repeat("x", 100000) + "\"\r\n")
	c.expect(`BYE "Line too long.`)
	if res := r.Result(); res.End.Reason != session.EndProtocolError {
		t.Fatalf("end %+v", res.End)
	}
}

func TestHugeLiteralEndsSession(t *testing.T) {
	for _, lit := range []string{"{2000+}", "{2000}", "{99999999999}", "{4294967296+}"} {
		r := newRig(t, testListener(routing.TLSNone, nil, true))
		c, _ := dial(t, r.Addr())
		c.Send("AUTHENTICATE \"PLAIN\" " + lit + "\r\n")
		_, st := c.response()
		if st != `BYE "Literal too large."` && st != `NO "Syntax error."` {
			t.Fatalf("%s: %q", lit, st)
		}
		if st == `BYE "Literal too large."` {
			if res := r.Result(); res.End.Reason != session.EndProtocolError {
				t.Fatalf("end %+v", res.End)
			}
		}
	}
}

// After a syntax error the rest of the command is skipped, literals
// included: a literal's bytes are never run as a command.
func TestSyntaxErrorSkipsLiteral(t *testing.T) {
	r := newRig(t, testListener(routing.TLSNone, nil, true))
	c, _ := dial(t, r.Addr())
	c.Send("NOOP ( {8+}\r\nLOGOUT\r\n\r\n")
	c.expect(`NO "Syntax error.`)
	c.cmd("NOOP", "OK ")
	for _, bad := range []string{"", "123", "NOOP \"unterminated", "NOOP  \"a\"", "NOOP \"a\" ", "NOOP \"bad\\q\"",
		"X\x00Y", strings.Repeat("A", 40), "NOOP {3+} x", "NOOP {+}", "NOOP {-1}", "NOOP a b c d e f g h i j"} {
		c, _ := dial(t, r.Addr())
		c.Send(bad + "\r\n")
		if _, st := c.response(); st != `NO "Syntax error."` {
			t.Fatalf("%q: %q", bad, st)
		}
		c.cmd("NOOP", "OK ")
	}
}

// Empty literals cannot keep one invalid command going forever.
func TestEndlessEmptyLiterals(t *testing.T) {
	r := newRig(t, testListener(routing.TLSNone, nil, true))
	c, _ := dial(t, r.Addr())
	// Exactly what the reader consumes before it gives up: no unread
	// bytes for the close to reset.
	c.Send("NOOP ( {0+}\r\n" + strings.Repeat("{0+}\r\n", maxArgs+1))
	c.expect(`BYE "Literal too large.`)
	if res := r.Result(); res.End.Reason != session.EndProtocolError {
		t.Fatalf("end %+v", res.End)
	}
}

func TestTooManyErrors(t *testing.T) {
	r := newRig(t, testListener(routing.TLSNone, nil, true))
	c, _ := dial(t, r.Addr())
	for i := 0; i < 4; i++ {
		c.cmd("BOGUS", `NO "Unknown command.`)
	}
	c.Send("BOGUS\r\n")
	c.expect(`NO "Unknown command.`)
	c.expect(`BYE "Too many invalid commands.`)
	c.EOF()
}

// Bytes pipelined after STARTTLS feed the handshake and are never run.
func TestSTARTTLSInjection(t *testing.T) {
	r := newRig(t, testListener(routing.TLSStartTLS, testrig.TLSServerConfig(t), false))
	c, _ := dial(t, r.Addr())
	c.Send("STARTTLS\r\nLOGOUT\r\n")
	c.expect("OK ")
	_ = c.Conn.SetDeadline(time.Now().Add(5 * time.Second))
	rest := make([]byte, 64)
	n, _ := c.R.Read(rest)
	if strings.Contains(string(rest[:n]), "Logout") {
		t.Fatalf("LOGOUT after STARTTLS ran: %q", rest[:n])
	}
	c.Conn.Close()
	if res := r.Result(); res.End.Reason == session.EndLogout {
		t.Fatalf("end %+v", res.End)
	}
}

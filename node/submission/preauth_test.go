package submission

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// A blocked login gets a temporary 454 without reaching the backend, and
// counts toward max_auth_failures.
func TestThrottled(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	r := newRig(t, testListener(routing.TLSNone, nil, true), backendAt(fb.Port(), routing.ForwardNone))
	r.Env.Throttle = &testrig.Throttle{All: true}
	c := dial(t, r.Addr())
	c.cmd("EHLO c", "250 ")
	for i := 0; i < 3; i++ {
		c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "454 4.7.0 Too many failed logins")
	}
	c.expect("421 4.7.0 Too many authentication failures")
	if got := fb.Received(); len(got) != 0 {
		t.Fatalf("backend saw %q", got)
	}
}

// Goodbyes the Dialogue decides: inactivity, shutdown, too many errors;
// and QUIT.
func TestGoodbyes(t *testing.T) {
	lis := testListener(routing.TLSNone, nil, true)
	lis.Limits.PreAuthTimeout = 200 * time.Millisecond
	r := newRig(t, lis)
	c := dial(t, r.Addr())
	c.expect("421 4.4.2 Timeout exceeded")
	c.EOF()
	if res := r.Result(); res.End.Reason != session.EndTimeout {
		t.Fatalf("end %+v", res.End)
	}

	r2 := newRig(t, testListener(routing.TLSNone, nil, true))
	c2 := dial(t, r2.Addr())
	c2.cmd("NOOP", "250 2.0.0 OK")
	r2.Cancel()
	c2.expect("421 4.3.2 Service shutting down")
	c2.EOF()
	if res := r2.Result(); res.End.Reason != session.EndShutdown {
		t.Fatalf("end %+v", res.End)
	}

	r3 := newRig(t, testListener(routing.TLSNone, nil, true))
	c3 := dial(t, r3.Addr())
	c3.cmd("RSET", "250 2.0.0 ")
	c3.cmd("HELP", "214 2.0.0 ")
	c3.cmd("QUIT", "221 2.0.0 Bye")
	c3.EOF()
	if res := r3.Result(); res.End.Reason != session.EndLogout {
		t.Fatalf("end %+v", res.End)
	}
	if got := New(Options{}).TooManyConnections(); got != "421 4.7.0 Too many connections, try again later\r\n" {
		t.Fatalf("TooManyConnections %q", got)
	}
}

// Hostile input before login: lines over max_line are refused and
// skipped (the session stays in step), garbage and unknown commands count
// toward max_errors, and the session ends with 421 at the limit.
func TestHostileInput(t *testing.T) {
	r := newRig(t, testListener(routing.TLSNone, nil, true))
	c := dial(t, r.Addr())
	c.cmd("EHLO "+strings.Repeat("a", 5000), "500 5.5.2 Error: line too long")
	c.cmd("NOOP", "250 ")
	c.cmd("\x00\x01garbage", "500 5.5.2 Error: bad syntax")
	c.cmd("XCLIENT ADDR=1.2.3.4 LOGIN=bob", "500 5.5.2 Error: command not recognized")
	c.cmd("EHLO bad\x7fname", "501 5.5.4 ")
	c.cmd("EHLO", "501 5.5.4 ")
	c.expect("421 4.7.0 Too many errors")
	c.EOF()
	if res := r.Result(); res.End.Reason != session.EndTooManyErrors || res.End.ProtocolErrors != 5 {
		t.Fatalf("end %+v", res.End)
	}

	// Pipelined garbage: every line is answered, in order, until the limit.
	r2 := newRig(t, testListener(routing.TLSNone, nil, true))
	c2 := dial(t, r2.Addr())
	c2.Send(strings.Repeat("GARBAGE\r\n", 50))
	for i := 0; i < 5; i++ {
		c2.expect("500 5.5.2 ")
	}
	c2.expect("421 4.7.0 ")
	c2.EOF()
	r2.Result()
}

// NOOP, RSET, HELP, EHLO and HELO are answered maxJunkCommands times;
// then each counts as an error, so a client cannot keep a session before
// login alive with them.
func TestJunkCommandLimit(t *testing.T) {
	r := newRig(t, testListener(routing.TLSNone, nil, true))
	c := dial(t, r.Addr())
	var b strings.Builder
	for i := 0; i < maxJunkCommands+10; i++ {
		b.WriteString([]string{"NOOP\r\n", "RSET\r\n", "EHLO c" + strconv.Itoa(i) + "\r\n", "HELP\r\n"}[i%4])
	}
	c.Send(b.String())
	for i := 0; i < maxJunkCommands+5; i++ {
		c.reply()
	}
	c.expect("421 4.7.0 Too many errors")
	c.EOF()
	if res := r.Result(); res.End.Reason != session.EndTooManyErrors {
		t.Fatalf("end %+v", res.End)
	}
}

// BDAT before login: a small chunk is read and dropped (its bytes never
// run as commands), a large one or an unreadable size ends the session.
func TestBDATBeforeAuth(t *testing.T) {
	r := newRig(t, testListener(routing.TLSNone, nil, true))
	c := dial(t, r.Addr())
	c.Send("BDAT 12 LAST\r\nQUIT\r\nQUIT\r\nNOOP\r\n")
	c.expect("530 5.7.0 Authentication required")
	c.expect("250 2.0.0 OK")
	c.cmd("QUIT", "221 ")
	if res := r.Result(); res.End.Reason != session.EndLogout || res.End.ProtocolErrors != 1 {
		t.Fatalf("end %+v", res.End)
	}

	r2 := newRig(t, testListener(routing.TLSNone, nil, true))
	c2 := dial(t, r2.Addr())
	c2.cmd("BDAT 100000 LAST", "530 5.7.0 ")
	c2.expect("421 4.7.0 ")
	c2.EOF()
	if res := r2.Result(); res.End.Reason != session.EndProtocolError {
		t.Fatalf("end %+v", res.End)
	}

	r3 := newRig(t, testListener(routing.TLSNone, nil, true))
	c3 := dial(t, r3.Addr())
	c3.cmd("BDAT 1x", "501 5.5.4 ")
	c3.expect("421 4.7.0 ")
	c3.EOF()
	r3.Result()
}

// An AUTH continuation line over max_line is refused and the exchange
// abandoned; the session goes on.
func TestAuthLineTooLong(t *testing.T) {
	r := newRig(t, testListener(routing.TLSNone, nil, true))
	c := dial(t, r.Addr())
	c.cmd("EHLO c", "250 ")
	c.cmd("AUTH LOGIN", "334 ")
	c.cmd(strings.Repeat("QUFB", 1000), "500 5.5.6 ")
	c.cmd("NOOP", "250 ")
	c.cmd("AUTH PLAIN "+testrig.B64(strings.Repeat("x", 700)+"\x00"+strings.Repeat("y", 10)), "501 5.5.2 ")
	c.cmd("QUIT", "221 ")
	r.Result()
}

package sieve

import (
	"testing"
	"time"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// A blocked login gets NO (TRYLATER) without reaching the backend, and
// counts toward max_auth_failures.
func TestThrottled(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	r := newRig(t, testListener(routing.TLSNone, nil, true), backendAt(fb.Port(), routing.ForwardNone))
	r.Env.Throttle = &testrig.Throttle{All: true}
	c, _ := dial(t, r.Addr())
	for i := 0; i < 3; i++ {
		c.cmd(`AUTHENTICATE "PLAIN" "`+testrig.PlainIR("", "alice", "secret")+`"`, `NO (TRYLATER) "Too many failed logins`)
	}
	c.expect(`BYE "Too many authentication failures.`)
	if got := fb.Received(); len(got) != 0 {
		t.Fatalf("backend saw %q", got)
	}
}

// Goodbyes the Dialogue decides: inactivity, shutdown.
func TestGoodbyes(t *testing.T) {
	lis := testListener(routing.TLSNone, nil, true)
	lis.Limits.PreAuthTimeout = 200 * time.Millisecond
	r := newRig(t, lis)
	c, _ := dial(t, r.Addr())
	c.expect(`BYE "Disconnected for inactivity."`)
	c.EOF()
	if res := r.Result(); res.End.Reason != session.EndTimeout {
		t.Fatalf("end %+v", res.End)
	}

	lis2 := testListener(routing.TLSNone, nil, true)
	r2 := newRig(t, lis2)
	c2, _ := dial(t, r2.Addr())
	c2.cmd("NOOP", "OK ")
	r2.Cancel()
	c2.expect(`BYE (TRYLATER) "Server shutting down."`)
	c2.EOF()
	if res := r2.Result(); res.End.Reason != session.EndShutdown {
		t.Fatalf("end %+v", res.End)
	}
	if got := New(Options{}).TooManyConnections(); got != "BYE (TRYLATER) \"Too many connections, try again later.\"\r\n" {
		t.Fatalf("TooManyConnections %q", got)
	}
}

package sieve

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// blockAll is a throttle that blocks every attempt.
type blockAll struct{}

func (blockAll) Begin(context.Context, netip.Addr, string) (session.ThrottleAttempt, string) {
	return nil, "ip"
}

// A blocked login gets NO (TRYLATER) without reaching the backend, and
// counts toward max_auth_failures.
func TestThrottled(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	r := newRig(t, testListener(routing.TLSNone, nil, true), backendAt(fb.port(), routing.ForwardNone))
	r.env.Throttle = blockAll{}
	c, _ := dial(t, r.addr())
	for i := 0; i < 3; i++ {
		c.cmd(`AUTHENTICATE "PLAIN" "`+plainIR("", "alice", "secret")+`"`, `NO (TRYLATER) "Too many failed logins`)
	}
	c.expect(`BYE "Too many authentication failures.`)
	if got := fb.received(); len(got) != 0 {
		t.Fatalf("backend saw %q", got)
	}
}

// Goodbyes the Dialogue decides: inactivity, shutdown.
func TestGoodbyes(t *testing.T) {
	lis := testListener(routing.TLSNone, nil, true)
	lis.Limits.PreAuthTimeout = 200 * time.Millisecond
	r := newRig(t, lis)
	c, _ := dial(t, r.addr())
	c.expect(`BYE "Disconnected for inactivity."`)
	c.eof()
	if res := r.result(); res.end.Reason != session.EndTimeout {
		t.Fatalf("end %+v", res.end)
	}

	lis2 := testListener(routing.TLSNone, nil, true)
	r2 := newRig(t, lis2)
	c2, _ := dial(t, r2.addr())
	c2.cmd("NOOP", "OK ")
	r2.cancel()
	c2.expect(`BYE (TRYLATER) "Server shutting down."`)
	c2.eof()
	if res := r2.result(); res.end.Reason != session.EndShutdown {
		t.Fatalf("end %+v", res.end)
	}
	if got := New(Options{}).TooManyConnections(); got != "BYE (TRYLATER) \"Too many connections, try again later.\"\r\n" {
		t.Fatalf("TooManyConnections %q", got)
	}
}

package pop3

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

type countingDirector struct{ n atomic.Int32 }

func (d *countingDirector) Direct(context.Context, *session.Attempt) (*session.Target, error) {
	d.n.Add(1)
	return nil, &session.Refusal{Kind: session.RefuseAuth, Text: "no"}
}

// A blocked login gets -ERR [SYS/TEMP] without the Director being asked,
// with result "limit"; a failure waits for the throttle's delay; blocked
// attempts count toward max_auth_failures.
func TestThrottle(t *testing.T) {
	lis := testListener(routing.TLSNone, nil, true)
	lis.Limits.MaxAuthFailures = 3
	dir := &countingDirector{}
	lis.Director = dir
	th := &testrig.Throttle{Block: map[string]bool{"mallory": true}, Delay: 300 * time.Millisecond}
	r := newRig(t, lis, Options{})
	r.Env.Throttle = th
	c := dial(t, r.Addr())
	c.cmd("USER mallory", "+OK")
	c.cmd("PASS x", "-ERR [SYS/TEMP] Too many failed logins, try again later.\r\n")
	if n := dir.n.Load(); n != 0 {
		t.Errorf("director asked %d times for a blocked login", n)
	}
	start := time.Now()
	c.cmd("USER bob", "+OK")
	c.cmd("PASS y", "-ERR [AUTH] Authentication failed.\r\n")
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("throttle delay not applied: %v", d)
	}
	c.cmd("AUTH PLAIN "+session.PlainResponse(session.Credentials{User: "mallory", Password: "z"}), "-ERR [SYS/TEMP] Too many failed logins")
	c.expect("-ERR Too many authentication failures.\r\n")
	c.EOF()
	if res := r.Result(); res.End.Reason != session.EndTooManyAuthFailures {
		t.Errorf("session ended with %+v", res.End)
	}
	ev := r.LoginEvents()
	if len(ev) != 3 || ev[0].Result != session.ResultLimit || ev[1].Result != session.ResultBadCreds || ev[2].Result != session.ResultLimit {
		t.Errorf("login events %+v", ev)
	}
	if f := th.Failures(); len(f) != 1 || f[0] != "198.51.100.7 bob" {
		t.Errorf("failures recorded: %q", f)
	}
}

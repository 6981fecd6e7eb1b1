package pop3

import (
	"context"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// scripted refuses every attempt with the next refusal of its list.
type scripted []*session.Refusal

func (s scripted) Direct(_ context.Context, a *session.Attempt) (*session.Target, error) {
	return nil, s[(a.Number-1)%len(s)]
}

// Refusals with a client-visible text (an auth_http Auth-Status), a
// delay that keeps the session, and one that ends it.
func TestRefusalTextWaitAndClose(t *testing.T) {
	lis := testListener(routing.TLSNone, nil, true)
	lis.Limits.MaxAuthFailures = 10
	lis.Director = scripted{
		{Kind: session.RefuseAuth, Reply: "Invalid login or password", Wait: 200 * time.Millisecond},
		{Kind: session.RefuseAuth, Reply: "Go away", Close: true},
	}
	r := newRig(t, lis, Options{})
	c := dial(t, r.Addr())
	start := time.Now()
	c.cmd("USER alice", "+OK")
	c.cmd("PASS x", "-ERR Invalid login or password\r\n")
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("Auth-Wait not applied: %v", d)
	}
	c.cmd("USER alice", "+OK")
	c.cmd("PASS y", "-ERR Go away\r\n")
	c.EOF()
	if res := r.Result(); res.End.Reason != session.EndAuthRefused {
		t.Errorf("session ended with %+v", res.End)
	}
}

func TestRefusalInternal(t *testing.T) {
	lis := testListener(routing.TLSNone, nil, true)
	lis.Director = scripted{{Kind: session.RefuseInternal, Text: "auth server down"}}
	r := newRig(t, lis, Options{})
	c := dial(t, r.Addr())
	c.cmd("USER alice", "+OK")
	c.cmd("PASS x", "-ERR internal server error\r\n")
	c.EOF()
	if res := r.Result(); res.End.Reason != session.EndAuthError {
		t.Errorf("session ended with %+v", res.End)
	}
	if ev := r.LoginEvents(); len(ev) != 1 || ev[0].Result != session.ResultError {
		t.Fatalf("%+v", ev)
	}
}

// A node whose routing table has not caught up with the cluster (just
// started) answers every login "try again later" ([SYS/TEMP]), never as a
// wrong password, and does not count it toward max_auth_failures.
func TestRoutingTableNotReady(t *testing.T) {
	lis := testListener(routing.TLSNone, nil, true)
	lis.Director = session.RouteDirector{Router: routing.NewFSM()} // never loaded
	r := newRig(t, lis, Options{})
	c := dial(t, r.Addr())
	for i := 0; i <= lis.Limits.MaxAuthFailures; i++ {
		c.cmd("USER alice", "+OK")
		c.cmd("PASS secret", replyUnavailableText)
	}
	c.cmd("AUTH PLAIN "+testrig.PlainIR("", "nobody", "x"), replyUnavailableText)
	c.cmd("QUIT", "+OK")
	for _, ev := range r.LoginEvents() {
		if ev.Result != session.ResultUnavailable {
			t.Fatalf("login event %+v, want %s", ev, session.ResultUnavailable)
		}
	}
}

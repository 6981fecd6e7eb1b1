package syncer

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source"
)

// fsmOf is the node's table over a fake cluster.
type fsmOf struct{ c *fakeCluster }

func (f fsmOf) Loaded() bool          { return true }
func (f fsmOf) Table() *routing.Table { return f.c.table() }
func (f fsmOf) Route(r routing.Request) (routing.Route, error) {
	return f.c.table().Lookup(r, nil)
}
func (f fsmOf) RouteTarget(r routing.Request, tg routing.Target) (routing.Route, error) {
	return f.c.table().LookupTarget(r, tg, nil, nil)
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newMiss(t *testing.T, f *fakeSource, cl Cluster, c *fakeCluster) (*OnMiss, *Metrics, *clock) {
	t.Helper()
	met := NewMetrics(prometheus.NewRegistry())
	m := NewOnMiss(fsmOf{c}, []MissSource{{Name: "dir", Fetcher: f, Timeout: 200 * time.Millisecond, PositiveTTL: time.Minute,
		NegativeTTL: 10 * time.Second, NewBackends: DefaultNewBackends()}}, cl, nil, met)
	ck := &clock{t: time.Unix(1700000000, 0)}
	m.now = ck.now
	return m, met, ck
}

func imap(u string) routing.Request { return routing.Request{User: u, Protocol: routing.IMAP} }

// A user with a rule never asks the source; a user without one asks it
// once: the positive answer routes the login, is written through to the
// table (tagged with the source) and cached.
func TestOnMissPositive(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	if err := c.Apply(ctx, routing.Command{Type: routing.CmdPutUsers, Users: []routing.UserRoute{{User: "known", Target: routing.Target{Backend: "b1"}}}}); err != nil {
		t.Fatal(err)
	}
	f := newFake(false, source.Entry{User: "new@x", Target: "b2", Login: "newname"}, source.Entry{User: "known", Target: "b2"})
	m, met, _ := newMiss(t, f, c, c)
	if r, err := m.RouteContext(ctx, imap("known")); err != nil || r.Backend.ID != "b1" || f.lookups != 0 {
		t.Fatalf("known user: %+v %v (lookups %d)", r, err, f.lookups)
	}
	r, err := m.RouteContext(ctx, imap("NEW@x"))
	if err != nil || r.Backend.ID != "b2" || r.Login != "newname" || f.lookups != 1 {
		t.Fatalf("new user: %+v %v (lookups %d)", r, err, f.lookups)
	}
	if tg, ok := c.table().UserRoute("new@x"); !ok || tg != (routing.Target{Backend: "b2", Login: "newname", Source: "source:dir"}) {
		t.Fatalf("not written through: %+v %v", tg, ok)
	}
	if got := testutil.ToFloat64(met.lookups.WithLabelValues("dir", "found")); got != 1 {
		t.Fatalf("found metric %v", got)
	}
	// The rule is in the table now: no more lookups.
	if _, err := m.RouteContext(ctx, imap("new@x")); err != nil || f.lookups != 1 {
		t.Fatalf("second login: %v, lookups %d", err, f.lookups)
	}
	// If the rule is removed (a sync, an operator), the cached answer
	// routes the user without asking and without writing it back.
	c.t = c.t.WithoutUsers([]string{"new@x"})
	cmds := len(c.cmds)
	if r, err := m.RouteContext(ctx, imap("new@x")); err != nil || r.Backend.ID != "b2" || f.lookups != 1 || len(c.cmds) != cmds {
		t.Fatalf("cached positive: %+v %v lookups %d writes %d", r, err, f.lookups, len(c.cmds)-cmds)
	}
	if got := testutil.ToFloat64(met.lookups.WithLabelValues("dir", "cached_found")); got != 1 {
		t.Fatalf("cached_found metric %v", got)
	}
}

// A user the source does not hold is routed by the table's other rules
// (here: none, so "no route": a failed login), and the answer is cached
// for the negative TTL.
func TestOnMissNegative(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	f := newFake(false)
	m, met, ck := newMiss(t, f, c, c)
	if _, err := m.RouteContext(ctx, imap("ghost")); !errors.Is(err, routing.ErrNoRoute) || f.lookups != 1 {
		t.Fatalf("unknown user: %v (lookups %d)", err, f.lookups)
	}
	if _, err := m.RouteContext(ctx, imap("ghost")); !errors.Is(err, routing.ErrNoRoute) || f.lookups != 1 {
		t.Fatalf("cached negative: %v (lookups %d)", err, f.lookups)
	}
	if got := testutil.ToFloat64(met.lookups.WithLabelValues("dir", "cached_not_found")); got != 1 {
		t.Fatalf("cached_not_found metric %v", got)
	}
	// With a default pool, a user no source holds goes there.
	if err := c.Apply(ctx, routing.Command{Type: routing.CmdSetDefaultPool, Target: "p"}); err != nil {
		t.Fatal(err)
	}
	if r, err := m.RouteContext(ctx, imap("ghost")); err != nil || r.Rule != "default" {
		t.Fatalf("negative with a default pool: %+v %v", r, err)
	}
	// Past the negative TTL the source is asked again.
	f.set(source.Entry{User: "ghost", Target: "b1"})
	ck.t = ck.t.Add(11 * time.Second)
	if r, err := m.RouteContext(ctx, imap("ghost")); err != nil || r.Backend.ID != "b1" || f.lookups != 2 {
		t.Fatalf("after the negative TTL: %+v %v (lookups %d)", r, err, f.lookups)
	}
}

// A source that cannot answer (down, or slower than the timeout) makes
// the login unavailable, never "no route" (which would be a failed
// password); nothing is cached, so the next login asks again.
func TestOnMissUnreachable(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	if err := c.Apply(ctx, routing.Command{Type: routing.CmdSetDefaultPool, Target: "p"}); err != nil {
		t.Fatal(err)
	}
	f := newFake(false, source.Entry{User: "u", Target: "b1"})
	f.err = errors.New("ldap: connection refused")
	m, met, _ := newMiss(t, f, c, c)
	if _, err := m.RouteContext(ctx, imap("u")); !errors.Is(err, routing.ErrUnavailable) {
		t.Fatalf("source down: %v", err)
	}
	if got := testutil.ToFloat64(met.lookups.WithLabelValues("dir", "error")); got != 1 {
		t.Fatalf("error metric %v", got)
	}
	f.err = nil
	f.delay = time.Second
	start := time.Now()
	if _, err := m.RouteContext(ctx, imap("u")); !errors.Is(err, routing.ErrUnavailable) {
		t.Fatalf("source slower than the timeout: %v", err)
	}
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Fatalf("the lookup waited %s, past its 200ms timeout", d)
	}
	f.delay = 0
	if r, err := m.RouteContext(ctx, imap("u")); err != nil || r.Backend.ID != "b1" || f.lookups != 3 {
		t.Fatalf("source back: %+v %v (lookups %d)", r, err, f.lookups)
	}
}

// A positive answer naming a host no backend has adds the backend with
// the user's rule; if it cannot be written the login is unavailable. A
// failed write of a rule to an existing backend still routes the login.
func TestOnMissWriteThrough(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	f := newFake(false, source.Entry{User: "a", Target: "mail7.example"}, source.Entry{User: "b", Target: "mail8.example"}, source.Entry{User: "c", Target: "b1"})
	m, _, _ := newMiss(t, f, c, c)
	if r, err := m.RouteContext(ctx, imap("a")); err != nil || r.Backend.ID != "mail7.example" || r.Backend.IMAPPort != 143 {
		t.Fatalf("new host: %+v %v", r, err)
	}
	c.failAt = 1
	if _, err := m.RouteContext(ctx, imap("b")); !errors.Is(err, routing.ErrUnavailable) {
		t.Fatalf("new host, write failed: %v", err)
	}
	c.failAt = 1
	if r, err := m.RouteContext(ctx, imap("c")); err != nil || r.Backend.ID != "b1" {
		t.Fatalf("existing backend, write failed: %+v %v", r, err)
	}
	if _, ok := c.table().UserRoute("c"); ok {
		t.Fatal("the failed write is in the table")
	}
}

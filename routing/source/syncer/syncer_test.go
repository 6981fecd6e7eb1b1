package syncer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source"
)

// fakeSource is an in-memory directory: entries, and (feed) a change
// feed whose watermark is the number of changes made.
type fakeSource struct {
	mu      sync.Mutex
	entries map[string]source.Entry
	log     []source.Change // every change, in order
	feed    bool
	err     error // every call fails with it
	fulls   int
	changes int
	lookups int
	delay   time.Duration
}

func newFake(feed bool, es ...source.Entry) *fakeSource {
	f := &fakeSource{entries: map[string]source.Entry{}, feed: feed}
	for _, e := range es {
		f.entries[e.User] = e
	}
	return f
}

func (f *fakeSource) set(e source.Entry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries[e.User] = e
	f.log = append(f.log, source.Change{Entry: e})
}

func (f *fakeSource) del(user string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.entries, user)
	f.log = append(f.log, source.Change{Entry: source.Entry{User: user}, Deleted: true})
}

func (f *fakeSource) Full(ctx context.Context, put func(source.Entry) error) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fulls++
	if f.err != nil {
		return "", f.err
	}
	for _, e := range f.entries {
		if err := put(e); err != nil {
			return "", err
		}
	}
	if !f.feed {
		return "", nil
	}
	return fmt.Sprint(len(f.log)), nil
}

func (f *fakeSource) Changes(ctx context.Context, wm string, put func(source.Change) error) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.changes++
	if f.err != nil {
		return "", f.err
	}
	var n int
	if _, err := fmt.Sscan(wm, &n); !f.feed || err != nil || n > len(f.log) {
		return "", source.ErrNoChanges
	}
	for _, c := range f.log[n:] {
		if err := put(c); err != nil {
			return "", err
		}
	}
	return fmt.Sprint(len(f.log)), nil
}

func (f *fakeSource) Lookup(ctx context.Context, user string) (source.Entry, error) {
	f.mu.Lock()
	f.lookups++
	err, delay := f.err, f.delay
	var e source.Entry
	ok := false
	for _, x := range f.entries {
		if routing.NormalizeUser(x.User) == routing.NormalizeUser(user) {
			e, ok = x, true
		}
	}
	f.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return source.Entry{}, ctx.Err()
		}
	}
	if err != nil {
		return source.Entry{}, err
	}
	if !ok {
		return source.Entry{}, source.ErrNotFound
	}
	return e, nil
}

func (f *fakeSource) Close() error { return nil }

// fakeCluster applies commands to one table, through their wire form, as
// the FSM would, and records them.
type fakeCluster struct {
	mu   sync.Mutex
	t    *routing.Table
	cmds []routing.Command
	// failAt: the nth command from now on (1-based) fails; 0: none.
	failAt int
}

func (c *fakeCluster) Apply(_ context.Context, cmd routing.Command) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failAt > 0 {
		c.failAt--
		if c.failAt == 0 {
			return errors.New("no leader")
		}
	}
	b, err := cmd.Encode()
	if err != nil {
		return err
	}
	dec, err := routing.DecodeCommand(b)
	if err != nil {
		return err
	}
	n, err := c.t.Apply(dec)
	if err != nil {
		return err
	}
	c.t = n
	c.cmds = append(c.cmds, dec)
	return nil
}

func (c *fakeCluster) table() *routing.Table {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeCluster) count(t routing.CommandType) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, x := range c.cmds {
		if x.Type == t {
			n++
		}
	}
	return n
}

func newCluster(t *testing.T) *fakeCluster {
	t.Helper()
	tb, err := routing.NewTable(routing.TableSpec{
		Backends: []routing.Backend{{ID: "b1", Host: "10.0.0.1", IMAPPort: 143}, {ID: "b2", Host: "10.0.0.2", IMAPPort: 143, POP3Port: 110}},
		Pools:    []routing.Pool{{Name: "p", Backends: []string{"b1", "b2"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeCluster{t: tb}
}

func rule(t *testing.T, c *fakeCluster, user string) routing.Target {
	t.Helper()
	tg, ok := c.table().UserRoute(user)
	if !ok {
		t.Fatalf("no rule for %s", user)
	}
	return tg
}

func newSyncer(c *fakeCluster, f source.Fetcher, cfg Config, reg *prometheus.Registry) *Syncer {
	if cfg.Name == "" {
		cfg.Name = "dir"
	}
	if cfg.Interval == 0 {
		cfg.Interval = time.Hour
		cfg.FullInterval = 24 * time.Hour
	}
	if cfg.NewBackends == (NewBackends{}) {
		cfg.NewBackends = DefaultNewBackends()
	}
	var m *Metrics
	if reg != nil {
		m = NewMetrics(reg)
	}
	return New(cfg, f, c.table, c, nil, m)
}

// A full sync writes the source's entries tagged with it, in batches, and
// then only the difference: changed targets and renames, removals of the
// source's own rules; the sync state is recorded last.
func TestFullSyncDiffAndBatches(t *testing.T) {
	c := newCluster(t)
	f := newFake(false,
		source.Entry{User: "Alice", Target: "b1", Login: "alice.smith"},
		source.Entry{User: "bob", Target: "pool:p"},
		source.Entry{User: "carol", Target: "10.0.0.2"},
		source.Entry{User: "dave", Target: "b2"},
		source.Entry{User: "erin", Target: "b2"})
	s := newSyncer(c, f, Config{Batch: 2, MaxDeleteShare: 0.5}, nil)
	res, err := s.Sync(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Kind != "full" || res.Added != 5 || res.Removed != 0 || res.Entries != 5 {
		t.Fatalf("first sync: %+v", res)
	}
	if n := c.count(routing.CmdImport); n != 3 {
		t.Fatalf("5 users in batches of 2: %d import commands, want 3", n)
	}
	if tg := rule(t, c, "alice"); tg != (routing.Target{Backend: "b1", Login: "alice.smith", Source: "source:dir"}) {
		t.Fatalf("alice: %+v", tg)
	}
	if tg := rule(t, c, "carol"); tg.Backend != "b2" {
		t.Fatalf("carol (by host): %+v", tg)
	}
	st, ok := c.table().SourceState("dir")
	if !ok || st.LastFull == 0 || st.LastSync == 0 || st.Entries != 5 {
		t.Fatalf("state %+v %v", st, ok)
	}
	if last := c.cmds[len(c.cmds)-1]; last.Type != routing.CmdSourceState {
		t.Fatalf("the state is not written last: %s", last.Type)
	}

	// Nothing changed: only the state is written again.
	before := len(c.cmds)
	res, err = s.Sync(context.Background(), Options{})
	if err != nil || res.Unchanged != 5 || res.Added+res.Changed+res.Removed != 0 {
		t.Fatalf("unchanged: %+v %v", res, err)
	}
	if len(c.cmds) != before+1 || c.cmds[before].Type != routing.CmdSourceState {
		t.Fatalf("an unchanged source wrote %d commands", len(c.cmds)-before)
	}

	f.set(source.Entry{User: "bob", Target: "b1", Login: "robert"})
	f.del("dave")
	res, err = s.Sync(context.Background(), Options{})
	if err != nil || res.Changed != 1 || res.Removed != 1 || res.Unchanged != 3 {
		t.Fatalf("after a change and a delete: %+v %v", res, err)
	}
	if tg := rule(t, c, "bob"); tg != (routing.Target{Backend: "b1", Login: "robert", Source: "source:dir"}) {
		t.Fatalf("bob: %+v", tg)
	}
	if _, ok := c.table().UserRoute("dave"); ok {
		t.Fatal("dave was not removed")
	}
}

// A source never removes or (by default) replaces a rule it did not
// write: the API's, the file's, an import's or another source's.
func TestOwnership(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	must := func(cmd routing.Command) {
		t.Helper()
		if err := c.Apply(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	must(routing.Command{Type: routing.CmdPutUsers, Users: []routing.UserRoute{{User: "api", Target: routing.Target{Backend: "b1"}}}})
	must(routing.Command{Type: routing.CmdImport, Source: "users.map", Users: []routing.UserRoute{{User: "imported", Target: routing.Target{Backend: "b1"}}}})
	must(routing.Command{Type: routing.CmdImport, Source: Tag("other"), Users: []routing.UserRoute{{User: "others", Target: routing.Target{Backend: "b1"}}}})
	f := newFake(false, source.Entry{User: "api", Target: "b2"}, source.Entry{User: "imported", Target: "b2"},
		source.Entry{User: "others", Target: "b2"}, source.Entry{User: "mine", Target: "b2"})
	s := newSyncer(c, f, Config{MaxDeleteShare: 1}, nil)
	res, err := s.Sync(ctx, Options{})
	if err != nil || res.Shadowed != 3 || res.Added != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	for _, u := range []string{"api", "imported", "others"} {
		if tg := rule(t, c, u); tg.Backend != "b1" {
			t.Fatalf("%s was replaced: %+v", u, tg)
		}
	}
	// An empty source removes its own rule only.
	f.del("api")
	f.del("imported")
	f.del("others")
	f.del("mine")
	if res, err := s.Sync(ctx, Options{}); err != nil || res.Removed != 1 {
		t.Fatalf("%+v %v", res, err)
	}
	for _, u := range []string{"api", "imported", "others"} {
		rule(t, c, u)
	}
	// overwrite: the source's entries take the users over.
	f.set(source.Entry{User: "api", Target: "b2"})
	s2 := newSyncer(c, f, Config{Overwrite: true}, nil)
	if res, err := s2.Sync(ctx, Options{}); err != nil || res.Changed != 1 {
		t.Fatalf("overwrite: %+v %v", res, err)
	}
	if tg := rule(t, c, "api"); tg != (routing.Target{Backend: "b2", Source: "source:dir"}) {
		t.Fatalf("api with overwrite: %+v", tg)
	}
}

// The safety valve: a source that suddenly holds (almost) nothing does
// not empty the table; the refusal is counted, shown and logged, and a
// forced sync goes through. A dry run shows what would change and writes
// nothing.
func TestSafetyValve(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	f := newFake(false)
	for i := range 20 {
		f.set(source.Entry{User: fmt.Sprintf("u%02d", i), Target: "b1"})
	}
	reg := prometheus.NewRegistry()
	s := newSyncer(c, f, Config{}, reg)
	m := NewManager([]*Syncer{s}, nil)
	if _, err := s.Sync(ctx, Options{}); err != nil {
		t.Fatal(err)
	}
	// Two of 20 is 10%: allowed.
	f.del("u00")
	f.del("u01")
	if res, err := s.Sync(ctx, Options{}); err != nil || res.Removed != 2 {
		t.Fatalf("10%%: %+v %v", res, err)
	}
	for i := 2; i < 20; i++ {
		f.del(fmt.Sprintf("u%02d", i))
	}
	before := len(c.cmds)
	res, err := s.Sync(ctx, Options{})
	if !errors.Is(err, ErrRefused) || res.Removed != 18 || res.Owned != 18 || !strings.Contains(res.Refused, "18 of the source's 18") {
		t.Fatalf("emptied source: %+v %v", res, err)
	}
	if len(c.cmds) != before {
		t.Fatalf("a refused sync wrote %d commands", len(c.cmds)-before)
	}
	if got := testutil.ToFloat64(s.met.refused.WithLabelValues("dir")); got != 1 {
		t.Fatalf("refused metric %v", got)
	}
	sts, _ := m.Status("dir", c.table())
	if sts[0].Refused == "" || sts[0].Refusals != 1 || sts[0].Rules != 18 {
		t.Fatalf("status %+v", sts[0])
	}
	// A dry run says the same and lists the removals, writing nothing.
	res, err = s.Sync(ctx, Options{DryRun: true})
	if err != nil || res.Refused == "" || len(res.RemovedList) != 18 || len(c.cmds) != before {
		t.Fatalf("dry run: %+v %v", res, err)
	}
	res, err = s.Sync(ctx, Options{Force: true})
	if err != nil || res.Removed != 18 || !res.Forced {
		t.Fatalf("forced: %+v %v", res, err)
	}
	if _, _, n, _ := c.table().Len(); n != 0 {
		t.Fatalf("%d rules left after a forced sync of an empty source", n)
	}
	sts, _ = m.Status("dir", c.table())
	if sts[0].Refused != "" {
		t.Fatalf("refusal still shown after a successful sync: %+v", sts[0])
	}
}

// Incremental syncs start from the table's watermark; a new leader (a new
// syncer on the same replicated table) continues from it without reading
// the source in full, and nothing is lost or written twice.
func TestIncrementalAndLeaderChange(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	f := newFake(true, source.Entry{User: "a", Target: "b1"}, source.Entry{User: "b", Target: "b1"})
	s := newSyncer(c, f, Config{MaxDeleteShare: 1}, nil)
	if res, err := s.Sync(ctx, Options{}); err != nil || res.Kind != "full" || res.Added != 2 {
		t.Fatalf("%+v %v", res, err)
	}
	f.set(source.Entry{User: "c", Target: "b2"})
	f.set(source.Entry{User: "a", Target: "b2"})
	f.del("b")
	res, err := s.Sync(ctx, Options{})
	if err != nil || res.Kind != "incremental" || res.Added != 1 || res.Changed != 1 || res.Removed != 1 {
		t.Fatalf("incremental: %+v %v", res, err)
	}
	st, _ := c.table().SourceState("dir")
	if st.Watermark != "3" || st.Entries != 2 {
		t.Fatalf("state %+v", st)
	}
	// Nothing new: nothing written at all.
	before := len(c.cmds)
	if res, err := s.Sync(ctx, Options{}); err != nil || res.Kind != "incremental" || len(c.cmds) != before {
		t.Fatalf("idle incremental wrote %d commands: %+v %v", len(c.cmds)-before, res, err)
	}

	// A leader change after a change in the directory: the new leader's
	// syncer runs an incremental sync from the replicated watermark.
	f.set(source.Entry{User: "d", Target: "b1"})
	fulls := f.fulls
	s2 := newSyncer(c, f, Config{MaxDeleteShare: 1}, nil)
	ctx2, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s2.Run(ctx2); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := c.table().UserRoute("d"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the new leader's syncer did not write d")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if f.fulls != fulls {
		t.Fatalf("the new leader read the source in full (%d full reads)", f.fulls-fulls)
	}
	want := map[string]string{"a": "b2", "c": "b2", "d": "b1"}
	tb := c.table()
	if _, _, n, _ := tb.Len(); n != len(want) {
		t.Fatalf("%d rules, want %d", n, len(want))
	}
	for u, b := range want {
		if tg := rule(t, c, u); tg.Backend != b {
			t.Fatalf("%s: %+v", u, tg)
		}
	}
	// A full sync is due when the last one is older than full_interval.
	s2.cfg.FullInterval = time.Millisecond
	time.Sleep(2 * time.Millisecond)
	if !s2.fullDue() {
		t.Fatal("full sync not due past full_interval")
	}
}

// A sync cut off part way (the leader lost mid-write) leaves the state
// where it was: the next sync, from the old watermark, writes what was
// missing; batches are idempotent.
func TestInterruptedSync(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	f := newFake(true)
	for i := range 6 {
		f.set(source.Entry{User: fmt.Sprintf("u%d", i), Target: "b1"})
	}
	s := newSyncer(c, f, Config{Batch: 2}, nil)
	c.failAt = 2 // the second batch fails
	if _, err := s.Sync(ctx, Options{}); err == nil {
		t.Fatal("no error from a failed write")
	}
	if _, ok := c.table().SourceState("dir"); ok {
		t.Fatal("the state was written after a failed batch")
	}
	if _, _, n, _ := c.table().Len(); n != 2 {
		t.Fatalf("%d rules after the first batch", n)
	}
	res, err := s.Sync(ctx, Options{})
	if err != nil || res.Added != 4 || res.Unchanged != 2 {
		t.Fatalf("retry: %+v %v", res, err)
	}
	if _, _, n, _ := c.table().Len(); n != 6 {
		t.Fatalf("%d rules, want 6", n)
	}
}

// A source that cannot be read changes nothing; it is counted and shown.
func TestSourceError(t *testing.T) {
	c := newCluster(t)
	f := newFake(false, source.Entry{User: "a", Target: "b1"})
	reg := prometheus.NewRegistry()
	s := newSyncer(c, f, Config{}, reg)
	if _, err := s.Sync(context.Background(), Options{}); err != nil {
		t.Fatal(err)
	}
	f.err = errors.New("connection refused")
	before := len(c.cmds)
	if _, err := s.Sync(context.Background(), Options{}); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("error: %v", err)
	}
	if len(c.cmds) != before {
		t.Fatal("a failed read wrote")
	}
	if got := testutil.ToFloat64(s.met.errors.WithLabelValues("dir")); got != 1 {
		t.Fatalf("errors metric %v", got)
	}
	sts, _ := NewManager([]*Syncer{s}, nil).Status("", c.table())
	if !strings.Contains(sts[0].LastError, "connection refused") || sts[0].LastSuccess == nil || sts[0].Errors != 1 {
		t.Fatalf("status %+v", sts[0])
	}
}

// A target naming a host no backend has creates one backend for it (all
// entries naming it share it); invalid entries are skipped and keep the
// user's old rule.
func TestNewBackendsAndInvalid(t *testing.T) {
	c := newCluster(t)
	f := newFake(false,
		source.Entry{User: "a", Target: "mail9.example.org"},
		source.Entry{User: "b", Target: "mail9.example.org"},
		source.Entry{User: "c", Target: "mail9.example.org:1143"},
		source.Entry{User: "d", Target: "[2001:db8::1]:993"},
		source.Entry{User: "e", Target: "pool:nope"},
		source.Entry{User: "f", Target: "10.0.0.1:143"})
	s := newSyncer(c, f, Config{}, nil)
	res, err := s.Sync(context.Background(), Options{})
	if err != nil || res.Added != 5 || res.Invalid != 1 || len(res.NewBackends) != 3 {
		t.Fatalf("%+v %v", res, err)
	}
	tb := c.table()
	b := tb.Backend("mail9.example.org")
	if b == nil || b.IMAPPort != 143 || b.POP3Port != 110 || b.SievePort != 4190 {
		t.Fatalf("bare host backend %+v", b)
	}
	if rule(t, c, "a").Backend != b.ID || rule(t, c, "b").Backend != b.ID {
		t.Fatal("a and b do not share the new backend")
	}
	if b := tb.Backend("mail9.example.org_1143"); b == nil || b.IMAPPort != 1143 || b.POP3Port != 0 {
		t.Fatalf("host:port backend %+v", b)
	}
	if b := tb.Backend("2001_db8__1_993"); b == nil || b.Host != "2001:db8::1" || b.IMAPPort != 993 {
		t.Fatalf("IPv6 backend %+v", tb.Backends())
	}
	if rule(t, c, "f").Backend != "b1" {
		t.Fatal("host:port of an existing backend made a new one")
	}
	if !strings.Contains(res.InvalidList[0], `unknown pool "nope"`) {
		t.Fatalf("invalid list %v", res.InvalidList)
	}
	// Off: unknown hosts are invalid.
	c2 := newCluster(t)
	s2 := newSyncer(c2, f, Config{NewBackends: NewBackends{Off: true}}, nil)
	if res, err := s2.Sync(context.Background(), Options{}); err != nil || res.Invalid != 5 || len(res.NewBackends) != 0 {
		t.Fatalf("off: %+v %v", res, err)
	}
	// A backend id taken by another address gets a suffix.
	r := newResolver(tb, DefaultNewBackends())
	r.t, _ = tb.WithBackend(routing.Backend{ID: "x.example_25", Host: "10.9.9.9", IMAPPort: 143})
	tg, err := r.resolve(source.Entry{User: "z", Target: "x.example:25"})
	if err != nil || tg.Backend != "x.example_25-2" {
		t.Fatalf("%+v %v", tg, err)
	}
}

// Manager.Sync runs only while leading.
func TestManagerLeadership(t *testing.T) {
	c := newCluster(t)
	f := newFake(false, source.Entry{User: "a", Target: "b1"})
	s := newSyncer(c, f, Config{}, nil)
	m := NewManager([]*Syncer{s}, nil)
	if _, err := m.Sync(context.Background(), "dir", Options{}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("follower: %v", err)
	}
	if _, err := m.Sync(context.Background(), "nope", Options{}); !errors.Is(err, ErrUnknownSource) {
		t.Fatalf("unknown: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for !m.Leading() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	res, err := m.Sync(context.Background(), "dir", Options{DryRun: true})
	if err != nil || res.Kind != "full" || !res.DryRun {
		t.Fatalf("%+v %v", res, err)
	}
	cancel()
	<-done
	if m.Leading() {
		t.Fatal("still leading after the term ended")
	}
}

// splitTarget reads what a directory says a server is; whatever it
// accepts makes a valid backend or an error, never a panic.
func FuzzSplitTarget(f *testing.F) {
	for _, s := range []string{"mail.example", "mail.example:1143", "[2001:db8::1]:993", "2001:db8::1", "[::1]", "h:0", "h:x", ":1", "a b"} {
		f.Add(s)
	}
	tb, _ := routing.NewTable(routing.TableSpec{})
	f.Fuzz(func(t *testing.T, s string) {
		host, port, err := splitTarget(s)
		if err != nil {
			return
		}
		if host == "" || port < 0 || port > 65535 {
			t.Fatalf("%q: host %q port %d", s, host, port)
		}
		r := newResolver(tb, DefaultNewBackends())
		if b, err := r.newBackend(s); err == nil {
			if _, err := tb.WithBackend(*b); err != nil {
				t.Fatalf("%q made an invalid backend %+v: %v", s, b, err)
			}
		}
	})
}

package syncer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source"
)

func TestPauseAfter(t *testing.T) {
	for _, c := range []struct {
		d     time.Duration
		share float64
		want  time.Duration
	}{
		{100 * time.Millisecond, 0.5, 100 * time.Millisecond},
		{100 * time.Millisecond, 0.25, 300 * time.Millisecond},
		{100 * time.Millisecond, 0.8, 25 * time.Millisecond},
		{100 * time.Millisecond, 1, 0},
		{0, 0.5, 0},
		{4 * time.Second, 0.5, 4 * time.Second},
		{10 * time.Second, 0.5, MaxPause},
		{time.Second, 0.05, MaxPause},
	} {
		if got := pauseAfter(c.d, c.share); got != c.want {
			t.Errorf("pauseAfter(%v, %g) = %v, want %v", c.d, c.share, got, c.want)
		}
	}
}

// clockCluster is an applier on a fake clock: each command "takes" the
// next of costs (cycled) by moving the clock, and a second command
// arriving while one is being applied is recorded as an overlap.
type clockCluster struct {
	*fakeCluster
	mu       sync.Mutex
	clock    time.Time
	costs    []time.Duration
	n        int
	inFlight atomic.Int32
	overlaps atomic.Int32
	// events: "apply" and "sleep <d>" in the order they happened.
	events []string
}

func (c *clockCluster) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.clock
}

func (c *clockCluster) Apply(ctx context.Context, cmd routing.Command) error {
	if c.inFlight.Add(1) > 1 {
		c.overlaps.Add(1)
	}
	defer c.inFlight.Add(-1)
	c.mu.Lock()
	c.clock = c.clock.Add(c.costs[c.n%len(c.costs)])
	c.n++
	c.events = append(c.events, "apply")
	c.mu.Unlock()
	return c.fakeCluster.Apply(ctx, cmd)
}

func (c *clockCluster) sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock = c.clock.Add(d)
	c.events = append(c.events, fmt.Sprint("sleep ", d))
	return ctx.Err()
}

func entriesN(n int) []source.Entry {
	es := make([]source.Entry, n)
	for i := range es {
		es[i] = source.Entry{User: fmt.Sprintf("u%03d", i), Target: "b1"}
	}
	return es
}

// The commands of a sync are written one at a time, and after each the
// next waits the pause its measured cost calls for: cost*(1-share)/share.
func TestSyncPaced(t *testing.T) {
	for _, share := range []float64{0.5, 0.25, 1} {
		t.Run(fmt.Sprint(share), func(t *testing.T) {
			costs := []time.Duration{40 * time.Millisecond, 10 * time.Millisecond, 70 * time.Millisecond}
			c := &clockCluster{fakeCluster: newCluster(t), clock: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), costs: costs}
			reg := prometheus.NewRegistry()
			var m *Metrics
			s := New(Config{Name: "dir", Interval: time.Hour, FullInterval: 24 * time.Hour, Batch: 10, WorkShare: share,
				NewBackends: DefaultNewBackends()}, newFake(true, entriesN(95)...), c.table, c, nil, nil)
			m = NewMetrics(reg)
			s.met = m
			s.now, s.sleep = c.now, c.sleep
			res, err := s.Sync(context.Background(), Options{})
			if err != nil {
				t.Fatal(err)
			}
			// 10 batches of users, then the state.
			if res.Added != 95 || res.Commands != 11 || len(c.cmds) != 11 {
				t.Fatalf("added %d in %d commands (%d applied)", res.Added, res.Commands, len(c.cmds))
			}
			if n := c.overlaps.Load(); n != 0 {
				t.Fatalf("%d commands applied while another was in flight", n)
			}
			var want []string
			var paused, writing time.Duration
			for i := range 11 {
				if i > 0 {
					if p := pauseAfter(costs[(i-1)%len(costs)], share); p > 0 {
						want = append(want, fmt.Sprint("sleep ", p))
						paused += p
					}
				}
				want = append(want, "apply")
				writing += costs[i%len(costs)]
			}
			if fmt.Sprint(c.events) != fmt.Sprint(want) {
				t.Fatalf("events\n %v\nwant\n %v", c.events, want)
			}
			if share == 1 && paused != 0 {
				t.Fatal("share 1 paused")
			}
			if res.Paused != paused.Seconds() || res.Writing != writing.Seconds() {
				t.Fatalf("paused %gs writing %gs, want %v %v", res.Paused, res.Writing, paused, writing)
			}
			if res.Duration != (paused + writing).Seconds() {
				t.Fatalf("duration %gs, want %v", res.Duration, paused+writing)
			}
			// Applying took share of the wall time (the last command's
			// pause is not taken: nothing follows it).
			last := pauseAfter(costs[10%len(costs)], share)
			if got := writing.Seconds() / (paused + writing + last).Seconds(); share < 1 && (got < share-1e-9 || got > share+1e-9) {
				t.Fatalf("applying took %.3f of the time, want %g", got, share)
			}
			if got := testutil.ToFloat64(m.batches.WithLabelValues("dir")); got != 11 {
				t.Fatalf("batches metric %g", got)
			}
			if got := testutil.ToFloat64(m.pause.WithLabelValues("dir")); got < paused.Seconds()-1e-9 || got > paused.Seconds()+1e-9 {
				t.Fatalf("pause metric %g, want %g", got, paused.Seconds())
			}
		})
	}
}

// On the real clock: the commands never overlap, and the time between
// one command's return and the next one's start is at least the pause
// its cost called for (only lower bounds: a busy machine is slower,
// never faster).
func TestSyncPacedRealClock(t *testing.T) {
	const cost = 15 * time.Millisecond
	c := &timedCluster{fakeCluster: newCluster(t), cost: cost}
	s := newSyncer(c.fakeCluster, newFake(false, entriesN(40)...), Config{Batch: 10, WorkShare: 0.5}, nil)
	s.cl = c
	start := time.Now()
	res, err := s.Sync(context.Background(), Options{})
	wall := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if res.Commands != 5 || len(c.spans) != 5 {
		t.Fatalf("%d commands, %d applied", res.Commands, len(c.spans))
	}
	var gaps time.Duration
	for i := 1; i < len(c.spans); i++ {
		gap := c.spans[i].start.Sub(c.spans[i-1].end)
		if gap < 0 {
			t.Fatalf("command %d started %v before command %d returned", i, -gap, i-1)
		}
		// Each command took at least cost, so each pause is at least
		// as long (share 0.5).
		if gap < cost {
			t.Fatalf("command %d started %v after the previous one, want at least %v", i, gap, cost)
		}
		gaps += gap
	}
	if paused := time.Duration(res.Paused * float64(time.Second)); paused < 4*cost || paused > gaps {
		t.Fatalf("paused %v: want at least %v and at most the gaps' %v", paused, 4*cost, gaps)
	}
	if wall < 9*cost {
		t.Fatalf("the sync took %v, less than its 5 applies and 4 pauses", wall)
	}
}

type span struct{ start, end time.Time }

// timedCluster takes at least cost per command, on the real clock, and
// records when each ran; a command arriving while another is in flight
// fails the sync.
type timedCluster struct {
	*fakeCluster
	cost     time.Duration
	inFlight atomic.Int32
	spans    []span
}

func (c *timedCluster) Apply(ctx context.Context, cmd routing.Command) error {
	if c.inFlight.Add(1) > 1 {
		return errors.New("two commands in flight")
	}
	defer c.inFlight.Add(-1)
	sp := span{start: time.Now()}
	time.Sleep(c.cost)
	err := c.fakeCluster.Apply(ctx, cmd)
	sp.end = time.Now()
	c.spans = append(c.spans, sp)
	return err
}

// Leadership lost during a pause ends the sync at once: nothing more is
// written, the state (watermark) is not, and the next leader's sync
// writes only what is missing.
func TestSyncCancelledDuringPause(t *testing.T) {
	c := &clockCluster{fakeCluster: newCluster(t), clock: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), costs: []time.Duration{10 * time.Millisecond}}
	f := newFake(true, entriesN(30)...)
	ctx, cancel := context.WithCancel(context.Background())
	s := newSyncer(c.fakeCluster, f, Config{Batch: 10}, nil)
	s.cl = c
	var sleeps int
	s.now = c.now
	s.sleep = func(ctx context.Context, d time.Duration) error {
		sleeps++
		if sleeps == 2 {
			cancel() // the term ends while the leader waits
		}
		return c.sleep(ctx, d)
	}
	if _, err := s.Sync(ctx, Options{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if len(c.cmds) != 2 {
		t.Fatalf("%d commands written, want the 2 before the cut", len(c.cmds))
	}
	if _, ok := c.table().SourceState("dir"); ok {
		t.Fatal("the state was written by a cut-off sync")
	}
	// The next leader: the 20 users already written stay, the rest is
	// written, in one batch.
	before := len(c.cmds)
	res, err := newSyncer(c.fakeCluster, f, Config{Batch: 10}, nil).Sync(context.Background(), Options{})
	if err != nil || res.Added != 10 || res.Unchanged != 20 || len(c.cmds)-before != 2 {
		t.Fatalf("%+v %v; %d commands", res, err, len(c.cmds)-before)
	}
}

// slowSource takes a fake clock's perEntry for each entry it reads.
type slowSource struct {
	*fakeSource
	c        *clockCluster
	perEntry time.Duration
}

func (f slowSource) Full(ctx context.Context, put func(source.Entry) error) (string, error) {
	return f.fakeSource.Full(ctx, func(e source.Entry) error {
		f.c.mu.Lock()
		f.c.clock = f.c.clock.Add(f.perEntry)
		f.c.mu.Unlock()
		return put(e)
	})
}

// Reading and diffing a large source is work too: the sync pauses while
// it reads, each time it has worked for a slice, in proportion.
func TestSyncPacedRead(t *testing.T) {
	c := &clockCluster{fakeCluster: newCluster(t), clock: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), costs: []time.Duration{time.Millisecond}}
	const n = 20 * stepCheck
	f := slowSource{fakeSource: newFake(true, entriesN(n)...), c: c, perEntry: 50 * time.Microsecond}
	s := newSyncer(c.fakeCluster, f, Config{Batch: 1 << 20, WorkShare: 0.25}, nil)
	s.cl, s.now, s.sleep = c, c.now, c.sleep
	res, err := s.Sync(context.Background(), Options{})
	if err != nil || res.Added != n || res.Commands != 2 {
		t.Fatalf("%+v %v", res, err)
	}
	// Reading took n*50µs = 256 ms of (fake) time, looked at every
	// stepCheck entries (12.8 ms): a pause of three times the work
	// each time it passed workSlice, then the batch, its pause, the
	// state.
	slice := stepCheck * 50 * time.Microsecond
	perPause := 2 * slice // the first look past workSlice
	var want []string
	for range n / stepCheck / 2 {
		want = append(want, fmt.Sprint("sleep ", 3*perPause))
	}
	want = append(want, "apply", fmt.Sprint("sleep ", 3*time.Millisecond), "apply")
	if fmt.Sprint(c.events) != fmt.Sprint(want) {
		t.Fatalf("events\n %v\nwant\n %v", c.events, want)
	}
	if c.overlaps.Load() != 0 {
		t.Fatal("commands overlapped")
	}
}

package affinity

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTable(c *fakeClock, expire time.Duration) *Table {
	return New(Config{Expire: expire}, c.now)
}

func want(t *testing.T, tb *Table, user string, backends ...string) {
	t.Helper()
	if got := tb.Backends(user); !slices.Equal(got, backends) {
		t.Fatalf("Backends(%s) = %v, want %v", user, got, backends)
	}
}

// A binding lives while its sessions do and for Expire after the last one
// ended; the sweep then removes it.
func TestBindExpire(t *testing.T) {
	c := newClock()
	tb := newTable(c, time.Minute)
	want(t, tb, "alice")
	end1 := tb.Bind("Alice@Example.com", "b", false)
	end2 := tb.Bind("alice@example.com", "b", false)
	want(t, tb, "ALICE@example.COM", "b")
	if l, r := tb.Counts(); l != 1 || r != 0 {
		t.Fatalf("counts %d %d", l, r)
	}
	end1()
	end1() // a second call does nothing
	c.add(10 * time.Minute)
	want(t, tb, "alice@example.com", "b") // one session still open
	end2()
	c.add(59 * time.Second)
	want(t, tb, "alice@example.com", "b")
	c.add(time.Second)
	want(t, tb, "alice@example.com")
	tb.sweep()
	if l, _ := tb.Counts(); l != 0 {
		t.Fatalf("after the sweep: %d local bindings", l)
	}
	// A new session binds again.
	end := tb.Bind("alice@example.com", "a", false)
	want(t, tb, "alice@example.com", "a")
	end()
}

// Live bindings come before ended ones, then the latest established; the
// same backend on several nodes counts once.
func TestPreference(t *testing.T) {
	c := newClock()
	tb := newTable(c, time.Hour)
	endB := tb.Bind("u", "b", false)
	c.add(time.Second)
	endC := tb.Bind("u", "c", true)
	want(t, tb, "u", "c", "b") // both live: the later first
	endC()
	want(t, tb, "u", "b", "c") // live before ended
	endB()
	want(t, tb, "u", "c", "b") // both ended: the later established first
	if tb.Steered() != 1 {
		t.Fatalf("steered %d, want 1", tb.Steered())
	}
	// A binding ended and made live again is established anew.
	c.add(time.Second)
	endB = tb.Bind("u", "b", false)
	endB()
	want(t, tb, "u", "b", "c")
}

// Clear drops the user's bindings; sessions still open no longer bind,
// and their end changes nothing; new sessions bind again.
func TestClear(t *testing.T) {
	c := newClock()
	tb := newTable(c, time.Hour)
	end := tb.Bind("u", "b", false)
	other := tb.Bind("v", "b", false)
	defer other()
	c.add(time.Millisecond)
	tb.Clear("U")
	want(t, tb, "u")
	want(t, tb, "v", "b")
	c.add(time.Millisecond)
	end2 := tb.Bind("u", "a", false)
	end() // the cleared session ends: nothing happens
	want(t, tb, "u", "a")
	end2()
	want(t, tb, "u", "a")
	if l, _ := tb.Counts(); l != 2 {
		t.Fatalf("%d local bindings, want 2", l)
	}
}

// When the table is full, ended bindings make room for new ones; live
// ones are never dropped.
func TestMakeRoom(t *testing.T) {
	c := newClock()
	tb := New(Config{Expire: time.Hour, MaxEntries: 10}, c.now)
	var ends []func()
	for i := 0; i < 10; i++ {
		ends = append(ends, tb.Bind(fmt.Sprint("live", i), "b", false))
	}
	for i := 0; i < 10; i++ {
		tb.Bind(fmt.Sprint("more", i), "b", false)
	}
	if l, _ := tb.Counts(); l != 20 {
		t.Fatalf("live bindings: %d, want 20 (never dropped)", l)
	}
	for _, end := range ends {
		end()
	}
	// Full with 10 ended ones: a new binding takes the place of one of
	// the ended ones in its shard, if there is one.
	before, _ := tb.Counts()
	grew := 0
	for i := 0; i < 50; i++ {
		tb.Bind(fmt.Sprint("new", i), "b", false)
		l, _ := tb.Counts()
		if l > before {
			grew++
		}
		before = l
	}
	if l, _ := tb.Counts(); l > 20+50 || grew == 50 {
		t.Fatalf("no ended binding made room: %d bindings", l)
	}
	for i := 0; i < 10; i++ {
		want(t, tb, fmt.Sprint("more", i), "b")
	}
}

// The lookup a login makes: a user without bindings (the common case) and
// one with.
func BenchmarkBackends(b *testing.B) {
	tb := New(Config{}, nil)
	for i := 0; i < 10000; i++ {
		tb.Bind(fmt.Sprintf("user%d@example.com", i), "imap1", false)
	}
	b.Run("unbound", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			tb.Backends("someone@example.com")
		}
	})
	b.Run("bound", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			tb.Backends("user42@example.com")
		}
	})
}

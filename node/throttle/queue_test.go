package throttle

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// waitersFor returns how many attempts wait in the queue of attacker's
// network key (the user does not matter).
func (l *Limiter) waitersFor(t *testing.T, user string) int {
	t.Helper()
	cfg := l.cfg.Load()
	kIP, _, _ := l.keys(attacker, user, cfg)
	l.flightMu.Lock()
	defer l.flightMu.Unlock()
	if f := l.flights[kIP]; f != nil {
		return len(f.waiters)
	}
	return 0
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// Many clients behind one address, logging in at once (a reconnect
// storm): each attempt that ends lets exactly one waiter through, in the
// order they came; the others are not woken for nothing.
func TestBeginWakesOneWaiterPerEnd(t *testing.T) {
	cfg := testConfig()
	cfg.IPLimit = 3
	l, _ := newTest(t, cfg)
	var inFlight []Pending
	for i := range 3 {
		p, s := l.Begin(context.Background(), attacker, fmt.Sprintf("u%d", i))
		if s != "" {
			t.Fatal(s)
		}
		inFlight = append(inFlight, p)
	}
	const n = 20
	admitted := make(chan int, n)
	pend := make([]Pending, n)
	for i := range n {
		go func() {
			p, s := l.Begin(context.Background(), attacker, fmt.Sprintf("w%d", i))
			if s != "" {
				t.Errorf("waiter %d refused: %s", i, s)
				return
			}
			pend[i] = p
			admitted <- i
		}()
		waitUntil(t, fmt.Sprintf("waiter %d queued", i), func() bool { return l.waitersFor(t, "w") == i+1 })
	}
	for i := range n {
		// One attempt in flight succeeds: one waiter goes, the first.
		inFlight[0].Succeeded()
		inFlight = inFlight[1:]
		select {
		case got := <-admitted:
			if got != i {
				t.Fatalf("waiter %d went before waiter %d", got, i)
			}
			inFlight = append(inFlight, pend[got])
		case <-time.After(5 * time.Second):
			t.Fatalf("no waiter went after an attempt ended (round %d)", i)
		}
		select {
		case got := <-admitted:
			t.Fatalf("a second waiter (%d) went for one ended attempt", got)
		case <-time.After(10 * time.Millisecond):
		}
		if w := l.waitersFor(t, "w"); w != n-i-1 {
			t.Fatalf("%d waiting after round %d, want %d", w, i, n-i-1)
		}
	}
	for _, p := range inFlight {
		p.Succeeded()
	}
	checkNoFlights(t, l)
}

// A waiter woken by a place freed on its network but still held back by
// its user's own attempt in flight passes the place on to the next
// waiter, which must not wait for nothing.
func TestBeginPassesWakeOn(t *testing.T) {
	cfg := testConfig()
	cfg.IPLimit = 2
	cfg.UserIPLimit = 1
	l, _ := newTest(t, cfg)
	pA, _ := l.Begin(context.Background(), attacker, "a")
	pB, _ := l.Begin(context.Background(), attacker, "b")
	if pA == nil || pB == nil {
		t.Fatal("refused")
	}
	type res struct {
		who string
		p   Pending
	}
	got := make(chan res, 2)
	for _, u := range []string{"a", "c"} {
		go func() {
			p, s := l.Begin(context.Background(), attacker, u)
			if s != "" {
				t.Errorf("%s refused: %s", u, s)
			}
			got <- res{u, p}
		}()
		want := 1
		if u == "c" {
			want = 2
		}
		waitUntil(t, u+" queued", func() bool { return l.waitersFor(t, "x") == want })
	}
	pB.Succeeded() // a place on the network: "a" first, held back by its own "a" in flight
	var c res
	select {
	case c = <-got:
		if c.who != "c" {
			t.Fatalf("%s went while its user had an attempt in flight", c.who)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the freed place was lost: nobody went")
	}
	pA.Succeeded()
	select {
	case a := <-got:
		if a.who != "a" {
			t.Fatal(a.who)
		}
		a.p.Succeeded()
	case <-time.After(5 * time.Second):
		t.Fatal("a still waiting after its own attempt ended")
	}
	c.p.Succeeded()
	checkNoFlights(t, l)
}

// A waiter that gives up (its context ends) leaves the queue; the place
// that frees later goes to the next one.
func TestBeginCancelledWaiterPassesOn(t *testing.T) {
	cfg := testConfig()
	cfg.IPLimit = 1
	l, _ := newTest(t, cfg)
	p1, _ := l.Begin(context.Background(), attacker, "u1")
	ctx, cancel := context.WithCancel(context.Background())
	gone := make(chan string, 1)
	go func() {
		_, s := l.Begin(ctx, attacker, "u2")
		gone <- s
	}()
	waitUntil(t, "u2 queued", func() bool { return l.waitersFor(t, "x") == 1 })
	next := make(chan Pending, 1)
	go func() {
		p, _ := l.Begin(context.Background(), attacker, "u3")
		next <- p
	}()
	waitUntil(t, "u3 queued", func() bool { return l.waitersFor(t, "x") == 2 })
	cancel()
	if s := <-gone; s != ScopeIP {
		t.Fatalf("cancelled waiter: %q", s)
	}
	p1.Succeeded()
	select {
	case p := <-next:
		p.Succeeded()
	case <-time.After(5 * time.Second):
		t.Fatal("u3 was never let through")
	}
	checkNoFlights(t, l)
}

package throttle

import (
	"context"
	"fmt"
	"math/rand"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// burst runs n parallel attempts through Begin; each that is let through
// "asks the backend" (counted in asked) and then ends with outcome. It
// returns how many were asked.
func burst(t *testing.T, l *Limiter, n int, ip func(i int) netip.Addr, user func(i int) string, outcome func(p Pending)) int {
	t.Helper()
	var asked atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			p, scope := l.Begin(ctx, ip(i), user(i))
			if scope != "" {
				if p != nil {
					t.Errorf("refused (%s) with a Pending", scope)
				}
				return
			}
			asked.Add(1)
			time.Sleep(time.Millisecond) // the backend takes a moment
			outcome(p)
		}()
	}
	close(start)
	wg.Wait()
	return int(asked.Load())
}

func checkNoFlights(t *testing.T, l *Limiter) {
	t.Helper()
	if n := l.InFlight(); n != 0 {
		t.Errorf("%d attempts still in flight", n)
	}
	l.flightMu.Lock()
	defer l.flightMu.Unlock()
	if len(l.flights) != 0 {
		t.Errorf("%d in-flight keys left", len(l.flights))
	}
}

// Issue 10: 60 wrong passwords for one user sent at once from one address
// reach the backend at most user_ip_limit times, and the rest are refused.
func TestBeginHoldsParallelBurstToLimit(t *testing.T) {
	l, _ := newTest(t, testConfig()) // user_ip 10, ip 50
	asked := burst(t, l, 60, func(int) netip.Addr { return attacker }, func(int) string { return "alice" },
		func(p Pending) { p.Failed() })
	if asked != 10 {
		t.Errorf("backend asked %d times, want exactly the limit 10", asked)
	}
	if s := l.Blocked(attacker, "alice"); s != ScopeUserIP {
		t.Errorf("after the burst: %q", s)
	}
	checkNoFlights(t, l)
	if h := l.stats.held.Load(); h == 0 {
		t.Error("no attempt was held")
	}
}

// Many users from one network: held to ip_limit.
func TestBeginHoldsNetworkBurst(t *testing.T) {
	cfg := testConfig()
	cfg.IPLimit = 7
	l, _ := newTest(t, cfg)
	asked := burst(t, l, 40, func(int) netip.Addr { return attacker }, func(i int) string { return fmt.Sprint("u", i) },
		func(p Pending) { p.Failed() })
	if asked != 7 {
		t.Errorf("backend asked %d times, want the ip limit 7", asked)
	}
	checkNoFlights(t, l)
}

// While the user is under attack, a network gets under_attack_limit
// attempts, in parallel too.
func TestBeginUnderAttackBurst(t *testing.T) {
	cfg := testConfig()
	cfg.UserLimit = 5
	cfg.UnderAttackLimit = 2
	l, _ := newTest(t, cfg)
	for i := 0; i < 5; i++ {
		l.Failed(netip.AddrFrom4([4]byte{10, 9, 0, byte(i)}), "alice")
	}
	asked := burst(t, l, 30, func(int) netip.Addr { return attacker }, func(int) string { return "alice" },
		func(p Pending) { p.Failed() })
	if asked != 2 {
		t.Errorf("backend asked %d times, want under_attack_limit 2", asked)
	}
	checkNoFlights(t, l)
}

// Correct passwords in parallel all go through: a success clears the
// user's count, so attempts held behind it proceed.
func TestBeginParallelSuccesses(t *testing.T) {
	cfg := testConfig()
	cfg.UserIPLimit = 3
	l, _ := newTest(t, cfg)
	asked := burst(t, l, 30, func(int) netip.Addr { return home }, func(int) string { return "alice" },
		func(p Pending) { p.Succeeded() })
	if asked != 30 {
		t.Errorf("%d of 30 good logins went through", asked)
	}
	checkNoFlights(t, l)
}

// A held attempt waits for one in flight and proceeds when it ends without
// a verdict (backend unavailable); it is refused when its context ends
// first.
func TestBeginWaitsAndTimesOut(t *testing.T) {
	cfg := testConfig()
	cfg.UserIPLimit = 3
	l, _ := newTest(t, cfg)
	l.Failed(attacker, "alice")
	l.Failed(attacker, "alice")
	p1, s := l.Begin(context.Background(), attacker, "alice")
	if s != "" {
		t.Fatalf("first attempt refused: %s", s)
	}
	// 2 failures + 1 in flight = the limit: the next one waits.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if p, s := l.Begin(ctx, attacker, "alice"); s != ScopeUserIP || p != nil {
		t.Fatalf("held attempt after its context ended: %v %q", p, s)
	}
	got := make(chan string, 1)
	go func() {
		p, s := l.Begin(context.Background(), attacker, "alice")
		if p != nil {
			p.Release()
		}
		got <- s
	}()
	select {
	case s := <-got:
		t.Fatalf("not held: %q", s)
	case <-time.After(50 * time.Millisecond):
	}
	p1.Release() // e.g. the backend was unavailable
	select {
	case s := <-got:
		if s != "" {
			t.Fatalf("refused after the attempt in flight ended: %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("still held after the attempt in flight ended")
	}
	checkNoFlights(t, l)
}

// No reservation leaks, whatever the outcomes: failures, successes,
// releases, ends called twice, contexts ending while held, a reload that
// changes what a network is, and trusted or disabled throttles.
func TestBeginNoLeak(t *testing.T) {
	cfg := testConfig()
	cfg.UserIPLimit = 4
	cfg.IPLimit = 12
	l, _ := newTest(t, cfg)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(g)))
			for i := 0; i < 300; i++ {
				ip := netip.AddrFrom4([4]byte{198, 51, 100, byte(rng.Intn(3))})
				if rng.Intn(10) == 0 {
					ip = netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", rng.Intn(3)))
				}
				user := fmt.Sprint("u", rng.Intn(4))
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.Intn(3))*time.Millisecond)
				p, scope := l.Begin(ctx, ip, user)
				cancel()
				if scope != "" {
					continue
				}
				switch rng.Intn(5) {
				case 0:
					p.Failed()
				case 1:
					p.Succeeded()
				case 2:
					p.Release()
				case 3:
					p.Failed()
					p.Release()
					p.Succeeded()
				case 4:
					defer p.Release()
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 20; i++ {
			c := cfg
			c.IPv6Prefix = 64 + 16*(i%2)
			c.Enabled = i%5 != 4
			l.SetConfig(c)
			time.Sleep(time.Millisecond)
		}
	}()
	wg.Wait()
	checkNoFlights(t, l)
}

// Exempt attempts are not counted at all.
func TestBeginExempt(t *testing.T) {
	cfg := testConfig()
	cfg.UserIPLimit = 1
	cfg.Trusted = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	l, _ := newTest(t, cfg)
	for i := 0; i < 5; i++ {
		p, s := l.Begin(context.Background(), home, "alice")
		if s != "" {
			t.Fatalf("trusted network refused: %s", s)
		}
		p.Failed()
	}
	if l.InFlight() != 0 || total(l) != 0 {
		t.Errorf("trusted attempts counted: %d in flight, %d entries", l.InFlight(), total(l))
	}
}

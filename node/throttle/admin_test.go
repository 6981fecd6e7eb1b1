package throttle

import (
	"net/netip"
	"testing"
	"time"
)

// List shows what is tracked without user names; Unblock lifts exactly
// the entries its filter selects, and the reset reaches the other nodes.
func TestListAndUnblock(t *testing.T) {
	cfg := testConfig()
	cfg.UserIPLimit = 3
	cfg.IPLimit = 5
	clk := newClock()
	a, b := New(cfg, clk.now), New(cfg, clk.now)
	var bs bus
	bs.join(a)
	bs.join(b)
	for i := 0; i < 3; i++ {
		b.Failed(attacker, "alice") // alice blocked from the attacker's network
	}
	b.Failed(home, "bob")
	b.Failed(attacker, "carol")
	b.flush()
	if s := a.Blocked(attacker, "alice"); s != ScopeUserIP {
		t.Fatalf("a: alice from the attacker: %q", s)
	}
	now := clk.now()

	all := a.List(Filter{})
	// ip: attacker (4 failures), home (1); user_ip: alice, bob, carol; user: alice, bob, carol.
	if len(all) != 8 {
		t.Fatalf("%d entries, want 8: %+v", len(all), all)
	}
	if e := all[0]; !e.Blocked(now) || e.Scope != ScopeUserIP || e.UserHash != UserHash("ALICE") ||
		e.Network != netip.MustParsePrefix("198.51.100.7/32") || e.Failures != 3 {
		t.Fatalf("first entry is not alice's block: %+v", e)
	}
	for _, e := range all[1:] {
		if e.Blocked(now) {
			t.Errorf("only one block expected: %+v", e)
		}
	}
	alice := a.List(Filter{User: "alice"})
	if len(alice) != 2 || alice[0].Scope != ScopeUserIP || alice[1].Scope != ScopeUser {
		t.Fatalf("alice's entries: %+v", alice)
	}
	if got := a.List(Filter{IP: attacker}); len(got) != 3 { // ip + alice's and carol's user_ip
		t.Fatalf("the attacker's network: %+v", got)
	}
	if got := a.List(Filter{IP: attacker, User: "carol"}); len(got) != 1 || got[0].Scope != ScopeUserIP || got[0].Failures != 1 {
		t.Fatalf("carol from the attacker: %+v", got)
	}

	if n := a.Unblock(Filter{}); n != 0 {
		t.Fatalf("a zero filter unblocked %d", n)
	}
	clk.advance(time.Second)
	if n := a.Unblock(Filter{User: "Alice"}); n != 2 {
		t.Fatalf("unblocked %d of alice's 2 entries", n)
	}
	a.flush()
	for i, l := range []*Limiter{a, b} {
		if s := l.Blocked(attacker, "alice"); s != "" {
			t.Errorf("node %d: alice still blocked (%s)", i, s)
		}
		if got := l.List(Filter{User: "alice"}); len(got) != 0 {
			t.Errorf("node %d: alice's entries after the unblock: %+v", i, got)
		}
		// The others are untouched: the network's own count stays.
		if got := l.List(Filter{IP: attacker, User: "carol"}); len(got) != 1 {
			t.Errorf("node %d: carol's entry went too: %+v", i, got)
		}
		if got := l.List(Filter{IP: attacker}); len(got) != 2 || got[0].Scope != ScopeIP || got[0].Failures != 4 {
			t.Errorf("node %d: the network's entries: %+v", i, got)
		}
	}
	// A network: its ip and user_ip entries.
	if n := b.Unblock(Filter{IP: attacker}); n != 2 {
		t.Fatalf("unblocked %d entries of the attacker's network, want 2", n)
	}
	if got := b.List(Filter{IP: attacker}); len(got) != 0 {
		t.Fatalf("left: %+v", got)
	}
}

package vip

import (
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Inputs
		want Decision
	}{
		{"follower without the VIP", Inputs{}, Keep},
		{"leader holding it", Inputs{Owned: true, Leader: true, Leading: true}, Keep},
		{"holding it while not leader", Inputs{Owned: true}, Release},
		{"holding it while not leader, told it leads (notification late)", Inputs{Owned: true, Leading: true}, Release},
		{"holding it while draining and not leader", Inputs{Owned: true, Draining: true}, Release},
		{"inherited through an upgrade, hold running", Inputs{Owned: true, Held: true}, Keep},
		{"leader without it (a drain cancelled after a failed handover)", Inputs{Leader: true, Leading: true}, Take},
		{"raft says leader, not told yet (barrier pending)", Inputs{Leader: true}, Keep},
		{"leader without it while handing over", Inputs{Leader: true, Leading: true, Handing: true}, Keep},
		{"leader without it while moving", Inputs{Leader: true, Leading: true, Moving: true}, Keep},
		{"leader without it while draining", Inputs{Leader: true, Leading: true, Draining: true}, Keep},
		{"told it leads, raft says no longer", Inputs{Leading: true}, Keep},
	} {
		if got := Decide(tc.in); got != tc.want {
			t.Errorf("%s: Decide(%+v) = %v, want %v", tc.name, tc.in, got, tc.want)
		}
	}
}

// Over every combination of facts: the guard never takes the VIP for a
// node raft does not call leader, nor one it was not told leads, and
// never releases it from a leader.
func TestDecideInvariants(t *testing.T) {
	for bits := 0; bits < 1<<7; bits++ {
		b := func(i int) bool { return bits&(1<<i) != 0 }
		in := Inputs{Owned: b(0), Leader: b(1), Leading: b(2), Held: b(3), Handing: b(4), Moving: b(5), Draining: b(6)}
		d := Decide(in)
		switch {
		case d == Take && (!in.Leader || !in.Leading || in.Owned):
			t.Errorf("%+v: takes", in)
		case d == Release && (in.Leader || !in.Owned):
			t.Errorf("%+v: releases", in)
		case d == Keep && in.Owned && !in.Leader && !in.Held:
			t.Errorf("%+v: keeps the VIP on a follower", in)
		}
	}
}

func TestOnLeadership(t *testing.T) {
	for _, tc := range []struct {
		name                      string
		leader, holding, draining bool
		want                      Change
	}{
		{"elected", true, false, false, Change{Own: true}},
		{"elected after an in-place upgrade", true, true, false, Change{Own: true, EndHold: true}},
		{"elected while draining", true, false, true, Change{Own: true, HandOver: true}},
		{"lost", false, false, false, Change{StopMove: true}},
		{"lost while holding an inherited address", false, true, false, Change{StopMove: true}},
		{"lost while draining", false, false, true, Change{StopMove: true}},
	} {
		if got := OnLeadership(tc.leader, tc.holding, tc.draining); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestPreemption(t *testing.T) {
	alive := map[string]bool{"a": true, "b": true, "c": true}
	isAlive := func(n string) bool { return alive[n] }
	voters := []string{"a", "b", "c"}
	t0 := time.Unix(1000, 0)
	p := newPreemption([]string{"a", "b"}, 30*time.Second)

	if to := p.step(t0, "c", true, voters, isAlive); to != "" {
		t.Fatalf("moved at once to %s", to)
	}
	if to := p.step(t0.Add(29*time.Second), "c", true, voters, isAlive); to != "" {
		t.Fatalf("moved before the hold-down to %s", to)
	}
	if to := p.step(t0.Add(30*time.Second), "c", true, voters, isAlive); to != "a" {
		t.Fatalf("after the hold-down: %q, want a (first preferred)", to)
	}
	// A preferred node that goes away starts over.
	p = newPreemption([]string{"a"}, 30*time.Second)
	p.step(t0, "c", true, voters, isAlive)
	alive["a"] = false
	p.step(t0.Add(10*time.Second), "c", true, voters, isAlive)
	alive["a"] = true
	if to := p.step(t0.Add(31*time.Second), "c", true, voters, isAlive); to != "" {
		t.Fatalf("moved to %s, whose hold-down restarted at 31s", to)
	}
	if to := p.step(t0.Add(61*time.Second), "c", true, voters, isAlive); to != "a" {
		t.Fatalf("%q, want a", to)
	}
	// Not a voter: never.
	p = newPreemption([]string{"d"}, 0)
	alive["d"] = true
	if to := p.step(t0, "c", true, voters, isAlive); to != "" {
		t.Fatalf("moved to a non-voter %s", to)
	}
	// A preferred leader, or a follower, does nothing and forgets.
	p = newPreemption([]string{"a", "c"}, 0)
	if to := p.step(t0, "c", true, voters, isAlive); to != "" || len(p.since) != 0 {
		t.Fatalf("a preferred leader moved to %q", to)
	}
	p = newPreemption([]string{"a"}, time.Second)
	p.step(t0, "c", true, voters, isAlive)
	if to := p.step(t0.Add(time.Hour), "c", false, voters, isAlive); to != "" || len(p.since) != 0 {
		t.Fatalf("a follower moved to %q (since %v)", to, p.since)
	}
}

// Sweep: a node without the VIP ends its sessions on it once another node
// leads, or after the grace; never while it holds or is taking the VIP.
func TestSweep(t *testing.T) {
	g := 3 * time.Second
	for _, tc := range []struct {
		in   SweepInputs
		want bool
	}{
		{SweepInputs{Holding: true, OtherLeader: true, Without: time.Hour, Grace: g}, false},
		{SweepInputs{Holding: false, OtherLeader: true, Without: 0, Grace: g}, true},
		{SweepInputs{Holding: false, OtherLeader: false, Without: time.Second, Grace: g}, false},
		{SweepInputs{Holding: false, OtherLeader: false, Without: g, Grace: g}, true},
	} {
		if got := Sweep(tc.in); got != tc.want {
			t.Errorf("Sweep(%+v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

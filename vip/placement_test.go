package vip

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
)

func TestPlaceTable(t *testing.T) {
	slots := []Slot{{Address: "a1"}, {Address: "a2"}, {Address: "a3"}}
	all := map[string]NodeLoad{"n1": {Settled: true}, "n2": {Settled: true}, "n3": {Settled: true}}
	without := func(n string) map[string]NodeLoad {
		m := map[string]NodeLoad{}
		for k, v := range all {
			if k != n {
				m[k] = v
			}
		}
		return m
	}
	one := map[string]string{"a1": "n1", "a2": "n2", "a3": "n3"}
	for _, tc := range []struct {
		name string
		in   PlaceInput
		want []Move
	}{
		{"fresh cluster: one each", PlaceInput{Slots: slots, Eligible: all},
			[]Move{{"a1", "", "n1", ReasonPlace}, {"a2", "", "n2", ReasonPlace}, {"a3", "", "n3", ReasonPlace}}},
		{"balanced: nothing", PlaceInput{Slots: slots, Owners: one, Eligible: all, Rebalance: true}, nil},
		{"n2 failed: only a2 moves, to the node with fewer sessions",
			PlaceInput{Slots: slots, Owners: one, Eligible: map[string]NodeLoad{"n1": {Sessions: 9}, "n3": {Sessions: 2}}},
			[]Move{{"a2", "n2", "n3", ReasonFailover}}},
		{"n1 back, no rebalance: nothing", PlaceInput{Slots: slots, Owners: map[string]string{"a1": "n2", "a2": "n2", "a3": "n3"}, Eligible: all}, nil},
		{"n1 back, rebalance: one address to it",
			PlaceInput{Slots: slots, Owners: map[string]string{"a1": "n3", "a2": "n2", "a3": "n3"}, Eligible: all, Rebalance: true},
			[]Move{{"a1", "n3", "n1", ReasonRebalance}}},
		{"n1 back but not settled: nothing",
			PlaceInput{Slots: slots, Owners: map[string]string{"a1": "n3", "a2": "n2", "a3": "n3"}, Eligible: map[string]NodeLoad{"n1": {}, "n2": {Settled: true}, "n3": {Settled: true}}, Rebalance: true}, nil},
		{"preferred node failed, then back",
			PlaceInput{Slots: []Slot{{Address: "a1", Prefer: []string{"n1"}}}, Owners: map[string]string{"a1": "n2"}, Eligible: all, Rebalance: true},
			[]Move{{"a1", "n2", "n1", ReasonPrefer}}},
		{"failover honours preferences in order",
			PlaceInput{Slots: []Slot{{Address: "a1", Prefer: []string{"n1", "n3", "n2"}}}, Owners: map[string]string{"a1": "n1"}, Eligible: without("n1")},
			[]Move{{"a1", "n1", "n3", ReasonFailover}}},
		{"nobody eligible: nothing", PlaceInput{Slots: slots, Owners: one}, nil},
		{"a node holds two more than another, but both pinned there: nothing",
			PlaceInput{Slots: []Slot{{Address: "a1", Prefer: []string{"n1"}}, {Address: "a2", Prefer: []string{"n1"}}}, Owners: map[string]string{"a1": "n1", "a2": "n1"}, Eligible: all, Rebalance: true}, nil},
	} {
		if got := Place(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// randomInput makes a placement problem: up to 6 nodes, up to 9
// addresses, some with preferences, owners among all nodes (eligible or
// not) or none.
func randomInput(r *rand.Rand, prefs bool) PlaceInput {
	nodes := r.IntN(6) + 1
	name := func(i int) string { return fmt.Sprintf("n%d", i) }
	in := PlaceInput{Owners: map[string]string{}, Eligible: map[string]NodeLoad{}, Rebalance: r.IntN(2) == 0}
	for i := 0; i < nodes; i++ {
		if r.IntN(4) != 0 {
			in.Eligible[name(i)] = NodeLoad{Sessions: r.IntN(4), Settled: r.IntN(3) != 0}
		}
	}
	for i := 0; i < r.IntN(9)+1; i++ {
		s := Slot{Address: fmt.Sprintf("a%d", i)}
		if prefs && r.IntN(3) == 0 {
			for j := 0; j < r.IntN(3)+1; j++ {
				s.Prefer = append(s.Prefer, name(r.IntN(nodes)))
			}
		}
		in.Slots = append(in.Slots, s)
		if r.IntN(5) != 0 {
			in.Owners[s.Address] = name(r.IntN(nodes))
		}
	}
	return in
}

func counts(in PlaceInput, owners map[string]string) map[string]int {
	c := map[string]int{}
	for n := range in.Eligible {
		c[n] = 0
	}
	for _, s := range in.Slots {
		if _, ok := in.Eligible[owners[s.Address]]; ok {
			c[owners[s.Address]]++
		}
	}
	return c
}

func spread(c map[string]int, only func(string) bool) int {
	lo, hi, any := 0, 0, false
	for n, k := range c {
		if only != nil && !only(n) {
			continue
		}
		if !any || k < lo {
			lo = k
		}
		if !any || k > hi {
			hi = k
		}
		any = true
	}
	return hi - lo
}

// Over random inputs: every move is of an address from its owner to an
// eligible node, each address at most once; only addresses whose owner is
// not eligible move, unless a single rebalance move; afterwards every
// address has an eligible owner (when there is an eligible node); placing
// again moves nothing (without rebalance); the answer does not depend on
// map order.
func TestPlaceProperties(t *testing.T) {
	for seed := uint64(1); seed <= 3000; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		in := randomInput(r, seed%2 == 0)
		moves := Place(in)
		for i := 0; i < 3; i++ {
			if again := Place(in); !reflect.DeepEqual(again, moves) {
				t.Fatalf("seed %d: not deterministic: %v then %v", seed, moves, again)
			}
		}
		seen := map[string]bool{}
		rebalances := 0
		for _, m := range moves {
			if seen[m.Address] {
				t.Fatalf("seed %d: %s moved twice: %v", seed, m.Address, moves)
			}
			seen[m.Address] = true
			if m.From != in.Owners[m.Address] || m.To == m.From {
				t.Fatalf("seed %d: move %+v from a node that does not hold it (%q)", seed, m, in.Owners[m.Address])
			}
			if _, ok := in.Eligible[m.To]; !ok {
				t.Fatalf("seed %d: move %+v to a node that is not eligible", seed, m)
			}
			_, ownerOK := in.Eligible[m.From]
			switch m.Reason {
			case ReasonPlace, ReasonFailover:
				if ownerOK {
					t.Fatalf("seed %d: %+v moves an address whose owner is eligible", seed, m)
				}
				if p := firstPreferred(slotOf(in, m.Address), in.Eligible); p != "" && m.To != p {
					t.Fatalf("seed %d: %+v ignores its first eligible preferred node %s", seed, m, p)
				}
			case ReasonPrefer, ReasonRebalance:
				rebalances++
				if !in.Rebalance || !ownerOK || !in.Eligible[m.To].Settled {
					t.Fatalf("seed %d: rebalance move %+v (rebalance %v, settled target %v)", seed, m, in.Rebalance, in.Eligible[m.To].Settled)
				}
			}
		}
		if rebalances > 0 && len(moves) != 1 {
			t.Fatalf("seed %d: a rebalance with other moves: %v", seed, moves)
		}
		after := in.Apply(moves)
		if len(in.Eligible) > 0 {
			for _, s := range in.Slots {
				if _, ok := in.Eligible[after[s.Address]]; !ok {
					t.Fatalf("seed %d: %s left on %q, not eligible (moves %v)", seed, s.Address, after[s.Address], moves)
				}
			}
		}
		next := in
		next.Owners, next.Rebalance = after, false
		if again := Place(next); len(again) != 0 {
			t.Fatalf("seed %d: placing again moved %v", seed, again)
		}
	}
}

func slotOf(in PlaceInput, addr string) Slot {
	for _, s := range in.Slots {
		if s.Address == addr {
			return s
		}
	}
	return Slot{}
}

// A failure of balanced nodes (no preferences) leaves the survivors
// balanced: the failed nodes' addresses go to the least loaded ones.
func TestPlaceFailoverBalance(t *testing.T) {
	for seed := uint64(1); seed <= 2000; seed++ {
		r := rand.New(rand.NewPCG(seed, 11))
		nodes := r.IntN(5) + 2
		in := PlaceInput{Owners: map[string]string{}, Eligible: map[string]NodeLoad{}}
		for i := 0; i < nodes; i++ {
			in.Eligible[fmt.Sprintf("n%d", i)] = NodeLoad{Sessions: r.IntN(100)}
		}
		for i := 0; i < r.IntN(12)+1; i++ {
			in.Slots = append(in.Slots, Slot{Address: fmt.Sprintf("a%d", i)})
		}
		in.Owners = in.Apply(Place(in))
		if d := spread(counts(in, in.Owners), nil); d > 1 {
			t.Fatalf("seed %d: initial placement unbalanced by %d: %v", seed, d, in.Owners)
		}
		// Some (not all) nodes fail.
		failed := map[string]bool{}
		for n := range in.Eligible {
			if len(failed) < nodes-1 && r.IntN(3) == 0 {
				failed[n] = true
			}
		}
		survivors := map[string]NodeLoad{}
		for n, l := range in.Eligible {
			if !failed[n] {
				survivors[n] = l
			}
		}
		before := in.Owners
		in.Eligible = survivors
		moves := Place(in)
		for _, m := range moves {
			if !failed[m.From] {
				t.Fatalf("seed %d: %+v moves an address of a survivor", seed, m)
			}
		}
		for a, o := range before {
			if failed[o] != slices.ContainsFunc(moves, func(m Move) bool { return m.Address == a }) {
				t.Fatalf("seed %d: %s of %s (failed %v) moved: %v", seed, a, o, failed[o], moves)
			}
		}
		if d := spread(counts(in, in.Apply(moves)), nil); d > 1 {
			t.Fatalf("seed %d: survivors unbalanced by %d after failover: %v", seed, d, in.Apply(moves))
		}
	}
}

// With rebalance on and every node settled, placing over and over
// settles: every address is on its first eligible preferred node if it
// has one, no settled node holds two fewer than a node that has an
// address free to move, no address goes back to a node it left, and it
// takes at most a few moves per address.
func TestPlaceRebalanceSettles(t *testing.T) {
	for seed := uint64(1); seed <= 2000; seed++ {
		r := rand.New(rand.NewPCG(seed, 13))
		in := randomInput(r, seed%3 != 0)
		in.Rebalance = true
		for n, l := range in.Eligible {
			l.Settled = true
			in.Eligible[n] = l
		}
		left := map[string]map[string]bool{} // address -> nodes it left through a rebalance
		steps := 0
		for ; steps < 100; steps++ {
			moves := Place(in)
			if len(moves) == 0 {
				break
			}
			for _, m := range moves {
				if m.Reason == ReasonRebalance || m.Reason == ReasonPrefer {
					if left[m.Address][m.To] {
						t.Fatalf("seed %d: %s flaps back to %s", seed, m.Address, m.To)
					}
					if left[m.Address] == nil {
						left[m.Address] = map[string]bool{}
					}
					left[m.Address][m.From] = true
				}
			}
			in.Owners = in.Apply(moves)
		}
		if steps > 3*len(in.Slots)+1 {
			t.Fatalf("seed %d: %d steps to settle %d addresses", seed, steps, len(in.Slots))
		}
		if len(in.Eligible) == 0 {
			continue
		}
		c := counts(in, in.Owners)
		for _, s := range in.Slots {
			if p := firstPreferred(s, in.Eligible); p != "" && in.Owners[s.Address] != p {
				t.Fatalf("seed %d: %s on %s, not its preferred %s", seed, s.Address, in.Owners[s.Address], p)
			}
		}
		for from := range in.Eligible {
			for to := range in.Eligible {
				if c[from]-c[to] < 2 {
					continue
				}
				for _, s := range in.Slots {
					if in.Owners[s.Address] == from && firstPreferred(s, in.Eligible) == "" {
						t.Fatalf("seed %d: %s holds %d, %s %d, and %s could move: %v", seed, from, c[from], to, c[to], s.Address, in.Owners)
					}
				}
			}
		}
	}
}

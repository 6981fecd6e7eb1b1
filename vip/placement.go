package vip

import (
	"cmp"
	"slices"
)

// The placement policy of the spread mode (vip.mode: spread): which node
// should hold each address, decided by the leader from a snapshot of the
// facts by a pure function, so that balance, stability and preferences
// are properties a test can check over random inputs. The spread
// controller (spread.go) gathers the facts, and carries the moves out
// through the replicated table.

// Slot is one address the leader places, with the nodes it prefers.
type Slot struct {
	Address string   // the IP in canonical text form
	Prefer  []string // nodes in order of preference (optional)
}

// NodeLoad is a node that may keep addresses and receive new ones.
type NodeLoad struct {
	// Sessions is the node's open client connections (as it gossips
	// them): the tie-break between nodes holding as many addresses.
	Sessions int
	// Settled: eligible for at least the rebalance hold-down. Only a
	// settled node gets an address that another node holds (a
	// rebalance), so that a node that has just come back (and may go
	// again) does not take addresses from nodes that serve them well.
	Settled bool
}

// PlaceInput is what a placement is decided from.
type PlaceInput struct {
	Slots []Slot
	// Owners maps each address to the node holding it in the table
	// ("" or absent: not placed).
	Owners map[string]string
	// Eligible are the nodes in contact with the leader, serving and not
	// draining: an address whose owner is not among them must move.
	Eligible map[string]NodeLoad
	// Rebalance allows one move of an address whose owner is eligible,
	// towards its preferred node or towards balance, per decision.
	Rebalance bool
}

// MoveReason says why Place moves an address.
type MoveReason string

const (
	ReasonPlace     MoveReason = "place"     // it had no owner
	ReasonFailover  MoveReason = "failover"  // its owner is not eligible (failed, cut off, draining, leaving)
	ReasonPrefer    MoveReason = "prefer"    // back to its preferred node (Rebalance)
	ReasonRebalance MoveReason = "rebalance" // from the most to the least loaded node (Rebalance)
)

// Move is one address changing owner.
type Move struct {
	Address string     `json:"address"`
	From    string     `json:"from"` // "" when it had no owner
	To      string     `json:"to"`
	Reason  MoveReason `json:"reason"`
}

// Place returns the moves that bring the placement closer to the policy:
//
//   - Every address whose owner is not eligible goes to an eligible node:
//     the first eligible node of its preferences if it has one, else the
//     least loaded eligible node (fewest addresses, counting the moves
//     made so far, then fewest sessions, then name). Only those
//     addresses move: a failed node's addresses spread over the least
//     loaded survivors.
//   - Otherwise, with Rebalance, at most one address moves: to its first
//     eligible preferred node when that node is settled and does not hold
//     it; else, when a settled node holds at least two addresses fewer
//     than another node, one address (without an eligible preferred
//     node) of the most loaded node goes to the least loaded settled one.
//   - Otherwise nothing: an address whose owner is eligible stays. Each
//     rebalance move either puts an address on its preferred node (never
//     undone while that node stays eligible) or narrows the spread of the
//     counts, so repeated placement settles and never flaps.
//
// Addresses are considered in the order of Slots; the result depends
// only on the input.
func Place(in PlaceInput) []Move {
	counts := map[string]int{}
	for n := range in.Eligible {
		counts[n] = 0
	}
	for _, s := range in.Slots {
		if o := in.Owners[s.Address]; o != "" {
			if _, ok := in.Eligible[o]; ok {
				counts[o]++
			}
		}
	}
	var moves []Move
	for _, s := range in.Slots {
		o := in.Owners[s.Address]
		if _, ok := in.Eligible[o]; ok {
			continue
		}
		to := pick(s, in.Eligible, counts)
		if to == "" {
			continue // no eligible node at all
		}
		r := ReasonFailover
		if o == "" {
			r = ReasonPlace
		}
		moves = append(moves, Move{Address: s.Address, From: o, To: to, Reason: r})
		counts[to]++
	}
	if len(moves) > 0 || !in.Rebalance {
		return moves
	}
	// Back to a preferred node.
	for _, s := range in.Slots {
		o := in.Owners[s.Address]
		p := firstPreferred(s, in.Eligible)
		if p != "" && p != o && in.Eligible[p].Settled {
			return []Move{{Address: s.Address, From: o, To: p, Reason: ReasonPrefer}}
		}
	}
	// Towards balance: the least loaded settled node takes one address
	// from the most loaded node that has one free to move.
	var settled, donors []string
	for n, l := range in.Eligible {
		donors = append(donors, n)
		if l.Settled {
			settled = append(settled, n)
		}
	}
	if len(settled) == 0 {
		return nil
	}
	less := func(a, b string) int { // lighter first
		return cmp.Or(cmp.Compare(counts[a], counts[b]), cmp.Compare(in.Eligible[a].Sessions, in.Eligible[b].Sessions), cmp.Compare(a, b))
	}
	to := slices.MinFunc(settled, less)
	slices.SortFunc(donors, func(a, b string) int { return less(b, a) })
	for _, from := range donors {
		if counts[from]-counts[to] < 2 {
			break
		}
		for _, s := range in.Slots {
			if in.Owners[s.Address] == from && firstPreferred(s, in.Eligible) == "" {
				return []Move{{Address: s.Address, From: from, To: to, Reason: ReasonRebalance}}
			}
		}
	}
	return nil
}

// firstPreferred is the slot's first preferred node that is eligible ("":
// none).
func firstPreferred(s Slot, eligible map[string]NodeLoad) string {
	for _, p := range s.Prefer {
		if _, ok := eligible[p]; ok {
			return p
		}
	}
	return ""
}

// pick chooses the node for an address that must move: its first eligible
// preferred node, else the least loaded eligible one.
func pick(s Slot, eligible map[string]NodeLoad, counts map[string]int) string {
	if p := firstPreferred(s, eligible); p != "" {
		return p
	}
	best := ""
	for n, l := range eligible {
		if best == "" || cmp.Or(cmp.Compare(counts[n], counts[best]), cmp.Compare(l.Sessions, eligible[best].Sessions), cmp.Compare(n, best)) < 0 {
			best = n
		}
	}
	return best
}

// Apply returns owners with the moves applied (a copy).
func (in PlaceInput) Apply(moves []Move) map[string]string {
	out := make(map[string]string, len(in.Owners))
	for k, v := range in.Owners {
		out[k] = v
	}
	for _, m := range moves {
		out[m.Address] = m.To
	}
	return out
}

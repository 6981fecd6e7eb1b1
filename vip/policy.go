package vip

import (
	"slices"
	"time"
)

// The ownership policy, apart from the mechanism (Manager): who should
// hold the addresses, decided from a snapshot of the facts by pure
// functions, so that every case is a row of a table test. Controller
// gathers the facts and carries the decisions out.

// Inputs are the facts the guard decides from, read at one instant.
type Inputs struct {
	Owned    bool // the addresses are on this node's interfaces (Manager.Owned)
	Leader   bool // raft's state says this node leads (it can lag a lost lease)
	Leading  bool // this node was told it leads, after its barrier (the leadership hook)
	Held     bool // keeping an address inherited through an in-place upgrade (see Controller)
	Handing  bool // a handover (move, shutdown, preemption) is under way
	Moving   bool // a `vip move` is under way
	Draining bool // the node is draining: it hands the VIP away rather than take it
}

// Decision is what the guard does with the addresses.
type Decision int

const (
	// Keep changes nothing.
	Keep Decision = iota
	// Release gives the addresses up: this node holds them but does not
	// lead.
	Release
	// Take acquires them once a quorum confirms this node still leads:
	// raft's state can say Leader for a lease after leadership was lost
	// (a node woken from a freeze).
	Take
)

func (d Decision) String() string {
	switch d {
	case Release:
		return "release"
	case Take:
		return "take"
	}
	return "keep"
}

// Decide is the guard's decision, made every reconcile period
// independently of the leadership notifications (belt and braces: a
// missed or delayed notification cannot leave the VIP on a follower).
//
//   - Holding while not leader: release, unless the address was inherited
//     through an in-place upgrade and the hold still runs (this node
//     leads again soon).
//   - Leading, told so, serving and not handing over, without the
//     addresses (a drain cancelled after a failed handover): take them.
func Decide(in Inputs) Decision {
	switch {
	case in.Owned && !in.Leader && in.Held:
		return Keep
	case in.Owned && !in.Leader:
		return Release
	case !in.Owned && in.Leader && in.Leading && !in.Handing && !in.Moving && !in.Draining:
		return Take
	}
	return Keep
}

// SweepInputs are the facts a node decides from whether to end its
// relayed sessions on the VIP (Sweep).
type SweepInputs struct {
	Holding     bool          // this node holds the VIP, or means to (it is acquiring it)
	OtherLeader bool          // another node is known to lead, and so to hold the VIP
	Without     time.Duration // how long this node has been without the VIP
	Grace       time.Duration // how long a node without the VIP and with no other leader known keeps them
}

// Sweep decides whether a node ends its sessions on the VIP. The address
// itself is released at once whenever this node does not lead (the fence;
// Decide, OnLeadership); its established sessions are another matter:
// while nobody else holds the address their clients' packets reach no
// one, but the sessions are intact, and a node that lost its leadership
// for a moment (a starved machine missing its 250 ms lease) and wins it
// back keeps serving them; ending them at once made every such blink a
// reconnect storm. So they end once another node is known to lead (its
// announcements pull the clients over, and it resets their connections),
// or after the grace (a node cut off from the cluster frees its backend
// connections).
func Sweep(in SweepInputs) bool {
	return !in.Holding && (in.OtherLeader || in.Without >= in.Grace)
}

// Change is what a leadership notification leads to.
type Change struct {
	Own      bool // the desired state of the addresses: held exactly while leading
	EndHold  bool // the inherited hold is over: release the other voters' held elections
	HandOver bool // pass leadership (and the VIP) on at once
	StopMove bool // a move ended: stop refusing connections to the VIP
}

// OnLeadership decides what follows a leadership notification: leading
// (after the barrier) holds the VIP; no longer leading releases it and
// ends a move in progress. A node elected while it holds an inherited
// address ends the other voters' hold; one elected while draining (the
// node it handed over to failed) serves the VIP rather than leave it
// unowned, but passes leadership on.
func OnLeadership(leader, holding, draining bool) Change {
	if !leader {
		return Change{StopMove: true}
	}
	return Change{Own: true, EndHold: holding, HandOver: draining}
}

// preemption tracks, on the leader, how long each preferred voter has
// been a live member (keepalived's preempt_delay).
type preemption struct {
	preferred []string
	hold      time.Duration
	since     map[string]time.Time
}

func newPreemption(preferred []string, hold time.Duration) *preemption {
	return &preemption{preferred: preferred, hold: hold, since: map[string]time.Time{}}
}

// step returns the preferred voter to move leadership to now ("" for
// none): the first, in order of preference, that has been a live voter
// for the hold-down. A leader that is itself preferred keeps leading.
func (p *preemption) step(now time.Time, self string, leader bool, voters []string, alive func(string) bool) string {
	if !leader || slices.Contains(p.preferred, self) {
		clear(p.since)
		return ""
	}
	for _, name := range p.preferred {
		if !slices.Contains(voters, name) || !alive(name) {
			delete(p.since, name)
			continue
		}
		if _, ok := p.since[name]; !ok {
			p.since[name] = now
		}
		if now.Sub(p.since[name]) >= p.hold {
			clear(p.since)
			return name
		}
	}
	return ""
}

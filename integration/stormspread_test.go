package integration

// The reconnect-storm drill in the spread mode (vip.mode: spread,
// active-active; issue 14, item 4): the machinery of storm_test.go
// (stormCluster, loadimap -reconnect, imapsink, the process monitor) with
// three addresses, one per node (each preferred by one node, as
// TestSpreadDrills places them; rebalance off), and the sampler of
// sampler_test.go reading every 20 ms which namespace holds each address.
// All N sessions are on one address, the clients' (its owner is the
// victim: a follower by default, PORTICO_STORM_VICTIM=leader for the raft
// leader); the other two addresses carry no sessions. Then:
//
//   - kill: SIGKILL of the owner, and the address released as the unit's
//     ExecStopPost does: only that address moves, to a survivor;
//   - move: `portico vip move ADDR --to NODE` (to the other follower; a
//     follower when the owner leads): the owner hands the address over
//     first and ends the moved sessions in the background;
//   - upgrade: `POST /v1/upgrade` on the owner: a follower keeps the
//     address on its lease and its old process ends its sessions after
//     upgrade.session_grace over drain.spread; an upgrading leader is
//     meant to have its addresses moved first (vip/DESIGN.md; today they
//     go by a failover after the raft handoff, bench/RESULTS.md): whoever
//     holds the address at the end took the clients.
//
// On top of the leader-mode drill's checks (everyone back, nobody refused
// by the node that took the clients, resumption), the other two addresses
// must not change owner (a moment without a holder, while an election
// runs, is logged and counted; so is a failover of one whose owner lost
// its lease or leadership under the storm, which the leader drill's lost
// lease resembles; a planned move of one fails), and no address may ever
// have two live holders (the sampler, over the whole test; a killed owner
// counts as a dead holder until its address is released). Before each run's sessions
// log in, the clients' address is put on a node of the victim's role, and
// after each drill the addresses are put back one per node (arrange:
// planned moves of addresses without sessions). The clients' address is
// not moved back between the drills of a run (each would be a storm of its
// own), so a later drill of a run may find the address's owner in the
// other role (a kill moves it to a survivor; a leader can lose its lease
// under a storm): every drill records the role its victim had. For the
// leader's address in every drill, give each drill its own run
// (PORTICO_STORM_RUNS='resume:kill resume:move ...').
//
// CI runs what the leader drill runs, at 300 sessions (stormSpreadCIRuns:
// the kill, the move and the upgrade with resumption, the kill with full
// handshakes; about 25 s). The benchmark:
//
//	PORTICO_STORM_SESSIONS=9000 PORTICO_STORM_RUNS='resume:kill,move,upgrade full:kill,move,upgrade' \
//	  PORTICO_STORM_SPREAD=10s PORTICO_STORM_GRACE=5s PORTICO_STORM_OUT=/tmp/stormspread.json \
//	  go test -count=1 -timeout 60m -run 'TestSpreadReconnectStorm$' -v ./integration/
//
// The other knobs are the leader drill's (storm_test.go).

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/netns"
)

// stormSpreadVIPs are the spread mode's addresses, preferred by n1, n2
// and n3 (below the client addresses, .101 up).
var stormSpreadVIPs = []netip.Addr{
	netip.MustParseAddr("198.18.0.97"),
	netip.MustParseAddr("198.18.0.98"),
	netip.MustParseAddr("198.18.0.99"),
}

// stormSpreadCIRuns is the spread drill's default PORTICO_STORM_RUNS.
const stormSpreadCIRuns = "resume:kill,move,upgrade full:kill"

func TestSpreadReconnectStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("reconnect storm, spread mode: multi-process, network namespaces")
	}
	netns.Require(t)
	runStorm(t, "spread")
}

// placements waits until every node runs, all agree on a leader, and every
// address is placed and held by its owner only; it returns the owners and
// the leader.
func (c *stormCluster) placements(t *testing.T) (map[netip.Addr]string, string) {
	t.Helper()
	var owners map[netip.Addr]string
	var leader string
	var last error
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		l, err := c.leaderUp()
		if err == nil {
			var o map[netip.Addr]string
			if o, err = placedOwners(c.nodes, c.sampler, c.addrs); err == nil {
				owners, leader = o, l
				return owners, leader
			}
		}
		last = err
		if time.Now().After(deadline) {
			t.Fatalf("addresses not placed and held after 60 s: %v\n%s", last, c.sampler.dump(time.Now().Add(-60*time.Second)))
		}
	}
}

// moveAddr moves a to the node to with `portico vip move` through via,
// and waits until it is placed and held there. A move that answers an
// error (a leader change under load) is retried, as an operator would,
// after looking where the address is.
func (c *stormCluster) moveAddr(t *testing.T, via *drillNode, a netip.Addr, to *drillNode) {
	t.Helper()
	for try := 1; ; try++ {
		start := time.Now()
		out, err := via.cli("vip", "move", a.String(), "--to", to.name)
		took := time.Since(start)
		if err != nil {
			t.Logf("vip move %s --to %s, try %d: %v %s", a, to.name, try, err, strings.TrimSpace(out))
		} else {
			t.Logf("vip move %s --to %s (%v): %s", a, to.name, took.Round(time.Millisecond), strings.TrimSpace(out))
		}
		owners, _ := c.placements(t)
		if owners[a] == to.name {
			return
		}
		if err == nil {
			t.Logf("vip move, try %d: answered success, but %s is on %s", try, a, owners[a])
		}
		if try == 3 {
			t.Fatalf("vip move %s --to %s: %v %s", a, to.name, err, out)
		}
		time.Sleep(time.Second)
	}
}

// arrange puts one address on each node, and, before a run's sessions
// exist (clients), the clients' address (c.vip, chosen here the first
// time) on a node of the victim's role. Between the drills of a run it
// does not move the clients' address: under a storm leadership can change
// (a leader loses its lease), and chasing the role would cost a storm per
// move, which could change leadership again; each drill records the role
// its victim had.
func (c *stormCluster) arrange(t *testing.T, clients bool) {
	t.Helper()
	wantLeader := c.set.victim == "leader"
	for round := 1; ; round++ {
		owners, leader := c.placements(t)
		role := func(n string) bool { return (n == leader) == wantLeader }
		by := map[string][]netip.Addr{}
		for _, a := range c.addrs {
			by[owners[a]] = append(by[owners[a]], a)
		}
		if !c.vip.IsValid() {
			for _, a := range c.addrs {
				if role(owners[a]) {
					c.vip = a
					break
				}
			}
			if !c.vip.IsValid() {
				c.vip = c.addrs[0]
			}
		}
		a := c.vip
		done := role(owners[a]) || !clients
		for _, nd := range c.nodes {
			done = done && len(by[nd.name]) == 1
		}
		if done {
			t.Logf("addresses: %v, leader %s; the clients use %s, on %s (wanted: a %s)", owners, leader, a, owners[a], c.set.victim)
			return
		}
		if round > 5 {
			t.Fatalf("could not arrange the addresses one per node with %s on a %s: %v, leader %s", a, c.set.victim, owners, leader)
		}
		if clients && !role(owners[a]) {
			// The clients' address to a node of the role, the one with
			// fewest addresses (no sessions on it yet).
			var target *drillNode
			for _, nd := range c.nodes {
				if role(nd.name) && (target == nil || len(by[nd.name]) < len(by[target.name])) {
					target = nd
				}
			}
			t.Logf("arrange: %s (the clients' address) from %s to %s, a %s", a, owners[a], target.name, c.set.victim)
			c.moveAddr(t, c.node(owners[a]), a, target)
			continue
		}
		// Another address off a node that has two, to one that has none.
		var from, to *drillNode
		for _, nd := range c.nodes {
			switch len(by[nd.name]) {
			case 0:
				to = nd
			case 1:
			default:
				from = nd
			}
		}
		if from == nil || to == nil {
			continue
		}
		var b netip.Addr
		for _, x := range by[from.name] {
			if x != a {
				b = x
				break
			}
		}
		t.Logf("arrange: %s from %s to %s", b, from.name, to.name)
		c.moveAddr(t, from, b, to)
	}
}

// spreadOutcome records and checks, after a drill in the spread mode,
// where the clients' address went and what the other addresses did since
// the event at (owners before it: placed; the node that held the
// clients' address: owner; the node that took them: took).
func (c *stormCluster) spreadOutcome(t *testing.T, f *stormFigures, at time.Time, placed map[netip.Addr]string, owner, took *drillNode) {
	t.Helper()
	a := c.vip
	if f.Drill != "upgrade" || took != owner {
		if took == owner {
			t.Errorf("%s: %s still on %s", f.Drill, a, owner.name)
		}
		if held, ok := c.sampler.firstWhen(at, a, func(live []string) bool { return slices.Equal(live, []string{took.name}) }); ok {
			f.HeldMS = ptrF(float64(held.Sub(at)) / 1e6)
		}
	}
	if h := c.sampler.holders(a); !slices.Equal(h, []string{took.name}) {
		t.Errorf("%s: %s held by %v, want %s only", f.Drill, a, h, took.name)
	}
	f.TookRole = "follower"
	if st, err := took.status(); err != nil || st.Cluster == nil {
		f.TookRole = fmt.Sprintf("? (%v)", err)
	} else if st.Cluster.Leader == took.name {
		f.TookRole = "leader"
	}
	if f.Drill == "kill" && f.VictimRole == "leader" {
		// The new leader's first placement (it moves the dead leader's
		// addresses at once, without waiting for a lease).
		for _, nd := range c.nodes {
			if nd == owner {
				continue
			}
			if l, ok := nd.logTime("leading the placement of virtual addresses", at); ok {
				if ms := float64(l.Sub(at)) / 1e6; f.NewLeaderMS == nil || ms < *f.NewLeaderMS {
					f.NewLeaderMS = ptrF(ms)
				}
			}
		}
	}
	for _, nd := range c.nodes {
		f.Elections += countLog(nd, "raft: election won", at)
		if nd != owner || f.Drill != "kill" {
			f.LeadershipLost += countLog(nd, "lost raft leadership", at)
		}
	}
	// The clients' address: one move (the event's) unless the node that
	// took it lost its lease or leadership under the storm.
	f.AddrMoves = c.sampler.ownerChanges(at, a) // from the owner live at the event
	for _, b := range c.addrs {
		if b == a {
			continue
		}
		if c.sampler.ownerChanges(at, b) != 0 || !slices.Equal(c.sampler.holders(b), []string{placed[b]}) {
			f.OthersMoved++
			reasons := c.moveReasons(b, at)
			for _, r := range reasons {
				if r != "failover" {
					f.OthersPlanned++
				}
			}
			t.Logf("%s: %s (not the clients' address) changed owner, was on %s (moves: %v):\n%s", f.Drill, b, placed[b], reasons, c.sampler.dump(at))
		} else if n := c.sampler.changes(at, b); n != 0 {
			f.OthersBlinked++
			t.Logf("%s: %s was not held for a moment (%d changes) and came back to %s:\n%s", f.Drill, b, n, placed[b], c.sampler.dump(at))
		}
	}
	if e := c.sampler.split(at); e != nil {
		t.Errorf("%s: two live nodes held an address at once: %v (%v after the event)", f.Drill, e, e.at.Sub(at))
	}
	t.Logf("%s: the addresses seen by the sampler since the event:\n%s", f.Drill, c.sampler.dump(at))
}

// countLog counts the lines of the node's log at or after t that contain
// msg.
func countLog(nd *drillNode, msg string, t time.Time) int {
	n := 0
	for _, l := range strings.Split(nd.log(), "\n") {
		if !strings.Contains(l, msg) || !strings.HasPrefix(l, "time=") {
			continue
		}
		f, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
		if at, err := time.Parse(time.RFC3339Nano, f); err == nil && !at.Before(t.Truncate(time.Millisecond)) {
			n++
		}
	}
	return n
}

// moveReasons lists the reasons of the leaders' moves of a since t
// ("moved virtual address" in the nodes' logs: failover, move, place,
// rebalance, drain).
func (c *stormCluster) moveReasons(a netip.Addr, t time.Time) []string {
	var out []string
	for _, nd := range c.nodes {
		for _, l := range strings.Split(nd.log(), "\n") {
			if !strings.Contains(l, "moved virtual address") || !strings.Contains(l, " address="+a.String()+" ") || !strings.HasPrefix(l, "time=") {
				continue
			}
			ts, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
			if at, err := time.Parse(time.RFC3339Nano, ts); err != nil || at.Before(t.Truncate(time.Millisecond)) {
				continue
			}
			_, r, _ := strings.Cut(l, " reason=")
			r, _, _ = strings.Cut(r, " ")
			out = append(out, r)
		}
	}
	return out
}

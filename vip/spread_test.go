package vip

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	sa1 = netip.MustParseAddr("198.18.0.101")
	sa2 = netip.MustParseAddr("198.18.0.102")
	sa3 = netip.MustParseAddr("198.18.0.103")
)

func TestHoldings(t *testing.T) {
	all := []netip.Addr{sa1, sa2, sa3}
	placed := map[netip.Addr]Placement{sa1: {"n1", 4}, sa2: {"n2", 1}}
	fenced := func(a netip.Addr, e uint64) bool { return a == sa1 && e <= 4 }
	for _, tc := range []struct {
		name string
		f    HoldFacts
		want []netip.Addr
	}{
		{"follower with a lease: its own", HoldFacts{Self: "n2", Addresses: all, Placements: placed, LeaseValid: true}, []netip.Addr{sa2}},
		{"follower without a lease: nothing", HoldFacts{Self: "n2", Addresses: all, Placements: placed}, nil},
		{"leader: its own and the unplaced", HoldFacts{Self: "n1", Addresses: all, Placements: placed, LeaderReady: true}, []netip.Addr{sa1, sa3}},
		{"a follower never holds the unplaced", HoldFacts{Self: "n3", Addresses: all, Placements: placed, LeaseValid: true}, nil},
		{"being moved: not held", HoldFacts{Self: "n2", Addresses: all, Placements: placed, LeaseValid: true, Moving: map[netip.Addr]bool{sa2: true}}, nil},
		{"released at this epoch: not held", HoldFacts{Self: "n1", Addresses: all, Placements: placed, LeaderReady: true, Fenced: fenced}, []netip.Addr{sa3}},
		{"placed here again at a later epoch: held", HoldFacts{Self: "n1", Addresses: all, Placements: map[netip.Addr]Placement{sa1: {"n1", 5}}, LeaseValid: true, Fenced: fenced}, []netip.Addr{sa1}},
		{"left (shutdown, drain): nothing", HoldFacts{Self: "n1", Addresses: all, Placements: placed, LeaderReady: true, Left: true}, nil},
	} {
		if got := Holdings(tc.f); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// ---- a simulated cluster of Spread controllers ----
//
// One shared table (every node has applied every write at once), RPCs
// routed between the controllers in memory (a cut node reaches nobody and
// nobody reaches it), leadership assigned by the test, and one log of
// every node's holdings in the order they changed: no address may be
// held by two running nodes at any point of it.

type simTable struct {
	mu     sync.Mutex
	ps     map[netip.Addr]Placement
	marker string
	index  uint64
	writes []string
	// failPlace: writes of placements fail.
	failPlace bool
}

func (t *simTable) Placements() (map[netip.Addr]Placement, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[netip.Addr]Placement, len(t.ps))
	for k, v := range t.ps {
		out[k] = v
	}
	return out, t.marker
}

func (t *simTable) AppliedIndex() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.index
}

func (t *simTable) Place(_ context.Context, ps map[netip.Addr]Placement) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.failPlace {
		return errors.New("no quorum")
	}
	for a, p := range ps {
		if t.ps[a].Epoch != p.Epoch {
			return fmt.Errorf("conflict: %s at %d, not %d", a, t.ps[a].Epoch, p.Epoch)
		}
	}
	for a, p := range ps {
		t.ps[a] = Placement{Node: p.Node, Epoch: p.Epoch + 1}
		t.writes = append(t.writes, a.String()+"->"+p.Node)
	}
	t.index++
	return nil
}

func (t *simTable) Mark(_ context.Context, leader string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.marker = leader
	t.index++
	return nil
}

type simNet struct {
	t       *testing.T
	table   *simTable
	mu      sync.Mutex
	nodes   map[string]*simNode
	log     []holdEvent
	lmu     sync.Mutex
	leading *simNode // the leader as raft would tell it (nil: none)
	// removed: nodes no longer in raft's configuration (they run on and
	// can still make calls, as a node with a valid certificate can).
	removed map[string]bool
}

type holdEvent struct {
	at   time.Time
	node string
	held []netip.Addr
	dead bool // the node stopped (its holdings are gone)
}

type simNode struct {
	net     *simNet
	name    string
	sp      *Spread
	proxy   *simSessions
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	term    context.CancelFunc
	termWG  sync.WaitGroup
	mu      sync.Mutex
	held    []netip.Addr
	cut     bool
	stopped bool
	// failRelease: the mechanism cannot take an address off the
	// interface (ReleaseAddrs fails).
	failRelease bool
}

// The node's cluster view.
type simCluster struct{ n *simNode }

func (c simCluster) Name() string { return c.n.name }
func (c simCluster) IsLeader() bool {
	l := c.n.net.leader()
	return l == c.n && !c.n.isCut()
}
func (c simCluster) VerifyLeader() error {
	if !c.IsLeader() {
		return errors.New("not leader")
	}
	return nil
}
func (c simCluster) Leader() (string, string) {
	if c.n.isCut() {
		return "", ""
	}
	if l := c.n.net.leader(); l != nil {
		return l.name, ""
	}
	return "", ""
}
func (c simCluster) CallLeader(ctx context.Context, path string, body []byte) (int, []byte, error) {
	l := c.n.net.leader()
	if l == nil {
		return 0, nil, errors.New("no leader")
	}
	return c.call(ctx, l, path, body)
}
func (c simCluster) CallNode(ctx context.Context, name, path string, body []byte) (int, []byte, error) {
	c.n.net.mu.Lock()
	to := c.n.net.nodes[name]
	c.n.net.mu.Unlock()
	if to == nil {
		return 0, nil, errors.New("no such node")
	}
	return c.call(ctx, to, path, body)
}
func (c simCluster) call(ctx context.Context, to *simNode, path string, body []byte) (int, []byte, error) {
	if to != c.n && (c.n.isCut() || to.isCut() || to.isStopped()) {
		return 0, nil, errors.New("unreachable")
	}
	var status int
	var ans any
	switch path {
	case LeaseRPC:
		status, ans = to.sp.HandleLease(ctx, c.n.name, body)
	case ReleaseRPC:
		status, ans = to.sp.HandleRelease(ctx, c.n.name, body)
	default:
		return 404, nil, nil
	}
	b, _ := json.Marshal(ans)
	return status, b, nil
}
func (c simCluster) IsServer(name string) (bool, error) {
	c.n.net.mu.Lock()
	defer c.n.net.mu.Unlock()
	_, ok := c.n.net.nodes[name]
	return ok && !c.n.net.removed[name], nil
}
func (c simCluster) Members() []MemberLoad {
	c.n.net.mu.Lock()
	defer c.n.net.mu.Unlock()
	var out []MemberLoad
	for _, n := range c.n.net.nodes {
		out = append(out, MemberLoad{Name: n.name, Alive: !n.isStopped()})
	}
	return out
}

// The node's mechanism: holdings change at once, in the shared log.
type simHolder struct{ n *simNode }

func (h simHolder) SetWant(addrs []netip.Addr) {
	n := h.n
	if n.isStopped() {
		return
	}
	s := append([]netip.Addr(nil), addrs...)
	slices.SortFunc(s, func(a, b netip.Addr) int { return a.Compare(b) })
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	n.mu.Lock()
	changed := !slices.Equal(n.held, s)
	n.held = s
	n.mu.Unlock()
	if changed {
		n.net.log = append(n.net.log, holdEvent{at: time.Now(), node: n.name, held: s})
	}
}
func (h simHolder) ReleaseAddrs(addrs []netip.Addr, _ time.Duration) error {
	h.n.mu.Lock()
	fail := h.n.failRelease
	h.n.mu.Unlock()
	if fail {
		return errors.New("vip: addresses still held after release")
	}
	var keep []netip.Addr
	for _, a := range h.Held() {
		if !slices.Contains(addrs, a) {
			keep = append(keep, a)
		}
	}
	h.SetWant(keep)
	return nil
}
func (h simHolder) Held() []netip.Addr {
	h.n.mu.Lock()
	defer h.n.mu.Unlock()
	return append([]netip.Addr(nil), h.n.held...)
}
func (h simHolder) Holds(a netip.Addr) bool { return slices.Contains(h.Held(), a) }

// The node's proxy: relayed sessions by local address, busy (active
// lately) or idle, and a record of every call that ended some.
type simSessions struct {
	n        *simNode
	mu       sync.Mutex
	sessions []simSession
	ends     []endCall
	// hold, if set, holds up an EndSessions (not EndActive) that matches
	// a session on holdAddr until it is closed (a slow end).
	hold     chan struct{}
	holdAddr netip.Addr
}

type simSession struct {
	local netip.AddrPort
	busy  bool
}

// endCall is one call of EndActive (busy) or EndSessions, what it
// matched, and the facts when it was made.
type endCall struct {
	busy    bool
	matched []netip.AddrPort
	held    []netip.Addr // the node's holdings then
	placed  map[netip.Addr]Placement
}

func (p *simSessions) add(local netip.AddrPort, busy bool, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for range n {
		p.sessions = append(p.sessions, simSession{local, busy})
	}
}

// on counts the sessions on a (busy ones, idle ones).
func (p *simSessions) on(a netip.Addr) (busy, idle int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ss := range p.sessions {
		switch {
		case ss.local.Addr() != a:
		case ss.busy:
			busy++
		default:
			idle++
		}
	}
	return busy, idle
}

// calls returns the end calls that matched a session on a.
func (p *simSessions) calls(a netip.Addr) []endCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []endCall
	for _, c := range p.ends {
		if slices.ContainsFunc(c.matched, func(l netip.AddrPort) bool { return l.Addr() == a }) {
			out = append(out, c)
		}
	}
	return out
}

func (p *simSessions) SetRefuse(func(netip.AddrPort) bool) {}
func (p *simSessions) PreauthOn(func(netip.Addr) bool) int { return 0 }
func (p *simSessions) CountSessions(match func(netip.AddrPort) bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, ss := range p.sessions {
		if match(ss.local) {
			n++
		}
	}
	return n
}
func (p *simSessions) EndSessions(_ context.Context, match func(netip.AddrPort) bool, _ string, _ time.Duration) int {
	return p.end(false, match, 0)
}
func (p *simSessions) EndActive(_ context.Context, match func(netip.AddrPort) bool, _ time.Duration, limit int, _ string) int {
	return p.end(true, match, limit)
}

func (p *simSessions) end(busyOnly bool, match func(netip.AddrPort) bool, limit int) int {
	p.mu.Lock()
	var hit []int
	for i, ss := range p.sessions {
		if (!busyOnly || ss.busy) && (limit <= 0 || len(hit) < limit) && match(ss.local) {
			hit = append(hit, i)
		}
	}
	c := endCall{busy: busyOnly, held: simHolder{p.n}.Held()}
	c.placed, _ = p.n.net.table.Placements()
	for _, i := range hit {
		c.matched = append(c.matched, p.sessions[i].local)
	}
	p.ends = append(p.ends, c)
	hold := p.hold
	if hold == nil || busyOnly || !slices.ContainsFunc(c.matched, func(l netip.AddrPort) bool { return l.Addr() == p.holdAddr }) {
		hold = nil
	}
	p.mu.Unlock()
	if hold != nil {
		<-hold
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(hit) - 1; i >= 0; i-- {
		p.sessions = slices.Delete(p.sessions, hit[i], hit[i]+1)
	}
	return len(hit)
}

// goJoined is the node's SpreadConfig.Go: f runs in a goroutine that a
// stop waits for.
func (n *simNode) goJoined(f func(context.Context)) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return false
	}
	n.wg.Add(1)
	go func() { defer n.wg.Done(); f(n.ctx) }()
	return true
}

func (n *simNode) isCut() bool     { n.mu.Lock(); defer n.mu.Unlock(); return n.cut }
func (n *simNode) isStopped() bool { n.mu.Lock(); defer n.mu.Unlock(); return n.stopped }

const simLease = 200 * time.Millisecond

func newSimNet(t *testing.T, names ...string) *simNet {
	return newSimNetWith(t, nil, names...)
}

// newSimNetWith is newSimNet with opt applied to each node's
// configuration.
func newSimNetWith(t *testing.T, opt func(n *simNode, c *SpreadConfig), names ...string) *simNet {
	sn := &simNet{t: t, table: &simTable{ps: map[netip.Addr]Placement{}}, nodes: map[string]*simNode{}, removed: map[string]bool{}}
	for _, name := range names {
		n := &simNode{net: sn, name: name}
		n.proxy = &simSessions{n: n}
		n.ctx, n.cancel = context.WithCancel(context.Background())
		addrs := []SpreadAddress{{Addr: sa1, Prefer: []string{names[0]}}, {Addr: sa2, Prefer: []string{names[1%len(names)]}}, {Addr: sa3, Prefer: []string{names[2%len(names)]}}}
		cfg := SpreadConfig{Holder: simHolder{n}, Cluster: simCluster{n}, Table: sn.table, Sessions: n.proxy,
			Addresses: addrs, Lease: simLease, MoveDrain: 100 * time.Millisecond, RebalanceDelay: time.Hour,
			Go: n.goJoined, Log: discard}
		if opt != nil {
			opt(n, &cfg)
		}
		n.sp = NewSpread(cfg)
		sn.nodes[name] = n
	}
	for _, n := range sn.nodes {
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.sp.Run(n.ctx) }()
	}
	t.Cleanup(func() {
		for _, n := range sn.nodes {
			sn.stop(n)
		}
	})
	return sn
}

func (sn *simNet) leader() *simNode {
	sn.lmu.Lock()
	defer sn.lmu.Unlock()
	return sn.leading
}

// lead makes n the leader (nil: none), as the cluster would: the old
// leader is told first and its term ends, then the new one's starts.
func (sn *simNet) lead(n *simNode) {
	sn.lmu.Lock()
	old := sn.leading
	sn.leading = n
	sn.lmu.Unlock()
	if old != nil && !old.isStopped() {
		old.sp.SetLeading(false)
		old.term()
		old.termWG.Wait()
	}
	if n != nil {
		n.sp.SetLeading(true)
		ctx, cancel := context.WithCancel(context.Background())
		n.term = cancel
		n.termWG.Add(1)
		go func() { defer n.termWG.Done(); n.sp.Lead(ctx) }()
	}
}

// stop is a crash: the node's goroutines end and its holdings with them.
func (sn *simNet) stop(n *simNode) {
	n.mu.Lock()
	was := n.stopped
	n.stopped = true
	n.mu.Unlock()
	if was {
		return
	}
	if n.term != nil {
		n.term()
		n.termWG.Wait()
	}
	n.cancel()
	n.wg.Wait()
	sn.mu.Lock()
	sn.log = append(sn.log, holdEvent{at: time.Now(), node: n.name, dead: true})
	sn.mu.Unlock()
}

// setRemoved takes n out of raft's configuration (or puts it back).
func (sn *simNet) setRemoved(n *simNode, removed bool) {
	sn.mu.Lock()
	sn.removed[n.name] = removed
	sn.mu.Unlock()
}

func (sn *simNet) setCut(n *simNode, cut bool) {
	n.mu.Lock()
	n.cut = cut
	n.mu.Unlock()
}

// holders returns the running nodes holding a now.
func (sn *simNet) holders(a netip.Addr) []string {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	var out []string
	for _, n := range sn.nodes {
		if !n.isStopped() && slices.Contains(simHolder{n}.Held(), a) {
			out = append(out, n.name)
		}
	}
	sort.Strings(out)
	return out
}

// check replays the log: never two running holders of an address.
func (sn *simNet) check() {
	sn.t.Helper()
	sn.mu.Lock()
	defer sn.mu.Unlock()
	held := map[string][]netip.Addr{}
	for i, e := range sn.log {
		if e.dead {
			delete(held, e.node)
		} else {
			held[e.node] = e.held
		}
		by := map[netip.Addr][]string{}
		for n, as := range held {
			for _, a := range as {
				by[a] = append(by[a], n)
			}
		}
		for a, ns := range by {
			if len(ns) > 1 {
				var b strings.Builder
				for _, x := range sn.log[max(0, i-8) : i+1] {
					fmt.Fprintf(&b, "  %s %s %v dead=%v\n", x.at.Format("15:04:05.000"), x.node, x.held, x.dead)
				}
				sn.t.Fatalf("%s held by %v at once:\n%s", a, ns, b.String())
			}
		}
	}
}

func (sn *simNet) waitHolders(t *testing.T, want map[netip.Addr]string, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		ok := true
		for a, n := range want {
			// "" is any one holder, "!x" any one holder but x.
			if h := sn.holders(a); len(h) != 1 || n != "" && n[0] != '!' && h[0] != n || n != "" && n[0] == '!' && h[0] == n[1:] {
				ok = false
			}
		}
		if ok {
			return time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	got := map[netip.Addr][]string{}
	for a := range want {
		got[a] = sn.holders(a)
	}
	t.Fatalf("holders %v after %v, want %v (table writes %v)", got, d, want, sn.table.writes)
	return 0
}

// Formation, a planned move, the failover of a cut-off follower (only
// once its lease has run out, and only its address) and of a crashed
// leader (at once): never two holders.
func TestSpreadSimulated(t *testing.T) {
	sn := newSimNet(t, "n1", "n2", "n3")
	n1, n2, n3 := sn.nodes["n1"], sn.nodes["n2"], sn.nodes["n3"]
	sn.lead(n1)
	// The unplaced addresses are the leader's until the others have had
	// a lease's time to ask; then each goes to its preferred node.
	sn.waitHolders(t, map[netip.Addr]string{sa1: "n1", sa2: "n2", sa3: "n3"}, 5*time.Second)
	sn.check()

	// A planned move through the leader: released, then placed.
	res, err := n1.sp.Move(t.Context(), sa2, "n3")
	if err != nil || res.From != "n2" || res.To != "n3" {
		t.Fatalf("move: %+v %v", res, err)
	}
	sn.waitHolders(t, map[netip.Addr]string{sa2: "n3"}, 2*time.Second)
	if _, err := n2.sp.Move(t.Context(), sa2, "n2"); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("move on a follower: %v", err)
	}
	if _, err := n1.sp.Move(t.Context(), sa2, "n3"); !errors.Is(err, ErrBadTarget) {
		t.Fatalf("move to the holder: %v", err)
	}
	sn.check()

	// A follower cut off: it drops its addresses when its lease runs
	// out; the leader moves them only after that, and nothing else.
	sn.setCut(n3, true)
	cutAt := time.Now()
	sn.waitHolders(t, map[netip.Addr]string{sa2: "!n3", sa3: "!n3"}, 5*time.Second)
	took := time.Since(cutAt)
	for _, a := range []netip.Addr{sa2, sa3} {
		if h := sn.holders(a); h[0] == "n3" {
			t.Fatalf("%s still on the cut-off node", a)
		}
	}
	if took < simLease {
		t.Fatalf("moved %v after the cut, within a lease (%v)", took, simLease)
	}
	if h := sn.holders(sa1); len(h) != 1 || h[0] != "n1" {
		t.Fatalf("%s moved too: %v", sa1, h)
	}
	sn.check()
	sn.setCut(n3, false)

	// The leader crashes: n2 leads; n1's address moves at once (the
	// marker names n1), without waiting for a lease.
	time.Sleep(3 * simLease) // n3 back in contact
	sn.stop(n1)
	crashAt := time.Now()
	sn.lead(n2)
	sn.waitHolders(t, map[netip.Addr]string{sa1: "!n1"}, 5*time.Second)
	// Through a lease it could not move before the term's start plus a
	// lease and a quarter.
	// Timing is all that tells the two paths apart here, and a loaded
	// machine running -race delays either (252 ms was seen against the
	// 250 ms bound): past the bound it is noted; the test fails only when
	// the move took longer than the lease path allows at all.
	if d := time.Since(crashAt); d >= 4*simLease {
		t.Errorf("the previous leader's address moved after %v: the marker should move it at once", d)
	} else if d >= simLease*5/4 {
		t.Logf("NOTE: the previous leader's address moved after %v (expected at once, < %v, on a quiet machine)", d, simLease*5/4)
	}
	sn.check()
	t.Logf("table writes: %v", sn.table.writes)
}

// The lease RPC answers only on a ready leader, and records the caller;
// the release RPC obeys the leader only.
func TestSpreadRPCs(t *testing.T) {
	sn := newSimNet(t, "n1", "n2")
	n1, n2 := sn.nodes["n1"], sn.nodes["n2"]
	if st, _ := n1.sp.HandleLease(t.Context(), "n2", nil); st != http.StatusServiceUnavailable {
		t.Fatalf("lease from a node that does not lead: %d", st)
	}
	sn.lead(n1)
	waitUntil(t, "the leader ready", waitLimit, func() bool {
		st, _ := n1.sp.HandleLease(t.Context(), "n2", nil)
		return st == http.StatusOK
	})
	if st, _ := n1.sp.HandleLease(t.Context(), "", nil); st != http.StatusForbidden {
		t.Fatalf("lease without a caller: %d", st)
	}
	body, _ := json.Marshal(releaseRequest{Address: sa1.String()})
	if st, _ := n2.sp.HandleRelease(t.Context(), "n2", body); st != http.StatusForbidden {
		t.Fatalf("release asked by a node that does not lead: %d", st)
	}
	body, _ = json.Marshal(releaseRequest{Address: "198.18.0.200"})
	if st, _ := n2.sp.HandleRelease(t.Context(), "n1", body); st != http.StatusBadRequest {
		t.Fatalf("release of an address that is not ours: %d", st)
	}
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// refusals counts OnRefused calls by RPC.
type refusals struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *refusals) add(rpc string) { r.mu.Lock(); r.n[rpc]++; r.mu.Unlock() }
func (r *refusals) get(rpc string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[rpc]
}

// The lease and release RPCs serve only servers of raft's configuration:
// a caller with a valid certificate that is not one (a node removed from
// the cluster, or one never added) is refused with 403, counted and
// logged (once a minute per caller), and its contact with the leader is
// not renewed; a server is served, and is again once it is back.
func TestSpreadRPCsServeServersOnly(t *testing.T) {
	var logs syncBuffer
	ref := map[string]*refusals{}
	sn := newSimNetWith(t, func(n *simNode, c *SpreadConfig) {
		r := &refusals{n: map[string]int{}}
		ref[n.name] = r
		c.OnRefused = r.add
		c.Log = slog.New(slog.NewTextHandler(&logs, nil)).With("node", n.name)
	}, "n1", "n2")
	n1, n2 := sn.nodes["n1"], sn.nodes["n2"]
	sn.lead(n1)
	sn.waitHolders(t, map[netip.Addr]string{sa2: "n2"}, 5*time.Second)
	lastAns := func() time.Time {
		n1.sp.mu.Lock()
		defer n1.sp.mu.Unlock()
		return n1.sp.lt.lastAns["n2"]
	}

	// A stranger: a valid caller name, never in the configuration.
	st, ans := n1.sp.HandleLease(t.Context(), "x", nil)
	if st != http.StatusForbidden || !strings.Contains(fmt.Sprint(ans), "not a server") {
		t.Fatalf("lease for a node outside the configuration: %d %v", st, ans)
	}
	if got := ref["n1"].get(rpcLease); got != 1 {
		t.Fatalf("refused leases counted: %d, want 1", got)
	}
	n1.sp.mu.Lock()
	_, recorded := n1.sp.lt.lastAns["x"]
	n1.sp.mu.Unlock()
	if recorded {
		t.Fatal("the leader recorded contact with a refused caller")
	}

	// n2 removed from the configuration: its own renewals (every Lease/6)
	// are refused from now on; once one has been, none of its calls is in
	// flight any more, and its last contact stays where it was.
	sn.setRemoved(n2, true)
	waitUntil(t, "n2's own renewal refused", waitLimit, func() bool { return ref["n1"].get(rpcLease) >= 2 })
	at := lastAns()
	if st, _ := n1.sp.HandleLease(t.Context(), "n2", nil); st != http.StatusForbidden {
		t.Fatalf("lease for a removed node: %d", st)
	}
	waitUntil(t, "more of n2's renewals refused", waitLimit, func() bool { return ref["n1"].get(rpcLease) >= 5 })
	if got := lastAns(); !got.Equal(at) {
		t.Fatalf("a refused lease renewed the removed node's contact: %v -> %v", at, got)
	}
	if c := strings.Count(logs.String(), "caller=n2"); c != 1 {
		t.Fatalf("the refused caller was logged %d times, want once a minute:\n%s", c, logs.String())
	}
	if !strings.Contains(logs.String(), `level=WARN msg="refused a virtual address RPC`) {
		t.Fatalf("no warning logged:\n%s", logs.String())
	}

	// Back in the configuration: served, and its contact renewed.
	sn.setRemoved(n2, false)
	if st, ans := n1.sp.HandleLease(t.Context(), "n2", nil); st != http.StatusOK {
		t.Fatalf("lease for a server: %d %v", st, ans)
	}
	if got := lastAns(); !got.After(at) {
		t.Fatalf("the lease did not renew the server's contact: %v -> %v", at, got)
	}

	// The release RPC: the leader, once removed from the configuration
	// (as n2 sees it), is refused; a server that does not lead is refused;
	// the leader is served.
	ps, _ := sn.table.Placements()
	body, _ := json.Marshal(releaseRequest{Address: sa2.String(), Epoch: ps[sa2].Epoch})
	sn.setRemoved(n1, true)
	if st, ans := n2.sp.HandleRelease(t.Context(), "n1", body); st != http.StatusForbidden || !strings.Contains(fmt.Sprint(ans), "not a server") {
		t.Fatalf("release asked by a leader outside the configuration: %d %v", st, ans)
	}
	sn.setRemoved(n1, false)
	if st, _ := n2.sp.HandleRelease(t.Context(), "n2", body); st != http.StatusForbidden {
		t.Fatalf("release asked by a server that does not lead: %d", st)
	}
	if got := ref["n2"].get(rpcRelease); got != 2 {
		t.Fatalf("refused releases counted: %d, want 2", got)
	}
	if !n2.sp.cfg.Holder.Holds(sa2) {
		t.Fatal("a refused release took the address away")
	}
	if st, ans := n2.sp.HandleRelease(t.Context(), "n1", body); st != http.StatusOK {
		t.Fatalf("release asked by the leader: %d %v", st, ans)
	}
	if n2.sp.cfg.Holder.Holds(sa2) {
		t.Fatal("the leader's release left the address on n2")
	}
	sn.check()
}

// A node removed from raft's configuration while it holds an address
// (it runs on, with a valid certificate): its renewals are refused, it
// drops the address when its last lease runs out, and the leader moves
// the address only after that (never two holders).
func TestSpreadRemovedNodeLosesItsAddress(t *testing.T) {
	sn := newSimNet(t, "n1", "n2", "n3")
	n1, n3 := sn.nodes["n1"], sn.nodes["n3"]
	sn.lead(n1)
	sn.waitHolders(t, map[netip.Addr]string{sa1: "n1", sa2: "n2", sa3: "n3"}, 5*time.Second)
	sn.setRemoved(n3, true)
	removedAt := time.Now()
	sn.waitHolders(t, map[netip.Addr]string{sa3: "!n3"}, 5*time.Second)
	if h := (simHolder{n3}).Held(); len(h) != 0 {
		t.Fatalf("the removed node still holds %v", h)
	}
	if until := n3.sp.LeaseUntil(); until.After(removedAt.Add(simLease)) {
		t.Fatalf("the removed node's lease was renewed after its removal: until %v, removed at %v", until, removedAt)
	}
	if n1.isStopped() || n3.isStopped() {
		t.Fatal("a node stopped")
	}
	sn.check()
}

var offSpread = netip.MustParseAddrPort("192.0.2.1:143") // a session on no virtual address

// spreadMoveRig: three simulated nodes, n1 leading, each address on its
// preferred node, and on n2 two busy and three idle sessions on sa2 (its
// address) and one on an address that is not virtual.
func spreadMoveRig(t *testing.T) (*simNet, *simNode, *simNode, *simNode) {
	sn := newSimNet(t, "n1", "n2", "n3")
	n1, n2, n3 := sn.nodes["n1"], sn.nodes["n2"], sn.nodes["n3"]
	sn.lead(n1)
	sn.waitHolders(t, map[netip.Addr]string{sa1: "n1", sa2: "n2", sa3: "n3"}, 5*time.Second)
	on := netip.AddrPortFrom(sa2, 143)
	n2.proxy.add(on, true, 2)
	n2.proxy.add(on, false, 3)
	n2.proxy.add(offSpread, false, 1)
	return sn, n1, n2, n3
}

// A spread move hands over first, as the leader mode's does: the owner
// ends the busy sessions while it holds the address, releases it and
// answers the release RPC (the leader writes the placement, the new
// owner takes the address), and only then ends the idle rest, once the
// table places the address elsewhere, while the sweep leaves them to it.
func TestSpreadMoveHandsOverFirst(t *testing.T) {
	sn, n1, n2, _ := spreadMoveRig(t)
	hold := make(chan struct{})
	n2.proxy.mu.Lock()
	n2.proxy.hold, n2.proxy.holdAddr = hold, sa2
	n2.proxy.mu.Unlock()
	released := false
	defer func() {
		if !released {
			close(hold)
		}
	}()
	res, err := n1.sp.Move(t.Context(), sa2, "n3")
	if err != nil || res.From != "n2" || res.To != "n3" || res.SessionsEnded != 2 || res.SessionsEnding != 3 {
		t.Fatalf("move: %+v, %v; want from n2 to n3, 2 sessions ended before the handover and 3 being ended after", res, err)
	}
	// The answer came while the idle sessions were not ended yet.
	if busy, idle := n2.proxy.on(sa2); busy != 0 || idle != 3 {
		t.Fatalf("when the move answered: %d busy and %d idle sessions left on the address, want 0 and 3", busy, idle)
	}
	sn.waitHolders(t, map[netip.Addr]string{sa2: "n3"}, 2*time.Second)
	// The sweep runs every 250 ms; let it run twice while the idle
	// sessions are still being ended: it must leave them to the move.
	sweeps := func() int {
		n := 0
		for _, c := range n2.proxy.calls(sa1) {
			if !c.busy {
				n++
			}
		}
		return n
	}
	n2.proxy.add(netip.AddrPortFrom(sa1, 143), false, 1) // n2 does not hold sa1: the sweep ends it
	from := sweeps()
	waitUntil(t, "two sweeps on n2", 5*time.Second, func() bool {
		n2.proxy.add(netip.AddrPortFrom(sa1, 143), false, 1)
		return sweeps() >= from+2
	})
	close(hold)
	released = true
	waitUntil(t, "the idle sessions ended", 5*time.Second, func() bool { _, idle := n2.proxy.on(sa2); return idle == 0 })
	calls := n2.proxy.calls(sa2)
	if len(calls) != 2 {
		t.Fatalf("%d calls ended sessions on the moved address, want 2 (the busy ones, then the idle ones): %+v", len(calls), calls)
	}
	if c := calls[0]; !c.busy || len(c.matched) != 2 || !slices.Contains(c.held, sa2) {
		t.Fatalf("first end: busy %v, %d sessions, holdings %v; want the 2 busy ones while n2 held the address", c.busy, len(c.matched), c.held)
	}
	if c := calls[1]; c.busy || len(c.matched) != 3 || slices.Contains(c.held, sa2) || c.placed[sa2].Node != "n3" {
		t.Fatalf("second end: busy %v, %d sessions, holdings %v, placement %v; want the 3 idle ones once the address was gone and placed on n3",
			c.busy, len(c.matched), c.held, c.placed[sa2])
	}
	if n2.proxy.CountSessions(func(l netip.AddrPort) bool { return l == offSpread }) != 1 {
		t.Fatal("the session on no virtual address was ended")
	}
	waitUntil(t, "the move's end accounted as over", 2*time.Second, func() bool {
		n2.sp.mu.Lock()
		defer n2.sp.mu.Unlock()
		return len(n2.sp.ending) == 0
	})
	sn.check()
}

// The leader's own address moves the same way: busy sessions first, the
// address, the placement, then the idle ones.
func TestSpreadMoveFromLeader(t *testing.T) {
	sn, n1, _, _ := spreadMoveRig(t)
	on := netip.AddrPortFrom(sa1, 993)
	n1.proxy.add(on, true, 1)
	n1.proxy.add(on, false, 2)
	res, err := n1.sp.Move(t.Context(), sa1, "n2")
	if err != nil || res.From != "n1" || res.To != "n2" || res.SessionsEnded != 1 || res.SessionsEnding != 2 {
		t.Fatalf("move: %+v, %v", res, err)
	}
	waitUntil(t, "the idle sessions ended", 5*time.Second, func() bool { _, idle := n1.proxy.on(sa1); return idle == 0 })
	calls := n1.proxy.calls(sa1)
	if len(calls) != 2 || !calls[0].busy || !slices.Contains(calls[0].held, sa1) ||
		calls[1].busy || slices.Contains(calls[1].held, sa1) || calls[1].placed[sa1].Node != "n2" {
		t.Fatalf("ends on the moved address: %+v", calls)
	}
	sn.waitHolders(t, map[netip.Addr]string{sa1: "n2"}, 2*time.Second)
	sn.check()
}

// A release that fails (the address would not leave the interface)
// fails the move, and the idle sessions carry on once the node holds the
// address again; so do they when the release went through but the
// placement could not be written (the move was given up).
func TestSpreadMoveFailedKeepsSessions(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail func(sn *simNet, n2 *simNode, on bool)
	}{
		{"release fails", func(_ *simNet, n2 *simNode, on bool) { n2.mu.Lock(); n2.failRelease = on; n2.mu.Unlock() }},
		{"placement fails", func(sn *simNet, _ *simNode, on bool) {
			sn.table.mu.Lock()
			sn.table.failPlace = on
			sn.table.mu.Unlock()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sn, n1, n2, _ := spreadMoveRig(t)
			tc.fail(sn, n2, true)
			if res, err := n1.sp.Move(t.Context(), sa2, "n3"); err == nil {
				t.Fatalf("move succeeded: %+v", res)
			}
			tc.fail(sn, n2, false)
			// The next lease answer tells n2 the move is over: it holds
			// the address again, and whatever was ending its sessions
			// stops.
			sn.waitHolders(t, map[netip.Addr]string{sa2: "n2"}, 3*time.Second)
			waitUntil(t, "no move ending sessions on n2", 7*time.Second, func() bool {
				n2.sp.mu.Lock()
				defer n2.sp.mu.Unlock()
				return len(n2.sp.ending) == 0
			})
			if busy, idle := n2.proxy.on(sa2); busy != 0 || idle != 3 {
				t.Fatalf("%d busy and %d idle sessions left, want 0 (ended before the release) and 3", busy, idle)
			}
			for _, c := range n2.proxy.calls(sa2) {
				if !c.busy {
					t.Fatalf("idle sessions ended: %+v", c)
				}
			}
			sn.check()
		})
	}
}

package vip

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// The spread mode (vip.mode: spread, see DESIGN.md): every address is
// placed on one node by the leader, the placements are replicated through
// raft (the routing table's set-vips command), and a node holds an
// address only while the table it has caught up with places the address
// on it and it is in contact with a quorum: as the raft leader, or through
// a lease the leader grants it (renewed every Lease/6, valid for Lease
// from the moment the node asked). The leader moves the addresses of a
// node whose lease has surely run out, and moves the addresses of live
// nodes only after they released them (planned moves: `vip move`, drain,
// shutdown, rebalance).

// Defaults of the spread mode, documented in the README.
const (
	// DefaultLease: a node holds its addresses for this long after it
	// last asked the leader (the lease is renewed every sixth of it). A
	// failed follower's addresses move after about Lease plus a sixth;
	// the lease outlasts an ordinary election (0.5-1.2 s), so that the
	// followers keep their addresses while a new leader is elected.
	DefaultLease = 1500 * time.Millisecond
	// DefaultRebalanceDelay: with rebalance on, a node must have been in
	// contact this long before it is given an address another node
	// holds, and a rebalance move comes at least this long after any move.
	DefaultRebalanceDelay = 60 * time.Second
)

// The cluster RPCs of the spread mode (cluster.Agent.HandleRPC).
const (
	LeaseRPC   = "/v1/ext/vip-lease"   // a node renews its lease with the leader
	ReleaseRPC = "/v1/ext/vip-release" // the leader asks an owner to release one address
)

// SpreadAddress is one address of the spread mode and the nodes it
// prefers, in order.
type SpreadAddress struct {
	Addr   netip.Addr
	Prefer []string
}

// Placement is where the replicated table places an address.
type Placement struct {
	Node  string `json:"node"`
	Epoch uint64 `json:"epoch"`
}

// MemberLoad is a member as the gossip shows it.
type MemberLoad struct {
	Name     string
	Alive    bool
	Sessions int
}

// SpreadCluster is the spread mode's view of the cluster (cluster.Agent
// through the daemon).
type SpreadCluster interface {
	Name() string
	IsLeader() bool
	VerifyLeader() error
	Leader() (name, api string)
	CallLeader(ctx context.Context, path string, body []byte) (int, []byte, error)
	CallNode(ctx context.Context, name, path string, body []byte) (int, []byte, error)
	Members() []MemberLoad
	// IsServer: the node named is a server (voter or non-voter) in
	// raft's latest configuration as this node knows it (an error when
	// it knows none yet). The lease and release RPCs serve only servers.
	IsServer(name string) (bool, error)
}

// ErrPlacementUnsupported: a node of the cluster does not apply placements
// yet (a rolling upgrade is under way); the leader then holds every
// address, as in the leader mode.
var ErrPlacementUnsupported = errors.New("placements not supported by every node yet")

// PlacementTable is the replicated table's side: placements as this node
// has applied them, written through raft.
type PlacementTable interface {
	// Placements returns the placed addresses and the leader marker.
	Placements() (map[netip.Addr]Placement, string)
	// AppliedIndex is the raft index the table reflects.
	AppliedIndex() uint64
	// Place writes placements, each a compare-and-set on the epoch given
	// (the table's current one); a Node of "" removes the placement.
	Place(ctx context.Context, ps map[netip.Addr]Placement) error
	// Mark writes the leader marker.
	Mark(ctx context.Context, leader string) error
}

// SpreadHolder is the mechanism (Manager).
type SpreadHolder interface {
	SetWant(addrs []netip.Addr)
	ReleaseAddrs(addrs []netip.Addr, timeout time.Duration) error
	Held() []netip.Addr
	Holds(a netip.Addr) bool
}

// SpreadConfig configures a Spread controller.
type SpreadConfig struct {
	Holder    SpreadHolder
	Cluster   SpreadCluster
	Table     PlacementTable
	Sessions  Sessions
	Addresses []SpreadAddress
	Lease     time.Duration // default DefaultLease
	// Rebalance moves addresses of live nodes towards their preferred
	// nodes and towards balance, one at a time, RebalanceDelay apart and
	// only to nodes in contact for RebalanceDelay. Off: a node that comes
	// back gets no address until another node fails or drains.
	Rebalance      bool
	RebalanceDelay time.Duration
	// MoveDrain bounds how long a planned move waits for sessions on the
	// address to end at a response boundary.
	MoveDrain time.Duration
	Draining  func() bool
	// Go runs f in a goroutine its owner joins at shutdown (false if it
	// is shutting down).
	Go func(f func(ctx context.Context)) bool
	// HoldUntil: the node was started by an in-place upgrade and inherits
	// the old process's lease, which runs until then (zero: none).
	HoldUntil time.Time
	// OnRefused, if set, counts a lease or release call refused because
	// of who made it (rpc is "lease" or "release"): no verified caller,
	// not a server in raft's configuration, or a release not asked by the
	// leader.
	OnRefused func(rpc string)
	Log       *slog.Logger
}

// Spread is the spread mode's ownership policy; see the file comment.
type Spread struct {
	cfg    SpreadConfig
	log    *slog.Logger
	every  time.Duration // how often a follower renews its lease
	margin time.Duration // beyond a lease, before its addresses move
	tick   time.Duration
	slots  []Slot
	addrs  map[netip.Addr]bool
	kickc  chan struct{}

	refuse   atomic.Pointer[map[netip.Addr]bool]
	renewNow atomic.Bool // renew at the next tick (news for the leader)

	// refusedLog: when a refused caller of an RPC was last logged (at
	// most once a minute each: a removed node renews every Lease/6).
	refusedMu  sync.Mutex
	refusedLog map[string]time.Time

	mu sync.Mutex
	// The holder's side.
	leaseUntil   time.Time // follower lease (zero: none)
	leaseFrom    string    // the leader that granted it
	remoteMoving map[netip.Addr]bool
	fences       map[netip.Addr]fence
	refused      map[netip.Addr]bool
	// ending: the addresses whose sessions a move ends after handing
	// them over (endMoved), with how many moves do (a move of the address
	// back here and away again can start before the first one's end has
	// returned); the sweep leaves those sessions to them.
	ending map[netip.Addr]int
	// claims counts, per address, the changes of this node's wish to
	// hold it (odd: it wants it now; see wantLocked). A move's late end
	// of the sessions on an address stops as soon as the count moves on.
	claims map[netip.Addr]*atomic.Uint64
	// left: Leave gave everything up (shutdown, drain); held nothing more
	// until the node serves again (no longer draining).
	left    bool
	leading bool        // told so (after the barrier)
	lt      *leaderTerm // this node's term, once its marker is written
}

// fence: the leader asked this node to release the address at this epoch
// (or this node, leading, released it to move it): it does not hold it
// at that epoch again until told the move is over.
type fence struct {
	epoch uint64
	at    time.Time
}

// leaderTerm is the leader's state for one term.
type leaderTerm struct {
	start     time.Time
	prev      string // the leader marker found at the start of the term
	placing   bool   // placements can be written (every node applies them)
	lastAns   map[string]time.Time
	draining  map[string]bool
	since     map[string]time.Time // in contact without a break since
	moving    map[netip.Addr]bool
	retryAt   map[netip.Addr]time.Time
	rebalance time.Time // the last move (a rebalance waits the delay after it)
	// resumed: the leader's own loop was held up (a stall: CPU starved,
	// paused); nodes could not renew meanwhile, so each gets a full
	// lease from then on before its addresses move.
	resumed time.Time
}

// NewSpread returns the controller for cfg.
func NewSpread(cfg SpreadConfig) *Spread {
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.RebalanceDelay <= 0 {
		cfg.RebalanceDelay = DefaultRebalanceDelay
	}
	if cfg.MoveDrain <= 0 {
		cfg.MoveDrain = DefaultMoveDrain
	}
	if cfg.Draining == nil {
		cfg.Draining = func() bool { return false }
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	s := &Spread{cfg: cfg, log: cfg.Log, every: cfg.Lease / 6, margin: cfg.Lease / 6, tick: min(50*time.Millisecond, cfg.Lease/12),
		addrs: map[netip.Addr]bool{}, kickc: make(chan struct{}, 1),
		fences: map[netip.Addr]fence{}, refused: map[netip.Addr]bool{}, ending: map[netip.Addr]int{},
		claims: map[netip.Addr]*atomic.Uint64{}, refusedLog: map[string]time.Time{}}
	for _, a := range cfg.Addresses {
		s.slots = append(s.slots, Slot{Address: a.Addr.String(), Prefer: a.Prefer})
		s.addrs[a.Addr] = true
		s.claims[a.Addr] = new(atomic.Uint64)
	}
	if time.Now().Before(cfg.HoldUntil) {
		s.leaseUntil = cfg.HoldUntil
		s.log.Info("keeping this node's virtual addresses through the in-place upgrade on the old process's lease", "until", cfg.HoldUntil)
	}
	return s
}

// Prime decides the holdings once, before the mechanism starts (which
// would otherwise remove an address inherited through an in-place
// upgrade as stale).
func (s *Spread) Prime() { s.apply() }

func (s *Spread) kick() {
	select {
	case s.kickc <- struct{}{}:
	default:
	}
}

// refusing is the proxy's refuse filter: new connections to an address
// being released are reset.
func (s *Spread) refusing(local netip.AddrPort) bool {
	m := s.refuse.Load()
	return m != nil && (*m)[local.Addr()]
}

// setRefusedLocked publishes the refused set; s.mu is held.
func (s *Spread) setRefusedLocked(a netip.Addr, on bool) {
	if s.refused[a] == on {
		return
	}
	if on {
		s.refused[a] = true
	} else {
		delete(s.refused, a)
	}
	cp := make(map[netip.Addr]bool, len(s.refused))
	for k := range s.refused {
		cp[k] = true
	}
	s.refuse.Store(&cp)
}

// HoldFacts are the facts a node decides its holdings from.
type HoldFacts struct {
	Self       string
	Addresses  []netip.Addr
	Placements map[netip.Addr]Placement
	// LeaderReady: raft says this node leads, it was told so after its
	// barrier, and its leader marker is written.
	LeaderReady bool
	// LeaseValid: a lease granted by the leader has not run out.
	LeaseValid bool
	// Moving: the addresses the leader is moving (its own set when
	// leading, else as its last lease answer listed them).
	Moving map[netip.Addr]bool
	// Fenced: this node released the address at the epoch or later.
	Fenced func(a netip.Addr, epoch uint64) bool
	// Left: the node gave everything up (Leave) and still drains.
	Left bool
}

// Holdings is what a node holds: the addresses the table places on it,
// while it leads or holds a lease, and the addresses the table places
// nowhere, while it leads (as in the leader mode); never one being moved
// or one it released at its current placement.
func Holdings(f HoldFacts) []netip.Addr {
	if f.Left {
		return nil
	}
	var out []netip.Addr
	for _, a := range f.Addresses {
		p, placed := f.Placements[a]
		if f.Moving[a] || f.Fenced != nil && f.Fenced(a, p.Epoch) {
			continue
		}
		if placed && p.Node == f.Self && (f.LeaderReady || f.LeaseValid) || !placed && f.LeaderReady {
			out = append(out, a)
		}
	}
	return out
}

// Run keeps this node's holdings right until ctx ends: it renews the
// lease with the leader (on followers), decides the holdings (Holdings)
// at least every tick and whenever the lease or the table changes, and
// ends relayed sessions on addresses this node does not hold.
func (s *Spread) Run(ctx context.Context) {
	s.refuse.Store(&map[netip.Addr]bool{})
	s.cfg.Sessions.SetRefuse(s.refusing)
	go s.renewLoop(ctx)
	t := time.NewTicker(s.tick)
	defer t.Stop()
	var sweeping atomic.Bool
	lastSweep := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kickc:
		}
		s.apply()
		if time.Since(lastSweep) >= 250*time.Millisecond && sweeping.CompareAndSwap(false, true) {
			lastSweep = time.Now()
			if !s.cfg.Go(func(ctx context.Context) {
				defer sweeping.Store(false)
				s.sweep(ctx)
			}) {
				sweeping.Store(false)
			}
		}
	}
}

// sweep ends relayed sessions on addresses this node does not hold and
// has no claim to (placed on another node, or unplaced while another
// node leads): their clients' packets go to the new owner, which resets
// them. Sessions on an address still placed here, but not held for a
// moment (a lease renewed late during an election), carry on: the
// address comes back with the next renewal.
func (s *Spread) sweep(ctx context.Context) {
	held := s.cfg.Holder.Held()
	ps, _ := s.cfg.Table.Placements()
	self := s.cfg.Cluster.Name()
	s.mu.Lock()
	leader, left := s.lt != nil && s.leading, s.left
	ending := maps.Clone(s.ending)
	s.mu.Unlock()
	gone := map[netip.Addr]bool{}
	for a := range s.addrs {
		p, placed := ps[a]
		if ending[a] > 0 {
			continue // a move ends them (endMoved)
		}
		if !slices.Contains(held, a) && (left || placed && p.Node != self || !placed && !leader) {
			gone[a] = true
		}
	}
	if len(gone) == 0 {
		return
	}
	match := func(l netip.AddrPort) bool { return gone[l.Addr()] }
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if n := s.cfg.Sessions.EndSessions(sctx, match, moveText, 0); n > 0 {
		s.log.Info("ended sessions on virtual addresses this node does not hold", "sessions", n)
	}
}

// facts gathers the holding facts; s.mu is held.
func (s *Spread) factsLocked(now time.Time) HoldFacts {
	ps, _ := s.cfg.Table.Placements()
	f := HoldFacts{Self: s.cfg.Cluster.Name(), Placements: ps,
		LeaderReady: s.lt != nil && s.leading && s.cfg.Cluster.IsLeader(),
		LeaseValid:  now.Before(s.leaseUntil),
		Fenced: func(a netip.Addr, epoch uint64) bool {
			fc, ok := s.fences[a]
			return ok && epoch <= fc.epoch
		},
		Left: s.left,
	}
	for _, a := range s.cfg.Addresses {
		f.Addresses = append(f.Addresses, a.Addr)
	}
	if f.LeaderReady {
		f.Moving = s.lt.moving
	} else {
		f.Moving = s.remoteMoving
	}
	return f
}

// wantLocked decides the holdings now and counts the changes of the
// wish to hold each address (claims); s.mu is held. Every decision goes
// through it before it reaches the mechanism: an address whose claim
// count has not moved since a release has not been asked for since.
func (s *Spread) wantLocked(now time.Time) []netip.Addr {
	want := Holdings(s.factsLocked(now))
	for a, c := range s.claims {
		if slices.Contains(want, a) != (c.Load()%2 == 1) {
			c.Add(1)
		}
	}
	return want
}

// apply decides the holdings now and hands them to the mechanism.
func (s *Spread) apply() {
	serving := !s.cfg.Draining()
	s.mu.Lock()
	if s.left && serving {
		s.left = false // a drain was cancelled: serve again
	}
	want := s.wantLocked(time.Now())
	s.mu.Unlock()
	s.cfg.Holder.SetWant(want)
}

// Verify is the mechanism's check before an announcement after the
// first: this node still holds a lease, or leads.
func (s *Spread) Verify() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Now().Before(s.leaseUntil) || s.lt != nil && s.leading && s.cfg.Cluster.IsLeader() {
		return nil
	}
	return errors.New("no lease from the leader and not leading")
}

// leaseRequest and leaseAnswer are the lease RPC's body and answer.
type leaseRequest struct {
	Draining bool `json:"draining,omitempty"`
}

type leaseAnswer struct {
	Leader string   `json:"leader"`
	Index  uint64   `json:"index"`  // the leader's table index when it answered
	Moving []string `json:"moving"` // addresses being moved: not to be held
}

// renewLoop renews the lease while this node follows: every sixth of
// the lease, at once when the leader changed, and again after a tick
// when a renewal failed.
func (s *Spread) renewLoop(ctx context.Context) {
	var last time.Time
	for {
		if s.renewNow.Swap(false) {
			last = time.Time{}
		}
		wait := s.tick
		leader, _ := s.cfg.Cluster.Leader()
		s.mu.Lock()
		from := s.leaseFrom
		s.mu.Unlock()
		if leader != "" && leader != s.cfg.Cluster.Name() && (time.Since(last) >= s.every || leader != from) {
			if err := s.renew(ctx); err != nil {
				s.log.Debug("lease renewal failed", "leader", leader, "error", err)
			} else {
				last = time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// renew asks the leader for a lease: valid for Lease from the moment it
// asked, once this node's table has caught up with the leader's as of
// the answer (so that the placements it holds by are current).
func (s *Spread) renew(ctx context.Context) error {
	sent := time.Now()
	body, _ := json.Marshal(leaseRequest{Draining: s.draining()})
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Lease/2)
	defer cancel()
	status, raw, err := s.cfg.Cluster.CallLeader(cctx, LeaseRPC, body)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("leader answered %d: %.200s", status, raw)
	}
	var ans leaseAnswer
	if err := json.Unmarshal(raw, &ans); err != nil {
		return fmt.Errorf("lease answer: %w", err)
	}
	for s.cfg.Table.AppliedIndex() < ans.Index {
		if time.Since(sent) > s.cfg.Lease/2 {
			return fmt.Errorf("the table did not reach the leader's index %d in time", ans.Index)
		}
		select {
		case <-cctx.Done():
			return cctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	moving := map[netip.Addr]bool{}
	for _, m := range ans.Moving {
		if a, err := netip.ParseAddr(m); err == nil {
			moving[a] = true
		}
	}
	s.mu.Lock()
	if s.lt != nil && s.leading {
		s.mu.Unlock()
		return nil // leading meanwhile: its own lease
	}
	if until := sent.Add(s.cfg.Lease); until.After(s.leaseUntil) {
		s.leaseUntil = until
	}
	s.leaseFrom, s.remoteMoving = ans.Leader, moving
	// A release before this request that the leader no longer moves is
	// over: the address moved on (the table, caught up, says so) or the
	// move was given up.
	for a, fc := range s.fences {
		if fc.at.Before(sent) && !moving[a] {
			delete(s.fences, a)
			s.setRefusedLocked(a, false)
		}
	}
	s.mu.Unlock()
	s.kick()
	return nil
}

// renewSoon makes the next renewal go at the next tick.
func (s *Spread) renewSoon() { s.renewNow.Store(true) }

func (s *Spread) draining() bool {
	s.mu.Lock()
	l := s.left
	s.mu.Unlock()
	return l || s.cfg.Draining()
}

// HandleLease serves the lease RPC on the leader: once it has confirmed
// its leadership with a quorum, it records the caller's contact and
// answers with its table's index and the addresses it is moving. Only a
// server of raft's configuration is served (authorize): a lease is the
// right to hold what the replicated table places on the caller, and a
// node the table is not replicated to cannot follow it (DESIGN.md,
// "Who may call the spread mode's RPCs").
func (s *Spread) HandleLease(ctx context.Context, caller string, body []byte) (int, any) {
	var req leaseRequest
	if len(body) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			return http.StatusBadRequest, map[string]string{"error": err.Error()}
		}
	}
	if status, why := s.authorize(rpcLease, caller); status != 0 {
		// Its last grant, if any, is left as it was: its addresses move
		// once that grant has surely run out (failedLocked), not before.
		return status, map[string]string{"error": why}
	}
	if err := s.cfg.Cluster.VerifyLeader(); err != nil {
		return http.StatusServiceUnavailable, map[string]string{"error": err.Error()}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	lt := s.lt
	if lt == nil || !s.leading || !lt.placing {
		return http.StatusServiceUnavailable, map[string]string{"error": "not the leader, or not ready yet"}
	}
	now := time.Now()
	if at, ok := lt.lastAns[caller]; !ok || now.Sub(at) >= s.cfg.Lease {
		lt.since[caller] = now
	}
	lt.lastAns[caller] = now
	lt.draining[caller] = req.Draining
	ans := leaseAnswer{Leader: s.cfg.Cluster.Name(), Index: s.cfg.Table.AppliedIndex()}
	for a := range lt.moving {
		ans.Moving = append(ans.Moving, a.String())
	}
	sort.Strings(ans.Moving)
	return http.StatusOK, ans
}

// SetLeading is the leadership hook: leading (after the barrier) lets
// Lead start, no longer leading drops everything held as leader at once.
func (s *Spread) SetLeading(leader bool) {
	s.mu.Lock()
	s.leading = leader
	if !leader {
		s.lt = nil
	}
	s.mu.Unlock()
	s.apply()
}

// Lead is the leader's work for one term (cluster.Agent.RunWhileLeader):
// it writes its marker, then places addresses every tick until ctx ends.
func (s *Spread) Lead(ctx context.Context) {
	start := time.Now()
	_, prev := s.cfg.Table.Placements()
	placing := true
	for {
		err := s.cfg.Table.Mark(ctx, s.cfg.Cluster.Name())
		if err == nil {
			break
		}
		if errors.Is(err, ErrPlacementUnsupported) {
			s.log.Warn("a node of the cluster does not apply placements yet: the leader holds every virtual address until it does", "error", err)
			placing = false
			break
		}
		s.log.Warn("writing the leader marker", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	lt := &leaderTerm{start: start, prev: prev, placing: placing, lastAns: map[string]time.Time{},
		draining: map[string]bool{}, since: map[string]time.Time{}, moving: map[netip.Addr]bool{},
		retryAt: map[netip.Addr]time.Time{}, rebalance: start}
	s.mu.Lock()
	if !s.leading || ctx.Err() != nil {
		s.mu.Unlock()
		return
	}
	s.lt = lt
	// Held from now on as leader: a lease granted by an earlier leader
	// must not outlive this term (the next leader reassigns what this
	// node held as leader at once, see DESIGN.md).
	s.leaseUntil, s.remoteMoving = time.Time{}, nil
	s.mu.Unlock()
	s.log.Info("leading the placement of virtual addresses", "previous", prev, "placing", placing)
	s.kick()
	if !placing {
		<-ctx.Done()
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	t := time.NewTicker(s.tick)
	defer t.Stop()
	last := time.Now()
	for {
		now := time.Now()
		if gap := now.Sub(last); gap > s.every {
			s.log.Warn("the leader was held up; every node gets a full lease to renew before its addresses move", "for", gap.Round(time.Millisecond))
			s.mu.Lock()
			lt.resumed = now
			s.mu.Unlock()
		}
		last = now
		for _, m := range s.decide(now) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := s.execute(ctx, m); err != nil {
					s.log.Warn("moving a virtual address", "address", m.Address, "from", m.From, "to", m.To, "reason", m.Reason, "error", err)
				}
			}()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// plannedMove is a move and how it is carried out.
type plannedMove struct {
	Move
	addr    netip.Addr
	cur     Placement // the table's placement when decided (epoch to compare-and-set)
	release bool      // the owner releases first (it is alive); else its lease ran out
	started time.Time
}

// failedLocked: the node's lease surely ran out, so its addresses can be
// given to others without its release; s.mu is held.
func (s *Spread) failedLocked(lt *leaderTerm, n string, now time.Time) bool {
	if n == "" || n == s.cfg.Cluster.Name() {
		return false
	}
	at, ok := lt.lastAns[n]
	if !ok && n == lt.prev {
		// The previous leader held its addresses as leader only (its
		// marker ended its follower leases) and has not asked this
		// leader for a lease: it stopped holding them when it lost
		// leadership, before this term began (the raft argument of the
		// leader mode, DESIGN.md).
		return true
	}
	base := lt.start
	if ok && at.After(base) {
		base = at
	}
	if lt.resumed.After(base) {
		base = lt.resumed
	}
	return now.After(base.Add(s.cfg.Lease + s.margin))
}

// decide makes the placement decision of one tick and marks the moves it
// starts (the lease answers then tell their owners not to hold them).
func (s *Spread) decide(now time.Time) []plannedMove {
	ps, _ := s.cfg.Table.Placements()
	sessions := map[string]int{}
	members := s.cfg.Cluster.Members()
	for _, m := range members {
		sessions[m.Name] = m.Sessions
	}
	self := s.cfg.Cluster.Name()
	selfDraining := s.draining()
	s.mu.Lock()
	defer s.mu.Unlock()
	lt := s.lt
	if lt == nil || !s.leading {
		return nil
	}
	if now.Before(lt.start.Add(s.every)) {
		// A new term: the live members ask for their leases as soon as
		// they know this leader; let them, so that a failed node's
		// addresses spread over all survivors, not onto this one.
		for _, m := range members {
			if _, asked := lt.lastAns[m.Name]; m.Alive && !asked && m.Name != self && m.Name != lt.prev {
				return nil
			}
		}
	}
	eligible := map[string]NodeLoad{}
	contact := func(n string) bool { at, ok := lt.lastAns[n]; return ok && now.Sub(at) < s.cfg.Lease }
	if _, ok := lt.since[self]; !ok {
		lt.since[self] = lt.start
	}
	for n := range lt.lastAns {
		if !contact(n) {
			delete(lt.since, n)
		}
	}
	consider := func(n string) {
		if lt.draining[n] || n == self && selfDraining {
			return
		}
		eligible[n] = NodeLoad{Sessions: sessions[n], Settled: now.Sub(lt.since[n]) >= s.cfg.RebalanceDelay}
	}
	consider(self)
	for n := range lt.lastAns {
		if n != self && contact(n) {
			consider(n)
		}
	}
	owners := map[string]string{}
	var slots []Slot
	for i, a := range s.cfg.Addresses {
		if lt.moving[a.Addr] || now.Before(lt.retryAt[a.Addr]) {
			continue
		}
		if p, ok := ps[a.Addr]; ok {
			owners[s.slots[i].Address] = p.Node
		}
		slots = append(slots, s.slots[i])
	}
	rebalance := s.cfg.Rebalance && now.Sub(lt.rebalance) >= s.cfg.RebalanceDelay
	moves := Place(PlaceInput{Slots: slots, Owners: owners, Eligible: eligible, Rebalance: rebalance})
	var out []plannedMove
	for _, m := range moves {
		a := netip.MustParseAddr(m.Address)
		pm := plannedMove{Move: m, addr: a, cur: ps[a], started: now}
		switch {
		case m.From == "":
			// Unplaced, so held by this node as leader: placed once every
			// node in contact has had time to ask for its lease.
			if now.Before(lt.start.Add(s.cfg.Lease + s.margin)) {
				continue
			}
			pm.release = true
		case s.failedLocked(lt, m.From, now):
		case m.From == self || contact(m.From):
			pm.release = true
		default:
			continue // its owner may still hold it: wait for its lease to run out
		}
		if m.Reason == ReasonPrefer || m.Reason == ReasonRebalance {
			lt.rebalance = now
		}
		lt.moving[a] = true
		out = append(out, pm)
	}
	return out
}

// execute carries a move out: the owner releases the address (when it is
// alive), then the new placement is written. It unmarks the move when
// done, and backs off on the address after a failure.
func (s *Spread) execute(ctx context.Context, m plannedMove) (rel released, err error) {
	self := s.cfg.Cluster.Name()
	local := m.From == "" || m.From == self
	defer func() {
		s.mu.Lock()
		if lt := s.lt; lt != nil {
			delete(lt.moving, m.addr)
			if err != nil {
				lt.retryAt[m.addr] = time.Now().Add(2 * time.Second)
			}
		}
		if local {
			// Moved on (the table says so) or given up (held again).
			delete(s.fences, m.addr)
			s.setRefusedLocked(m.addr, false)
		}
		s.mu.Unlock()
		s.kick()
	}()
	if m.release {
		if local {
			if rel, err = s.releaseLocal(ctx, m.addr, m.cur.Epoch); err != nil {
				return rel, err
			}
		} else {
			body, _ := json.Marshal(releaseRequest{Address: m.Address, Epoch: m.cur.Epoch})
			rctx, cancel := context.WithTimeout(ctx, s.cfg.MoveDrain+5*time.Second)
			status, raw, cerr := s.cfg.Cluster.CallNode(rctx, m.From, ReleaseRPC, body)
			cancel()
			if cerr != nil {
				return released{}, fmt.Errorf("asking %s to release it: %w", m.From, cerr)
			}
			var ans releaseAnswer
			_ = json.Unmarshal(raw, &ans)
			if status != http.StatusOK {
				return released{}, fmt.Errorf("%s did not release it (%d): %s", m.From, status, ans.Error)
			}
			rel = released{Ended: ans.SessionsEnded, Ending: ans.SessionsEnding}
		}
	}
	if err := s.cfg.Table.Place(ctx, map[netip.Addr]Placement{m.addr: {Node: m.To, Epoch: m.cur.Epoch}}); err != nil {
		if cur, _ := s.cfg.Table.Placements(); cur[m.addr].Node == m.To && cur[m.addr].Epoch > m.cur.Epoch {
			// A retry after an unknown outcome: written the first time.
		} else {
			return rel, fmt.Errorf("writing the placement: %w", err)
		}
	}
	s.mu.Lock()
	if lt := s.lt; lt != nil {
		// Every move, not only a rebalance, holds the next rebalance off
		// for the delay: an operator's move or a failover is not undone
		// at once.
		lt.rebalance = time.Now()
	}
	s.mu.Unlock()
	s.log.Info("moved virtual address", "address", m.Address, "from", m.From, "to", m.To, "reason", m.Reason,
		"released", m.release, "sessions_ended", rel.Ended, "sessions_ending", rel.Ending, "took", time.Since(m.started).Round(time.Millisecond))
	return rel, nil
}

// releaseRequest and releaseAnswer are the release RPC's body and answer.
type releaseRequest struct {
	Address string `json:"address"`
	Epoch   uint64 `json:"epoch"`
}

// releaseAnswer: SessionsEnded were ended before the address went,
// SessionsEnding were still on it then and are being ended after (a node
// before this split answered every session it ended as SessionsEnded).
type releaseAnswer struct {
	SessionsEnded  int    `json:"sessions_ended"`
	SessionsEnding int    `json:"sessions_ending,omitempty"`
	Error          string `json:"error,omitempty"`
}

// HandleRelease serves the release RPC: the leader (only) asks this node
// to give an address up for a move. It answers once the address is off
// this node (so that the leader writes the new placement at once), while
// the idle sessions on it are still being ended (releaseLocal).
func (s *Spread) HandleRelease(ctx context.Context, caller string, body []byte) (int, any) {
	var req releaseRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return http.StatusBadRequest, releaseAnswer{Error: err.Error()}
	}
	a, err := netip.ParseAddr(req.Address)
	if err != nil || !s.addrs[a] {
		return http.StatusBadRequest, releaseAnswer{Error: fmt.Sprintf("%q is not a virtual address of this node", req.Address)}
	}
	if status, why := s.authorize(rpcRelease, caller); status != 0 {
		return status, releaseAnswer{Error: why}
	}
	if leader, _ := s.cfg.Cluster.Leader(); caller != leader {
		status, why := s.refuseCaller(rpcRelease, caller, fmt.Sprintf("only the leader (%q) moves addresses, not %q", leader, caller))
		return status, releaseAnswer{Error: why}
	}
	rel, err := s.releaseLocal(ctx, a, req.Epoch)
	if err != nil {
		return http.StatusServiceUnavailable, releaseAnswer{SessionsEnded: rel.Ended, Error: err.Error()}
	}
	return http.StatusOK, releaseAnswer{SessionsEnded: rel.Ended, SessionsEnding: rel.Ending}
}

// The RPCs' names in OnRefused and the log.
const (
	rpcLease   = "lease"
	rpcRelease = "release"
)

// authorize checks who made a lease or release call: a node named by the
// certificate verified in the cluster port's handshake (cluster.Caller),
// and a server in raft's latest configuration as this node knows it. A
// cluster certificate alone is not enough: a node removed from the
// configuration keeps its certificate until it expires. It returns 0 when
// the caller may be served, else the status to answer with and why.
func (s *Spread) authorize(rpc, caller string) (int, string) {
	if caller == "" {
		return s.refuseCaller(rpc, caller, "unknown caller (no verified node certificate)")
	}
	ok, err := s.cfg.Cluster.IsServer(caller)
	if err != nil {
		return http.StatusServiceUnavailable, "cannot tell whether " + caller + " is a server of the cluster: " + err.Error()
	}
	if !ok {
		return s.refuseCaller(rpc, caller, fmt.Sprintf(
			"%s is not a server in raft's configuration (removed from the cluster, or not added yet): the %s RPC serves servers only", caller, rpc))
	}
	return 0, ""
}

// refuseCaller counts and logs a call refused because of its caller
// (each caller at most once a minute) and returns 403 and why.
func (s *Spread) refuseCaller(rpc, caller, why string) (int, string) {
	if s.cfg.OnRefused != nil {
		s.cfg.OnRefused(rpc)
	}
	now := time.Now()
	key := rpc + "\x00" + caller
	s.refusedMu.Lock()
	last, seen := s.refusedLog[key]
	logIt := !seen || now.Sub(last) >= time.Minute
	if logIt {
		if len(s.refusedLog) >= 256 {
			// Callers are certificate holders, so few; the cap only
			// bounds the map.
			clear(s.refusedLog)
		}
		s.refusedLog[key] = now
	}
	s.refusedMu.Unlock()
	if logIt {
		s.log.Warn("refused a virtual address RPC from this caller (logged once a minute per caller)", "rpc", rpc, "caller", caller, "reason", why)
	}
	return http.StatusForbidden, why
}

// released is what a release for a move did: Ended sessions were ended
// while the address was here, Ending were still on it when it went and
// are ended after the handover (endMoved).
type released struct {
	Ended, Ending int
}

// moveOutcomeWait bounds how long a node that released an address waits
// for the table to place it elsewhere before it ends the idle sessions on
// it; after that it leaves them to the sweep.
const moveOutcomeWait = 5 * time.Second

// releaseLocal gives an address up for a move, as the leader mode's Move
// does: new connections to it are reset (clients retry at once and find
// the new owner), logins in flight on it may finish (a second at most),
// the sessions on it that were active lately are ended at response
// boundaries (at most moveBusyLimit; beforeHandover), then the address
// goes, and releaseLocal returns: the leader writes the new placement and
// the new owner takes the address at once. The idle rest of the sessions
// on it are ended after that, in the background (endMoved). Ending
// thousands of TLS sessions first kept the clients refused for seconds
// and starved the node (the leader, perhaps) meanwhile; see DESIGN.md,
// "Planned moves". The node does not hold the address again at this
// epoch until the move is over. If the address cannot be taken off the
// interface, the release fails and the idle sessions carry on.
func (s *Spread) releaseLocal(ctx context.Context, a netip.Addr, epoch uint64) (released, error) {
	start := time.Now()
	s.mu.Lock()
	s.setRefusedLocked(a, true)
	s.mu.Unlock()
	busy := beforeHandover(ctx, s.cfg.Sessions, func(l netip.Addr) bool { return l == a }, s.cfg.MoveDrain)
	s.mu.Lock()
	s.fences[a] = fence{epoch: epoch, at: time.Now()}
	want := s.wantLocked(time.Now())
	claim := s.claims[a].Load()
	// The sweep would end the sessions too, once the address is placed
	// elsewhere: they are this move's.
	s.ending[a]++
	s.mu.Unlock()
	s.cfg.Holder.SetWant(want)
	if err := s.cfg.Holder.ReleaseAddrs([]netip.Addr{a}, time.Second); err != nil {
		s.endedMoved(a)
		s.log.Warn("releasing a virtual address for a move", "address", a, "error", err)
		return released{Ended: busy}, fmt.Errorf("%s is still on this node's interface: %w", a, err)
	}
	rest := s.cfg.Sessions.CountSessions(func(l netip.AddrPort) bool { return l.Addr() == a })
	s.log.Info("vip move: released the address", "address", a, "busy_sessions_ended", busy, "sessions_left", rest, "took", time.Since(start).Round(time.Millisecond))
	if rest == 0 || claim%2 == 1 || !s.cfg.Go(func(ctx context.Context) { s.endMoved(ctx, a, epoch, claim, start) }) {
		// Nothing to end, asked for again already, or shutting down (the
		// shutdown ends every session).
		s.endedMoved(a)
		return released{Ended: busy}, nil
	}
	return released{Ended: busy, Ending: rest}, nil
}

// endedMoved: one move no longer ends the sessions on a.
func (s *Spread) endedMoved(a netip.Addr) {
	s.mu.Lock()
	if s.ending[a]--; s.ending[a] <= 0 {
		delete(s.ending, a)
	}
	s.mu.Unlock()
}

// endMoved ends the sessions left on an address that this node released
// at epoch for a move (claim: its claim count then), once the table
// places the address on another node at a later epoch: at response
// boundaries, all at once (their clients' reconnect back-off spreads the
// load on the new owner), for MoveDrain at most. Their BYEs leave from
// the departed address through the transparent listening sockets, as in
// the leader mode. It ends nothing once this node has asked for the
// address again (the claim count moved: the move was given up, or the
// address came back), so a failed move keeps its sessions; and nothing if
// the table does not place the address elsewhere within moveOutcomeWait
// (the sweep ends them if it does later).
func (s *Spread) endMoved(ctx context.Context, a netip.Addr, epoch, claim uint64, start time.Time) {
	defer s.endedMoved(a)
	self := s.cfg.Cluster.Name()
	mine := func() bool { return s.claims[a].Load() == claim }
	deadline := time.Now().Add(moveOutcomeWait)
	for {
		if !mine() {
			s.log.Info("vip move: this node holds the address again (the move was given up, or placed it here); its sessions carry on", "address", a)
			return
		}
		ps, _ := s.cfg.Table.Placements()
		if p, ok := ps[a]; ok && p.Epoch > epoch && p.Node != self {
			break
		}
		if time.Now().After(deadline) {
			s.log.Warn("vip move: the address was not placed elsewhere in time; its sessions are left to the sweep", "address", a, "waited", moveOutcomeWait)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Millisecond):
		}
	}
	dctx, cancel := context.WithTimeout(ctx, s.cfg.MoveDrain)
	defer cancel()
	n := s.cfg.Sessions.EndSessions(dctx, func(l netip.AddrPort) bool { return l.Addr() == a && mine() }, moveText, 0)
	s.log.Info("vip move: ended the sessions left on the address after the handover", "address", a, "sessions", n, "took", time.Since(start).Round(time.Millisecond))
}

// SpreadMoveResult is the outcome of Move.
type SpreadMoveResult struct {
	Address string `json:"address"`
	From    string `json:"from"`
	To      string `json:"to"`
	// SessionsEnded were ended before the owner released the address
	// (those active lately), SessionsEnding were still on it then and are
	// being ended in the background (DESIGN.md, "Planned moves").
	SessionsEnded  int   `json:"sessions_ended"`
	SessionsEnding int   `json:"sessions_ending"`
	TookMS         int64 `json:"took_ms"`
}

// Move moves one address (`portico vip move ADDR --to NODE`), on the
// leader: to the node named, or ("") to the least loaded other node in
// contact. The owner refuses new connections to it, lets logins in flight
// finish, ends the sessions on it that were active lately at response
// boundaries and releases it; then the new placement is written and the
// new owner takes it, while the old owner ends the rest of its sessions
// on it (releaseLocal).
func (s *Spread) Move(ctx context.Context, addr netip.Addr, to string) (SpreadMoveResult, error) {
	if !s.addrs[addr] {
		return SpreadMoveResult{}, &moveError{ErrBadTarget, fmt.Sprintf("%s is not a virtual address", addr)}
	}
	now := time.Now()
	ps, _ := s.cfg.Table.Placements()
	cur, placed := ps[addr]
	self := s.cfg.Cluster.Name()
	s.mu.Lock()
	lt := s.lt
	if lt == nil || !s.leading || !s.cfg.Cluster.IsLeader() {
		s.mu.Unlock()
		return SpreadMoveResult{}, ErrNotLeader
	}
	if !lt.placing {
		s.mu.Unlock()
		return SpreadMoveResult{}, &moveError{ErrBadTarget, "placements are not supported by every node of the cluster yet"}
	}
	if lt.moving[addr] {
		s.mu.Unlock()
		return SpreadMoveResult{}, ErrMoving
	}
	from := cur.Node
	if !placed {
		from = ""
	}
	contact := func(n string) bool {
		at, ok := lt.lastAns[n]
		return n == self && !s.left && !s.cfg.Draining() || ok && now.Sub(at) < s.cfg.Lease && !lt.draining[n]
	}
	holder := from
	if holder == "" {
		holder = self
	}
	if to == "" {
		counts := map[string]int{}
		for _, p := range ps {
			counts[p.Node]++
		}
		var best string
		for _, n := range append([]string{self}, keys(lt.lastAns)...) {
			if n == holder || !contact(n) {
				continue
			}
			if best == "" || counts[n] < counts[best] || counts[n] == counts[best] && n < best {
				best = n
			}
		}
		if best == "" {
			s.mu.Unlock()
			return SpreadMoveResult{}, &moveError{ErrBadTarget, "no other node in contact with the leader can take it"}
		}
		to = best
	}
	switch {
	case to == holder:
		s.mu.Unlock()
		return SpreadMoveResult{}, &moveError{ErrBadTarget, to + " already holds " + addr.String()}
	case !contact(to):
		s.mu.Unlock()
		return SpreadMoveResult{}, &moveError{ErrBadTarget, fmt.Sprintf("%s is not in contact with the leader, or is draining", to)}
	}
	pm := plannedMove{Move: Move{Address: addr.String(), From: from, To: to, Reason: "move"}, addr: addr, cur: cur, started: now}
	pm.release = from == "" || from == self || contact(from)
	if !pm.release && !s.failedLocked(lt, from, now) {
		s.mu.Unlock()
		return SpreadMoveResult{}, &moveError{ErrBadTarget, fmt.Sprintf("%s holds it and is not in contact with the leader: wait until its lease has run out", from)}
	}
	lt.moving[addr] = true
	s.mu.Unlock()
	rel, err := s.execute(ctx, pm)
	if err != nil {
		return SpreadMoveResult{}, err
	}
	if from == "" {
		from = self
	}
	return SpreadMoveResult{Address: addr.String(), From: from, To: to, SessionsEnded: rel.Ended, SessionsEnding: rel.Ending,
		TookMS: time.Since(now).Milliseconds()}, nil
}

// othersInContactLocked: another node renewed its lease with this leader
// recently; s.mu is held.
func (s *Spread) othersInContactLocked(now time.Time) bool {
	for n, at := range s.lt.lastAns {
		if n != s.cfg.Cluster.Name() && now.Sub(at) < s.cfg.Lease && !s.lt.draining[n] {
			return true
		}
	}
	return false
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Leave gives this node's addresses up (shutdown, drain; the node reports
// itself draining by then, so the leader moves its addresses to other
// nodes with the planned handover): it waits for that, up to timeout,
// then releases whatever is left and holds nothing until the node serves
// again.
func (s *Spread) Leave(timeout time.Duration) {
	s.mu.Lock()
	alone := s.lt != nil && s.leading && !s.othersInContactLocked(time.Now())
	s.mu.Unlock()
	if leader, _ := s.cfg.Cluster.Leader(); leader != "" && !alone {
		s.renewSoon()
		deadline := time.Now().Add(timeout)
		for len(s.cfg.Holder.Held()) > 0 && time.Now().Before(deadline) {
			if l, _ := s.cfg.Cluster.Leader(); l == "" {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	s.mu.Lock()
	s.left = true
	s.mu.Unlock()
	s.apply()
	if held := s.cfg.Holder.Held(); len(held) > 0 {
		s.log.Info("releasing the virtual addresses no other node took", "addresses", held)
		if err := s.cfg.Holder.ReleaseAddrs(held, time.Second); err != nil {
			s.log.Warn("releasing the virtual addresses", "error", err)
		}
	}
}

// AddressStatus is one address in Status.
type AddressStatus struct {
	Address string `json:"address"`
	Owner   string `json:"owner"` // the node the table places it on (the leader when unplaced)
	Placed  bool   `json:"placed"`
	Epoch   uint64 `json:"epoch"`
	Held    bool   `json:"held"`             // by this node
	Moving  bool   `json:"moving,omitempty"` // as far as this node knows
}

// Status returns every address with its owner, as this node sees them.
func (s *Spread) Status() []AddressStatus {
	ps, _ := s.cfg.Table.Placements()
	leader, _ := s.cfg.Cluster.Leader()
	s.mu.Lock()
	moving := s.remoteMoving
	if s.lt != nil {
		moving = s.lt.moving
	}
	var out []AddressStatus
	for _, a := range s.cfg.Addresses {
		p, placed := ps[a.Addr]
		st := AddressStatus{Address: a.Addr.String(), Owner: p.Node, Placed: placed, Epoch: p.Epoch, Moving: moving[a.Addr]}
		if !placed {
			st.Owner = leader
		}
		out = append(out, st)
	}
	s.mu.Unlock()
	for i := range out {
		out[i].Held = s.cfg.Holder.Holds(netip.MustParseAddr(out[i].Address))
	}
	return out
}

// LeaseUntil is when this node's lease from the leader runs out (zero:
// none).
func (s *Spread) LeaseUntil() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leaseUntil
}

package vip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Leadership is the ownership policy's view of the cluster: raft
// leadership and who can take it. cluster.Agent implements it.
type Leadership interface {
	Name() string                       // this node
	IsLeader() bool                     // raft's state says this node leads (it can lag a lost lease)
	VerifyLeader() error                // a round to a quorum confirms this node leads
	Leader() (name, api string)         // the leader known to this node ("" when none)
	TransferLeadership(to string) error // to the named voter, or to any other one ("")
	Voters() ([]string, error)          // the nodes that can lead
	Alive(name string) bool             // a live member of the gossip
}

// Holder is the mechanism the policy drives: the addresses on this node's
// interfaces. Manager implements it.
type Holder interface {
	SetOwner(own bool)
	Owned() bool
	Release(timeout time.Duration) error
}

// Sessions is the proxy's side of a handover: refusing new connections to
// the VIP, counting the logins in flight on it, and ending the sessions on
// it. node.Server implements it.
type Sessions interface {
	SetRefuse(f func(local netip.AddrPort) bool)
	PreauthOn(match func(local netip.Addr) bool) int
	EndSessions(ctx context.Context, match func(local netip.AddrPort) bool, text string, spread time.Duration) int
	// EndActive ends, like EndSessions without a spread, at most limit
	// of the sessions that match and moved a byte within the last
	// within, the most recently active first.
	EndActive(ctx context.Context, match func(local netip.AddrPort) bool, within time.Duration, limit int, text string) int
	// CountSessions returns how many sessions match.
	CountSessions(match func(local netip.AddrPort) bool) int
}

// A planned move ends the sessions that were active lately before it
// hands over, while this node still holds the address, and the others
// after (see Move): at most moveBusyLimit of those that moved a byte
// within moveBusyWithin. A client in the middle of a command, or one
// that polls, is likely to send again within the tens of milliseconds
// of the transfer; once the address is gone its packets reach nobody and
// then the new owner, which resets the connection, instead of the old
// one, which would answer and say BYE. An idle client (IMAP IDLE) sends
// nothing and gets its BYE from the departed address. The limit bounds
// the work done while leading: ending 6,000 sessions then cost a loaded
// leader its lease; a hundred or so take a few tens of milliseconds.
// Both modes hand over this way (Controller.Move, Spread.releaseLocal).
const (
	moveBusyWithin = time.Second
	moveBusyLimit  = 128
)

// moveText is what a planned move tells the clients whose sessions it
// ends.
const moveText = "Server moving, please reconnect."

// beforeHandover is a planned move's work while this node still holds
// the addresses on for which on is true: it lets the logins in flight on
// them finish (a second at most), then ends the sessions on them that
// were active lately (moveBusyWithin, at most moveBusyLimit), for drain
// at most; it returns how many it ended. The caller refuses new
// connections to the addresses first, releases them after, and ends the
// idle rest once the move has gone through.
func beforeHandover(ctx context.Context, s Sessions, on func(netip.Addr) bool, drain time.Duration) int {
	// A login finishes while the address is here: its reply cannot be
	// lost, and the session it opens is ended with the others.
	finishLogins(s, on, min(drain, time.Second))
	dctx, cancel := context.WithTimeout(ctx, drain)
	defer cancel()
	return s.EndActive(dctx, func(l netip.AddrPort) bool { return on(l.Addr()) }, moveBusyWithin, moveBusyLimit, moveText)
}

// finishLogins waits, up to d, until no session that came in on an
// address for which match is true is still before or in its login: a
// planned move lets them finish (and then ends them at a response
// boundary) rather than remove the address under them.
func finishLogins(s Sessions, match func(netip.Addr) bool, d time.Duration) {
	for deadline := time.Now().Add(d); s.PreauthOn(match) > 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
}

// ControllerConfig configures a Controller.
type ControllerConfig struct {
	Holder     Holder
	Leadership Leadership
	Sessions   Sessions
	// Addresses are the virtual IPs: connections to them are the ones a
	// move refuses and a node without the VIP ends.
	Addresses []netip.Addr
	// Draining reports whether the node is draining (nil: never).
	Draining func() bool
	// Go runs f in a goroutine that its owner joins at shutdown, when f's
	// context ends (the daemon's group); false if it is shutting down.
	Go func(f func(ctx context.Context)) bool
	// HoldUntil: the node was started by an in-place upgrade of the VIP's
	// owner and keeps the inherited address, without leading yet, until
	// it leads again or this passes (zero: nothing inherited).
	HoldUntil time.Time
	// EndHold is called (through Go) when the node leads after such an
	// upgrade: the other voters' held elections can end.
	EndHold func(ctx context.Context)
	// Reconcile is the guard's period (default: DefaultConfig's, 250ms).
	Reconcile time.Duration
	// Preferred nodes get leadership (and the VIP) once they have been
	// live voters for PreemptDelay (Preempt).
	Preferred    []string
	PreemptDelay time.Duration
	// MoveDrain bounds how long a move waits for sessions on the VIP to
	// end at a response boundary.
	MoveDrain time.Duration
	// SweepGrace: a node without the VIP ends its sessions on it once
	// another node is known to lead (and so to hold it), or once it has
	// been without it this long (default DefaultSweepGrace). See Sweep.
	SweepGrace time.Duration
	Log        *slog.Logger
}

// Controller carries the ownership policy out: the VIP follows raft
// leadership (see DESIGN.md). The cluster tells it of leadership changes
// (SetLeading); Run checks the facts every reconcile period (Decide);
// Preempt runs while this node leads; Handover and Move are the planned
// handovers.
type Controller struct {
	cfg   ControllerConfig
	log   *slog.Logger
	addrs map[netip.Addr]bool

	moving  atomic.Bool // a Move is under way
	leading atomic.Bool // as last notified (after the barrier)
	handing atomic.Bool // a handover is in progress
	ending  atomic.Bool // a Move ends the sessions on the VIP (not the sweep)
	hmu     sync.Mutex  // one handover at a time
	// want is whether this node means to hold the VIP (what it last asked
	// the Holder for); gen counts the times it asked to hold it. A sweep
	// decided at one generation ends nothing once it has moved on: the
	// node may have taken the address again and logged clients in.
	want atomic.Bool
	gen  atomic.Uint64
	// holdUntil (unix ns), 0 when no inherited address is kept.
	holdUntil atomic.Int64
}

// NewController returns the policy for cfg; it holds nothing until told
// it leads, except an inherited address (HoldUntil), which it asks the
// Holder to keep at once (Manager.Run would otherwise remove it as stale).
func NewController(cfg ControllerConfig) *Controller {
	if cfg.Reconcile <= 0 {
		cfg.Reconcile = DefaultConfig().Reconcile
	}
	if cfg.Draining == nil {
		cfg.Draining = func() bool { return false }
	}
	if cfg.SweepGrace <= 0 {
		cfg.SweepGrace = DefaultSweepGrace
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	c := &Controller{cfg: cfg, log: cfg.Log, addrs: map[netip.Addr]bool{}}
	for _, a := range cfg.Addresses {
		c.addrs[a] = true
	}
	if !cfg.HoldUntil.IsZero() && cfg.HoldUntil.After(time.Now()) {
		c.holdUntil.Store(cfg.HoldUntil.UnixNano())
		c.own(true)
		c.log.Info("keeping the VIP through the in-place upgrade until this node leads again", "until", cfg.HoldUntil)
	}
	cfg.Sessions.SetRefuse(c.refusing)
	return c
}

// isVIP: a connection to one of the virtual addresses.
func (c *Controller) isVIP(local netip.AddrPort) bool { return c.addrs[local.Addr()] }

// refusing is the proxy's filter (Sessions.SetRefuse): a connection to
// the VIP is reset (the client retries at once, and finds the owner)
// while a move is under way and whenever this node does not mean to hold
// the VIP, even though the address may still be on its interface for a
// moment (a lost leadership, a handover, a stale address): a client that
// logged in there would only be swept off again.
//
// Not after an in-place upgrade left the address on the interface for the
// new process (the Holder was detached while holding it): the old process
// serves what it accepted before it stopped accepting, although it no
// longer leads. A connection accepted in the last moment before that,
// whose admission ran after the old process handed leadership over, was
// reset (the failover drill's in-place upgrade: 1 of 147 dials, in 2 of
// about 14 CI runs).
func (c *Controller) refusing(local netip.AddrPort) bool {
	if !c.isVIP(local) {
		return false
	}
	if h, ok := c.cfg.Holder.(interface{ HandedOn() bool }); ok && h.HandedOn() {
		return false
	}
	return c.moving.Load() || !c.want.Load()
}

// own asks the Holder to hold the VIP or not, and records it (want, and
// a new generation for each request to hold).
func (c *Controller) own(own bool) {
	if own {
		c.gen.Add(1)
	}
	c.want.Store(own)
	c.cfg.Holder.SetOwner(own)
}

// holding: this node means to hold the VIP, or still has it.
func (c *Controller) holding() bool { return c.want.Load() || c.cfg.Holder.Owned() }

// Verify is the mechanism's check before an announcement other than the
// first after acquiring (Config.Verify, Manager.SetVerify): a quorum
// confirms this node leads, or it keeps an address inherited through an
// in-place upgrade (the other voters hold their elections, and nobody
// else is known to lead). Without the second case the new process of an
// upgraded owner, which keeps the address before it has won its election,
// failed the check of its burst's second round whenever the election
// took longer than the round's interval, and dropped the address until
// it led (the VIP missing for tens of milliseconds).
func (c *Controller) Verify() error {
	if c.held() {
		return nil
	}
	return c.cfg.Leadership.VerifyLeader()
}

// Moving reports whether a move is in progress.
func (c *Controller) Moving() bool { return c.moving.Load() }

// SetLeading is the leadership hook (cluster.Agent.OnLeadership): it is
// called with true once this node leads and has applied everything
// committed before, with false when it stops leading. See OnLeadership.
func (c *Controller) SetLeading(leader bool) {
	c.leading.Store(leader)
	ch := OnLeadership(leader, c.holdUntil.Load() != 0, leader && c.cfg.Draining())
	if ch.EndHold && c.holdUntil.Swap(0) != 0 && c.cfg.EndHold != nil {
		c.cfg.Go(c.cfg.EndHold)
	}
	if ch.StopMove {
		// Connections to the VIP stay refused while this node does not
		// mean to hold it (refusing), not only while it moves.
		c.moving.Store(false)
	}
	c.own(ch.Own)
	if ch.HandOver {
		c.cfg.Go(func(context.Context) {
			if err := c.Handover("", false); err != nil {
				c.log.Warn("draining node became leader and could not hand leadership on", "error", err)
			}
		})
	}
}

// held: an address inherited through an in-place upgrade is kept while
// no other node is known to lead and the hold has not ended.
func (c *Controller) held() bool {
	until := c.holdUntil.Load()
	if until == 0 || time.Now().UnixNano() >= until {
		return false
	}
	leader, _ := c.cfg.Leadership.Leader()
	return leader == "" || leader == c.cfg.Leadership.Name()
}

// Run is the guard: every reconcile period until ctx ends it applies
// Decide to the facts of the moment. While it does not hold the VIP, it
// also ends relayed sessions on the VIP addresses (Sweep decides when):
// once another node leads, their clients' packets go to the new owner
// (which resets them), so they could only linger until the idle timeout,
// holding backend connections. That covers the sessions of an owner cut
// off from the cluster, and a login that completed just after a planned
// move ended the others. A node that lost its leadership for a moment
// (a starved machine missing its lease) and wins it back keeps them.
func (c *Controller) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.Reconcile)
	defer t.Stop()
	var sweeping atomic.Bool
	var lost struct {
		on  bool
		gen uint64
		at  time.Time
	}
	self := c.cfg.Leadership.Name()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.guard()
		now, gen := time.Now(), c.gen.Load()
		if c.holding() {
			lost.on = false
			continue
		}
		if !lost.on || lost.gen != gen {
			lost.on, lost.gen, lost.at = true, gen, now
		}
		leader, _ := c.cfg.Leadership.Leader()
		if !Sweep(SweepInputs{Holding: false, OtherLeader: leader != "" && leader != self, Without: now.Sub(lost.at), Grace: c.cfg.SweepGrace}) {
			continue
		}
		if c.ending.Load() || !sweeping.CompareAndSwap(false, true) {
			continue
		}
		if !c.cfg.Go(func(ctx context.Context) {
			defer sweeping.Store(false)
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if n := c.cfg.Sessions.EndSessions(sctx, c.sweepMatch(gen), moveText, 0); n > 0 {
				c.log.Info("ended sessions on the VIP, which this node no longer holds", "sessions", n, "leader", leader)
			}
		}) {
			sweeping.Store(false)
		}
	}
}

// sweepMatch selects, for a sweep decided at ownership generation gen,
// the sessions on the VIP, as long as this node still neither holds nor
// means to hold the VIP and has not asked for it since (checked at each
// session): the sweep runs in another goroutine, and on a loaded machine
// the node could take the address again and log clients in before it
// gets to them. Every session it ends was accepted before the VIP was
// lost (or was a login in flight then).
func (c *Controller) sweepMatch(gen uint64) func(netip.AddrPort) bool {
	return func(local netip.AddrPort) bool {
		return c.isVIP(local) && c.gen.Load() == gen && !c.holding()
	}
}

// guard makes one decision and carries it out.
func (c *Controller) guard() {
	l, h := c.cfg.Leadership, c.cfg.Holder
	in := Inputs{
		Owned: h.Owned(), Leader: l.IsLeader(), Leading: c.leading.Load(),
		Handing: c.handing.Load(), Moving: c.moving.Load(), Draining: c.cfg.Draining(),
	}
	if in.Owned && !in.Leader {
		in.Held = c.held()
	}
	switch Decide(in) {
	case Release:
		if c.want.Load() {
			c.log.Warn("holding the VIP while not raft leader; releasing")
		}
		c.own(false)
	case Take:
		if err := l.VerifyLeader(); err == nil && !c.handing.Load() && !c.moving.Load() {
			c.log.Info("leading and serving without the VIP; taking it")
			c.own(true)
		}
	}
}

// Preempt moves leadership (and so the VIP) to a preferred node once it
// has been a live voter for the hold-down (keepalived's preempt_delay). It
// runs while this node leads (cluster.Agent.RunWhileLeader), until ctx
// ends; without preferred nodes it returns at once.
func (c *Controller) Preempt(ctx context.Context) {
	if len(c.cfg.Preferred) == 0 {
		return
	}
	l := c.cfg.Leadership
	p := newPreemption(c.cfg.Preferred, c.cfg.PreemptDelay)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		leader := l.IsLeader()
		var voters []string
		if leader {
			var err error
			if voters, err = l.Voters(); err != nil {
				continue
			}
		}
		if to := p.step(time.Now(), l.Name(), leader, voters, l.Alive); to != "" {
			c.log.Info("preferred node healthy for the hold-down; moving leadership and the VIP to it", "to", to, "hold", c.cfg.PreemptDelay)
			if err := c.Handover(to, false); err != nil {
				c.log.Warn("preemptive move failed", "to", to, "error", err)
			}
		}
	}
}

// Handover hands raft leadership, and with it the VIP, to the voter
// named to (any other voter when ""). The VIP is released first: the next
// leader acquires it as soon as it leads, so releasing after the transfer
// (when this node learns it lost leadership) would let both hold it for a
// moment. If the transfer fails and this node still leads, it takes the
// VIP back (unless it is shutting down). One handover runs at a time (a
// move, preemption, a drain and a shutdown can coincide): the next finds
// this node no longer leading and fails with errNoLongerLeads rather than
// asking raft for a second transfer.
func (c *Controller) Handover(to string, shuttingDown bool) error {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	c.handing.Store(true)
	defer c.handing.Store(false)
	c.want.Store(false) // refuse new connections to the VIP from now on
	if err := c.cfg.Holder.Release(time.Second); err != nil {
		c.log.Warn("releasing the VIP before handing leadership over", "error", err)
	}
	l := c.cfg.Leadership
	if !l.IsLeader() {
		return errNoLongerLeads
	}
	err := l.TransferLeadership(to)
	if err != nil && !shuttingDown && l.VerifyLeader() == nil {
		c.own(true)
	}
	return err
}

// errNoLongerLeads: a handover found this node no longer leading (an
// earlier handover went through, or its lease ran out).
var errNoLongerLeads = errors.New("this node no longer leads")

// Leave gives the VIP up for good (shutdown, drain): a leader hands
// leadership away first, so that clients reconnect to the new owner while
// this node winds down.
func (c *Controller) Leave() {
	if c.cfg.Leadership.IsLeader() {
		if err := c.Handover("", true); err != nil {
			c.log.Warn("handing leadership (and the VIP) away at shutdown failed", "error", err)
		}
	}
	c.own(false)
}

// Move errors (errors.Is tells them apart).
var (
	// ErrNotLeader: only the leader moves the VIP; pass the move on to it.
	ErrNotLeader = errors.New("not the raft leader")
	// ErrBadTarget: the node named cannot take the VIP.
	ErrBadTarget = errors.New("bad target")
	// ErrMoving: another move is in progress.
	ErrMoving = errors.New("a move is already in progress")
)

// moveError is a refusal of kind with its own message.
type moveError struct {
	kind error
	msg  string
}

func (e *moveError) Error() string { return e.msg }
func (e *moveError) Unwrap() error { return e.kind }

// MoveResult is the outcome of a move.
type MoveResult struct {
	From          string `json:"from"`
	To            string `json:"to"` // the new leader, "" if not known within 5 s
	SessionsEnded int    `json:"sessions_ended"`
	TookMS        int64  `json:"took_ms"`
}

// Move is a planned handover (`portico vip move [--to NODE]`), on the
// leader: it stops accepting on the VIP (new connections are reset, so
// clients retry and find the new owner), lets the logins in flight on it
// finish (a second at most), ends the sessions on the VIP that were
// active lately (a bounded number, moveBusyLimit), hands over (releases
// the address, transfers leadership; the new leader acquires and
// announces it), and only then ends the rest of its sessions on the VIP
// at response boundaries (each step for MoveDrain at most). Connections
// to the VIP stay refused as long as this node does not mean to hold it
// (refusing): after the move, until it leads again.
//
// The sessions end after the transfer, not before, because ending
// thousands of them is what a loaded node cannot do while it leads: with
// 6,000 TLS sessions on a shared 2-core machine the leader's goroutines
// waited so long behind the ends that it heard from no quorum within its
// 250 ms lease, in every run, and stepped down 0.3-0.9 s into the drain;
// the election that followed was anybody's (the old owner won it back in
// two of six moves). The transfer, done while the node is still
// responsive, takes milliseconds; the ends then cost only this node, a
// follower by then, whose lateness the new leader's quorum does not need.
// Their BYEs still leave from the departed address: the connections were
// accepted by transparent listening sockets (node/listeners.go), which
// may send from an address the host no longer has. See DESIGN.md,
// "Planned moves".
//
// Raft can answer the transfer with an error although leadership moved
// (a transfer that times out just before the target wins). So the
// outcome is what counts: once a leader other than this node is known,
// the move succeeded if it is the target (or any node, without one), and
// failed if another node took over; the error is final only while no
// other leader is known within a few seconds, or when this node took the
// VIP back. After a transfer raft reports as failed the move waits for
// the outcome before it ends the idle sessions, and leaves them alone if
// this node leads again.
func (c *Controller) Move(ctx context.Context, to string) (MoveResult, error) {
	l := c.cfg.Leadership
	if !l.IsLeader() {
		return MoveResult{}, ErrNotLeader
	}
	self := l.Name()
	if to != "" {
		if to == self {
			return MoveResult{}, &moveError{ErrBadTarget, to + " already holds the VIP"}
		}
		voters, err := l.Voters()
		if err != nil {
			return MoveResult{}, err
		}
		if !slices.Contains(voters, to) {
			return MoveResult{}, &moveError{ErrBadTarget, fmt.Sprintf("%s is not a raft voter (only voters can lead and hold the VIP)", to)}
		}
	}
	if !c.moving.CompareAndSwap(false, true) {
		return MoveResult{}, ErrMoving
	}
	defer c.moving.Store(false)
	// The sessions on the VIP are this move's to end (the guard's sweep
	// leaves them alone meanwhile), whether or not this node still leads.
	c.ending.Store(true)
	defer c.ending.Store(false)
	start := time.Now()
	s := c.cfg.Sessions
	busy := beforeHandover(ctx, s, func(a netip.Addr) bool { return c.addrs[a] }, c.cfg.MoveDrain)
	herr := c.Handover(to, false)
	gen := c.gen.Load()
	c.log.Info("vip move: handed over", "to", to, "error", herr, "busy_sessions_ended", busy, "took", time.Since(start))
	// raft's nil comes once this node has left its leader loop, on the
	// target's request for votes: the target is about to lead, and this
	// node ends its sessions at once, so that their BYEs leave before the
	// new owner's announcement sends the clients' next packets to it
	// (which resets them). After an error the outcome is open (the lease
	// ran out, the transfer timed out) and this node may lead again: it
	// waits for it first. The new leader is known here once its first
	// heartbeat arrives.
	leader := ""
	if herr != nil {
		leader = c.successor(self, 5*time.Second)
	}
	// All at once (no spread): their own reconnect back-off spreads the
	// load on the new owner. Nothing is ended if this node took the VIP
	// back (the transfer failed).
	dctx, cancel := context.WithTimeout(ctx, c.cfg.MoveDrain)
	ended := busy + s.EndSessions(dctx, c.movedMatch(gen), moveText, 0)
	cancel()
	c.log.Info("vip move: ended the sessions on the VIP", "sessions", ended, "took", time.Since(start))
	if herr == nil {
		leader = c.successor(self, 5*time.Second)
	}
	res := MoveResult{From: self, To: leader, SessionsEnded: ended, TookMS: time.Since(start).Milliseconds()}
	switch {
	case leader != "" && (to == "" || leader == to):
		if herr != nil {
			c.log.Warn("raft reported the leadership transfer as failed, but the target leads now: the VIP moved", "error", herr, "leader", leader)
		}
	case leader != "":
		if herr == nil {
			herr = errors.New("another node won the election")
		}
		return res, fmt.Errorf("leadership transfer to %s: %v; %s leads (and holds the VIP) now", to, herr, leader)
	default:
		// Raft's success means the target was told to call an election,
		// not that it won: a target short of CPU can lose it to this node.
		why := "no other node leads"
		if c.want.Load() {
			why = "this node leads (and holds the VIP) again"
		}
		if herr == nil {
			return MoveResult{}, fmt.Errorf("leadership transfer failed: %s", why)
		}
		return MoveResult{}, fmt.Errorf("leadership transfer failed: %v; %s", herr, why)
	}
	return res, nil
}

// movedMatch selects, for a move that handed over at ownership
// generation gen, the sessions on the VIP as long as this node does not
// mean to hold the VIP and has not asked for it since (checked at each
// session): a node that took the VIP back after a failed transfer keeps
// its sessions. Unlike a sweep (sweepMatch) it ends them while the
// address may still be on the interface (a release that is late): the
// node let it go on purpose, and another node leads or is being elected.
func (c *Controller) movedMatch(gen uint64) func(netip.AddrPort) bool {
	return func(local netip.AddrPort) bool {
		return c.isVIP(local) && c.gen.Load() == gen && !c.want.Load()
	}
}

// successor waits, up to d, until a leader other than this node is known,
// and returns it; "" if none is by then, or as soon as this node means to
// hold the VIP again (it took it back after a failed transfer, or leads
// again).
func (c *Controller) successor(self string, d time.Duration) string {
	for deadline := time.Now().Add(d); ; time.Sleep(2 * time.Millisecond) {
		if n, _ := c.cfg.Leadership.Leader(); n != "" && n != self {
			return n
		}
		if c.want.Load() || time.Now().After(deadline) {
			return ""
		}
	}
}

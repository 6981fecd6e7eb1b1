package vip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
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
	Log       *slog.Logger
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

	moving  atomic.Bool
	leading atomic.Bool // as last notified (after the barrier)
	handing atomic.Bool // a handover is in progress
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
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	c := &Controller{cfg: cfg, log: cfg.Log, addrs: map[netip.Addr]bool{}}
	for _, a := range cfg.Addresses {
		c.addrs[a] = true
	}
	if !cfg.HoldUntil.IsZero() && cfg.HoldUntil.After(time.Now()) {
		c.holdUntil.Store(cfg.HoldUntil.UnixNano())
		cfg.Holder.SetOwner(true)
		c.log.Info("keeping the VIP through the in-place upgrade until this node leads again", "until", cfg.HoldUntil)
	}
	return c
}

// isVIP: a connection to one of the virtual addresses.
func (c *Controller) isVIP(local netip.AddrPort) bool { return c.addrs[local.Addr()] }

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
		c.moving.Store(false)
		c.cfg.Sessions.SetRefuse(nil)
	}
	c.cfg.Holder.SetOwner(ch.Own)
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
// also ends relayed sessions on the VIP addresses: their clients' packets
// now go to the new owner (which resets them), so they could only linger
// until the idle timeout, holding backend connections. That covers the
// sessions of an owner cut off from the cluster, and a login that
// completed just after a planned move ended the others.
func (c *Controller) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.Reconcile)
	defer t.Stop()
	var sweeping atomic.Bool
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.guard()
		if !c.cfg.Holder.Owned() && sweeping.CompareAndSwap(false, true) {
			if !c.cfg.Go(func(ctx context.Context) {
				defer sweeping.Store(false)
				sctx, cancel := context.WithTimeout(ctx, time.Second)
				defer cancel()
				if n := c.cfg.Sessions.EndSessions(sctx, c.isVIP, "Server moving, please reconnect.", 0); n > 0 {
					c.log.Info("ended sessions on the VIP, which this node no longer holds", "sessions", n)
				}
			}) {
				sweeping.Store(false)
			}
		}
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
		c.log.Warn("holding the VIP while not raft leader; releasing")
		h.SetOwner(false)
	case Take:
		if err := l.VerifyLeader(); err == nil && !c.handing.Load() && !c.moving.Load() {
			c.log.Info("leading and serving without the VIP; taking it")
			h.SetOwner(true)
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
// VIP back (unless it is shutting down).
func (c *Controller) Handover(to string, shuttingDown bool) error {
	c.handing.Store(true)
	defer c.handing.Store(false)
	if err := c.cfg.Holder.Release(time.Second); err != nil {
		c.log.Warn("releasing the VIP before handing leadership over", "error", err)
	}
	err := c.cfg.Leadership.TransferLeadership(to)
	if err != nil && !shuttingDown && c.cfg.Leadership.VerifyLeader() == nil {
		c.cfg.Holder.SetOwner(true)
	}
	return err
}

// Leave gives the VIP up for good (shutdown, drain): a leader hands
// leadership away first, so that clients reconnect to the new owner while
// this node winds down.
func (c *Controller) Leave() {
	if c.cfg.Leadership.IsLeader() {
		if err := c.Handover("", true); err != nil {
			c.log.Warn("handing leadership (and the VIP) away at shutdown failed", "error", err)
		}
	}
	c.cfg.Holder.SetOwner(false)
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
// finish (a second at most), ends its sessions on the VIP at response
// boundaries (for MoveDrain at most), then hands over; the new
// leader acquires and announces the address. Connections are refused
// until this node learns it no longer leads (SetLeading), or again at once
// if the transfer fails.
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
	start := time.Now()
	s := c.cfg.Sessions
	s.SetRefuse(c.isVIP)
	finishLogins(s, func(a netip.Addr) bool { return c.addrs[a] }, min(c.cfg.MoveDrain, time.Second))
	// All at once (no spread): new connections are refused until the new
	// owner has the address, so this is the gap clients see; their own
	// reconnect back-off spreads the load on the new owner.
	dctx, cancel := context.WithTimeout(ctx, c.cfg.MoveDrain)
	ended := s.EndSessions(dctx, c.isVIP, "Server moving, please reconnect.", 0)
	cancel()
	if err := c.Handover(to, false); err != nil {
		s.SetRefuse(nil)
		c.moving.Store(false)
		return MoveResult{}, fmt.Errorf("leadership transfer failed: %w", err)
	}
	// The new leader is known here once its first heartbeat arrives.
	leader := ""
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if n, _ := l.Leader(); n != "" && n != self {
			leader = n
			break
		}
	}
	return MoveResult{From: self, To: leader, SessionsEnded: ended, TookMS: time.Since(start).Milliseconds()}, nil
}

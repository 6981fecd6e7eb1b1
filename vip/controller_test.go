package vip

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The controller against fakes of the cluster, the addresses and the
// proxy: each records what it was asked, in one log, so that the tests
// check the order of a handover.
type recorder struct {
	mu  sync.Mutex
	log []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	r.log = append(r.log, s)
	r.mu.Unlock()
}

func (r *recorder) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.log...)
}

type fakeCluster struct {
	rec *recorder

	mu          sync.Mutex
	self        string
	leader      string // the known leader
	voters      []string
	alive       map[string]bool
	transferErr error
	verifyErr   error
	// onTransfer, if set, runs on a transfer and names the node that
	// leads after it ("": unchanged), whatever transferErr says.
	onTransfer func() string
}

func (f *fakeCluster) Name() string { return f.self }
func (f *fakeCluster) IsLeader() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.leader == f.self
}
func (f *fakeCluster) VerifyLeader() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.verifyErr != nil {
		return f.verifyErr
	}
	if f.leader != f.self {
		return errors.New("not leader")
	}
	return nil
}
func (f *fakeCluster) Leader() (string, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.leader, ""
}
func (f *fakeCluster) TransferLeadership(to string) error {
	f.rec.add("transfer " + to)
	if f.onTransfer != nil {
		if n := f.onTransfer(); n != "" {
			f.setLeader(n)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.transferErr == nil && f.leader == f.self {
			f.leader = to
		}
		return f.transferErr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.transferErr != nil {
		return f.transferErr
	}
	if to == "" {
		to = "other"
	}
	f.leader = to
	return nil
}
func (f *fakeCluster) Voters() ([]string, error) { return f.voters, nil }
func (f *fakeCluster) Alive(n string) bool       { return f.alive[n] }

func (f *fakeCluster) setLeader(n string) {
	f.mu.Lock()
	f.leader = n
	f.mu.Unlock()
}

type fakeHolder struct {
	rec   *recorder
	mu    sync.Mutex
	owned bool
	stuck bool // a release does not take effect (a loaded mechanism lagging)
	// Detached while holding: the address stays for another process.
	handedOn bool
}

func (h *fakeHolder) SetOwner(own bool) {
	h.mu.Lock()
	if !own && h.stuck {
		h.mu.Unlock()
		return
	}
	changed := h.owned != own
	h.owned = own
	h.mu.Unlock()
	if changed {
		if own {
			h.rec.add("acquire")
		} else {
			h.rec.add("release")
		}
	}
}
func (h *fakeHolder) Owned() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.owned
}
func (h *fakeHolder) Release(time.Duration) error { h.SetOwner(false); return nil }
func (h *fakeHolder) HandedOn() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.handedOn
}

type fakeSessions struct {
	rec    *recorder
	mu     sync.Mutex
	refuse func(netip.AddrPort) bool
	open   []netip.AddrPort // local addresses of open sessions
	busy   []netip.AddrPort // and of open sessions active lately
	// beforeEnd, if set, runs when EndSessions is called, before it
	// looks at the sessions (what may happen meanwhile on a loaded
	// machine).
	beforeEnd func()
	// duringLogins, if set, runs once while a move waits for the logins
	// in flight to finish (before its handover).
	duringLogins func()
}

// SetRefuse installs the proxy's filter (the controller installs one,
// for good, when it is made).
func (s *fakeSessions) SetRefuse(f func(netip.AddrPort) bool) {
	s.mu.Lock()
	s.refuse = f
	s.mu.Unlock()
}

func (s *fakeSessions) add(a netip.AddrPort) {
	s.mu.Lock()
	s.open = append(s.open, a)
	s.mu.Unlock()
}

func (s *fakeSessions) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.open) + len(s.busy)
}

func (s *fakeSessions) CountSessions(match func(netip.AddrPort) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, a := range append(slices.Clone(s.open), s.busy...) {
		if match(a) {
			n++
		}
	}
	return n
}

// EndActive ends the busy sessions that match, at most limit.
func (s *fakeSessions) EndActive(_ context.Context, match func(netip.AddrPort) bool, _ time.Duration, limit int, _ string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var keep []netip.AddrPort
	n := 0
	for _, a := range s.busy {
		if n < limit && match(a) {
			n++
		} else {
			keep = append(keep, a)
		}
	}
	s.busy = keep
	if n > 0 {
		s.rec.add("end busy sessions")
	}
	return n
}

func (s *fakeSessions) PreauthOn(func(netip.Addr) bool) int {
	if f := s.duringLogins; f != nil {
		s.duringLogins = nil
		f()
	}
	return 0
}

func (s *fakeSessions) refusing(a netip.AddrPort) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refuse != nil && s.refuse(a)
}

func (s *fakeSessions) EndSessions(_ context.Context, match func(netip.AddrPort) bool, _ string, _ time.Duration) int {
	if f := s.beforeEnd; f != nil {
		f()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range []*[]netip.AddrPort{&s.open, &s.busy} {
		var keep []netip.AddrPort
		for _, a := range *l {
			if match(a) {
				n++
			} else {
				keep = append(keep, a)
			}
		}
		*l = keep
	}
	if n > 0 {
		s.rec.add("end sessions")
	}
	return n
}

var (
	testVIP  = netip.MustParseAddr("198.18.0.100")
	onVIP    = netip.AddrPortFrom(testVIP, 143)
	offVIP   = netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), 143)
	discard  = slog.New(slog.NewTextHandler(io.Discard, nil))
	voters3  = []string{"n1", "n2", "n3"}
	allAlive = map[string]bool{"n1": true, "n2": true, "n3": true}
)

type rig struct {
	rec      *recorder
	cl       *fakeCluster
	h        *fakeHolder
	s        *fakeSessions
	c        *Controller
	draining bool
	wg       sync.WaitGroup
}

func newRig(t *testing.T, mod func(*ControllerConfig)) *rig {
	r := &rig{rec: &recorder{}}
	r.cl = &fakeCluster{rec: r.rec, self: "n1", voters: voters3, alive: allAlive}
	r.h = &fakeHolder{rec: r.rec}
	r.s = &fakeSessions{rec: r.rec}
	cfg := ControllerConfig{
		Holder: r.h, Leadership: r.cl, Sessions: r.s, Addresses: []netip.Addr{testVIP},
		Draining: func() bool { return r.draining },
		Go: func(f func(context.Context)) bool {
			r.wg.Add(1)
			go func() { defer r.wg.Done(); f(t.Context()) }()
			return true
		},
		MoveDrain: time.Second, Log: discard,
	}
	if mod != nil {
		mod(&cfg)
	}
	r.c = NewController(cfg)
	t.Cleanup(r.wg.Wait)
	return r
}

// A move on the leader: refuse connections to the VIP, release, transfer,
// then end the sessions on it (only those), once raft has handed over and
// while this node neither leads nor holds the address: ending
// thousands of sessions before the transfer cost a loaded leader its
// lease. The refusal lasts until the node learns it no longer leads.
func TestMoveOrder(t *testing.T) {
	r := newRig(t, nil)
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	r.s.open = []netip.AddrPort{onVIP, onVIP, offVIP}
	r.s.busy = []netip.AddrPort{onVIP, offVIP}
	var leaderAtEnd string
	var leadingAtEnd, ownedAtEnd, refusingAtEnd bool
	r.s.beforeEnd = func() {
		leaderAtEnd, _ = r.cl.Leader()
		leadingAtEnd, ownedAtEnd, refusingAtEnd = r.cl.IsLeader(), r.h.Owned(), r.s.refusing(onVIP)
	}
	res, err := r.c.Move(t.Context(), "n2")
	if err != nil {
		t.Fatal(err)
	}
	if res.From != "n1" || res.To != "n2" || res.SessionsEnded != 3 {
		t.Fatalf("result %+v", res)
	}
	if leaderAtEnd != "n2" || leadingAtEnd || ownedAtEnd || !refusingAtEnd {
		t.Fatalf("when the sessions were ended: leader %q, this node leading %v, holding the address %v, refusing %v; want n2, false, false, true",
			leaderAtEnd, leadingAtEnd, ownedAtEnd, refusingAtEnd)
	}
	// The busy one on the VIP first, while this node holds the address.
	want := []string{"acquire", "end busy sessions", "release", "transfer n2", "end sessions"}
	if got := r.rec.events(); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if len(r.s.open) != 1 || r.s.open[0] != offVIP || len(r.s.busy) != 1 || r.s.busy[0] != offVIP {
		t.Fatalf("sessions left %v and %v, want the ones off the VIP", r.s.open, r.s.busy)
	}
	if !r.s.refusing(onVIP) || r.s.refusing(offVIP) {
		t.Fatal("not refusing connections to the VIP (only) after the move")
	}
	if _, err := r.c.Move(t.Context(), ""); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("a second move on the old leader: %v", err)
	}
	r.c.SetLeading(false)
	if !r.s.refusing(onVIP) || r.c.Moving() {
		t.Fatal("accepting connections to the VIP, or moving, after leadership was lost")
	}
	// Leading again: serving again.
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	if r.s.refusing(onVIP) || !r.h.Owned() {
		t.Fatal("leading again but refusing, or without the VIP")
	}
}

// The refusal while a move drains: connections to the VIP (only) are
// refused from its start.
func TestMoveRefusesWhileDraining(t *testing.T) {
	r := newRig(t, nil)
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	r.s.open = []netip.AddrPort{onVIP, offVIP}
	var during, duringOff bool
	r.s.beforeEnd = func() { during, duringOff = r.s.refusing(onVIP), r.s.refusing(offVIP) }
	if _, err := r.c.Move(t.Context(), "n2"); err != nil {
		t.Fatal(err)
	}
	if !during || duringOff {
		t.Fatalf("while ending sessions: refusing the VIP %v, another address %v", during, duringOff)
	}
}

// Raft answers the transfer with an error although leadership moved (the
// old leader's lease ran out while it ended its sessions, and the target
// won the election that followed; or a transfer that timed out just before
// the target won). The move reports the outcome, and the old owner keeps
// refusing connections to the VIP as long as it does not lead, even while
// the address is still on its interface (here a release that has not
// taken effect): clients that logged in there would be swept off again a
// moment later, a second reconnect storm.
func TestMoveTransferErrorButMoved(t *testing.T) {
	notLeader := errors.New("node is not the leader")
	for _, tc := range []struct {
		name    string
		to      string
		winner  string // who leads after the transfer
		lateBy  time.Duration
		wantErr bool
	}{
		{"target leads", "n2", "n2", 0, false},
		{"target leads a moment later", "n2", "n2", 50 * time.Millisecond, false},
		{"any other node asked for", "", "n3", 0, false},
		{"another node took over", "n2", "n3", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, nil)
			r.cl.setLeader("n1")
			r.c.SetLeading(true)
			r.h.stuck = true // the address lingers on the interface
			r.cl.transferErr = notLeader
			r.cl.onTransfer = func() string {
				if tc.lateBy == 0 {
					return tc.winner
				}
				r.cl.setLeader("") // an election under way
				time.AfterFunc(tc.lateBy, func() { r.cl.setLeader(tc.winner) })
				return ""
			}
			res, err := r.c.Move(t.Context(), tc.to)
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), tc.winner) || errors.Is(err, ErrNotLeader) {
					t.Fatalf("move: %+v, %v; want an error naming %s (and not ErrNotLeader, which the daemon passes on to the leader)", res, err, tc.winner)
				}
			} else if err != nil || res.To != tc.winner || res.From != "n1" {
				t.Fatalf("move: %+v, %v; want a success to %s", res, err, tc.winner)
			}
			if !r.h.Owned() {
				t.Fatal("test set-up: the address should still be on the interface")
			}
			if !r.s.refusing(onVIP) {
				t.Fatal("accepting connections to the VIP it still has but no longer leads for")
			}
			r.c.SetLeading(false)
			if !r.s.refusing(onVIP) {
				t.Fatal("accepting connections to the VIP after learning it lost leadership")
			}
		})
	}
}

// A transfer that fails while this node still leads: it takes the VIP
// back and serves, keeps its sessions (they are ended only after a
// handover that went through), and the move fails.
func TestMoveTransferFailsStillLeader(t *testing.T) {
	r := newRig(t, nil)
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	r.s.open = []netip.AddrPort{onVIP, offVIP}
	r.cl.transferErr = errors.New("leadership transfer timeout")
	if _, err := r.c.Move(t.Context(), "n2"); err == nil || !strings.Contains(err.Error(), "again") {
		t.Fatalf("a failed transfer: %v, want a failure saying this node leads again", err)
	}
	if n := r.s.count(); n != 2 {
		t.Fatalf("%d sessions left, want both: a failed move ended sessions", n)
	}
	if r.s.refusing(onVIP) || r.c.Moving() || !r.h.Owned() {
		t.Fatalf("after a failed transfer: refusing %v, moving %v, owned %v", r.s.refusing(onVIP), r.c.Moving(), r.h.Owned())
	}
}

// One handover at a time: a second one (preemption, a drain, shutdown)
// that comes while the first transfers waits, then finds this node no
// longer leading and asks raft for nothing.
func TestHandoverOneAtATime(t *testing.T) {
	r := newRig(t, nil)
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	gate := make(chan struct{})
	r.cl.onTransfer = func() string { <-gate; return "" }
	first := make(chan error, 1)
	go func() { first <- r.c.Handover("n2", false) }()
	waitUntil(t, "the first transfer to start", 5*time.Second, func() bool { return slices.Contains(r.rec.events(), "transfer n2") })
	second := make(chan error, 1)
	go func() { second <- r.c.Handover("n3", false) }()
	select {
	case err := <-second:
		t.Fatalf("second handover did not wait for the first: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(gate)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; !errors.Is(err, errNoLongerLeads) {
		t.Fatalf("second handover: %v, want errNoLongerLeads", err)
	}
	if n := strings.Count(strings.Join(r.rec.events(), ","), "transfer"); n != 1 {
		t.Fatalf("%d transfers asked of raft, want 1: %v", n, r.rec.events())
	}
}

func TestMoveRefusals(t *testing.T) {
	r := newRig(t, nil)
	r.cl.setLeader("n2")
	if _, err := r.c.Move(t.Context(), ""); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("move on a follower: %v", err)
	}
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	for _, to := range []string{"n1", "n9"} {
		if _, err := r.c.Move(t.Context(), to); !errors.Is(err, ErrBadTarget) {
			t.Fatalf("move to %s: %v", to, err)
		}
	}
	// One move at a time.
	r.c.moving.Store(true)
	if _, err := r.c.Move(t.Context(), "n2"); !errors.Is(err, ErrMoving) {
		t.Fatalf("concurrent move: %v", err)
	}
}

// The guard releases the VIP from a node that no longer leads, and takes
// it for a leader without it only once a quorum confirms.
func TestGuard(t *testing.T) {
	r := newRig(t, nil)
	r.h.SetOwner(true) // held, but raft says n2 leads
	r.cl.setLeader("n2")
	r.c.guard()
	if r.h.Owned() {
		t.Fatal("a follower kept the VIP")
	}
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	r.h.SetOwner(false) // e.g. a drain cancelled after a failed handover
	r.cl.verifyErr = errors.New("no quorum")
	r.c.guard()
	if r.h.Owned() {
		t.Fatal("took the VIP without a quorum's confirmation")
	}
	r.cl.verifyErr = nil
	r.c.guard()
	if !r.h.Owned() {
		t.Fatal("a confirmed leader did not take the VIP")
	}
}

// Inherited through an in-place upgrade: kept while nobody else leads,
// released when another node does, and the other voters' hold ended when
// this node leads.
func TestInheritedHold(t *testing.T) {
	ended := make(chan struct{})
	r := newRig(t, func(c *ControllerConfig) {
		c.HoldUntil = time.Now().Add(time.Minute)
		c.EndHold = func(context.Context) { close(ended) }
	})
	if !r.h.Owned() {
		t.Fatal("the inherited address was not kept")
	}
	r.c.guard()
	if !r.h.Owned() {
		t.Fatal("released during the hold with no leader known")
	}
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	<-ended
	r.c.SetLeading(false)
	r.cl.setLeader("n2")
	r.c.guard()
	if r.h.Owned() {
		t.Fatal("kept after another node leads")
	}

	r = newRig(t, func(c *ControllerConfig) { c.HoldUntil = time.Now().Add(time.Minute) })
	r.cl.setLeader("n3")
	r.c.guard()
	if r.h.Owned() {
		t.Fatal("kept while another node leads")
	}
}

// Elected while draining: serve the VIP, hand leadership on.
func TestElectedWhileDraining(t *testing.T) {
	r := newRig(t, nil)
	r.draining = true
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	r.wg.Wait()
	want := []string{"acquire", "release", "transfer "}
	if got := r.rec.events(); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

// Preempt runs while leading and moves to the preferred node after the
// hold-down; it stops with its context.
func TestPreempt(t *testing.T) {
	r := newRig(t, func(c *ControllerConfig) { c.Preferred, c.PreemptDelay = []string{"n3"}, 0 })
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { r.c.Preempt(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for r.cl.IsLeader() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if l, _ := r.cl.Leader(); l != "n3" {
		t.Fatalf("leader %q, want n3", l)
	}
	if got := r.rec.events(); !slices.Contains(got, "transfer n3") || slices.Index(got, "release") > slices.Index(got, "transfer n3") {
		t.Fatalf("events %v: want release before transfer n3", got)
	}
}

// runGuard runs the controller's guard (Run) with a short period until
// the test ends.
func (r *rig) runGuard(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { r.c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func guardRig(t *testing.T, grace time.Duration) *rig {
	return newRig(t, func(c *ControllerConfig) { c.Reconcile, c.SweepGrace = 5*time.Millisecond, grace })
}

// A leader that loses its lease for a moment (nobody else elected) drops
// the address at once but keeps its sessions; once it leads again they
// carry on. Only once another node is known to lead are they ended.
func TestSweepBriefLeadershipLoss(t *testing.T) {
	r := guardRig(t, time.Minute)
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	r.s.open = []netip.AddrPort{onVIP, onVIP, offVIP}
	r.runGuard(t)
	// The lease runs out: raft knows no leader.
	r.cl.setLeader("")
	r.c.SetLeading(false)
	if r.h.Owned() {
		t.Fatal("the address was kept after leadership was lost")
	}
	time.Sleep(100 * time.Millisecond) // 20 guard periods
	if n := r.s.count(); n != 3 {
		t.Fatalf("%d sessions left, want all 3: ended while nobody else holds the VIP", n)
	}
	// Won back.
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	time.Sleep(50 * time.Millisecond)
	if n := r.s.count(); n != 3 || !r.h.Owned() {
		t.Fatalf("after leading again: %d sessions, owned %v", n, r.h.Owned())
	}
	// Lost to another node this time: its sessions on the VIP end.
	r.cl.setLeader("n2")
	r.c.SetLeading(false)
	waitUntil(t, "the sessions on the VIP to end", 5*time.Second, func() bool { return r.s.count() == 1 })
	if r.s.open[0] != offVIP {
		t.Fatalf("left %v, want the session off the VIP", r.s.open)
	}
}

// A node without the VIP and with no leader known (cut off from the
// cluster) ends its sessions on it after the grace.
func TestSweepAfterGrace(t *testing.T) {
	r := guardRig(t, 200*time.Millisecond)
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	r.s.open = []netip.AddrPort{onVIP, offVIP}
	r.runGuard(t)
	lost := time.Now()
	r.cl.setLeader("")
	r.c.SetLeading(false)
	waitUntil(t, "the session on the VIP to end", 5*time.Second, func() bool { return r.s.count() == 1 })
	if d := time.Since(lost); d < 200*time.Millisecond {
		t.Fatalf("ended %v after the loss, before the grace", d)
	}
}

// The sweep's race: it decides that the node is without the VIP, then
// ends sessions in another goroutine; meanwhile the node takes the
// address again and logs clients in. It must end none of them (nor the
// older ones, which are on an address this node holds again).
func TestSweepNodeRetakesMeanwhile(t *testing.T) {
	r := guardRig(t, time.Minute)
	r.cl.setLeader("n2")
	r.s.open = []netip.AddrPort{onVIP}
	var once sync.Once
	r.s.beforeEnd = func() {
		once.Do(func() {
			// Elected, acquires, and a client logs in.
			r.cl.setLeader("n1")
			r.c.SetLeading(true)
			r.s.add(onVIP)
		})
	}
	r.runGuard(t)
	waitUntil(t, "a sweep", 5*time.Second, func() bool {
		r.s.mu.Lock()
		defer r.s.mu.Unlock()
		return r.s.beforeEnd != nil && r.h.Owned()
	})
	time.Sleep(50 * time.Millisecond)
	if n := r.s.count(); n != 2 {
		t.Fatalf("%d sessions left, want 2: the sweep ended sessions on an address the node holds again", n)
	}
	// And a sweep decided at one generation ends nothing after another,
	// even if the node has lost the VIP again by then.
	m := r.c.sweepMatch(r.c.gen.Load())
	r.c.SetLeading(false)
	if !m(onVIP) || m(offVIP) {
		t.Fatal("the sweep of this generation does not match the sessions on the VIP (only)")
	}
	r.c.SetLeading(true)
	r.c.SetLeading(false)
	if m(onVIP) {
		t.Fatal("a sweep decided before the node took the VIP again still matches")
	}
}

// The check before re-announcing: a node keeping an address inherited
// through an in-place upgrade passes it before it has won its election
// (its burst's second round came before the election, and it dropped the
// address); once another node leads, or the hold ends, only a quorum's
// confirmation does.
func TestVerifyDuringInheritedHold(t *testing.T) {
	r := newRig(t, func(c *ControllerConfig) { c.HoldUntil = time.Now().Add(300 * time.Millisecond) })
	r.cl.setLeader("") // electing
	if err := r.c.Verify(); err != nil {
		t.Fatalf("during the hold, no leader known: %v", err)
	}
	r.cl.setLeader("n2")
	if err := r.c.Verify(); err == nil {
		t.Fatal("passed while another node leads")
	}
	r.cl.setLeader("")
	waitUntil(t, "the hold to end", 5*time.Second, func() bool { return r.c.Verify() != nil })
	r.cl.setLeader("n1")
	if err := r.c.Verify(); err != nil {
		t.Fatalf("leader: %v", err)
	}
}

// The leader's lease runs out before the handover (a loaded node, while
// the logins in flight finish): raft steps down, the guard's notification
// drops the address, and the move asks raft for no transfer (it could no
// longer start one). The outcome decides: the target elected, the move
// succeeded and the sessions end; this node elected again, it failed and
// the sessions stay (a failed move costs its clients nothing).
func TestMoveLeaseLostBeforeHandover(t *testing.T) {
	for _, tc := range []struct {
		name   string
		winner string
		ended  int
	}{
		{"the target wins the election", "n2", 2},
		{"this node wins it back", "n1", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, nil)
			r.cl.setLeader("n1")
			r.c.SetLeading(true)
			r.s.open = []netip.AddrPort{onVIP, onVIP, offVIP}
			r.s.duringLogins = func() {
				r.cl.setLeader("") // stepped down: no leader known
				r.c.SetLeading(false)
				time.AfterFunc(50*time.Millisecond, func() {
					r.cl.setLeader(tc.winner)
					if tc.winner == "n1" {
						r.c.SetLeading(true)
					}
				})
			}
			res, err := r.c.Move(t.Context(), "n2")
			if slices.Contains(r.rec.events(), "transfer n2") {
				t.Fatalf("a transfer was asked of a node that no longer led: %v", r.rec.events())
			}
			if tc.winner == "n2" {
				if err != nil || res.To != "n2" || res.SessionsEnded != tc.ended {
					t.Fatalf("move: %+v, %v; want a success to n2 with %d sessions ended", res, err, tc.ended)
				}
			} else if err == nil || !strings.Contains(err.Error(), "again") {
				t.Fatalf("move: %+v, %v; want a failure saying this node leads again", res, err)
			}
			if n := r.s.count(); n != 3-tc.ended {
				t.Fatalf("%d sessions left, want %d", n, 3-tc.ended)
			}
			if tc.winner == "n1" && (!r.h.Owned() || r.s.refusing(onVIP)) {
				t.Fatalf("leading again: owned %v, refusing %v", r.h.Owned(), r.s.refusing(onVIP))
			}
		})
	}
}

// While a move ends the sessions on the VIP (after its handover, on a
// node that no longer holds the address and knows the new leader), the
// guard's sweep, which would end them too, leaves them to the move: one
// count, and the move's bound.
func TestMoveEndsWithoutTheSweep(t *testing.T) {
	r := guardRig(t, time.Minute)
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	r.s.open = []netip.AddrPort{onVIP, onVIP, offVIP}
	r.runGuard(t)
	r.cl.onTransfer = func() string {
		r.c.SetLeading(false) // raft tells of the loss at once
		return "n2"
	}
	var swept int
	r.s.beforeEnd = func() {
		// Twenty guard periods with another leader known and the
		// sessions still open: the sweep would have run by now.
		time.Sleep(100 * time.Millisecond)
		if n := r.s.count(); n != 3 {
			swept = 3 - n
		}
	}
	res, err := r.c.Move(t.Context(), "n2")
	if err != nil || res.SessionsEnded != 2 || swept != 0 {
		t.Fatalf("move: %+v, %v; sessions swept meanwhile %d; want 2 ended by the move, none by the sweep", res, err, swept)
	}
}

// Raft's success only means the target was told to call an election. A
// target that loses it (to this node, or to a third one) makes the move
// fail, with the node that leads named.
func TestMoveTransferOKButTargetLost(t *testing.T) {
	t.Run("this node won it back", func(t *testing.T) {
		r := newRig(t, nil)
		r.cl.setLeader("n1")
		r.c.SetLeading(true)
		r.cl.onTransfer = func() string {
			r.cl.setLeader("") // the election the target called
			time.AfterFunc(50*time.Millisecond, func() {
				r.cl.setLeader("n1")
				r.c.SetLeading(true)
			})
			return ""
		}
		res, err := r.c.Move(t.Context(), "n2")
		if err == nil || !strings.Contains(err.Error(), "again") {
			t.Fatalf("move: %+v, %v; want a failure saying this node leads again", res, err)
		}
	})
	t.Run("a third node won", func(t *testing.T) {
		r := newRig(t, nil)
		r.cl.setLeader("n1")
		r.c.SetLeading(true)
		r.cl.onTransfer = func() string { return "n3" }
		res, err := r.c.Move(t.Context(), "n2")
		if err == nil || !strings.Contains(err.Error(), "n3 leads") {
			t.Fatalf("move: %+v, %v; want a failure naming n3", res, err)
		}
	})
}

// The sessions ended while this node still leads are bounded: of many
// busy ones, moveBusyLimit before the handover, the rest after it.
func TestMoveBusyLimit(t *testing.T) {
	r := newRig(t, nil)
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	for range moveBusyLimit + 50 {
		r.s.busy = append(r.s.busy, onVIP)
	}
	var leftAtTransfer int
	r.cl.onTransfer = func() string { leftAtTransfer = r.s.count(); return "" }
	res, err := r.c.Move(t.Context(), "n2")
	if err != nil || res.SessionsEnded != moveBusyLimit+50 || r.s.count() != 0 {
		t.Fatalf("move: %+v, %v, %d left; want all %d ended", res, err, r.s.count(), moveBusyLimit+50)
	}
	if leftAtTransfer != 50 {
		t.Fatalf("%d sessions left at the transfer, want 50 (%d ended while leading)", leftAtTransfer, moveBusyLimit)
	}
}

// An in-place upgrade of the owner: the old process detaches its Holder
// with the address held (it stays for the new process), then hands
// leadership over. A connection it accepted just before it stopped
// accepting, admitted only after that, must be served, not reset.
func TestNoRefusalAfterHandingTheAddressOn(t *testing.T) {
	r := newRig(t, nil)
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	if r.s.refusing(onVIP) {
		t.Fatal("refusing while leading")
	}
	r.h.mu.Lock()
	r.h.handedOn = true
	r.h.mu.Unlock()
	r.cl.setLeader("")
	r.c.SetLeading(false) // the handoff
	if r.s.refusing(onVIP) {
		t.Fatal("refusing a connection to the address handed on to the new process")
	}

	// Without the hand-on (the address released first, or a lost
	// leadership), connections to the VIP are refused as before.
	r2 := newRig(t, nil)
	r2.cl.setLeader("n1")
	r2.c.SetLeading(true)
	r2.cl.setLeader("")
	r2.c.SetLeading(false)
	if !r2.s.refusing(onVIP) || r2.s.refusing(offVIP) {
		t.Fatal("not refusing connections to the VIP (only) after leadership was lost")
	}
}

package vip

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
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
}

func (h *fakeHolder) SetOwner(own bool) {
	h.mu.Lock()
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

type fakeSessions struct {
	rec    *recorder
	mu     sync.Mutex
	refuse func(netip.AddrPort) bool
	open   []netip.AddrPort // local addresses of open sessions
}

func (s *fakeSessions) SetRefuse(f func(netip.AddrPort) bool) {
	s.mu.Lock()
	s.refuse = f
	s.mu.Unlock()
	if f == nil {
		s.rec.add("accept")
	} else {
		s.rec.add("refuse")
	}
}

func (s *fakeSessions) PreauthOn(func(netip.Addr) bool) int { return 0 }

func (s *fakeSessions) refusing(a netip.AddrPort) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refuse != nil && s.refuse(a)
}

func (s *fakeSessions) EndSessions(_ context.Context, match func(netip.AddrPort) bool, _ string, _ time.Duration) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var keep []netip.AddrPort
	n := 0
	for _, a := range s.open {
		if match(a) {
			n++
		} else {
			keep = append(keep, a)
		}
	}
	s.open = keep
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

// A move on the leader: refuse connections to the VIP, end the sessions
// on it (only those), release, then transfer; the refusal lasts until the
// node learns it no longer leads.
func TestMoveOrder(t *testing.T) {
	r := newRig(t, nil)
	r.cl.setLeader("n1")
	r.c.SetLeading(true)
	r.s.open = []netip.AddrPort{onVIP, onVIP, offVIP}
	res, err := r.c.Move(t.Context(), "n2")
	if err != nil {
		t.Fatal(err)
	}
	if res.From != "n1" || res.To != "n2" || res.SessionsEnded != 2 {
		t.Fatalf("result %+v", res)
	}
	want := []string{"acquire", "refuse", "end sessions", "release", "transfer n2"}
	if got := r.rec.events(); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if len(r.s.open) != 1 || r.s.open[0] != offVIP {
		t.Fatalf("sessions left %v, want the one off the VIP", r.s.open)
	}
	if !r.s.refusing(onVIP) || r.s.refusing(offVIP) || !r.c.Moving() {
		t.Fatal("not refusing connections to the VIP (only) while the move completes")
	}
	if _, err := r.c.Move(t.Context(), ""); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("a second move on the old leader: %v", err)
	}
	r.c.SetLeading(false)
	if r.s.refusing(onVIP) || r.c.Moving() {
		t.Fatal("still refusing after leadership was lost")
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
	// A failed transfer serves again, with the VIP.
	r.cl.transferErr = errors.New("no")
	if _, err := r.c.Move(t.Context(), "n2"); err == nil || errors.Is(err, ErrBadTarget) {
		t.Fatalf("failed transfer: %v", err)
	}
	if r.s.refusing(onVIP) || r.c.Moving() || !r.h.Owned() {
		t.Fatalf("after a failed transfer: refusing %v, moving %v, owned %v", r.s.refusing(onVIP), r.c.Moving(), r.h.Owned())
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

package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/portico-mail/portico/routing"
)

// threeNodes starts a cluster of three voters and returns its leader and
// followers.
func threeNodes(t *testing.T) (*testCluster, *unitNode, []*unitNode) {
	t.Helper()
	c := newTestCluster(t)
	c.add("n1")
	c.leader()
	c.add("n2")
	c.add("n3")
	l := c.waitVoters(nodeNames(3), nil)
	var fs []*unitNode
	for _, n := range c.running() {
		if n != l {
			fs = append(fs, n)
		}
	}
	return c, l, fs
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), unitWait)
	t.Cleanup(cancel)
	return ctx
}

// Apply returns once the write is in the table of the node that took it:
// the leader, or a follower that forwarded it (its own table, so that a
// read there sees it); another follower's consistent read sees it. (The
// nodes are named by their role at the start; on a loaded machine
// leadership may move, which changes nothing that is checked.) A refusal
// comes back as the table's error, the table unchanged.
func TestApplyWaitsForTheTable(t *testing.T) {
	_, l, fs := threeNodes(t)
	ctx := testCtx(t)
	for i := 0; i < 10; i++ {
		id := fmt.Sprintf("l%d", i)
		applyEventually(t, ctx, l, putBackend(id))
		if l.fsm.Table().Backend(id) == nil {
			t.Fatalf("leader: Apply returned before the table had %s", id)
		}
		id = fmt.Sprintf("f%d", i)
		applyEventually(t, ctx, fs[0], putBackend(id))
		if fs[0].fsm.Table().Backend(id) == nil {
			t.Fatalf("follower: its forwarded Apply returned before its own table had %s", id)
		}
		if err := fs[1].ConsistentRead(ctx); err != nil {
			t.Fatal(err)
		}
		if fs[1].fsm.Table().Backend(id) == nil {
			t.Fatalf("other follower: %s missing after a consistent read", id)
		}
	}
	before := fs[1].fsm.Table()
	bad := routing.Command{Type: routing.CmdPutPool, Pool: &routing.Pool{Name: "p", Backends: []string{"nope"}}}
	for _, n := range []*unitNode{l, fs[0]} {
		if err := n.Apply(ctx, bad); !errors.Is(err, routing.ErrConflict) {
			t.Fatalf("%s: refused write: %v", n.Name(), err)
		}
	}
	if err := fs[1].ConsistentRead(ctx); err != nil {
		t.Fatal(err)
	}
	if fs[1].fsm.Table().Pool("p") != nil || fs[1].fsm.Table().Backend("l0") != before.Backend("l0") {
		t.Fatal("a refused write changed the table")
	}
}

// A follower cut off from raft answers a consistent read with an error,
// not with its stale table; healed, it catches up and answers.
func TestConsistentReadOnACutOffFollower(t *testing.T) {
	c, l, fs := threeNodes(t)
	ctx := testCtx(t)
	f := fs[0]
	c.net.isolate(f.transport.LocalAddr())
	applyEventually(t, ctx, l, putBackend("b1"))
	short, cancel := context.WithTimeout(ctx, 3*unitTiming.HeartbeatTimeout)
	err := f.ConsistentRead(short)
	cancel()
	if err == nil || !errors.Is(err, ErrNoLeader) {
		t.Fatalf("consistent read cut off from the leader: %v", err)
	}
	if f.fsm.Table().Backend("b1") != nil {
		t.Fatal("the cut-off follower has the write")
	}
	c.net.heal()
	if err := f.ConsistentRead(ctx); err != nil {
		t.Fatal(err)
	}
	if f.fsm.Table().Backend("b1") == nil {
		t.Fatal("write missing after a consistent read")
	}
}

// A write during a leader change is retried and lands exactly once: the
// leader it was sent to is cut off from the others, cannot commit it and
// steps down; the write is retried and the new leader takes it; the cut-off
// leader's uncommitted copy is discarded when it rejoins.
func TestWriteRetriedAcrossLeaderChange(t *testing.T) {
	for _, via := range []string{"leader", "follower"} {
		t.Run("via-"+via, func(t *testing.T) {
			c, old, fs := threeNodes(t)
			ctx := testCtx(t)
			writer := old
			if via == "follower" {
				writer = fs[0]
			}
			c.net.isolate(old.transport.LocalAddr())
			done := make(chan error, 1)
			go func() { done <- writer.Apply(ctx, putBackend("b1")) }()
			if via == "leader" {
				// The cut-off leader learns nothing of its successor
				// until the network heals; the followers elect one
				// without it.
				waitFor(t, unitWait, "a new leader among the others", func() bool {
					return !old.IsLeader() && (fs[0].IsLeader() || fs[1].IsLeader())
				})
				c.net.heal()
			}
			// Through a follower the write needs nothing of the cut-off
			// leader: it hears "no leader" from it and retries with the
			// new one.
			if err := <-done; err != nil {
				t.Fatalf("write during the leader change: %v", err)
			}
			c.net.heal()
			for _, n := range c.running() {
				if err := n.ConsistentRead(ctx); err != nil {
					t.Fatalf("%s: %v", n.Name(), err)
				}
			}
			want := ""
			for _, n := range c.running() {
				got := fmt.Sprint(n.applied.backendPuts("b1"))
				if want == "" {
					want = got
				}
				if got != want || len(n.applied.backendPuts("b1")) != 1 {
					t.Fatalf("%s applied the write at indexes %s (another node at %s): want exactly once, at the same index", n.Name(), got, want)
				}
			}
		})
	}
}

// A leadership transfer moves leadership to another voter; the old leader's
// hooks hear false, the new one's true. Writes sent to the old leader while
// the transfer is under way (raft refuses them with "leadership transfer
// in progress") are retried, not failed.
func TestLeadershipTransfer(t *testing.T) {
	c, old, fs := threeNodes(t)
	ctx := testCtx(t)
	var hookMu sync.Mutex
	heard := map[string][]bool{} // what each node's OnLeadership hook was told, in order
	for _, n := range c.running() {
		name := n.Name()
		n.OnLeadership(func(leader bool) {
			hookMu.Lock()
			heard[name] = append(heard[name], leader)
			hookMu.Unlock()
		})
	}
	if err := old.TransferLeadership(""); err != nil {
		t.Logf("transfer: %v", err) // timed out on a loaded machine: tried again below
	}
	var l *unitNode
	waitFor(t, unitWait, "another node to lead", func() bool {
		l = nil
		for _, n := range c.running() {
			if n.IsLeader() {
				l = n
			}
		}
		if l == old {
			// Not moved, or won back, on a loaded machine: move it again.
			if err := old.TransferLeadership(""); err != nil {
				t.Logf("transfer again: %v", err)
			}
		}
		return l != nil && l != old
	})
	// The hooks follow: the old leader's last heard false, the current
	// leader's true (a hook runs after the new leader's barrier, so wait
	// for it).
	waitFor(t, unitWait, "the leadership hooks", func() bool {
		hookMu.Lock()
		defer hookMu.Unlock()
		for _, n := range c.running() {
			h := heard[n.Name()]
			switch {
			case n.IsLeader() && (len(h) == 0 || !h[len(h)-1]):
				return false
			case !n.IsLeader() && len(h) > 0 && h[len(h)-1]:
				return false
			}
		}
		return len(heard[old.Name()]) > 0
	})
	applyEventually(t, ctx, old, putBackend("after"))
	if old.fsm.Table().Backend("after") == nil {
		t.Fatal("a write through the old leader is not in its table")
	}

	// A transfer that cannot complete (its target is cut off and behind,
	// so the leader waits to catch it up) keeps raft refusing writes for
	// an election timeout; a write in that window waits it out.
	var target *unitNode
	for _, n := range fs {
		if n != l {
			target = n
		}
	}
	c.net.isolate(target.transport.LocalAddr())
	applyEventually(t, ctx, l, putBackend("behind"))
	transfer := make(chan error, 1)
	go func() {
		transfer <- l.TransferLeadership(target.Name())
	}()
	waitFor(t, unitWait, "the transfer to be under way", func() bool {
		// (A barrier is refused like a write while it is.)
		return errors.Is(l.raft.Barrier(0).Error(), raft.ErrLeadershipTransferInProgress) || len(transfer) > 0
	})
	applyEventually(t, ctx, l, putBackend("during"))
	if err := <-transfer; err == nil {
		t.Fatal("a transfer to a cut-off node succeeded")
	}
	c.net.heal()
	if err := target.ConsistentRead(ctx); err != nil {
		t.Fatal(err)
	}
	if target.fsm.Table().Backend("during") == nil {
		t.Fatal("the write made during the transfer did not replicate")
	}
}

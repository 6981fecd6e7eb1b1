package cluster

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/raft"
)

// A node without peers bootstraps a cluster of one and leads it; a
// restart on the same stores resumes that cluster (raft state found, no
// new bootstrap) and replays its table from the log.
func TestBootstrapSingleNode(t *testing.T) {
	c := newTestCluster(t)
	n1 := c.add("n1")
	if l := c.leader(); l != n1 {
		t.Fatalf("leader %s", l.Name())
	}
	ctx, cancel := context.WithTimeout(context.Background(), unitWait)
	defer cancel()
	applyEventually(t, ctx, n1, putBackend("b1"))
	v, nv, err := suffrages(n1.Agent)
	if err != nil || fmt.Sprint(v, nv) != "[n1] []" {
		t.Fatalf("configuration %v %v, %v", v, nv, err)
	}
	if err := n1.QuorumError(); err != nil {
		t.Fatalf("a cluster of one has quorum: %v", err)
	}
	first := n1.applied.backendPuts("b1")

	if err := n1.Shutdown(); err != nil {
		t.Fatal(err)
	}
	r := c.restart(n1)
	if !r.meta.Load().Bootstrapped {
		t.Fatal("the restarted node did not find its raft state")
	}
	waitFor(t, unitWait, "the restarted node to lead with its table", func() bool {
		return r.IsLeader() && r.fsm.Table().Backend("b1") != nil
	})
	if got := r.applied.backendPuts("b1"); fmt.Sprint(got) != fmt.Sprint(first) {
		t.Fatalf("replayed put at indexes %v, first applied at %v", got, first)
	}
	if v, nv, err := suffrages(r.Agent); err != nil || fmt.Sprint(v, nv) != "[n1] []" {
		t.Fatalf("configuration after restart %v %v, %v", v, nv, err)
	}
}

// bootstrap_expect: 3. Two nodes that have met (and verified each other's
// certificates) do not form a cluster; when the third arrives all three
// bootstrap the same configuration and elect one leader.
func TestBootstrapExpect(t *testing.T) {
	c := newTestCluster(t)
	expect3 := func(cfg *Config) { cfg.BootstrapExpect = 3 }
	n1 := c.add("n1", expect3)
	n2 := c.add("n2", expect3)
	waitFor(t, unitWait, "n1 and n2 to verify each other", func() bool {
		return n1.peers.verifiedAddr("n2") != "" && n2.peers.verifiedAddr("n1") != ""
	})
	for _, n := range []*unitNode{n1, n2} {
		if n.raft.LastIndex() != 0 || n.raft.Leader() != "" {
			t.Fatalf("%s bootstrapped with 2 of the 3 expected nodes", n.Name())
		}
	}
	n3 := c.add("n3", expect3)
	l := c.waitVoters(nodeNames(3), nil)
	// Every node comes to hold the same configuration (bootstrapped
	// alike, or replicated from the leader) and follows the leader.
	for _, n := range []*unitNode{n1, n2, n3} {
		waitFor(t, unitWait, n.Name()+" to follow the leader with every node a voter", func() bool {
			addr, _ := n.raft.LeaderWithID()
			v, nv, err := suffrages(n.Agent)
			return addr == l.transport.LocalAddr() && err == nil && fmt.Sprint(v, nv) == "[n1 n2 n3] []"
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), unitWait)
	defer cancel()
	applyEventually(t, ctx, n3, putBackend("b1"))
	for _, n := range []*unitNode{n1, n2, n3} {
		if err := n.ConsistentRead(ctx); err != nil {
			t.Fatalf("%s: %v", n.Name(), err)
		}
		if n.fsm.Table().Backend("b1") == nil {
			t.Fatalf("%s: write missing after a consistent read", n.Name())
		}
	}
}

// A node with bootstrap_expect that meets a cluster already formed does
// not form a second one: it waits, and the leader adds it.
func TestBootstrapExpectJoinsFormedCluster(t *testing.T) {
	for _, expect := range []int{1, 2} {
		t.Run(fmt.Sprintf("expect%d", expect), func(t *testing.T) {
			c := newTestCluster(t)
			n1 := c.add("n1")
			c.leader()
			n2 := c.create("n2", func(cfg *Config) { cfg.BootstrapExpect = expect })
			var led atomic.Bool
			n2.OnLeadership(func(leader bool) {
				if leader {
					led.Store(true)
				}
			})
			c.start(n2)
			l := c.waitVoters([]string{"n1", "n2"}, nil)
			if l != n1 {
				t.Fatalf("leader %s, want n1 (the node that formed the cluster)", l.Name())
			}
			waitFor(t, unitWait, "n2 to follow n1 and hold its log", func() bool {
				_, id := n2.raft.LeaderWithID()
				return id == "n1" && n2.raft.LastIndex() > 0
			})
			if led.Load() {
				t.Fatal("n2 formed a cluster of its own and led it")
			}
			// Its log is n1's: a bootstrap of its own would have written
			// a different first entry (n2 alone) with the same index and
			// term as n1's, which raft then takes for a match and never
			// replaces.
			var own, leader raft.Log
			if err := n2.store.GetLog(1, &own); err != nil {
				t.Fatal(err)
			}
			if err := n1.store.GetLog(1, &leader); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(own.Data, leader.Data) {
				t.Fatalf("n2's first entry %v differs from n1's %v: n2 bootstrapped a cluster of its own",
					raft.DecodeConfiguration(own.Data), raft.DecodeConfiguration(leader.Data))
			}
		})
	}
}

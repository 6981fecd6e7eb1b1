package cluster

import (
	"context"
	"fmt"
	"testing"
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
	if err := n1.Apply(ctx, putBackend("b1")); err != nil {
		t.Fatal(err)
	}
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
	if err := n3.Apply(ctx, putBackend("b1")); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*unitNode{n1, n2, n3} {
		if err := n.ConsistentRead(ctx); err != nil {
			t.Fatalf("%s: %v", n.Name(), err)
		}
		if n.fsm.Table().Backend("b1") == nil {
			t.Fatalf("%s: write missing after a consistent read", n.Name())
		}
	}
}

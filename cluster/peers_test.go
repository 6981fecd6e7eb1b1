package cluster

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/portico-mail/portico/routing"
)

// remove-peer: refused for a live node, passed from a follower to the
// leader, and the dead node leaves raft's configuration at once.
func TestRemovePeer(t *testing.T) {
	nodes := startCluster(t, 3)
	ctx := context.Background()
	leader := waitLeader(t, nodes)
	var follower, victim *testNode
	for _, nd := range nodes {
		switch {
		case nd == leader:
		case follower == nil:
			follower = nd
		default:
			victim = nd
		}
	}
	waitFor(t, 20*time.Second, "the follower to know the leader", func() bool {
		name, _ := follower.Leader()
		return name == leader.Name()
	})
	if err := follower.RemovePeer(ctx, victim.Name()); !errors.Is(err, routing.ErrConflict) {
		t.Fatalf("removing a live node: %v", err)
	}
	if err := follower.RemovePeer(ctx, follower.Name()); !errors.Is(err, routing.ErrConflict) {
		t.Fatalf("removing itself: %v", err)
	}
	if err := follower.RemovePeer(ctx, "nobody"); !errors.Is(err, routing.ErrInvalid) {
		t.Fatalf("removing a node that is not a peer: %v", err)
	}
	for _, nd := range []*testNode{leader, follower} {
		if ok, err := nd.IsServer(victim.Name()); !ok || err != nil {
			t.Fatalf("%s: IsServer(%s) before the removal: %v, %v", nd.Name(), victim.Name(), ok, err)
		}
		if ok, err := nd.IsServer("nobody"); ok || err != nil {
			t.Fatalf("%s: IsServer(nobody): %v, %v", nd.Name(), ok, err)
		}
	}
	_ = victim.Shutdown()
	waitFor(t, 20*time.Second, "the victim seen dead by both", func() bool {
		return !leader.Alive(victim.Name()) && !follower.Alive(victim.Name())
	})
	if err := follower.RemovePeer(ctx, victim.Name()); err != nil {
		t.Fatalf("removing the dead node through a follower: %v", err)
	}
	for _, nd := range []*testNode{leader, follower} {
		waitFor(t, 10*time.Second, "the peer gone from "+nd.Name()+"'s configuration", func() bool {
			ps, err := nd.Peers()
			if err != nil {
				return false
			}
			for _, p := range ps {
				if p.ID == victim.Name() {
					return false
				}
			}
			return len(ps) == 2
		})
		// The spread mode's lease RPC serves only servers (vip.Spread):
		// the removed node is no longer one, wherever it is asked.
		if ok, err := nd.IsServer(victim.Name()); ok || err != nil {
			t.Fatalf("%s: IsServer(%s) after the removal: %v, %v", nd.Name(), victim.Name(), ok, err)
		}
		if ok, _ := nd.IsServer(nd.Name()); !ok {
			t.Fatalf("%s is not a server in its own configuration", nd.Name())
		}
	}
	// Writes still commit on the two that are left.
	if err := follower.Apply(ctx, routing.Command{Type: routing.CmdPutBackend, Backend: &routing.Backend{ID: "b1", Host: "127.0.0.1", IMAPPort: 143}}); err != nil {
		t.Fatalf("write after the removal: %v", err)
	}
}

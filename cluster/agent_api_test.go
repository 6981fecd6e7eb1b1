package cluster

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The methods that stand in for raft itself (RaftStats, Voters,
// TransferLeadership, Alive) answer from raft's and memberlist's state.
func TestLeadershipMethods(t *testing.T) {
	nodes := startCluster(t, 3)
	l := waitLeader(t, nodes)
	if err := l.Apply(t.Context(), putBackend("b1")); err != nil {
		t.Fatal(err)
	}
	st := l.RaftStats()
	if st.State != "leader" || st.Term == 0 || st.CommitIndex == 0 || st.AppliedIndex == 0 {
		t.Fatalf("leader's stats: %+v", st)
	}
	if st.LeaderChanges == 0 {
		t.Fatalf("the leader observed no leader change: %+v", st)
	}
	voters, err := l.Voters()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(voters)
	if !slices.Equal(voters, []string{"n1", "n2", "n3"}) {
		t.Fatalf("voters %v", voters)
	}
	for _, nd := range nodes {
		if !l.Alive(nd.Name()) {
			t.Fatalf("%s not alive in the leader's view", nd.Name())
		}
	}
	if l.Alive("nobody") {
		t.Fatal("an unknown member is alive")
	}

	if err := l.TransferLeadership("nobody"); err == nil {
		t.Fatal("transfer to a node that is not a voter succeeded")
	}
	// To a named voter: it leads next.
	var to *testNode
	for _, nd := range nodes {
		if nd != l {
			to = nd
			break
		}
	}
	before := to.RaftStats().LeaderChanges
	if err := l.TransferLeadership(to.Name()); err != nil {
		t.Fatalf("transfer to %s: %v", to.Name(), err)
	}
	waitFor(t, 10*time.Second, to.Name()+" leading", func() bool { return to.IsLeader() })
	if st := to.RaftStats(); st.State != "leader" || st.LeaderChanges <= before {
		t.Fatalf("new leader's stats: %+v (leader changes before: %d)", st, before)
	}
	// To anyone: a follower does nothing.
	if err := l.TransferLeadership(""); err != nil {
		t.Fatalf("a follower's transfer to anyone: %v", err)
	}
	if !to.IsLeader() {
		t.Fatal("a follower's transfer moved leadership")
	}
}

// RunWhileLeader runs its function for each term a node leads: started
// once it leads, its context ended when it stops (a transfer), and
// joined before the agent's Shutdown returns.
func TestRunWhileLeader(t *testing.T) {
	var mu sync.Mutex
	running := map[string]int{} // node -> terms running
	nodes := startClusterWith(t, 3, func(nd *testNode) {
		name := nd.Name()
		nd.RunWhileLeader(func(ctx context.Context) {
			mu.Lock()
			running[name]++
			mu.Unlock()
			<-ctx.Done()
			time.Sleep(20 * time.Millisecond) // work that outlives the term's end a little
			mu.Lock()
			running[name]--
			mu.Unlock()
		})
	})
	only := func(name string) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, nd := range nodes {
				want := 0
				if nd.Name() == name {
					want = 1
				}
				if running[nd.Name()] != want {
					return false
				}
			}
			return true
		}
	}
	l := waitLeader(t, nodes)
	waitFor(t, 10*time.Second, "a term running on the leader "+l.Name()+" only", only(l.Name()))
	var to *testNode
	for _, nd := range nodes {
		if nd != l {
			to = nd
			break
		}
	}
	if err := l.TransferLeadership(to.Name()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the term moving to "+to.Name(), only(to.Name()))
	if err := to.Shutdown(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if running[to.Name()] != 0 {
		t.Fatalf("%s's term still running after Shutdown returned", to.Name())
	}
}

// CallNode reaches the named member (or this node, served directly), and
// the RPC learns who called from the caller's verified certificate.
func TestCallNodeCaller(t *testing.T) {
	nodes := startClusterWith(t, 3, func(nd *testNode) {
		nd.HandleRPC("/v1/ext/whoami", func(ctx context.Context, _ []byte) (int, any) {
			return 200, map[string]string{"caller": Caller(ctx)}
		})
	})
	waitLeader(t, nodes)
	a, b := nodes[0], nodes[1]
	waitFor(t, 10*time.Second, "members verified", func() bool {
		for _, m := range a.Members() {
			if !m.Verified || m.State != "alive" {
				return false
			}
		}
		return len(a.Members()) == 3
	})
	for _, to := range []*testNode{a, b} {
		status, body, err := a.CallNode(t.Context(), to.Name(), "/v1/ext/whoami", nil)
		if err != nil || status != 200 || strings.TrimSpace(string(body)) != `{"caller":"`+a.Name()+`"}` {
			t.Fatalf("%s -> %s: %d %q %v", a.Name(), to.Name(), status, body, err)
		}
	}
	if _, _, err := a.CallNode(t.Context(), "nobody", "/v1/ext/whoami", nil); err == nil {
		t.Fatal("called a node that is not a member")
	}
	if Caller(t.Context()) != "" {
		t.Fatal("a caller outside an RPC")
	}
}

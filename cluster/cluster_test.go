package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/portico-mail/portico/cluster/pki"
	"github.com/portico-mail/portico/routing"
)

// testCA issues node certificates from one throwaway CA.
type testCA struct {
	cert, key []byte
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	c, k, err := pki.CreateCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{c, k}
}

func (ca *testCA) material(t testing.TB, name string) *pki.Material {
	t.Helper()
	c, k, err := pki.CreateNodeCert(ca.cert, ca.key, name, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := pki.Parse(ca.cert, c, k, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("PORTICO_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// lastCA is the CA of the cluster startCluster made last.
var lastCA *testCA

type testNode struct {
	*Agent
	fsm *routing.FSM
	// gossip is where memberlist listens, read once at creation (reading
	// memberlist's own node struct later races with its updates).
	gossip string
}

// startCluster starts n nodes in this process (real TLS transport on
// loopback, real memberlist) that form a cluster with bootstrap_expect n.
func startCluster(t *testing.T, n int) []*testNode {
	t.Helper()
	return startClusterWith(t, n, nil)
}

// startClusterWith is startCluster with before called on each node
// before it starts (to register hooks).
func startClusterWith(t *testing.T, n int, before func(*testNode)) []*testNode {
	t.Helper()
	ca := newTestCA(t)
	lastCA = ca
	// Each memberlist binds port 0 (its own pick, TCP and UDP together),
	// and every node's join list is filled in once all are bound: a port
	// found free and closed again can be taken by another process before
	// memberlist binds it (it was, on a loaded machine).
	var gossip []string
	var nodes []*testNode
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("n%d", i+1)
		fsm := routing.NewFSM()
		nd, err := New(Config{
			NodeName: name, DataDir: t.TempDir(), Version: "test",
			RaftBind: "127.0.0.1:0", GossipBind: "127.0.0.1:0",
			BootstrapExpect: n,
			EncryptKey:      []byte("0123456789abcdef0123456789abcdef"),
			TLS:             ca.material(t, name),
			Log:             testLogger(t),
		}, fsm)
		if err != nil {
			t.Fatal(err)
		}
		addr := nd.ml.LocalNode().Address()
		nodes = append(nodes, &testNode{nd, fsm, addr})
		gossip = append(gossip, addr)
	}
	for _, nd := range nodes {
		nd.cfg.Join = gossip
	}
	t.Cleanup(func() {
		for _, nd := range nodes {
			_ = nd.Shutdown()
		}
	})
	for _, nd := range nodes {
		if before != nil {
			before(nd)
		}
		if err := nd.Start(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "a leader with every node a voter", func() bool {
		l := leaderOf(nodes)
		if l == nil {
			return false
		}
		p, err := l.Peers()
		return err == nil && len(p) == n
	})
	// And every node has heard from it: a follower added a moment ago
	// answers "no raft leader" until then (a read-index test failed so).
	waitFor(t, 20*time.Second, "every node to know the leader", func() bool {
		for _, nd := range nodes {
			if addr, _ := nd.raft.LeaderWithID(); addr == "" {
				return false
			}
		}
		return true
	})
	return nodes
}

func leaderOf(nodes []*testNode) *testNode {
	for _, nd := range nodes {
		if nd.IsLeader() {
			return nd
		}
	}
	return nil
}

// waitLeader returns the leader, waiting for one (a loaded machine may be
// between elections).
func waitLeader(t testing.TB, nodes []*testNode) *testNode {
	t.Helper()
	var l *testNode
	waitFor(t, 20*time.Second, "a leader", func() bool { l = leaderOf(nodes); return l != nil })
	return l
}

func followerOf(nodes []*testNode) *testNode {
	for _, nd := range nodes {
		if !nd.IsLeader() {
			return nd
		}
	}
	return nil
}

func waitFor(t testing.TB, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func putBackend(id string) routing.Command {
	return routing.Command{Type: routing.CmdPutBackend, Backend: &routing.Backend{ID: id, Host: "10.0.0.1", IMAPPort: 143}}
}

// A write on a follower is forwarded to the leader over the cluster RPC,
// and a consistent read on another follower sees it.
func TestForwardedWriteAndConsistentRead(t *testing.T) {
	nodes := startCluster(t, 3)
	f := followerOf(nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.Apply(ctx, putBackend("b1")); err != nil {
		t.Fatalf("forwarded write: %v", err)
	}
	for _, nd := range nodes {
		if err := nd.ConsistentRead(ctx); err != nil {
			t.Fatalf("%s: consistent read: %v", nd.Name(), err)
		}
		if nd.fsm.Table().Backend("b1") == nil {
			t.Fatalf("%s: write not visible after a consistent read", nd.Name())
		}
	}
	// A refusal travels back as the same kind of error.
	bad := routing.Command{Type: routing.CmdPutPool, Pool: &routing.Pool{Name: "p", Backends: []string{"nope"}}}
	if err := f.Apply(ctx, bad); ErrorKind(err) != "invalid" && ErrorKind(err) != "conflict" {
		t.Fatalf("refused write through a follower: %v (kind %s)", err, ErrorKind(err))
	}
}

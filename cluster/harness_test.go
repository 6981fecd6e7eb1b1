package cluster

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/portico-mail/portico/routing"
)

// An in-process cluster for unit tests: raft runs over its in-memory
// transport and stores (Config.raftDeps, seam.go), so raft's links can be
// cut and healed; the cluster port (TLS on loopback, port 0) serves the
// cluster RPCs and the certificate checks; memberlist gossips over
// loopback (port 0). Nothing waits a fixed time: every test waits for the
// condition it needs, with a generous deadline that only a broken node
// reaches.

// unitTiming is short enough for tests that take milliseconds, and long
// enough that a loaded machine (two cores, -race) does not make
// leadership flap or memberlist declare live members dead.
var unitTiming = Timing{
	HeartbeatTimeout:   150 * time.Millisecond,
	ElectionTimeout:    150 * time.Millisecond,
	LeaderLeaseTimeout: 100 * time.Millisecond,
	CommitTimeout:      5 * time.Millisecond,
	ProbeInterval:      200 * time.Millisecond,
	ProbeTimeout:       100 * time.Millisecond,
	SuspicionMult:      3,
	GossipInterval:     20 * time.Millisecond,
}

// unitWait bounds every wait: far longer than any condition takes on a
// healthy node, however loaded the machine.
const unitWait = 20 * time.Second

// raftNet connects the in-memory raft transports of a test's nodes, every
// one to every other, unless a test isolated one.
type raftNet struct {
	mu       sync.Mutex
	nodes    map[raft.ServerAddress]*memTransport
	isolated map[raft.ServerAddress]bool
}

// memTransport is raft's in-memory transport; closing it (the node shut
// down or crashed) also disconnects the others from it, as a dead
// process's port refuses connections.
type memTransport struct {
	*raft.InmemTransport
	net *raftNet
}

func (t *memTransport) Close() error {
	t.net.mu.Lock()
	delete(t.net.nodes, t.LocalAddr())
	for _, o := range t.net.nodes {
		o.Disconnect(t.LocalAddr())
	}
	t.net.mu.Unlock()
	return t.InmemTransport.Close()
}

func (r *raftNet) transport(addr raft.ServerAddress) raft.Transport {
	_, it := raft.NewInmemTransport(addr)
	t := &memTransport{InmemTransport: it, net: r}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.nodes == nil {
		r.nodes, r.isolated = map[raft.ServerAddress]*memTransport{}, map[raft.ServerAddress]bool{}
	}
	for a, o := range r.nodes {
		if !r.isolated[a] {
			t.Connect(a, o.InmemTransport)
			o.Connect(addr, it)
		}
	}
	r.nodes[addr] = t
	return t
}

// isolate cuts addr's raft links to every other node, both ways (the
// cluster port and gossip still work: a raft-only partition).
func (r *raftNet) isolate(addr raft.ServerAddress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.isolated[addr] = true
	t := r.nodes[addr]
	for a, o := range r.nodes {
		if a != addr {
			t.Disconnect(a)
			o.Disconnect(addr)
		}
	}
}

// heal reconnects every pair of nodes.
func (r *raftNet) heal() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.isolated)
	for a, t := range r.nodes {
		for b, o := range r.nodes {
			if a != b {
				t.Connect(b, o.InmemTransport)
			}
		}
	}
}

// testCluster is a test's nodes, its CA, gossip key and raft network.
type testCluster struct {
	t     *testing.T
	ca    *testCA
	key   []byte
	net   *raftNet
	mu    sync.Mutex
	nodes []*unitNode
}

// unitNode is a node of a testCluster with its table, its stores (kept
// for a restart) and a record of what its table applied.
type unitNode struct {
	*Agent
	fsm     *routing.FSM
	store   *raft.InmemStore
	snaps   *raft.InmemSnapshotStore
	dir     string
	gossip  string // memberlist's address
	applied *applyLog
}

// applyLog records the commands a node's table applied, in order.
type applyLog struct {
	mu      sync.Mutex
	entries []appliedEntry
}

type appliedEntry struct {
	index uint64
	cmd   routing.Command
	err   error
}

func (a *applyLog) record(index uint64, c routing.Command, err error) {
	a.mu.Lock()
	a.entries = append(a.entries, appliedEntry{index, c, err})
	a.mu.Unlock()
}

// backendPuts returns the indexes at which a put of backend id was
// applied.
func (a *applyLog) backendPuts(id string) []uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []uint64
	for _, e := range a.entries {
		if e.cmd.Type == routing.CmdPutBackend && e.cmd.Backend != nil && e.cmd.Backend.ID == id {
			out = append(out, e.index)
		}
	}
	return out
}

func newTestCluster(t *testing.T) *testCluster {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	c := &testCluster{t: t, ca: newTestCA(t), key: key, net: &raftNet{}}
	t.Cleanup(func() {
		c.mu.Lock()
		nodes := append([]*unitNode(nil), c.nodes...)
		c.mu.Unlock()
		for _, n := range nodes {
			_ = n.Shutdown()
		}
	})
	return c
}

// create makes a node named name with fresh stores (New only). Its Join
// lists every node made before it, unless opts change it.
func (c *testCluster) create(name string, opts ...func(*Config)) *unitNode {
	c.t.Helper()
	return c.createWith(name, raft.NewInmemStore(), raft.NewInmemSnapshotStore(), c.t.TempDir(), opts...)
}

func (c *testCluster) createWith(name string, store *raft.InmemStore, snaps *raft.InmemSnapshotStore, dir string, opts ...func(*Config)) *unitNode {
	c.t.Helper()
	c.mu.Lock()
	var join []string
	for _, n := range c.nodes {
		join = append(join, n.gossip)
	}
	c.mu.Unlock()
	cfg := Config{
		NodeName: name, DataDir: dir, Version: "test",
		RaftBind: "127.0.0.1:0", GossipBind: "127.0.0.1:0",
		Join: join, EncryptKey: c.key,
		TLS:    c.ca.material(c.t, name),
		Timing: unitTiming,
		Log:    testLogger(c.t),
		raftDeps: &raftDeps{logs: store, stable: store, snaps: snaps,
			transport: c.net.transport},
	}
	for _, o := range opts {
		o(&cfg)
	}
	applied := &applyLog{}
	fsm := routing.NewFSM()
	fsm.OnApply = applied.record
	n, err := New(cfg, fsm)
	if err != nil {
		c.t.Fatalf("%s: %v", name, err)
	}
	un := &unitNode{Agent: n, fsm: fsm, store: store, snaps: snaps, dir: dir, gossip: n.ml.LocalNode().Address(), applied: applied}
	c.mu.Lock()
	c.nodes = append(c.nodes, un)
	c.mu.Unlock()
	return un
}

// start starts n (joins, bootstraps or waits to be added).
func (c *testCluster) start(n *unitNode) *unitNode {
	c.t.Helper()
	if err := n.Start(); err != nil {
		c.t.Fatalf("%s: start: %v", n.Name(), err)
	}
	return n
}

// add creates and starts a node.
func (c *testCluster) add(name string, opts ...func(*Config)) *unitNode {
	c.t.Helper()
	return c.start(c.create(name, opts...))
}

// restart makes a new process for a node that was shut down or crashed,
// on the same stores and data directory (a restart). Its raft address
// changes (a new port), so only a single-server cluster resumes as it
// was; Join lists the nodes still running.
func (c *testCluster) restart(old *unitNode, opts ...func(*Config)) *unitNode {
	c.t.Helper()
	c.forget(old)
	return c.start(c.createWith(old.Name(), old.store, old.snaps, old.dir, opts...))
}

// forget drops n from the nodes later ones join (it was stopped).
func (c *testCluster) forget(n *unitNode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, o := range c.nodes {
		if o == n {
			c.nodes = append(c.nodes[:i], c.nodes[i+1:]...)
			return
		}
	}
}

// crash stops n as a crash would: no leadership transfer, no goodbye to
// memberlist, its raft transport gone.
func (c *testCluster) crash(n *unitNode) {
	n.closeOnce.Do(func() {
		close(n.stop)
		n.wg.Wait()
		_ = n.closeStores()
	})
	c.forget(n)
}

// running returns the nodes not stopped.
func (c *testCluster) running() []*unitNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*unitNode(nil), c.nodes...)
}

// leader waits for exactly one running node to lead and returns it.
func (c *testCluster) leader() *unitNode {
	c.t.Helper()
	var l *unitNode
	waitFor(c.t, unitWait, "a leader", func() bool {
		l = nil
		for _, n := range c.running() {
			if n.IsLeader() {
				if l != nil {
					return false // an old leader not stepped down yet
				}
				l = n
			}
		}
		return l != nil
	})
	return l
}

// waitVoters waits until the leader's configuration holds exactly the
// named voters and non-voters, and every one of them holds it too (a
// server that has not received the entry adding another refuses that
// one's votes: cutting the leader off before then would leave the others
// unable to elect), and returns the leader.
func (c *testCluster) waitVoters(voters, nonvoters []string) *unitNode {
	c.t.Helper()
	want := fmt.Sprint(sortedCopy(voters), sortedCopy(nonvoters))
	member := map[string]bool{}
	for _, name := range append(append([]string{}, voters...), nonvoters...) {
		member[name] = true
	}
	var l *unitNode
	waitFor(c.t, unitWait, "configuration "+want+" on every server", func() bool {
		l = nil
		for _, n := range c.running() {
			if n.IsLeader() {
				l = n
			}
		}
		if l == nil {
			return false
		}
		for _, n := range c.running() {
			if !member[n.Name()] && n != l {
				continue
			}
			v, nv, err := suffrages(n.Agent)
			if err != nil || fmt.Sprint(v, nv) != want {
				return false
			}
		}
		return true
	})
	return l
}

func suffrages(n *Agent) (voters, nonvoters []string, err error) {
	peers, err := n.Peers()
	if err != nil {
		return nil, nil, err
	}
	for _, p := range peers {
		if p.Suffrage == "voter" {
			voters = append(voters, p.ID)
		} else {
			nonvoters = append(nonvoters, p.ID)
		}
	}
	return sortedCopy(voters), sortedCopy(nonvoters), nil
}

func sortedCopy(s []string) []string {
	out := append([]string{}, s...)
	sort.Strings(out)
	return out
}

// nodeNames returns names "n1".."nN".
func nodeNames(n int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("n%d", i))
	}
	return out
}

// applyEventually applies c through n, asking again when the cluster had
// no leader for a whole election wait (a machine so loaded that raft's
// short test timeouts keep expiring): any other error, among them raft's
// "leadership transfer in progress", fails the test.
func applyEventually(t *testing.T, ctx context.Context, n *unitNode, c routing.Command) {
	t.Helper()
	for {
		err := n.Apply(ctx, c)
		switch {
		case err == nil:
			return
		case errors.Is(err, raft.ErrLeadershipTransferInProgress) || !errors.Is(err, ErrNoLeader) || ctx.Err() != nil:
			t.Fatalf("%s: write: %v", n.Name(), err)
		}
		t.Logf("%s: write: %v; again", n.Name(), err)
	}
}

// Package cluster wires a Portico node into its cluster: hashicorp/memberlist
// for discovery, failure detection, node metadata and gossip (backend
// health, shared counters), and hashicorp/raft for the replicated routing
// table (routing.FSM).
//
// A node with no peers configured is a single-node cluster that bootstraps
// itself in its data directory. Join lists a few existing members;
// BootstrapExpect forms a new cluster once that many nodes have met. The
// leader reconciles raft's voters from memberlist (up to MaxVoters, the rest
// non-voters) and removes nodes dead for longer than DeadNodeReap. Any node
// accepts writes and forwards them to the leader. See cluster/DESIGN.md.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"

	"github.com/portico-mail/portico/cluster/pki"
	"github.com/portico-mail/portico/routing"
)

// Timing holds detection timings; a zero takes its default
// (DefaultConfig). The defaults are tuned for a LAN and fast failover (see
// the README: about 1 s to a new leader after a crash).
type Timing struct {
	HeartbeatTimeout   time.Duration // raft
	ElectionTimeout    time.Duration // raft
	LeaderLeaseTimeout time.Duration // raft
	CommitTimeout      time.Duration // raft
	ProbeInterval      time.Duration // memberlist
	ProbeTimeout       time.Duration // memberlist
	SuspicionMult      int           // memberlist
	GossipInterval     time.Duration // memberlist
}

// withDefaults fills the zero timings from d.
func (t Timing) withDefaults(d Timing) Timing {
	set := func(v *time.Duration, dv time.Duration) {
		if *v <= 0 {
			*v = dv
		}
	}
	set(&t.HeartbeatTimeout, d.HeartbeatTimeout)
	set(&t.ElectionTimeout, d.ElectionTimeout)
	set(&t.LeaderLeaseTimeout, d.LeaderLeaseTimeout)
	set(&t.CommitTimeout, d.CommitTimeout)
	set(&t.ProbeInterval, d.ProbeInterval)
	set(&t.ProbeTimeout, d.ProbeTimeout)
	set(&t.GossipInterval, d.GossipInterval)
	if t.SuspicionMult <= 0 {
		t.SuspicionMult = d.SuspicionMult
	}
	return t
}

// Config configures a cluster node.
type Config struct {
	NodeName string
	DataDir  string
	Version  string

	RaftBind      string // host:port raft listens on
	RaftAdvertise string // host:port peers reach raft at; default RaftBind
	GossipBind    string // host:port memberlist listens on (TCP+UDP)
	GossipAdvert  string // host:port peers reach memberlist at; default GossipBind
	APIAddr       string // this node's admin API (host:port), shown to operators

	// TLS is this node's identity: the cluster CA bundle, its certificate
	// and key (cluster/pki). Raft and the cluster RPCs run over mutual TLS
	// with it and gossip is signed with it. nil: a node without peers gets
	// a throwaway identity nobody else holds (its cluster port then
	// refuses everyone); a node with peers must have one.
	TLS *pki.Material

	Join            []string
	BootstrapExpect int
	MaxVoters       int           // odd; 0: default (DefaultConfig)
	DeadNodeReap    time.Duration // 0: default
	EncryptKey      []byte        // 16, 24 or 32 bytes; nil: gossip unencrypted
	RejoinInterval  time.Duration // 0: default
	Timing          Timing

	Log *slog.Logger
	// Lock, if set, is the data directory lock already taken with
	// LockDataDir; the agent owns it from New on (a failed New releases it).
	Lock *os.File

	// raftDeps replaces raft's stores and transport in unit tests only
	// (seam.go); nil in production.
	raftDeps *raftDeps
}

// DefaultConfig returns the defaults documented in the README: a lone node
// on loopback in /var/lib/portico, at most 5 voters, nodes dead for 72 h
// reaped, the configured peers joined again every 30 s, and LAN timings.
// New fills a zero MaxVoters, DeadNodeReap, RejoinInterval or timing from
// it; the data directory and addresses have no zero meaning there (the
// configuration fills them).
func DefaultConfig() Config {
	return Config{
		DataDir:        "/var/lib/portico",
		RaftBind:       "127.0.0.1:7144",
		GossipBind:     "127.0.0.1:7145",
		MaxVoters:      5,
		DeadNodeReap:   72 * time.Hour,
		RejoinInterval: 30 * time.Second,
		Timing: Timing{
			HeartbeatTimeout:   500 * time.Millisecond,
			ElectionTimeout:    500 * time.Millisecond,
			LeaderLeaseTimeout: 250 * time.Millisecond,
			CommitTimeout:      20 * time.Millisecond,
			ProbeInterval:      500 * time.Millisecond,
			ProbeTimeout:       250 * time.Millisecond,
			SuspicionMult:      3,
			GossipInterval:     100 * time.Millisecond,
		},
	}
}

// Agent is this process's membership of the cluster.
type Agent struct {
	cfg  Config
	hold electionHold // in-place upgrade of the leader (hold.go)
	log  *slog.Logger
	fsm  *routing.FSM
	lock *os.File

	raft      *raft.Raft
	transport raft.Transport // a NetworkTransport over the mux (an in-memory one in unit tests)
	trust     *trust
	mux       *mux
	rpc       *http.Client
	rpcSrv    *http.Server
	rpcMux    *http.ServeMux
	extMu     sync.Mutex
	ext       map[string]RPCFunc // HandleRPC's, by path (CallEach serves itself directly)
	rpcDone   chan struct{}      // closed when serveRPC returns
	peers     *peerBook
	wal       *wal.WAL
	walMeta   *metadb.BoltMetaDB
	logs      raft.LogStore    // the WAL
	stable    raft.StableStore // the WAL
	snaps     raft.SnapshotStore
	ml        *memberlist.Memberlist
	del       *delegate
	// Gossip messages sent directly (sendEach) that a member's packet
	// could not be written for; the queued copies and push/pull remain.
	directFailed atomic.Uint64

	leaderCh      chan bool
	pokeCh        chan struct{}
	hooksMu       sync.Mutex
	onLeader      []func(leader bool)
	termFns       []func(ctx context.Context) // RunWhileLeader
	meta          atomic.Pointer[Meta]
	metaSeq       atomic.Uint64
	metaSealed    atomic.Pointer[sealedMeta]
	leaderChanges atomic.Uint64 // raft leader observations (RaftStats)
	stop          chan struct{}
	wg            sync.WaitGroup
	closeOnce     sync.Once

	mu        sync.Mutex
	deadSince map[string]time.Time // member name -> when memberlist reported it gone
}

// ErrNoLeader: no leader is known (no quorum, or an election is running).
var ErrNoLeader = errors.New("no raft leader: the cluster has no quorum or is electing one; retry")

// New opens the data directory (exclusively), raft's log and snapshot
// stores, and creates the raft and memberlist instances. Start joins or
// bootstraps.
func New(cfg Config, fsm *routing.FSM) (*Agent, error) {
	// The agent owns cfg.Lock from the start: a failure before the stores
	// take it over (closeStores releases it then) releases it here.
	lockHeld := false
	defer func() {
		if !lockHeld && cfg.Lock != nil {
			unlockDataDir(cfg.Lock)
		}
	}()
	if cfg.NodeName == "" {
		return nil, errors.New("cluster: node name required")
	}
	def := DefaultConfig()
	if cfg.MaxVoters <= 0 {
		cfg.MaxVoters = def.MaxVoters
	}
	if cfg.MaxVoters%2 == 0 {
		return nil, fmt.Errorf("cluster: max_voters %d must be odd", cfg.MaxVoters)
	}
	if cfg.DeadNodeReap <= 0 {
		cfg.DeadNodeReap = def.DeadNodeReap
	}
	if cfg.RejoinInterval <= 0 {
		cfg.RejoinInterval = def.RejoinInterval
	}
	cfg.Timing = cfg.Timing.withDefaults(def.Timing)
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	n := &Agent{cfg: cfg, log: cfg.Log.With("component", "cluster"), fsm: fsm, stop: make(chan struct{}), pokeCh: make(chan struct{}, 1),
		deadSince: map[string]time.Time{}}
	n.metaSeq.Store(uint64(time.Now().UnixNano()))
	n.peers = newPeerBook(n)
	n.trust = &trust{seen: n.peers.learn}
	mat := cfg.TLS
	if mat == nil {
		if len(cfg.Join) > 0 || cfg.BootstrapExpect > 1 {
			return nil, errors.New("cluster: a node with peers needs a node certificate (cluster.tls; create them with: portico tls ca create, portico tls cert create --node NAME)")
		}
		var err error
		if mat, err = pki.Ephemeral(cfg.NodeName); err != nil {
			return nil, fmt.Errorf("cluster: throwaway node identity: %w", err)
		}
	}
	if mat.Self.Name != cfg.NodeName {
		return nil, fmt.Errorf("cluster: the node certificate is for %q, this node is %q", mat.Self.Name, cfg.NodeName)
	}
	n.trust.mat.Store(mat)
	n.rpc = n.newRPCClient()
	n.rpcMux = http.NewServeMux()
	var err error
	if n.lock = cfg.Lock; n.lock == nil {
		if n.lock, err = LockDataDir(cfg.DataDir); err != nil {
			return nil, err
		}
	}
	lockHeld = true
	ok := false
	defer func() {
		if !ok {
			n.closeStores()
		}
	}()
	if err := n.openRaft(); err != nil {
		return nil, err
	}
	if err := n.openMemberlist(); err != nil {
		return nil, err
	}
	ok = true
	return n, nil
}

func (n *Agent) openRaft() error {
	hlog := newHCLog(n.log, "raft")
	if err := n.openStores(hlog); err != nil {
		return err
	}
	adv := n.cfg.RaftAdvertise
	if adv == "" {
		adv = n.cfg.RaftBind
	}
	var advAddr net.Addr
	var err error
	if adv != n.cfg.RaftBind {
		if advAddr, err = net.ResolveTCPAddr("tcp", adv); err != nil {
			return fmt.Errorf("cluster: raft advertise address %q: %w", adv, err)
		}
	}
	ln, err := net.Listen("tcp", n.cfg.RaftBind)
	if err != nil {
		return fmt.Errorf("cluster: raft transport on %s: %w", n.cfg.RaftBind, err)
	}
	if advAddr == nil {
		if a := ln.Addr().(*net.TCPAddr); a.IP.IsUnspecified() {
			ln.Close()
			return fmt.Errorf("cluster: raft_address %s is unspecified: set cluster.advertise", n.cfg.RaftBind)
		}
	}
	n.mux = newMux(ln, n.trust, n.log)
	if d := n.cfg.raftDeps; d != nil {
		n.transport = d.transport(raft.ServerAddress(ln.Addr().String()))
	} else {
		n.transport = raft.NewNetworkTransportWithConfig(raftTransportConfig(
			&raftLayer{chanListener: chanListener{m: n.mux, ch: n.mux.raftCh}, advertise: advAddr}, hlog))
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.NodeName)
	rc.Logger = hlog
	rc.HeartbeatTimeout = n.cfg.Timing.HeartbeatTimeout
	rc.ElectionTimeout = n.cfg.Timing.ElectionTimeout
	rc.LeaderLeaseTimeout = n.cfg.Timing.LeaderLeaseTimeout
	rc.CommitTimeout = n.cfg.Timing.CommitTimeout
	rc.SnapshotThreshold = 16384
	rc.SnapshotInterval = 2 * time.Minute
	rc.TrailingLogs = 10240
	// The reliable notification channel: leadership changes are never
	// dropped (LeaderCh is best-effort).
	n.leaderCh = make(chan bool, 16)
	rc.NotifyCh = n.leaderCh

	r, err := raft.NewRaft(rc, n.fsm, n.logs, n.stable, n.snaps, n.transport)
	if err != nil {
		return fmt.Errorf("cluster: raft: %w", err)
	}
	n.raft = r
	// Count leader changes in the observer's filter: it runs in raft's
	// goroutine for every observation and only adds, and it rejects them
	// all, so nothing is queued and no goroutine reads them.
	r.RegisterObserver(raft.NewObserver(nil, false, func(o *raft.Observation) bool {
		if _, ok := o.Data.(raft.LeaderObservation); ok {
			n.leaderChanges.Add(1)
		}
		return false
	}))
	n.rpcSrv, n.rpcDone = n.newRPCServer(), make(chan struct{})
	go n.serveRPC()
	return nil
}

// raftTransportConfig configures raft's NetworkTransport over stream (the
// mutual-TLS cluster port).
//
// MaxRPCsInFlight 1 turns off raft's pipelined replication. With
// pipelining (raft's default of 2 in flight, hashicorp/raft v1.8.0), a
// follower answering an AppendEntries with Success=false (a failed log
// write, or a reset connection decoded as an empty answer) ends the
// pipeline's decoder while the sender may pick new log entries over the
// finished decoder in the same select; that send then waits forever for
// the transport's decode goroutine, which waits forever for the ended
// decoder. Replication to that follower stops for good, while its
// heartbeats go on, so it never calls an election that would heal it,
// and raft's Shutdown on the leader waits for the stuck goroutines
// forever: only killing the leader heals it (hashicorp/raft issue 612,
// Grafana Pyroscope pull request 5518). TestPipelineStall reproduces it.
// Pipelining buys nothing here: on a LAN, and at the rate of routing
// changes, synchronous AppendEntries batch as well (hashicorp/raft pull
// request 541 measured it worse than no pipeline under load).
func raftTransportConfig(stream raft.StreamLayer, logger hclog.Logger) *raft.NetworkTransportConfig {
	return &raft.NetworkTransportConfig{
		Stream:          stream,
		MaxPool:         3,
		MaxRPCsInFlight: 1,
		Timeout:         10 * time.Second,
		Logger:          logger,
	}
}

// openStores opens raft's log and stable store (raft-wal) and its
// snapshot store in the data directory, or takes the in-memory ones a
// unit test gave (seam.go).
func (n *Agent) openStores(hlog hclog.Logger) error {
	if d := n.cfg.raftDeps; d != nil {
		n.logs, n.stable, n.snaps = d.logs, d.stable, d.snaps
		return nil
	}
	dir := filepath.Join(n.cfg.DataDir, "raft")
	walDir := filepath.Join(dir, "wal")
	if err := os.MkdirAll(walDir, 0o700); err != nil {
		return fmt.Errorf("cluster: data dir: %w", err)
	}
	// Our own metadata store: raft-wal's Close leaves the one it creates
	// open (with its flock), and a process that hands the data dir to
	// another (in-place upgrade) must close it.
	meta := &metadb.BoltMetaDB{}
	w, err := wal.Open(walDir, wal.WithLogger(newHCLog(n.log, "raft-wal")), wal.WithMetaStore(meta))
	if err != nil {
		_ = meta.Close()
		return fmt.Errorf("cluster: opening raft log in %s: %w", walDir, err)
	}
	n.wal, n.walMeta = w, meta
	n.logs, n.stable = w, w
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 3, hlog)
	if err != nil {
		return fmt.Errorf("cluster: snapshot store: %w", err)
	}
	n.snaps = snaps
	return nil
}

func (n *Agent) openMemberlist() error {
	mc := memberlist.DefaultLANConfig()
	mc.Name = n.cfg.NodeName
	host, port, err := splitHostPort(n.cfg.GossipBind)
	if err != nil {
		return fmt.Errorf("cluster: gossip address: %w", err)
	}
	mc.BindAddr, mc.BindPort = host, port
	if n.cfg.GossipAdvert != "" {
		if mc.AdvertiseAddr, mc.AdvertisePort, err = splitHostPort(n.cfg.GossipAdvert); err != nil {
			return fmt.Errorf("cluster: gossip advertise address: %w", err)
		}
	}
	mc.ProbeInterval = n.cfg.Timing.ProbeInterval
	mc.ProbeTimeout = n.cfg.Timing.ProbeTimeout
	mc.SuspicionMult = n.cfg.Timing.SuspicionMult
	mc.GossipInterval = n.cfg.Timing.GossipInterval
	mc.PushPullInterval = 15 * time.Second
	mc.LogOutput = newLineLogger(n.log, "memberlist")
	if len(n.cfg.EncryptKey) > 0 {
		mc.SecretKey = n.cfg.EncryptKey
	} else {
		n.log.Warn("gossip encryption is OFF: anyone who can reach the gossip port can join this cluster and read its gossip; set cluster.encrypt_key (portico keygen)")
	}
	n.del = newDelegate(n)
	mc.Delegate = n.del
	mc.Events = n.del
	mc.Ping = n.del
	hasState, _ := raft.HasExistingState(n.logs, n.stable, n.snaps)
	n.meta.Store(&Meta{Version: n.cfg.Version, API: n.cfg.APIAddr, Raft: string(n.transport.LocalAddr()), Bootstrapped: hasState,
		Level: int(routing.CommandLevel), Seq: n.metaSeq.Add(1)})
	tr, err := newBoundedTransport(mc)
	if err != nil {
		return fmt.Errorf("cluster: memberlist on %s: %w", n.cfg.GossipBind, err)
	}
	mc.Transport = tr
	ml, err := memberlist.Create(mc)
	if err != nil {
		_ = tr.Shutdown()
		return fmt.Errorf("cluster: memberlist on %s: %w", n.cfg.GossipBind, err)
	}
	n.ml = ml
	return nil
}

func splitHostPort(s string) (string, int, error) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", s)
	}
	return h, port, nil
}

// Start joins the configured peers and bootstraps a new cluster when this
// node should, then runs the background loops.
func (n *Agent) Start() error {
	hasState, err := raft.HasExistingState(n.logs, n.stable, n.snaps)
	if err != nil {
		return err
	}
	if len(n.cfg.Join) > 0 {
		if _, err := n.ml.Join(n.cfg.Join); err != nil {
			// Not fatal: peers may come up later; the rejoin loop retries.
			n.log.Warn("could not join any configured peer yet; will retry", "join", n.cfg.Join, "error", err)
		}
	}
	switch {
	case hasState:
		n.log.Info("raft state found in data dir; resuming", "data_dir", n.cfg.DataDir)
	case n.cfg.BootstrapExpect > 1:
		n.wg.Add(1)
		go n.bootstrapWhenExpected()
	case n.cfg.BootstrapExpect == 1 && n.peerBootstrapped():
		n.log.Warn("bootstrap_expect is 1 but a joined peer already belongs to a cluster: joining it instead of forming a new one")
	case n.cfg.BootstrapExpect == 1 || !n.hasPeers():
		n.log.Info("bootstrapping a new single-node cluster", "data_dir", n.cfg.DataDir)
		if err := n.bootstrap([]raft.Server{n.self()}); err != nil {
			return err
		}
	default:
		n.log.Info("no raft state: waiting to be added by the leader", "join", n.cfg.Join)
	}
	n.wg.Add(4)
	go n.leaderLoop()
	go n.rejoinLoop()
	go n.metaLoop()
	go n.peers.fetchLoop()
	return nil
}

// otherVoters counts the voters in raft's configuration besides this node.
func (n *Agent) otherVoters() int {
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return 0
	}
	c := 0
	for _, s := range cf.Configuration().Servers {
		if s.Suffrage == raft.Voter && s.ID != raft.ServerID(n.cfg.NodeName) {
			c++
		}
	}
	return c
}

// peerBootstrapped reports whether a live member says it already has
// raft state. The claim need not be verified: right after joining, no
// member's key has been fetched yet, so no metadata verifies, and a node
// that waited for that would form a second cluster beside the first. A
// claim only makes this node wait for the leader to add it, which is the
// safe way to be wrong (the leader adds only members it verified).
func (n *Agent) peerBootstrapped() bool {
	for _, m := range n.del.snapshot() {
		if m.name == n.cfg.NodeName || m.state != memberlist.StateAlive {
			continue
		}
		meta, ok := n.memberMeta(m.name, m.meta)
		if !ok {
			meta = unverifiedMeta(m.meta)
		}
		if meta != nil && meta.Bootstrapped {
			return true
		}
	}
	return false
}

// hasPeers reports whether Join names any address other than our own.
func (n *Agent) hasPeers() bool {
	own := map[string]bool{n.cfg.GossipBind: true, n.cfg.GossipAdvert: true, n.ml.LocalNode().Address(): true}
	for _, j := range n.cfg.Join {
		if !own[j] {
			return true
		}
	}
	return false
}

func (n *Agent) self() raft.Server {
	return raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(n.cfg.NodeName), Address: n.transport.LocalAddr()}
}

func (n *Agent) bootstrap(servers []raft.Server) error {
	f := n.raft.BootstrapCluster(raft.Configuration{Servers: servers})
	if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return fmt.Errorf("cluster: bootstrap: %w", err)
	}
	return nil
}

// bootstrapWhenExpected waits until BootstrapExpect members (none of which
// has raft state already) have met, then bootstraps with all of them; every
// node computes the same configuration, which raft allows.
func (n *Agent) bootstrapWhenExpected() {
	defer n.wg.Done()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		if n.raft.Leader() != "" {
			return // someone else formed the cluster; the leader adds us
		}
		if n.peerBootstrapped() {
			return // an existing cluster: wait to be added
		}
		var servers []raft.Server
		for _, m := range n.del.snapshot() {
			if m.state != memberlist.StateAlive {
				continue
			}
			meta, ok := n.memberMeta(m.name, m.meta)
			if !ok || meta.Raft == "" || meta.Bootstrapped {
				continue
			}
			// Only members whose certificate was verified at the raft
			// address they claim (a keyed impostor cannot be counted).
			if m.name != n.cfg.NodeName && !n.peers.verifiedAt(m.name, meta.Raft) {
				continue
			}
			servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.name), Address: raft.ServerAddress(meta.Raft)})
		}
		if len(servers) < n.cfg.BootstrapExpect {
			continue
		}
		sort.Slice(servers, func(i, j int) bool { return servers[i].ID < servers[j].ID })
		if len(servers) > n.cfg.MaxVoters {
			servers = servers[:n.cfg.MaxVoters]
		}
		n.log.Info("bootstrap_expect reached; forming the cluster", "servers", len(servers))
		if err := n.bootstrap(servers); err != nil {
			n.log.Error("bootstrap failed", "error", err)
		}
		return
	}
}

// rejoinLoop re-joins the configured peers periodically: memberlist does
// not rejoin by itself after a long partition.
func (n *Agent) rejoinLoop() {
	defer n.wg.Done()
	if len(n.cfg.Join) == 0 {
		return
	}
	t := time.NewTicker(n.cfg.RejoinInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		known := map[string]bool{}
		for _, m := range n.del.snapshot() {
			if m.state == memberlist.StateAlive {
				known[m.addr] = true
			}
		}
		var missing []string
		for _, j := range n.cfg.Join {
			if !known[j] {
				missing = append(missing, j)
			}
		}
		if len(missing) > 0 {
			if _, err := n.ml.Join(missing); err == nil {
				n.log.Info("rejoined peers", "peers", missing)
			}
		}
	}
}

// Name returns this node's name.
func (n *Agent) Name() string { return n.cfg.NodeName }

// IsLeader reports whether this node is the raft leader.
func (n *Agent) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the leader's name and API address ("" if unknown).
func (n *Agent) Leader() (name, api string) {
	addr, id := n.raft.LeaderWithID()
	if addr == "" {
		return "", ""
	}
	name = string(id)
	if name == n.cfg.NodeName {
		return name, n.meta.Load().API
	}
	for _, m := range n.del.snapshot() {
		if m.name == name {
			if meta, ok := n.memberMeta(m.name, m.meta); ok {
				api = meta.API
			}
		}
	}
	return name, api
}

// Apply replicates c: directly on the leader, else forwarded to the
// leader over the cluster RPC. It returns once this node's table holds
// the change (so a read here sees it), or with the table's refusal
// (routing.ErrInvalid, routing.ErrConflict) or ErrNoLeader.
func (n *Agent) Apply(ctx context.Context, c routing.Command) error {
	b, err := c.Encode()
	if err != nil {
		return err
	}
	return n.ApplyRaw(ctx, b)
}

// ApplyRaw replicates an encoded command (see Apply). The command is
// decoded first: one this binary does not understand (or a malformed one)
// is refused here, so it never reaches the replicated log.
func (n *Agent) ApplyRaw(ctx context.Context, b []byte) error {
	if _, err := routing.DecodeCommand(b); err != nil {
		return err
	}
	// Retried while leadership moves (an election takes about one
	// election timeout, a few with split votes); commands are idempotent,
	// so a retry after an unknown outcome is safe.
	var index uint64
	err := n.whileNoLeader(ctx, func() error {
		var err error
		index, err = n.applyOnce(ctx, b)
		return err
	})
	if err != nil {
		return err
	}
	return n.waitApplied(ctx, index)
}

// applyOnce makes one attempt: on the leader, or forwarded to it. It
// returns the raft index the leader applied the command at (0 from a
// leader of an older version, which does not say).
func (n *Agent) applyOnce(ctx context.Context, b []byte) (uint64, error) {
	if n.IsLeader() {
		return n.applyLeader(ctx, b)
	}
	addr, id := n.raft.LeaderWithID()
	if addr == "" || id == "" {
		return 0, ErrNoLeader
	}
	return n.forwardApply(ctx, string(id), string(addr), b)
}

// applyLeader proposes an encoded command on this node, the leader, once,
// and returns its index once this node's table applied it. Leadership
// lost, moving (raft refuses writes while a leadership transfer is under
// way) or never held comes back as ErrNoLeader, for the caller to retry:
// every command is a put or a delete by key, so a retry after an unknown
// outcome is harmless.
func (n *Agent) applyLeader(ctx context.Context, b []byte) (uint64, error) {
	if _, err := routing.DecodeCommand(b); err != nil {
		return 0, err
	}
	if err := n.checkLevel(routing.CommandType(b[0])); err != nil {
		return 0, leadershipError(err)
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	f := n.raft.Apply(b, timeout)
	if err := f.Error(); err != nil {
		return 0, leadershipError(err)
	}
	if resp, ok := f.Response().(error); ok {
		return 0, resp
	}
	return f.Index(), nil
}

// leadershipError wraps raft's "not the leader (any more, or for now)"
// errors in ErrNoLeader.
func leadershipError(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %w", ErrNoLeader, err)
	}
	return err
}

// waitApplied returns once this node's table has applied index: a write
// the leader applied, so that a read on the node that took the write sees
// it.
func (n *Agent) waitApplied(ctx context.Context, index uint64) error {
	for n.fsm.AppliedIndex() < index {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: the leader applied the change (index %d) but this node has not received it yet: %v", ErrNoLeader, index, ctx.Err())
		case <-n.stop:
			return errors.New("cluster: shutting down")
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}

// VerifyLeader confirms that this node is still the leader (for consistent
// reads); it fails on followers.
func (n *Agent) VerifyLeader() error {
	if err := n.raft.VerifyLeader().Error(); err != nil {
		return fmt.Errorf("%w: %v", ErrNoLeader, err)
	}
	return nil
}

// Barrier waits until every committed entry is applied locally (leader only).
func (n *Agent) Barrier(timeout time.Duration) error {
	return n.raft.Barrier(timeout).Error()
}

// TransferLeadership hands leadership to the voter named to, or to any
// other voter when to is "" (planned moves: vip move, drain, shutdown,
// preemption). With to "", a follower does nothing.
func (n *Agent) TransferLeadership(to string) error {
	if to == "" {
		if !n.IsLeader() {
			return nil
		}
		return n.raft.LeadershipTransfer().Error()
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	for _, s := range cf.Configuration().Servers {
		if s.ID == raft.ServerID(to) && s.Suffrage == raft.Voter {
			return n.raft.LeadershipTransferToServer(s.ID, s.Address).Error()
		}
	}
	return fmt.Errorf("cluster: %s is not a raft voter", to)
}

// Voters returns the names of raft's voters (the nodes that can lead),
// this one included when it is one.
func (n *Agent) Voters() ([]string, error) {
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, err
	}
	var out []string
	for _, s := range cf.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			out = append(out, string(s.ID))
		}
	}
	return out, nil
}

// IsServer reports whether the node named is a server (voter or
// non-voter) in raft's latest configuration as this node knows it: a
// node the cluster replicates its log to (an error while this node has no
// configuration yet). A node removed from the
// configuration (cluster.dead_node_reap, `portico cluster remove-peer`)
// is not one, even while it still holds a valid cluster certificate;
// RPCs that grant or take away something the replicated table decides
// (the spread mode's VIP leases) serve only servers.
func (n *Agent) IsServer(name string) (bool, error) {
	if name == "" {
		return false, nil
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return false, err
	}
	servers := cf.Configuration().Servers
	if len(servers) == 0 {
		// A node that has not bootstrapped nor been sent a configuration
		// yet knows of no server, this one included: no answer.
		return false, errors.New("cluster: no raft configuration yet")
	}
	for _, s := range servers {
		if s.ID == raft.ServerID(name) {
			return true, nil
		}
	}
	return false, nil
}

// RaftStats is raft's state on this node, for status and metrics.
type RaftStats struct {
	State         string // follower, candidate, leader or shutdown
	Term          uint64
	CommitIndex   uint64 // highest index known to be committed
	AppliedIndex  uint64 // highest index applied to the FSM
	LeaderChanges uint64 // leader changes this node observed since it started
}

// RaftStats returns raft's state on this node.
func (n *Agent) RaftStats() RaftStats {
	stats := n.raft.Stats()
	num := func(k string) uint64 { v, _ := strconv.ParseUint(stats[k], 10, 64); return v }
	return RaftStats{
		State: stateName(n.raft.State().String()), Term: num("term"), CommitIndex: num("commit_index"),
		AppliedIndex: n.raft.AppliedIndex(), LeaderChanges: n.leaderChanges.Load(),
	}
}

// Shutdown leaves the cluster: transfers leadership if this node leads,
// leaves memberlist gracefully (peers learn within milliseconds), and
// closes raft and the stores.
func (n *Agent) Shutdown() error {
	var err error
	n.closeOnce.Do(func() {
		close(n.stop)
		if n.IsLeader() && n.otherVoters() > 0 {
			if e := n.raft.LeadershipTransfer().Error(); e != nil {
				n.log.Warn("leadership transfer at shutdown failed", "error", e)
			}
		}
		if n.ml != nil {
			_ = n.ml.Leave(2 * time.Second)
		}
		n.wg.Wait()
		err = n.closeStores()
	})
	return err
}

// Handoff stops this node's cluster membership so that a new process on
// the same data dir (an in-place upgrade) takes the identity over: a
// leader hands leadership to another voter first (a planned handover),
// unless keepLeadership (the other voters hold their elections, see
// hold.go, and the new process wins the next one); a
// snapshot is taken so that the new process starts with the current
// table; the node leaves neither memberlist nor the raft configuration,
// so peers see a short absence, not a departure, and followers hold no
// election. The data dir lock is released last.
func (n *Agent) Handoff(keepLeadership bool) error {
	var err error
	n.closeOnce.Do(func() {
		close(n.stop)
		if !keepLeadership && n.IsLeader() && n.otherVoters() > 0 {
			if e := n.raft.LeadershipTransfer().Error(); e != nil {
				n.log.Warn("leadership transfer before handoff failed", "error", e)
			}
		}
		if n.raft != nil {
			if e := n.raft.Snapshot().Error(); e != nil && !errors.Is(e, raft.ErrNothingNewToSnapshot) {
				n.log.Warn("snapshot before handoff failed; the new process replays the log", "error", e)
			}
		}
		n.wg.Wait()
		err = n.closeStores()
		n.log.Info("cluster identity handed off")
	})
	return err
}

// Kill stops without leaving (tests simulate crashes with it).
func (n *Agent) closeStores() error {
	var err error
	if n.ml != nil {
		_ = n.ml.Shutdown()
	}
	if n.raft != nil {
		err = n.raft.Shutdown().Error()
	}
	if nt, ok := n.transport.(*raft.NetworkTransport); ok {
		nt.CloseStreams() // pooled connections to peers
	}
	if c, ok := n.transport.(raft.WithClose); ok {
		_ = c.Close() // a NetworkTransport closes the mux
	}
	if n.mux != nil {
		_ = n.mux.Close() // no-op if closed above
	}
	if n.rpcSrv != nil {
		_ = n.rpcSrv.Close()
		<-n.rpcDone
	}
	if n.wal != nil {
		_ = n.wal.Close()
	}
	if n.walMeta != nil {
		_ = n.walMeta.Close()
	}
	if n.lock != nil {
		unlockDataDir(n.lock)
		n.lock = nil
	}
	return err
}

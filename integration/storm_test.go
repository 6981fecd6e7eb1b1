package integration

// The reconnect-storm drill (issue 14, item 4): N TLS sessions held through
// the VIP of a three-node cluster, all on its owner; then the owner is
// killed (SIGKILL, and the address released as the packaged unit's
// ExecStopPost does), or the VIP is moved (`portico vip move`), or the
// owner is upgraded in place (`POST /v1/upgrade`, its old process ending
// its sessions after upgrade.session_grace), and every client logs in again
// at once through the VIP. Everything is real: portico processes, a client
// (loadimap -reconnect) and a backend (bench's imapsink), each in its own
// network namespace on one bridge (integration/netns).
//
// The same test is the CI drill (300 sessions by default) and the
// benchmark (bench/RESULTS.md, "Reconnect storms"):
//
//	go test -count=1 -run TestReconnectStorm -v ./integration/
//	PORTICO_STORM_SESSIONS=9000 PORTICO_STORM_RUNS='resume:kill,move,upgrade full:kill,move,upgrade' \
//	  PORTICO_STORM_SPREAD=10s PORTICO_STORM_OUT=/tmp/storm.json \
//	  go test -count=1 -timeout 60m -run TestReconnectStorm -v ./integration/
//
// Other knobs: PORTICO_STORM_PER_ADDRESS (sessions per client address, 60),
// PORTICO_STORM_RATE (initial logins per second, 500), PORTICO_STORM_GRACE
// (upgrade.session_grace, 1s), PORTICO_STORM_BACKEND (sink, or dovecot for
// a real backend at a few hundred sessions), PORTICO_STORM_PER_IP_LIMIT
// (limits.max_connections_per_ip, e.g. -1 with PORTICO_STORM_PER_ADDRESS
// equal to the sessions: every client behind one address).
//
// The spread mode's variant (one address per node, the sessions on one):
// TestSpreadReconnectStorm, stormspread_test.go.
//
// It asserts outcomes, not timings: every session is logged in again,
// the node that took the clients refused none of them (connection limits,
// throttle, failed logins: its own metrics), and with session tickets every
// re-login resumed its TLS session (without, none did). The times, the
// failed attempts (refused dials while the address moves, and the like) and
// the node's CPU and memory are logged, and written to PORTICO_STORM_OUT.

import (
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/netns"
)

var stormVIP = netip.MustParseAddr("198.18.0.100")

const stormPort = 993

// stormSettings are the drill's knobs (environment, CI defaults).
type stormSettings struct {
	sessions int           // PORTICO_STORM_SESSIONS (300)
	perAddr  int           // PORTICO_STORM_PER_ADDRESS: sessions per client address (60)
	rate     float64       // PORTICO_STORM_RATE: initial logins per second (500)
	spread   string        // PORTICO_STORM_SPREAD: drain.spread, over which an upgraded process ends its sessions (1s)
	grace    string        // PORTICO_STORM_GRACE: upgrade.session_grace (1s)
	runs     []stormRun    // PORTICO_STORM_RUNS ("resume:kill,move,upgrade full:kill")
	out      string        // PORTICO_STORM_OUT: JSON file for the figures
	backend  string        // PORTICO_STORM_BACKEND: sink (bench's imapsink) or dovecot
	perIP    string        // PORTICO_STORM_PER_IP_LIMIT: limits.max_connections_per_ip (default: Portico's)
	wait     time.Duration // longest wait for everyone to be back
	mode     string        // vip.mode: leader (TestReconnectStorm) or spread (TestSpreadReconnectStorm)
	victim   string        // spread mode, PORTICO_STORM_VICTIM: the clients' address is on a follower (default) or the leader
}

// stormRun is one loadimap run: its clients keep their TLS tickets
// (resume) or not, and go through the drills in order.
type stormRun struct {
	resume bool
	drills []string // kill, move, upgrade
}

func stormConfig(t *testing.T, mode string) stormSettings {
	t.Helper()
	s := stormSettings{sessions: 300, perAddr: 60, rate: 500, spread: "1s", grace: "1s", mode: mode, victim: "follower"}
	env := func(k string, f func(string) error) {
		if v := os.Getenv(k); v != "" {
			if err := f(v); err != nil {
				t.Fatalf("%s=%q: %v", k, v, err)
			}
		}
	}
	env("PORTICO_STORM_SESSIONS", func(v string) (err error) { s.sessions, err = strconv.Atoi(v); return })
	env("PORTICO_STORM_PER_ADDRESS", func(v string) (err error) { s.perAddr, err = strconv.Atoi(v); return })
	env("PORTICO_STORM_RATE", func(v string) (err error) { s.rate, err = strconv.ParseFloat(v, 64); return })
	env("PORTICO_STORM_SPREAD", func(v string) error { s.spread = v; return nil })
	env("PORTICO_STORM_GRACE", func(v string) error { s.grace = v; return nil })
	s.out = os.Getenv("PORTICO_STORM_OUT")
	s.backend = "sink"
	env("PORTICO_STORM_BACKEND", func(v string) error {
		if v != "sink" && v != "dovecot" {
			return fmt.Errorf("sink or dovecot")
		}
		s.backend = v
		return nil
	})
	env("PORTICO_STORM_PER_IP_LIMIT", func(v string) error { _, err := strconv.Atoi(v); s.perIP = v; return err })
	runs := "resume:kill,move,upgrade full:kill"
	if mode == "spread" {
		runs = stormSpreadCIRuns
		env("PORTICO_STORM_VICTIM", func(v string) error {
			if v != "follower" && v != "leader" {
				return fmt.Errorf("follower or leader")
			}
			s.victim = v
			return nil
		})
	}
	env("PORTICO_STORM_RUNS", func(v string) error { runs = v; return nil })
	for _, r := range strings.Fields(runs) {
		mode, list, ok := strings.Cut(r, ":")
		if !ok || (mode != "resume" && mode != "full") {
			t.Fatalf("PORTICO_STORM_RUNS: %q is not resume:DRILLS or full:DRILLS", r)
		}
		run := stormRun{resume: mode == "resume"}
		for _, d := range strings.Split(list, ",") {
			if d != "kill" && d != "move" && d != "upgrade" {
				t.Fatalf("PORTICO_STORM_RUNS: unknown drill %q (kill, move, upgrade)", d)
			}
			run.drills = append(run.drills, d)
		}
		s.runs = append(s.runs, run)
	}
	if s.sessions < 1 || s.perAddr < 1 || s.rate <= 0 {
		t.Fatalf("bad storm settings %+v", s)
	}
	s.wait = 2*time.Minute + time.Duration(s.sessions)*20*time.Millisecond
	return s
}

// stormCluster: three nodes serving implicit-TLS IMAP on the VIP, a
// client namespace with one address per perAddr sessions, and imapsink.
type stormCluster struct {
	t      *testing.T
	set    stormSettings
	net    *netns.Net
	nodes  []*drillNode
	client *netns.Host
	srcs   []netip.Addr
	load   string // loadimap binary
	// vip is the address the clients connect to: stormVIP, or in the
	// spread mode the address chosen for the run (arrange); addrs are all
	// the cluster's addresses.
	vip   netip.Addr
	addrs []netip.Addr

	mon     *procMonitor
	arpws   map[netip.Addr]*arpWatcher
	sampler *addrSampler // spread mode: who holds each address, every 20 ms
	start   time.Time
	figs    []stormFigures // the drills' figures so far
}

var benchBins struct {
	once sync.Once
	dir  string
	err  error
}

// benchBinary builds bench's tools once per test binary and returns the
// path of one of them.
func benchBinary(t *testing.T, name string) string {
	t.Helper()
	benchBins.once.Do(func() {
		benchBins.dir, benchBins.err = os.MkdirTemp("", "portico-benchbin")
		if benchBins.err != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", benchBins.dir+"/", "../bench/cmd/loadimap", "../bench/cmd/imapsink").CombinedOutput()
		if err != nil {
			benchBins.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if benchBins.err != nil {
		t.Fatal(benchBins.err)
	}
	return filepath.Join(benchBins.dir, name)
}

func newStormCluster(t *testing.T, set stormSettings) *stormCluster {
	t.Helper()
	n := netns.New(t, "n1", "n2", "n3", "client", "sink")
	c := &stormCluster{t: t, set: set, net: n, client: n.Host("client"), load: benchBinary(t, "loadimap"),
		vip: stormVIP, addrs: []netip.Addr{stormVIP}, arpws: map[netip.Addr]*arpWatcher{}, start: time.Now()}
	if set.mode == "spread" {
		c.vip, c.addrs = netip.Addr{}, stormSpreadVIPs
	}
	sink := n.Host("sink")
	// The package's kernel settings (listen backlog, port range) on the
	// nodes, and on the backend, which gets the storm too.
	sysctl, _ := filepath.Abs("../packaging/sysctl/90-portico.conf")
	for _, h := range []*netns.Host{n.Host("n1"), n.Host("n2"), n.Host("n3"), sink} {
		if out, err := h.Exec("sysctl", "-q", "-p", sysctl); err != nil {
			t.Fatalf("sysctl in %s: %v %s", h.Name, err, out)
		}
	}
	// The clients: perAddr sessions per address, .101 up.
	k := (set.sessions + set.perAddr - 1) / set.perAddr
	if k > 150 {
		t.Fatalf("%d sessions at %d per address need %d client addresses; at most 150 (198.18.0.101-250)", set.sessions, set.perAddr, k)
	}
	for i := range k {
		a := netip.AddrFrom4([4]byte{198, 18, 0, byte(101 + i)})
		if out, err := c.client.IP("addr", "add", a.String()+"/24", "dev", netns.Interface); err != nil {
			t.Fatalf("client address %v: %v %s", a, err, out)
		}
		c.srcs = append(c.srcs, a)
	}
	if out, err := c.client.Exec("sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=10240 65535"); err != nil {
		t.Fatalf("client sysctl: %v %s", err, out)
	}
	var err error
	if set.backend == "dovecot" {
		// A real backend for a few hundred sessions (a process each):
		// its login processes and per-user limits raised to fit.
		users := map[string]string{}
		for i := range set.sessions {
			users["user"+strconv.Itoa(i)] = "secret"
		}
		dovecot.Start(t, dovecot.Options{Addr: sink.IP4.String(), Netns: sink.Path, IMAPPort: 143, POP3Port: 110,
			Users: users, TrustedNetworks: []string{netns.Net4.String()},
			ExtraConfig: fmt.Sprintf("default_process_limit = %d\ndefault_client_limit = %d\nmail_max_userip_connections = 100\n",
				set.sessions+200, 2*set.sessions+400)})
	} else {
		sp, err := sink.Start(benchBinary(t, "imapsink"), "-listen", sink.IP4.String()+":143", "-password", "secret")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("---- imapsink ----\n%s", tail(sp.Output(), 20))
			}
		})
	}

	cert, key := demoCert(t)
	cert, _ = filepath.Abs(cert)
	key, _ = filepath.Abs(key)
	// Room for every session on one node: two descriptors each under the
	// 20,000-descriptor limit (the default keeps an eighth in reserve,
	// 8,750 here).
	maxConns := max(set.sessions+set.sessions/16+64, 1000)
	var join []string
	for _, name := range []string{"n1", "n2", "n3"} {
		join = append(join, fmt.Sprintf("%q", n.Host(name).IP4.String()+":7145"))
	}
	certs, gkey := clusterPKI(t, "n1", "n2", "n3"), gossipKey(t)
	perIP := ""
	if set.perIP != "" {
		perIP = ", max_connections_per_ip: " + set.perIP
	}
	// The leader mode: one VIP, bound by the listener. The spread mode:
	// one address per node (each preferred by one), rebalance off (the
	// drill puts the addresses where it wants them, arrange), and a
	// listener on every address, as the README's example.
	listen := netip.AddrPortFrom(stormVIP, stormPort).String()
	vipCfg := fmt.Sprintf("  addresses:\n    - {address: %s/24, interface: eth0}\n", stormVIP)
	if set.mode == "spread" {
		listen = fmt.Sprintf("0.0.0.0:%d", stormPort)
		vipCfg = "  mode: spread\n  addresses:\n"
		for i, a := range stormSpreadVIPs {
			vipCfg += fmt.Sprintf("    - {address: %s/24, interface: eth0, prefer: [n%d]}\n", a, i+1)
		}
	}
	for _, name := range []string{"n1", "n2", "n3"} {
		h := n.Host(name)
		nd := &drillNode{h: h, name: name, dir: t.TempDir(), admin: h.IP4.String() + ":7143",
			http: h.HTTPClient(10 * time.Second), bin: porticoBinary(t)}
		cfg := fmt.Sprintf(`
node_name: %[1]s
data_dir: %[2]s
listeners:
  - {name: imaps, protocol: imap, address: "%[3]s", tls: implicit}
tls:
  certificates: [{cert: %[5]q, key: %[6]q}]
limits: {max_connections: %[7]d%[17]s}
drain: {spread: %[8]s}
upgrade: {session_grace: %[9]s}
admin: {address: "%[10]s", token: %[11]s}
cluster:
  raft_address: "%[12]s:7144"
  gossip_address: "%[12]s:7145"
  join: [%[13]s]
  bootstrap_expect: 3
  health: {interval: 500ms, timeout: 1s}
  tls: %[14]s
  encrypt_key: %[15]s
vip:
%[4]sbackends:
  - {id: sink, host: %[16]s, imap_port: 143}
pools:
  - {name: main, backends: [sink]}
routes: {default_pool: main}
`, name, filepath.Join(nd.dir, "data"), listen, vipCfg, cert, key, maxConns, set.spread, set.grace,
			nd.admin, clusterToken, h.IP4, strings.Join(join, ", "), certs[name], gkey, sink.IP4, perIP)
		nd.cfgPath = filepath.Join(nd.dir, "portico.yaml")
		if err := os.WriteFile(nd.cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, nd)
	}
	t.Cleanup(func() {
		c.mon.stop()
		c.sampler.stop()
		for _, w := range c.arpws {
			w.close()
		}
		for _, nd := range c.nodes {
			nd.kill()
		}
		if t.Failed() {
			for _, nd := range c.nodes {
				t.Logf("---- %s log ----\n%s", nd.name, tail(nd.log(), 60))
			}
		}
	})
	for _, a := range c.addrs {
		if c.arpws[a], err = watchARP(c.client, a); err != nil {
			t.Fatalf("ARP watcher: %v", err)
		}
	}
	if set.mode == "spread" {
		c.sampler = sampleAddrs(t, c.nodes, c.addrs, 20*time.Millisecond)
	}
	for _, nd := range c.nodes {
		nd.start(t)
	}
	c.mon = monitorProcs(c.nodes, 100*time.Millisecond)
	return c
}

// pid is the node's serving process (0: none).
func (nd *drillNode) pid() int {
	if p := nd.upgraded.Load(); p != 0 {
		return int(p)
	}
	nd.mu.Lock()
	p := nd.proc
	nd.mu.Unlock()
	if p == nil {
		return 0
	}
	select {
	case <-p.Done():
		return 0
	default:
		return p.Cmd.Process.Pid
	}
}

// procGone reports whether pid has exited (or is a zombie).
func procGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || strings.HasPrefix(strings.TrimSpace(s[i+1:]), "Z")
}

func (c *stormCluster) node(name string) *drillNode {
	for _, nd := range c.nodes {
		if nd.name == name {
			return nd
		}
	}
	return nil
}

// healthy: every node runs and is ready, all agree on a leader and see
// three alive members, and only the leader holds the VIP; in the spread
// mode, every address is placed and held by its owner only, and the node
// returned is the owner of the clients' address (the leader before one is
// chosen).
func (c *stormCluster) healthy() (*drillNode, error) {
	leader, err := c.leaderUp()
	if err != nil {
		return nil, err
	}
	if c.set.mode == "spread" {
		owners, err := placedOwners(c.nodes, c.sampler, c.addrs)
		if err != nil {
			return nil, err
		}
		if c.vip.IsValid() {
			return c.node(owners[c.vip]), nil
		}
		return c.node(leader), nil
	}
	for _, nd := range c.nodes {
		has, err := nd.h.HasAddr(stormVIP)
		if err != nil {
			return nil, err
		}
		if has != (nd.name == leader) {
			return nil, fmt.Errorf("%s holds the VIP: %v (leader %s)", nd.name, has, leader)
		}
	}
	return c.node(leader), nil
}

// leaderUp: every node runs and is ready, all agree on a leader (returned)
// and see three alive members.
func (c *stormCluster) leaderUp() (string, error) {
	leader := ""
	for _, nd := range c.nodes {
		if !nd.running() {
			return "", fmt.Errorf("%s not running", nd.name)
		}
		st, err := nd.status()
		if err != nil {
			return "", fmt.Errorf("%s: %v", nd.name, err)
		}
		if st.Cluster == nil || st.Cluster.Leader == "" || !st.Ready {
			return "", fmt.Errorf("%s: no leader or not ready (%v)", nd.name, st.NotReady)
		}
		if leader != "" && st.Cluster.Leader != leader {
			return "", fmt.Errorf("leaders disagree: %s and %s", leader, st.Cluster.Leader)
		}
		leader = st.Cluster.Leader
		alive := 0
		for _, m := range st.Cluster.Members {
			if m.State == "alive" {
				alive++
			}
		}
		if alive != 3 {
			return "", fmt.Errorf("%s sees %d alive members", nd.name, alive)
		}
	}
	return leader, nil
}

func (c *stormCluster) waitHealthy(t *testing.T) *drillNode {
	t.Helper()
	var last error
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		owner, err := c.healthy()
		if err == nil {
			return owner
		}
		last = err
	}
	t.Fatalf("cluster not healthy after 60 s: %v", last)
	return nil
}

func TestReconnectStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("reconnect storm: multi-process, network namespaces")
	}
	netns.Require(t)
	runStorm(t, "leader")
}

// runStorm runs the drill with vip.mode set to mode.
func runStorm(t *testing.T, mode string) {
	set := stormConfig(t, mode)
	c := newStormCluster(t, set)
	c.waitHealthy(t)
	if mode == "spread" {
		c.placements(t)
		t.Logf("formation: the nodes' VIP events:\n%s", c.vipEvents(c.start))
	}
	t.Logf("%d sessions from %d client addresses (%d each at most), backend %s, 3 nodes, vip.mode %s, drain.spread %s, upgrade.session_grace %s, max_connections_per_ip %q",
		set.sessions, len(c.srcs), set.perAddr, set.backend, mode, set.spread, set.grace, set.perIP)
	// The figures of the drills that ran, also when one failed.
	defer func() {
		var b strings.Builder
		fmt.Fprintf(&b, "FIGURES (%d sessions, vip.mode %s)\n", set.sessions, mode)
		for _, f := range c.figs {
			fmt.Fprintf(&b, "  %s\n", f)
		}
		t.Log(b.String())
		if set.out != "" {
			j, _ := json.MarshalIndent(c.figs, "", "  ")
			if err := os.WriteFile(set.out, append(j, '\n'), 0o644); err != nil {
				t.Error(err)
			}
		}
	}()
	for _, run := range set.runs {
		c.run(t, run)
		if t.Failed() {
			break
		}
	}
	if c.sampler != nil {
		n := c.sampler.neverSplit(t, c.start)
		t.Logf("address samples (every 20 ms, %d addresses x 3 namespaces): %d", len(c.addrs), n)
	}
}

// loadProc is a running loadimap -reconnect.
type loadProc struct {
	p    *netns.Proc
	seen int // bytes of output already consumed
}

// line waits for the next output line starting with prefix.
func (l *loadProc) line(t *testing.T, prefix string, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		out := l.p.Output()
		rest := out[l.seen:]
		off := 0
		for {
			i := strings.IndexByte(rest[off:], '\n')
			if i < 0 {
				break
			}
			ln := rest[off : off+i]
			off += i + 1
			if strings.HasPrefix(ln, prefix) {
				l.seen += off
				return strings.TrimSpace(strings.TrimPrefix(ln, prefix))
			}
		}
		select {
		case <-l.p.Done():
			t.Fatalf("loadimap exited waiting for %q: %v\n%s", prefix, l.p.Err(), tail(out, 30))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q line from loadimap within %v:\n%s", prefix, d, tail(out, 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stormEpoch mirrors loadimap's RESULT line (bench/cmd/loadimap/reconnect.go).
type stormEpoch struct {
	Epoch       int            `json:"epoch"`
	Sessions    int            `json:"sessions"`
	HeldAtStart int            `json:"held_at_start"`
	Lost        int            `json:"lost"`
	LossEvents  int            `json:"loss_events"`
	LossReasons map[string]int `json:"loss_reasons"`
	Back        int            `json:"back"`
	LiveNow     int            `json:"live_now"`
	FirstLossMS *float64       `json:"first_loss_ms"`
	LastLossMS  *float64       `json:"last_loss_ms"`
	Back50MS    *float64       `json:"back_50_ms"`
	Back90MS    *float64       `json:"back_90_ms"`
	Back99MS    *float64       `json:"back_99_ms"`
	Back100MS   *float64       `json:"back_100_ms"`
	Outage      struct {
		P50 float64 `json:"p50_ms"`
		P99 float64 `json:"p99_ms"`
		Max float64 `json:"max_ms"`
	} `json:"outage"`
	Attempts       int               `json:"attempts"`
	Failed         int               `json:"failed_attempts"`
	Failures       map[string]int    `json:"failures"`
	FailureSamples map[string]string `json:"failure_samples"`
	Logins         int               `json:"logins"`
	Resumed        int               `json:"resumed"`
	FullHandshakes int               `json:"full_handshakes"`
	LoginLatency   struct {
		P50 float64 `json:"p50_ms"`
		P99 float64 `json:"p99_ms"`
		Max float64 `json:"max_ms"`
	} `json:"login_latency"`
	SelfCPUms   float64 `json:"loadimap_cpu_ms"`
	HostBusyPct float64 `json:"host_busy_pct"`
	DurationS   float64 `json:"duration_s"`
}

// stormFigures is one drill's outcome.
type stormFigures struct {
	Drill    string     `json:"drill"` // kill, move, upgrade
	Resume   bool       `json:"resume"`
	Sessions int        `json:"sessions"`
	From, To string     `json:"-"`
	Client   stormEpoch `json:"client"`
	// The node (process) that took the clients.
	Node string `json:"node"`
	// From the event to the VIP acquired by the new owner (kill, move).
	AcquiredMS *float64 `json:"acquired_ms,omitempty"`
	// Its CPU from the event until everyone was back, ms; its busiest
	// half second, in cores; its resident memory before and at peak.
	CPUms       float64 `json:"cpu_ms"`
	CPUPerLogin float64 `json:"cpu_ms_per_login"`
	PeakCores   float64 `json:"peak_cores"`
	RSSBefore   int64   `json:"rss_before_kib"`
	RSSPeak     int64   `json:"rss_peak_kib"`
	// Its counters over the drill (metrics deltas).
	Counters map[string]float64 `json:"counters"`
	// A kill: from the event to the killed process gone (a zombie), and
	// to its address released from its interface (the unit's
	// ExecStopPost, which runs after the exit).
	ExitMS     *float64 `json:"kill_exit_ms,omitempty"`
	ReleasedMS *float64 `json:"kill_released_ms,omitempty"`

	// The spread mode: the clients' address, whether its owner was the
	// raft leader or a follower, from the event to a survivor holding it
	// (the sampler) and to a new leader's first placement (after the
	// leader's kill), and the other addresses: how many changed owner
	// (must be 0) and how many were not held for a moment.
	Mode       string `json:"vip_mode,omitempty"`
	Address    string `json:"address,omitempty"`
	VictimRole string `json:"victim_role,omitempty"`
	TookRole   string `json:"took_role,omitempty"` // the node that took the clients, after the event

	HeldMS        *float64 `json:"held_ms,omitempty"`
	NewLeaderMS   *float64 `json:"new_leader_ms,omitempty"`
	AddrMoves     int      `json:"address_moves,omitempty"` // owner changes of the clients' address (1: the event's only)
	OthersMoved   int      `json:"others_moved"`
	OthersPlanned int      `json:"others_planned_moves"` // moves of the other addresses that were not failovers (a bug)
	OthersBlinked int      `json:"others_blinked"`
	// Raft during the drill: elections won, and leaderships lost by a
	// node that kept running (its lease check, under load).
	Elections      int `json:"elections"`
	LeadershipLost int `json:"leadership_lost"`
}

func (f stormFigures) String() string {
	v := func(p *float64) string {
		if p == nil {
			return "never"
		}
		return fmt.Sprintf("%.0f ms", *p)
	}
	mode := "full handshakes"
	if f.Resume {
		mode = "resumption"
	}
	acq := ""
	if f.AcquiredMS != nil {
		acq = fmt.Sprintf(", VIP acquired %s", v(f.AcquiredMS))
	}
	if f.ExitMS != nil {
		acq += fmt.Sprintf(", killed process gone %s, its address released %s", v(f.ExitMS), v(f.ReleasedMS))
	}
	if f.Mode == "spread" {
		acq += fmt.Sprintf(", %s of the %s, taken by the %s", f.Address, f.VictimRole, f.TookRole)
		if f.HeldMS != nil {
			acq += fmt.Sprintf(", held there after %s", v(f.HeldMS))
		}
		if f.NewLeaderMS != nil {
			acq += fmt.Sprintf(", new leader placing %s", v(f.NewLeaderMS))
		}
		acq += fmt.Sprintf(", its owner changed %d times; other addresses moved %d (planned %d), blinked %d; elections %d, leaderships lost %d",
			f.AddrMoves, f.OthersMoved, f.OthersPlanned, f.OthersBlinked, f.Elections, f.LeadershipLost)
	}
	e := f.Client
	return fmt.Sprintf("%s (%s) %s->%s: lost %d, back 50%% %s, 99%% %s, 100%% %s (first loss %s%s); attempts %d, failed %d %v; resumed %d/%d; "+
		"login p50 %.0f ms, p99 %.0f ms, max %.0f ms; %s CPU %.0f ms (%.2f ms/login), peak %.2f cores, RSS %d -> %d KiB; counters %v; host busy %.0f%%, loadimap CPU %.0f ms",
		f.Drill, mode, f.From, f.To, e.Lost, v(e.Back50MS), v(e.Back99MS), v(e.Back100MS), v(e.FirstLossMS), acq,
		e.Attempts, e.Failed, e.Failures, e.Resumed, e.Logins, e.LoginLatency.P50, e.LoginLatency.P99, e.LoginLatency.Max,
		f.Node, f.CPUms, f.CPUPerLogin, f.PeakCores, f.RSSBefore, f.RSSPeak, f.Counters, e.HostBusyPct, e.SelfCPUms)
}

// run starts loadimap, runs the drills one after the other (their figures
// go to c.figs), and stops it.
func (c *stormCluster) run(t *testing.T, run stormRun) {
	set := c.set
	if set.mode == "spread" {
		c.arrange(t, true)
	}
	args := []string{"-reconnect", "-tls", "-addr", netip.AddrPortFrom(c.vip, stormPort).String(),
		"-n", strconv.Itoa(set.sessions), "-rate", strconv.FormatFloat(set.rate, 'f', -1, 64),
		"-src", c.srcs[0].String() + "-" + c.srcs[len(c.srcs)-1].String(), "-timeout", "30s"}
	if run.resume {
		args = append(args, "-resume")
	}
	c.waitHealthy(t)
	p, err := c.client.Start(c.load, args...)
	if err != nil {
		t.Fatal(err)
	}
	lp := &loadProc{p: p}
	defer func() {
		_ = p.Signal(syscall.SIGTERM)
		select {
		case <-p.Done():
		case <-time.After(60 * time.Second):
			p.Kill()
		}
	}()
	ready := lp.line(t, "READY ", time.Duration(float64(set.sessions)/set.rate*float64(time.Second))+set.wait)
	var e0 stormEpoch
	_ = json.Unmarshal([]byte(ready), &e0)
	t.Logf("loadimap (resume %v): %d sessions logged in, %d failed attempts %v %v, login p50 %.1f ms p99 %.1f ms",
		run.resume, e0.LiveNow, e0.Failed, e0.Failures, e0.FailureSamples, e0.LoginLatency.P50, e0.LoginLatency.P99)
	for _, d := range run.drills {
		f, ok := c.drill(t, lp, d, run.resume)
		c.figs = append(c.figs, f)
		t.Log(f)
		if !ok {
			break
		}
		if set.mode == "spread" {
			c.arrange(t, false)
		}
	}
}

// drill runs one event with the sessions held and checks the outcome.
func (c *stormCluster) drill(t *testing.T, lp *loadProc, drill string, resume bool) (stormFigures, bool) {
	t.Helper()
	set := c.set
	owner := c.waitHealthy(t)
	waitFor(t, "every session on the VIP owner", set.wait, func() bool {
		return owner.relayed() == set.sessions
	})
	f := stormFigures{Drill: drill, Resume: resume, Sessions: set.sessions, From: owner.name}
	var to *drillNode
	for _, nd := range c.nodes {
		if nd != owner && to == nil {
			to = nd
		}
	}
	var placed map[netip.Addr]string // spread mode: every address's owner before the event
	leader := ""
	if set.mode == "spread" {
		placed, leader = c.placements(t)
		f.Mode, f.Address = "spread", c.vip.String()
		f.VictimRole = "follower"
		if owner.name == leader {
			f.VictimRole = "leader"
		}
		// A move goes to a follower: the other follower when the owner
		// is one (the leader's own address stays out of it).
		to = nil
		for _, nd := range c.nodes {
			if nd != owner && nd.name != leader && to == nil {
				to = nd
			}
		}
	}
	before := map[string]map[string]float64{}
	for _, nd := range c.nodes {
		before[nd.name] = nd.counters()
	}
	rss0 := map[string]int64{}
	for _, nd := range c.nodes {
		rss0[nd.name] = procRSS(nd.pid())
	}
	_ = lp.p.Signal(syscall.SIGUSR1)
	epoch := lp.line(t, "EPOCH ", 10*time.Second)
	at := time.Now()
	var took *drillNode // who takes the clients
	oldPID := 0         // the process an upgrade replaces
	switch drill {
	case "kill":
		pid := owner.pid()
		// Its address stays on the interface until the release below; a
		// process with thousands of sockets can take seconds to exit
		// after SIGKILL (the kernel closes them all): the sampler counts
		// it as a dead holder from now on, as TestSpreadDrills does.
		owner.stale.Store(true)
		owner.kill()
		// A process an upgrade started is not this test's child: kill
		// does not wait for it.
		waitFor(t, "the killed process to be gone", 10*time.Second, func() bool { return procGone(pid) })
		f.ExitMS = ptrF(float64(time.Since(at)) / 1e6)
		// What the packaged unit's ExecStopPost does after a crash (the
		// kernel may release the dead process's data-directory lock a
		// moment after it has become a zombie: retry briefly).
		var out string
		var err error
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			out, err = owner.h.Exec(owner.bin, "vip", "release", "--config", owner.cfgPath)
			if err == nil || !strings.Contains(out, "in use by another portico process") || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatalf("vip release after the kill: %v %s", err, out)
		}
		f.ReleasedMS = ptrF(float64(time.Since(at)) / 1e6)
	case "move":
		took = to
		if set.mode == "spread" {
			c.moveAddr(t, owner, c.vip, to)
			break
		}
		// A leadership transfer can time out, or report a failure although
		// it went through, on a loaded machine; an operator looks at who
		// holds the VIP and tries again if it did not move (the sessions
		// that came back to the old owner meanwhile are ended again, and
		// counted).
		for try := 1; ; try++ {
			out, err := owner.cli("vip", "move", "--to", to.name)
			if err != nil {
				t.Logf("vip move, try %d: %v %s", try, err, strings.TrimSpace(out))
			}
			var holder *drillNode
			waitFor(t, "a VIP owner after the move", 30*time.Second, func() bool {
				o, err := c.healthy()
				holder = o
				return err == nil
			})
			if holder == to {
				break
			}
			if err == nil {
				t.Logf("vip move, try %d: answered success, but %s holds the VIP", try, holder.name)
			}
			if try == 3 {
				t.Fatalf("vip move: %v %s", err, out)
			}
			owner = holder
			time.Sleep(time.Second)
		}
	case "upgrade":
		took = owner
		oldPID = owner.pid()
		code, body, err := owner.api("POST", "/v1/upgrade", nil)
		var res struct {
			PID int `json:"pid"`
		}
		_ = json.Unmarshal(body, &res)
		if err != nil || code != 200 || res.PID == 0 {
			t.Fatalf("upgrade: %d %s %v", code, body, err)
		}
		owner.upgraded.Store(int64(res.PID))
	}
	mark := len(lp.p.Output())
	// Everyone back after every session was lost (an upgrade's old
	// process ends them over drain.spread: BACK repeats meanwhile).
	var backMS float64
	for deadline := time.Now().Add(set.wait); ; {
		f := strings.Fields(lp.line(t, "BACK "+epoch+" ", time.Until(deadline)))
		if len(f) != 2 {
			t.Fatalf("bad BACK line %q", f)
		}
		backMS, _ = strconv.ParseFloat(f[0], 64)
		if lost, _ := strconv.Atoi(f[1]); lost >= set.sessions {
			break
		}
	}
	backAt := at.Add(time.Duration(backMS * float64(time.Millisecond)))
	time.Sleep(time.Second) // anything lost again shows in the report
	_ = lp.p.Signal(syscall.SIGUSR2)
	res := lp.line(t, "RESULT "+epoch+" ", 30*time.Second)
	if err := json.Unmarshal([]byte(res), &f.Client); err != nil {
		t.Fatalf("RESULT %s: %v", res, err)
	}
	t.Logf("%s: the nodes' VIP events:\n%s", drill, c.vipEvents(at))
	var claims []string
	for _, cl := range c.arpws[c.vip].since(at.Add(-5 * time.Second)) {
		who := cl.mac
		for _, nd := range c.nodes {
			if nd.h.MAC.String() == cl.mac {
				who = nd.name
			}
		}
		claims = append(claims, fmt.Sprintf("%+d ms %s", cl.at.Sub(at).Milliseconds(), who))
	}
	t.Logf("%s: ARP claims of %s seen by the client (from 5 s before): %s", drill, c.vip, strings.Join(claims, ", "))
	if slow := grepLines(lp.p.Output()[mark:], "slow attempt"); slow != "" {
		t.Logf("%s: attempts slower than 3 s:\n%s", drill, tail(slow, 10))
	}
	if set.mode == "spread" {
		// Whoever holds the address now took the clients: a kill's
		// survivor, a move's target, an upgraded follower's new process,
		// and, where an upgrading leader gives its addresses up or a
		// survivor loses its lease under the storm, another node (the
		// address's moves are counted).
		took = nil
		for _, nd := range c.nodes {
			if has, _ := nd.h.HasAddr(c.vip); has && nd.serving() {
				took = nd
			}
		}
		if took == nil {
			t.Fatalf("no node holds %s after the %s of %s:\n%s", c.vip, drill, owner.name, c.sampler.dump(at))
		}
	}
	if took == nil {
		// The survivor that holds the VIP now.
		for _, nd := range c.nodes {
			if has, _ := nd.h.HasAddr(c.vip); has && nd != owner {
				took = nd
			}
		}
		if took == nil {
			t.Fatalf("no node holds %s after the %s of %s", c.vip, drill, owner.name)
		}
	}
	upgradedHere := drill == "upgrade" && took == owner
	if set.mode == "spread" && drill == "move" && took != to {
		t.Logf("WARNING: %s was moved to %s, and is on %s now", c.vip, to.name, took.name)
	}
	f.To, f.Node = took.name, took.name
	if upgradedHere {
		f.Node = took.name + " (new process)"
	} else if acq, ok := took.logTime("acquired virtual addresses", at); ok {
		f.AcquiredMS = ptrF(float64(acq.Sub(at)) / 1e6)
	}
	if set.mode == "spread" {
		c.spreadOutcome(t, &f, at, placed, owner, took)
	}
	// Its CPU and memory from the event to everyone back.
	pid := took.pid()
	f.CPUms, f.PeakCores, f.RSSPeak = c.mon.usage(pid, at, backAt)
	f.RSSBefore = rss0[took.name]
	if upgradedHere {
		f.RSSBefore = 0 // a new process
	}
	if f.Client.Logins > 0 {
		f.CPUPerLogin = f.CPUms / float64(f.Client.Logins)
	}
	after := took.counters()
	base := before[took.name]
	if upgradedHere {
		base = nil // the new process counts from zero
	}
	f.Counters = map[string]float64{}
	for k, v := range after {
		if d := v - base[k]; d != 0 {
			f.Counters[k] = d
		}
	}

	// The outcome.
	ok := true
	fail := func(format string, args ...any) {
		t.Errorf("%s (resume %v): "+format, append([]any{drill, resume}, args...)...)
		ok = false
	}
	e := f.Client
	if e.Lost != set.sessions {
		fail("%d sessions lost, want all %d", e.Lost, set.sessions)
	}
	if e.Back != e.Lost || e.LiveNow != set.sessions {
		fail("%d of %d lost sessions back, %d of %d logged in", e.Back, e.Lost, e.LiveNow, set.sessions)
	}
	for k, v := range e.Failures {
		// A failed attempt while the address moves is expected (refused,
		// reset, timed out); an answer that refuses the login is not.
		if strings.HasSuffix(k, ":no") || strings.HasSuffix(k, ":bad") || strings.HasSuffix(k, ":bad_greeting") {
			fail("%d attempts refused (%s): %s", v, k, e.FailureSamples[k])
		}
	}
	for _, k := range []string{"refused_max_connections", "refused_max_connections_per_ip", "throttle_blocked", "logins_failed"} {
		if f.Counters[k] != 0 {
			fail("%s refused clients: %s %v", f.Node, k, f.Counters[k])
		}
	}
	if n := f.Counters["relayed_sessions_ended"]; n != 0 {
		// Not a refusal (the clients log in again, and are counted as
		// back), but a node should not end sessions it has just taken:
		// the VIP guard's sweep of a node that does not hold the address
		// can race with its acquisition (bench/RESULTS.md).
		t.Logf("WARNING: %s ended %v relayed sessions during the %s drill", f.Node, n, drill)
	}
	if f.Counters["logins_ok"] < float64(set.sessions) && set.mode == "spread" && f.AddrMoves > 1 {
		// A second storm: the clients are spread over the nodes that
		// held the address in turn.
		t.Logf("WARNING: %s counted %v logins of %d: %s changed owner %d times", f.Node, f.Counters["logins_ok"], set.sessions, c.vip, f.AddrMoves)
	} else if f.Counters["logins_ok"] < float64(set.sessions) {
		fail("%s counted %v logins, want at least %d", f.Node, f.Counters["logins_ok"], set.sessions)
	}
	if resume {
		if e.Resumed != e.Logins || f.Counters["tls_resumed"] < float64(set.sessions) {
			fail("with tickets, %d of %d logins resumed (%s counted %v resumed handshakes)", e.Resumed, e.Logins, f.Node, f.Counters["tls_resumed"])
		}
	} else if e.Resumed != 0 || f.Counters["tls_resumed"] != 0 {
		fail("without tickets %d logins resumed (%s: %v)", e.Resumed, f.Node, f.Counters["tls_resumed"])
	}

	if set.mode == "spread" && f.OthersMoved > 0 {
		if f.OthersPlanned > 0 {
			fail("%d other addresses moved too, %d of them by planned moves", f.OthersMoved, f.OthersPlanned)
		} else {
			// Failovers: their owner lost its lease (a follower starved
			// by the storm, which could not renew in time) or its
			// leadership (a leader holds its addresses as leader only),
			// and its addresses moved as after a crash, a second storm
			// (bench/RESULTS.md, "Reconnect storms in spread mode").
			// Logged, as the leader drill logs a lost lease, not failed.
			t.Logf("WARNING: %d other addresses moved during the %s drill, as failovers (%d leaderships lost)", f.OthersMoved, drill, f.LeadershipLost)
		}
	}

	// Back to three healthy nodes before the next drill.
	if drill == "kill" {
		owner.start(t)
		owner.stale.Store(false)
	}
	if drill == "upgrade" {
		// The old process exits once it has ended its sessions.
		waitFor(t, "the old process to exit", set.wait, func() bool { return procGone(oldPID) })
	}
	return f, ok
}

func ptrF(v float64) *float64 { return &v }

// vipEvents lists, from every node's log since at, what the VIP did and
// what the nodes did to sessions because of it, in time order, with times
// relative to at.
func (c *stormCluster) vipEvents(at time.Time) string {
	type ev struct {
		at   time.Time
		line string
	}
	var evs []ev
	for _, nd := range c.nodes {
		for _, l := range strings.Split(nd.log(), "\n") {
			if !strings.HasPrefix(l, "time=") {
				continue
			}
			keep := false
			for _, k := range []string{"virtual address", "no longer holds", "placement", "leadership", "vip move", "moving the VIP", "upgrade",
				// raft: the leader's own lease, or a follower's election
				"failed to contact", "heartbeat timeout", "entering", "election won"} {
				keep = keep || strings.Contains(l, k)
			}
			if !keep {
				continue
			}
			f, rest, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
			ts, err := time.Parse(time.RFC3339Nano, f)
			if err != nil || ts.Before(at.Truncate(time.Millisecond)) {
				continue
			}
			evs = append(evs, ev{ts, fmt.Sprintf("%+7d ms %s %s", ts.Sub(at).Milliseconds(), nd.name, rest)})
		}
	}
	slices.SortStableFunc(evs, func(a, b ev) int { return a.at.Compare(b.at) })
	var b strings.Builder
	for _, e := range evs {
		b.WriteString("  " + e.line + "\n")
	}
	return b.String()
}

// counters reads the node's metrics that say whether it refused anyone.
func (nd *drillNode) counters() map[string]float64 {
	code, b, err := nd.api("GET", "/metrics", nil)
	if err != nil || code != 200 {
		return nil
	}
	m := parseMetrics(string(b))
	sum := func(name string, match func(labels map[string]string) bool) float64 {
		v := 0.0
		for _, s := range m[name] {
			if match == nil || match(s.labels) {
				v += s.value
			}
		}
		return v
	}
	label := func(k, want string) func(map[string]string) bool {
		return func(l map[string]string) bool { return l[k] == want }
	}
	return map[string]float64{
		"refused_max_connections":        sum("portico_connections_refused_total", label("reason", "max_connections")),
		"refused_max_connections_per_ip": sum("portico_connections_refused_total", label("reason", "max_connections_per_ip")),
		"refused_local_address":          sum("portico_connections_refused_total", label("reason", "local_address")),
		"throttle_blocked":               sum("portico_throttle_blocked_total", nil),
		"throttle_held":                  sum("portico_throttle_held_total", nil),
		"logins_ok":                      sum("portico_logins_total", label("result", "ok")),
		"logins_failed": sum("portico_logins_total", func(l map[string]string) bool {
			return l["result"] != "ok"
		}),
		"tls_resumed":            sum("portico_tls_handshakes_total", label("handshake", "resumed")),
		"tls_full":               sum("portico_tls_handshakes_total", label("handshake", "full")),
		"tls_failures":           sum("portico_tls_handshake_failures_total", nil),
		"connections":            sum("portico_connections_total", nil),
		"relayed_sessions_ended": sum("portico_sessions_ended_total", label("phase", "relayed")),
		"prelogin_waits":         sum("portico_prelogin_waits_total", nil),
	}
}

type metricSample struct {
	labels map[string]string
	value  float64
}

var labelRE = regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)

// parseMetrics reads the Prometheus text format: name -> samples.
func parseMetrics(text string) map[string][]metricSample {
	out := map[string][]metricSample{}
	for _, l := range strings.Split(text, "\n") {
		if l == "" || l[0] == '#' {
			continue
		}
		name, rest := l, ""
		labels := map[string]string{}
		if i := strings.IndexByte(l, '{'); i >= 0 {
			j := strings.LastIndexByte(l, '}')
			if j < i {
				continue
			}
			name, rest = l[:i], l[j+1:]
			for _, m := range labelRE.FindAllStringSubmatch(l[i+1:j], -1) {
				labels[m[1]] = m[2]
			}
		} else if i := strings.IndexByte(l, ' '); i >= 0 {
			name, rest = l[:i], l[i:]
		}
		fs := strings.Fields(rest)
		if len(fs) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fs[0], 64)
		if err != nil {
			continue
		}
		out[name] = append(out[name], metricSample{labels, v})
	}
	return out
}

// procMonitor samples the CPU time and resident memory of every node's
// serving process.
type procMonitor struct {
	mu      sync.Mutex
	samples map[int][]procSample // by pid
	loop    *periodic
}

type procSample struct {
	at    time.Time
	cpu   time.Duration // utime + stime
	rssKB int64
}

func monitorProcs(nodes []*drillNode, every time.Duration) *procMonitor {
	m := &procMonitor{samples: map[int][]procSample{}}
	m.loop = runEvery(every, func() {
		for _, nd := range nodes {
			pid := nd.pid()
			if pid == 0 {
				continue
			}
			cpu, ok := procCPU(pid)
			if !ok {
				continue
			}
			s := procSample{at: time.Now(), cpu: cpu, rssKB: procRSS(pid)}
			m.mu.Lock()
			m.samples[pid] = append(m.samples[pid], s)
			m.mu.Unlock()
		}
	}, nil)
	return m
}

func (m *procMonitor) stop() {
	if m != nil {
		m.loop.stop()
	}
}

// usage returns pid's CPU time between from and to (the samples around
// them), its busiest 500 ms in cores, and its peak resident memory.
func (m *procMonitor) usage(pid int, from, to time.Time) (cpuMS, peakCores float64, rssPeak int64) {
	m.mu.Lock()
	ss := append([]procSample(nil), m.samples[pid]...)
	m.mu.Unlock()
	first, last := -1, -1
	for i, s := range ss {
		if !s.at.After(from) {
			first = i
		}
		if !s.at.After(to.Add(150 * time.Millisecond)) {
			last = i
		}
	}
	if first < 0 && len(ss) > 0 {
		first = 0 // a process started after from (an upgrade's)
	}
	if first < 0 || last < first {
		return 0, 0, 0
	}
	cpuMS = float64(ss[last].cpu-ss[first].cpu) / 1e6
	for i := first; i <= last; i++ {
		rssPeak = max(rssPeak, ss[i].rssKB)
		for j := i - 1; j >= first; j-- {
			if d := ss[i].at.Sub(ss[j].at); d >= 500*time.Millisecond {
				peakCores = math.Max(peakCores, float64(ss[i].cpu-ss[j].cpu)/float64(d))
				break
			}
		}
	}
	return cpuMS, peakCores, rssPeak
}

// procCPU reads utime+stime of pid.
func procCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, false
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+k) * 10 * time.Millisecond, true // USER_HZ is 100 on Linux
}

// procRSS reads pid's VmRSS in KiB (0 if gone).
func procRSS(pid int) int64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

package integration

// Plumbing for the failover drills (failover_test.go): three portico
// processes, a client and two Dovecot backends, each host in its own
// network namespace on one bridge (integration/netns), a virtual IP
// (IPv4 and IPv6) held by the raft leader, and observers that sample
// which namespace holds the VIP and which MAC claims it on the wire.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/arp"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/netns"
)

var (
	drillVIP4 = netip.MustParseAddr("198.18.0.100")
	drillVIP6 = netip.MustParseAddr("fd00:198:18::100")
)

const drillPass = "secret"

// drillNode is one portico process in its namespace.
type drillNode struct {
	h       *netns.Host
	name    string
	dir     string
	cfgPath string
	admin   string // host:port of the admin API
	http    *http.Client

	mu    sync.Mutex
	proc  *netns.Proc
	bin   string
	older []string // output of earlier runs
	// stale is set while the node's interface may hold the VIP without
	// the node serving it: from a kill -9 until the address the crash
	// left is removed, while the process is frozen (SIGSTOP) until it
	// has dropped the address after waking, while a drill adds the
	// address by hand. The sampler counts it as a dead holder meanwhile,
	// not as a live owner; the drills bound those times themselves.
	stale atomic.Bool
	// upgraded is the pid of the process that took over in an in-place
	// upgrade (0: none): the node runs as long as it does.
	upgraded atomic.Int64
}

// drillCluster is the whole drill network.
type drillCluster struct {
	t      *testing.T
	net    *netns.Net
	nodes  []*drillNode
	client *netns.Host
	b1, b2 *dovecot.Server
	bh1    *netns.Host
	users  []string
	dir    string // lives as long as the cluster

	sampler *addrSampler
	arpw    *arpWatcher
}

func newDrillCluster(t *testing.T) *drillCluster {
	t.Helper()
	n := netns.New(t, "n1", "n2", "n3", "client", "b1", "b2")
	c := &drillCluster{t: t, net: n, client: n.Host("client"), bh1: n.Host("b1"), dir: t.TempDir()}
	users := map[string]string{}
	for i := 0; i < 16; i++ {
		for _, d := range []string{"shared.example", "single.example"} {
			u := fmt.Sprintf("u%d@%s", i, d)
			users[u] = drillPass
			c.users = append(c.users, u)
		}
	}
	sort.Strings(c.users)
	trusted := []string{netns.Net4.String(), netns.Net6.String()}
	for _, b := range []**dovecot.Server{&c.b1, &c.b2} {
		h := n.Host("b1")
		if b == &c.b2 {
			h = n.Host("b2")
		}
		*b = dovecot.Start(t, dovecot.Options{Addr: h.IP4.String(), Netns: h.Path, IMAPPort: 143, POP3Port: 110,
			Users: users, TrustedNetworks: trusted})
	}
	var join []string
	for _, name := range []string{"n1", "n2", "n3"} {
		join = append(join, fmt.Sprintf("%q", n.Host(name).IP4.String()+":7145"))
	}
	certs, gkey := clusterPKI(t, "n1", "n2", "n3"), gossipKey(t)
	for _, name := range []string{"n1", "n2", "n3"} {
		h := n.Host(name)
		nd := &drillNode{h: h, name: name, dir: t.TempDir(), admin: h.IP4.String() + ":7143",
			http: h.HTTPClient(10 * time.Second), bin: porticoBinary(t)}
		cfg := fmt.Sprintf(`
node_name: %[1]s
data_dir: %[2]s
shutdown_grace: 2s
listeners:
  - {name: imap, protocol: imap, address: "%[3]s:143"}
  - {name: imap6, protocol: imap, address: "[%[4]s]:143"}
  - {name: pop3, protocol: pop3, address: "%[3]s:110"}
limits: {auth_failure_delay: 10ms}
admin: {address: "%[5]s", token: %[6]s}
cluster:
  raft_address: "%[7]s:7144"
  gossip_address: "%[7]s:7145"
  join: [%[8]s]
  bootstrap_expect: 3
  health: {interval: 500ms, timeout: 1s}
  tls: %[11]s
  encrypt_key: %[12]s
vip:
  addresses:
    - {address: %[3]s/24, interface: eth0}
    - {address: %[4]s/64, interface: eth0}
backends:
  - {id: b1, host: %[9]s, imap_port: 143, pop3_port: 110, forward: id}
  - {id: b2, host: %[10]s, imap_port: 143, pop3_port: 110, forward: id}
pools:
  - {name: shared, backends: [b1, b2], shared_storage: true}
  - {name: single, backends: [b1, b2]}
routes:
  domains: {shared.example: shared, single.example: single}
  default_pool: shared
`, name, filepath.Join(nd.dir, "data"), drillVIP4, drillVIP6, nd.admin, clusterToken, h.IP4,
			strings.Join(join, ", "), n.Host("b1").IP4, n.Host("b2").IP4, certs[name], gkey)
		nd.cfgPath = filepath.Join(nd.dir, "portico.yaml")
		if err := os.WriteFile(nd.cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, nd)
	}
	t.Cleanup(func() {
		c.sampler.stop()
		c.arpw.close()
		for _, nd := range c.nodes {
			nd.kill()
		}
		if t.Failed() {
			for _, nd := range c.nodes {
				t.Logf("---- %s log ----\n%s", nd.name, tail(nd.log(), 80))
			}
		}
	})
	var err error
	if c.arpw, err = watchARP(c.client, drillVIP4); err != nil {
		t.Fatalf("ARP watcher: %v", err)
	}
	c.sampler = sampleAddrs(t, c.nodes, []netip.Addr{drillVIP4, drillVIP6}, 20*time.Millisecond)
	for _, nd := range c.nodes {
		nd.start(t)
	}
	return c
}

// start runs the node's binary (nd.bin) in its namespace.
func (nd *drillNode) start(t *testing.T) {
	t.Helper()
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.proc != nil {
		nd.older = append(nd.older, nd.proc.Output())
	}
	p, err := nd.h.Start(nd.bin, "serve", "--config", nd.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	nd.proc = p
}

// serving reports whether the process is alive and not marked stale.
func (nd *drillNode) serving() bool { return nd.running() && !nd.stale.Load() }

// running reports whether the process is alive.
func (nd *drillNode) running() bool {
	if pid := nd.upgraded.Load(); pid != 0 {
		return syscall.Kill(int(pid), 0) == nil
	}
	nd.mu.Lock()
	p := nd.proc
	nd.mu.Unlock()
	if p == nil {
		return false
	}
	select {
	case <-p.Done():
		return false
	default:
		return true
	}
}

func (nd *drillNode) kill() {
	if pid := nd.upgraded.Swap(0); pid != 0 {
		_ = syscall.Kill(int(pid), syscall.SIGKILL)
	}
	nd.mu.Lock()
	p := nd.proc
	nd.mu.Unlock()
	if p != nil {
		p.Kill()
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (nd *drillNode) stop() error {
	nd.mu.Lock()
	p := nd.proc
	nd.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.Stop(20 * time.Second)
}

func (nd *drillNode) log() string {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	s := strings.Join(nd.older, "")
	if nd.proc != nil {
		s += nd.proc.Output()
	}
	return s
}

// api calls the node's admin API from inside its namespace.
func (nd *drillNode) api(method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		j, _ := json.Marshal(body)
		rd = strings.NewReader(string(j))
	}
	req, _ := http.NewRequest(method, "http://"+nd.admin+path, rd)
	req.Header.Set("Authorization", "Bearer "+clusterToken)
	if method != "GET" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := nd.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, nil
}

// cli runs the portico command in the node's namespace against its API.
func (nd *drillNode) cli(args ...string) (string, error) {
	// The drill's network is private to the test, so the token may cross
	// it in cleartext.
	args = append(args, "--admin", nd.admin, "--token", clusterToken, "--insecure-http")
	return nd.h.Exec(nd.bin, args...)
}

type drillStatus struct {
	Role     string   `json:"role"`
	Ready    bool     `json:"ready"`
	NotReady []string `json:"not_ready"`
	Sessions map[string]struct {
		Preauth int `json:"preauth"`
		Relayed int `json:"relayed"`
	} `json:"sessions"`
	Cluster *struct {
		Leader  string `json:"leader"`
		Members []struct {
			Name  string `json:"name"`
			State string `json:"state"`
		} `json:"members"`
	} `json:"cluster"`
	Backends []struct {
		ID     string `json:"id"`
		Health string `json:"health"`
	} `json:"backends"`
}

func (nd *drillNode) status() (*drillStatus, error) {
	code, b, err := nd.api("GET", "/v1/status", nil)
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("status %d: %s", code, b)
	}
	var st drillStatus
	return &st, json.Unmarshal(b, &st)
}

// logTime returns the time of the first line of the node's log at or
// after t that contains msg (the nodes share the host's clock; the log has
// millisecond precision).
func (nd *drillNode) logTime(msg string, t time.Time) (time.Time, bool) {
	for _, l := range strings.Split(nd.log(), "\n") {
		if !strings.Contains(l, msg) || !strings.HasPrefix(l, "time=") {
			continue
		}
		f, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, f)
		if err == nil && !at.Before(t.Truncate(time.Millisecond)) {
			return at, true
		}
	}
	return time.Time{}, false
}

// handoverOverlap compares, from their logs, when from released the VIP
// and when to acquired it, both at or after t: positive when to acquired
// before from released (both held it).
func handoverOverlap(from, to *drillNode, t time.Time) (time.Duration, error) {
	rel, ok1 := from.logTime("released virtual addresses", t)
	acq, ok2 := to.logTime("acquired virtual addresses", t)
	if !ok1 || !ok2 {
		return 0, fmt.Errorf("release on %s logged: %v, acquisition on %s logged: %v", from.name, ok1, to.name, ok2)
	}
	return rel.Sub(acq), nil
}

// relayed returns the node's logged-in sessions (-1 if it cannot say).
func (nd *drillNode) relayed() int {
	st, err := nd.status()
	if err != nil {
		return -1
	}
	n := 0
	for _, s := range st.Sessions {
		n += s.Relayed
	}
	return n
}

func (c *drillCluster) node(name string) *drillNode {
	for _, nd := range c.nodes {
		if nd.name == name {
			return nd
		}
	}
	return nil
}

// healthy: every node runs, agrees on one leader, sees 3 alive members,
// the raft configuration has 3 voters, and the leader's namespace (only)
// holds both VIP addresses.
func (c *drillCluster) healthy() (string, error) {
	leader := ""
	for _, nd := range c.nodes {
		if !nd.running() {
			return "", fmt.Errorf("%s not running", nd.name)
		}
		st, err := nd.status()
		if err != nil {
			return "", fmt.Errorf("%s: %v", nd.name, err)
		}
		if st.Cluster == nil || st.Cluster.Leader == "" {
			return "", fmt.Errorf("%s knows no leader", nd.name)
		}
		// Ready: its routing table has caught up (until then a login
		// through it gets UNAVAILABLE, by design).
		if !st.Ready {
			return "", fmt.Errorf("%s not ready: %v", nd.name, st.NotReady)
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
	out, err := c.nodes[0].cli("cluster", "peers", "--json")
	if err != nil || strings.Count(out, `"voter"`) != 3 {
		return "", fmt.Errorf("raft peers: %v %s", err, out)
	}
	for _, nd := range c.nodes {
		for _, a := range []netip.Addr{drillVIP4, drillVIP6} {
			has, err := nd.h.HasAddr(a)
			if err != nil {
				return "", err
			}
			if has != (nd.name == leader) {
				return "", fmt.Errorf("%s holds %v: %v (leader %s)", nd.name, a, has, leader)
			}
		}
	}
	return leader, nil
}

// waitHealthy waits for healthy and returns the VIP owner.
func (c *drillCluster) waitHealthy(t *testing.T, d time.Duration) *drillNode {
	t.Helper()
	var last error
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		owner, err := c.healthy()
		if err == nil {
			return c.node(owner)
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("cluster not healthy after %v: %v", d, last)
	return nil
}

// ---- the client ----

// imapTry logs in through addr from the client namespace (LOGIN, then
// LOGOUT) within timeout; the error carries the server's answer.
func (c *drillCluster) imapTry(addr, user string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.imapLogin(ctx, addr, user)
}

// imapLogin is imapTry bounded by ctx: cancelling ctx abandons the
// attempt at once (the connection is closed), so a prober never leaves
// logins running against the backends behind it.
func (c *drillCluster) imapLogin(ctx context.Context, addr, user string) error {
	conn, err := c.client.Dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	r := bufio.NewReader(conn)
	g, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if !strings.HasPrefix(g, "* OK") {
		return fmt.Errorf("greeting %q", g)
	}
	fmt.Fprintf(conn, "a LOGIN %s %s\r\n", user, drillPass)
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("login: %w", err)
		}
		if strings.HasPrefix(l, "a ") {
			if !strings.HasPrefix(l, "a OK") {
				return fmt.Errorf("login: %s", strings.TrimSpace(l))
			}
			break
		}
	}
	fmt.Fprintf(conn, "b LOGOUT\r\n")
	return nil
}

// probeGreeting dials addr from the client namespace and reads the
// greeting: is the VIP serving?
func (c *drillCluster) probeGreeting(addr string, timeout time.Duration) error {
	conn, err := c.client.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	g, err := bufio.NewReader(conn).ReadString('\n')
	if err == nil && !strings.HasPrefix(g, "* OK") {
		err = fmt.Errorf("greeting %q", g)
	}
	return err
}

// clientNeighbour returns the MAC the client's neighbour table holds for a.
func (c *drillCluster) clientNeighbour(a netip.Addr) string {
	mac, _, err := c.client.Neighbour(a)
	if err != nil || mac == nil {
		return ""
	}
	return mac.String()
}

func vipAddr(a netip.Addr, port int) string { return netip.AddrPortFrom(a, uint16(port)).String() }

// ---- observers ----

// arpWatcher records every ARP packet seen on the client's interface that
// claims the VIP (sender address = VIP): who announced, and when.
type arpWatcher struct {
	c      *arp.Client
	mu     sync.Mutex
	claims []arpClaim
	done   chan struct{}
}

type arpClaim struct {
	at         time.Time
	mac        string
	op         arp.Operation
	gratuitous bool // an announcement (target address = sender address), not an answer to a query
}

func watchARP(h *netns.Host, vip netip.Addr) (*arpWatcher, error) {
	w := &arpWatcher{done: make(chan struct{})}
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(netns.Interface)
		if err != nil {
			return err
		}
		w.c, err = arp.Dial(ifi)
		return err
	})
	if err != nil {
		return nil, err
	}
	go func() {
		defer close(w.done)
		for {
			p, _, err := w.c.Read()
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					continue
				}
				return // closed
			}
			if p.SenderIP == vip {
				w.mu.Lock()
				w.claims = append(w.claims, arpClaim{at: time.Now(), mac: p.SenderHardwareAddr.String(), op: p.Operation,
					gratuitous: p.TargetIP == p.SenderIP})
				w.mu.Unlock()
			}
		}
	}()
	return w, nil
}

func (w *arpWatcher) close() {
	if w == nil {
		return
	}
	w.c.Close()
	select {
	case <-w.done:
	case <-time.After(2 * time.Second):
	}
}

// since returns the claims seen at or after t.
func (w *arpWatcher) since(t time.Time) []arpClaim {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []arpClaim
	for _, c := range w.claims {
		if !c.at.Before(t) {
			out = append(out, c)
		}
	}
	return out
}

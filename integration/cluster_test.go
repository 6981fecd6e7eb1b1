package integration

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/loopback"
)

// procNode is a real portico process, one node of a test cluster.
type procNode struct {
	t       *testing.T
	name    string
	ip      string
	dir     string
	cfgPath string
	admin   string
	imap    string
	raft    string
	gossip  string
	token   string
	tls     *tls.Config // set when the admin API serves https

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan error
	stderr *lockedBuf
}

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

const clusterToken = "test-token-0123456789"

// newCluster writes configs for n nodes with bootstrap_expect n.
func newCluster(t *testing.T, n int, dc *dovecot.Server, extra string) []*procNode {
	return newClusterWith(t, n, n, "1h", 3, dc, extra)
}

// newClusterWith sets bootstrap_expect, dead_node_reap and max_voters.
// Each node listens on an address of its own (integration/loopback), on
// ports that were free when the test began, and keeps them across
// restarts.
func newClusterWith(t *testing.T, n, expect int, reap string, maxVoters int, dc *dovecot.Server, extra string) []*procNode {
	t.Helper()
	var nodes []*procNode
	var join, names []string
	for i := 1; i <= n; i++ {
		ip := loopback.Addr(t)
		p := loopback.Ports(t, ip, 4)
		at := func(port int) string { return netip.AddrPortFrom(ip, uint16(port)).String() }
		nodes = append(nodes, &procNode{t: t, name: fmt.Sprintf("n%d", i), ip: ip.String(), dir: t.TempDir(),
			admin: at(p[0]), imap: at(p[1]), raft: at(p[2]), gossip: at(p[3]), token: clusterToken})
		join = append(join, at(p[3]))
		names = append(names, fmt.Sprintf("n%d", i))
	}
	certs, gkey := clusterPKI(t, names...), gossipKey(t)
	for i, nd := range nodes {
		cfg := fmt.Sprintf(`
node_name: %s
data_dir: %s
listeners:
  - {name: imap, protocol: imap, address: "%s"}
limits: {auth_failure_delay: 10ms}
admin: {address: "%s", token: %s}
cluster:
  raft_address: "%s"
  gossip_address: "%s"
  join: [%s]
  bootstrap_expect: %d
  dead_node_reap: %s
  max_voters: %d
  health: {interval: 500ms, timeout: 1s}
  tls: %s
  encrypt_key: %s
backends:
  - {id: dc1, host: %s, imap_port: %d, pop3_port: %d, forward: id}
pools:
  - {name: main, backends: [dc1]}
%s`, nd.name, filepath.Join(nd.dir, "data"), nd.imap, nd.admin, clusterToken, nd.raft, nd.gossip, strings.Join(join, ", "), nodeExpect(expect, i+1), reap, maxVoters,
			certs[nd.name], gkey, dc.Addr, dc.IMAPPort, dc.POP3Port, extra)
		nd.cfgPath = filepath.Join(nd.dir, "portico.yaml")
		if err := os.WriteFile(nd.cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, nd := range nodes {
			nd.kill()
		}
		if t.Failed() {
			for _, nd := range nodes {
				t.Logf("---- %s log ----\n%s", nd.name, tail(nd.log(), 60))
			}
		}
	})
	return nodes
}

// nodeExpect: bootstrap_expect 1 means "node 1 bootstraps alone, the
// others join it" (each node with bootstrap_expect 1 would form its own
// cluster).
func nodeExpect(expect, i int) int {
	if expect == 1 && i != 1 {
		return 0
	}
	return expect
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (nd *procNode) log() string {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.stderr == nil {
		return ""
	}
	return nd.stderr.String()
}

func (nd *procNode) start() {
	nd.t.Helper()
	nd.mu.Lock()
	defer nd.mu.Unlock()
	cmd := exec.Command(porticoBinary(nd.t), "serve", "--config", nd.cfgPath)
	if nd.stderr == nil {
		nd.stderr = &lockedBuf{}
	}
	cmd.Stderr = nd.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		nd.t.Fatal(err)
	}
	nd.cmd = cmd
	nd.done = make(chan error, 1)
	go func() { nd.done <- cmd.Wait() }()
}

// kill sends SIGKILL (a crash) and waits.
func (nd *procNode) kill() {
	nd.mu.Lock()
	cmd, done := nd.cmd, nd.done
	nd.cmd = nil
	nd.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// stop sends SIGTERM and waits for a clean exit.
func (nd *procNode) stop() error {
	nd.mu.Lock()
	cmd, done := nd.cmd, nd.done
	nd.cmd = nil
	nd.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		return fmt.Errorf("%s did not stop", nd.name)
	}
}

// api calls the node's admin API.
func (nd *procNode) api(method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	scheme, client := "http", &http.Client{Timeout: 60 * time.Second}
	if nd.tls != nil {
		scheme, client.Transport = "https", &http.Transport{TLSClientConfig: nd.tls, DisableKeepAlives: true}
	}
	req, _ := http.NewRequest(method, scheme+"://"+nd.admin+path, rd)
	req.Header.Set("Authorization", "Bearer "+nd.token)
	if method != "GET" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, nil
}

// cli runs a portico CLI command against this node.
func (nd *procNode) cli(args ...string) (string, error) {
	args = append(args, "--admin", nd.admin, "--token", nd.token)
	out, err := exec.Command(porticoBinary(nd.t), args...).CombinedOutput()
	return string(out), err
}

// waitSeeded waits until the config file's pool reached every node.
func waitSeeded(t *testing.T, nodes []*procNode) {
	t.Helper()
	// Seeded, and ready: a node whose replicated table has not caught up
	// with the leader answers logins UNAVAILABLE (by design) and /readyz
	// 503 until it has.
	waitFor(t, "the file's routes seeded on every node, and every node ready", 20*time.Second, func() bool {
		for _, nd := range nodes {
			if code, _, err := nd.api("GET", "/v1/pools/main", nil); err != nil || code != 200 {
				return false
			}
			if code, _, err := nd.api("GET", "/readyz", nil); err != nil || code != 200 {
				return false
			}
		}
		return true
	})
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
	return 0
}

func leaderOf(nodes []*procNode) string {
	for _, nd := range nodes {
		code, b, err := nd.api("GET", "/v1/cluster/leader", nil)
		if err == nil && code == 200 {
			var l struct{ Name string }
			_ = json.Unmarshal(b, &l)
			return l.Name
		}
	}
	return ""
}

func nodeByName(nodes []*procNode, name string) *procNode {
	for _, nd := range nodes {
		if nd.name == name {
			return nd
		}
	}
	return nil
}

func hasUser(nd *procNode, user string) bool {
	code, _, err := nd.api("GET", "/v1/routes/users/"+user, nil)
	return err == nil && code == 200
}

func loginVia(t *testing.T, addr, user, pass string) error {
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Login(user, pass).Wait(); err != nil {
		return err
	}
	return c.Logout().Wait()
}

// A 3-node cluster forms from bootstrap_expect; a route written through
// the CLI on a follower steers logins on every node; the cluster survives
// the loss of the leader without losing an acknowledged write; the killed
// node catches up after a restart; a 100,000-user import reaches every node.
func TestClusterThreeNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	users := map[string]string{"alice@example.com": "secret", "bob@example.com": "secret"}
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.84", Users: users})
	nodes := newCluster(t, 3, dc, "")
	for _, nd := range nodes {
		nd.start()
	}
	formed := waitFor(t, "a leader", 20*time.Second, func() bool { return leaderOf(nodes) != "" })
	t.Logf("cluster formed, leader elected %v after start", formed.Round(time.Millisecond))
	waitFor(t, "3 voters", 20*time.Second, func() bool {
		out, err := nodes[0].cli("cluster", "peers", "--json")
		return err == nil && strings.Count(out, `"voter"`) == 3
	})

	waitSeeded(t, nodes)

	// Write on a follower, through the CLI.
	leader := leaderOf(nodes)
	var follower *procNode
	for _, nd := range nodes {
		if nd.name != leader {
			follower = nd
			break
		}
	}
	if out, err := follower.cli("route", "set", "alice@example.com", "--backend", "dc1"); err != nil {
		t.Fatalf("route set on follower %s: %v\n%q", follower.name, err, out)
	}
	took := waitFor(t, "the route on every node", 10*time.Second, func() bool {
		for _, nd := range nodes {
			if !hasUser(nd, "alice@example.com") {
				return false
			}
		}
		return true
	})
	t.Logf("write on follower %s visible on all 3 nodes after %v", follower.name, took.Round(time.Millisecond))
	for _, nd := range nodes {
		if err := loginVia(t, nd.imap, "alice@example.com", "secret"); err != nil {
			t.Fatalf("login through %s: %v", nd.name, err)
		}
	}
	// bob has no route yet: refused like a bad password, everywhere.
	if err := loginVia(t, nodes[0].imap, "bob@example.com", "secret"); err == nil {
		t.Fatal("login without a route succeeded")
	}
	if out, err := nodes[2].cli("route", "default", "main"); err != nil {
		t.Fatalf("route default: %v\n%s", err, out)
	}
	waitFor(t, "default pool everywhere", 10*time.Second, func() bool {
		for _, nd := range nodes {
			if loginVia(t, nd.imap, "bob@example.com", "secret") != nil {
				return false
			}
		}
		return true
	})

	// Kill the leader while a writer runs; record acknowledged writes.
	var (
		mu    sync.Mutex
		acked []string
		fails int
	)
	stopW := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stopW:
				return
			default:
			}
			u := fmt.Sprintf("w%d@example.com", i)
			nd := nodes[i%3]
			code, _, err := nd.api("PUT", "/v1/routes/users/"+u, map[string]string{"backend": "dc1"})
			mu.Lock()
			if err == nil && code == 200 {
				acked = append(acked, u)
			} else {
				fails++
			}
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	time.Sleep(500 * time.Millisecond)
	oldLeader := nodeByName(nodes, leaderOf(nodes))
	killedAt := time.Now()
	oldLeader.kill()
	var survivors []*procNode
	for _, nd := range nodes {
		if nd != oldLeader {
			survivors = append(survivors, nd)
		}
	}
	waitFor(t, "a new leader", 15*time.Second, func() bool {
		l := leaderOf(survivors)
		return l != "" && l != oldLeader.name
	})
	t.Logf("killed leader %s; new leader %s after %v", oldLeader.name, leaderOf(survivors), time.Since(killedAt).Round(time.Millisecond))
	// Writes continue.
	mu.Lock()
	before := len(acked)
	mu.Unlock()
	waitFor(t, "writes to continue after the election", 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) > before+5
	})
	close(stopW)
	wg.Wait()
	mu.Lock()
	t.Logf("writer: %d acknowledged, %d failed (during the election)", len(acked), fails)
	ackedCopy := append([]string(nil), acked...)
	mu.Unlock()
	// Nothing acknowledged is lost, on either survivor (consistent read on
	// the leader, local reads on both after catching up).
	for _, nd := range survivors {
		waitFor(t, "every acknowledged write on "+nd.name, 10*time.Second, func() bool {
			for _, u := range ackedCopy {
				if !hasUser(nd, u) {
					return false
				}
			}
			return true
		})
	}

	// Restart the killed node: it rejoins and catches up from the log.
	oldLeader.start()
	waitFor(t, oldLeader.name+" to catch up", 20*time.Second, func() bool {
		for _, u := range ackedCopy {
			if !hasUser(oldLeader, u) {
				return false
			}
		}
		return true
	})
	// Its table holds the writes before it has confirmed with the leader
	// that it caught up; until then logins are told to retry, never that
	// the password is wrong (README, Readiness).
	waitFor(t, "a login through the restarted node", 20*time.Second, func() bool {
		err := loginVia(t, oldLeader.imap, "alice@example.com", "secret")
		if err != nil && !strings.Contains(err.Error(), "UNAVAILABLE") {
			t.Fatalf("login through the restarted node: %v", err)
		}
		return err == nil
	})

	// Bulk import of 100,000 users (Perdition popmap format) on a follower.
	var pm strings.Builder
	for i := 0; i < 100000; i++ {
		fmt.Fprintf(&pm, "bulk%d@example.org: %s\n", i, dc.Addr)
	}
	f := filepath.Join(t.TempDir(), "popmap")
	os.WriteFile(f, []byte(pm.String()), 0o644)
	leader = leaderOf(nodes)
	var imp *procNode
	for _, nd := range nodes {
		if nd.name != leader {
			imp = nd
		}
	}
	start := time.Now()
	out, err := imp.cli("import", f, "--format", "popmap")
	if err != nil || !strings.Contains(out, "imported 100000") {
		t.Fatalf("import: %v\n%s", err, out)
	}
	t.Logf("imported 100,000 users through follower %s in %v", imp.name, time.Since(start).Round(time.Millisecond))
	for _, nd := range nodes {
		waitFor(t, "imported users on "+nd.name, 20*time.Second, func() bool {
			return hasUser(nd, "bulk0@example.org") && hasUser(nd, "bulk99999@example.org")
		})
	}
	// Clean shutdown of all three.
	for _, nd := range nodes {
		if err := nd.stop(); err != nil {
			t.Errorf("%s: %v", nd.name, err)
		}
	}
}

// A second process on the same data directory fails with a clear message.
func TestDataDirLocked(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.84"})
	nodes := newCluster(t, 1, dc, "routes: {default_pool: main}")
	nodes[0].start()
	waitSeeded(t, nodes)
	out, err := exec.Command(porticoBinary(t), "serve", "--config", nodes[0].cfgPath).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use by another portico process") {
		t.Fatalf("second process: %v\n%s", err, out)
	}
}

// Hostile input on the admin API changes nothing.
func TestAdminAPIHostileInput(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.84"})
	nodes := newCluster(t, 1, dc, "routes: {default_pool: main}")
	nd := nodes[0]
	nd.start()
	waitSeeded(t, nodes)
	cases := []struct {
		method, path string
		body         any
		token        string
		want         int
		wantMsg      string
	}{
		{"PUT", "/v1/backends/x", `{"id":"x","host":"h","imap_port":1`, clusterToken, 400, "invalid JSON"},
		{"PUT", "/v1/backends/x", `{"id":"x","host":"h","imap_port":1,"colour":"red"}`, clusterToken, 400, "unknown field"},
		{"PUT", "/v1/backends/x", `{"id":"x","host":"h"}`, clusterToken, 400, "needs imap_port"},
		{"PUT", "/v1/backends/x", `{"id":"y","host":"h","imap_port":1}`, clusterToken, 400, "differs from the path"},
		{"PUT", "/v1/pools/p", `{"backends":["nope"]}`, clusterToken, 409, "unknown backend"},
		{"DELETE", "/v1/backends/dc1", nil, clusterToken, 409, "in pool main"},
		{"PUT", "/v1/routes/users/u", `{"backend":"dc1","pool":"main"}`, clusterToken, 400, "both"},
		{"PUT", "/v1/backends/x", `{"id":"x","host":"` + strings.Repeat("a", 2<<20) + `","imap_port":1}`, clusterToken, 413, "larger than"},
		{"PUT", "/v1/backends/x", `{"id":"x","host":"h","imap_port":1}`, "wrong", 401, "bearer token"},
		{"PUT", "/v1/backends/x", `{"id":"x","host":"h","imap_port":1}`, "", 401, "bearer token"},
		{"POST", "/v1/import", `{"format":"popmap","data":"nobody-here\n"}`, clusterToken, 400, "line 1"},
		{"POST", "/v1/import", `{"format":"xml","data":""}`, clusterToken, 400, "format must be"},
		{"POST", "/v1/import?format=csv", `{"format":"popmap","data":""}`, clusterToken, 400, "differs"},
	}
	for i, c := range cases {
		nd.token = c.token
		code, body, err := nd.api(c.method, c.path, c.body)
		nd.token = clusterToken
		if err != nil || code != c.want || !strings.Contains(string(body), c.wantMsg) {
			t.Errorf("case %d %s %s: got %d %s (%v), want %d containing %q", i, c.method, c.path, code, body, err, c.want, c.wantMsg)
		}
		if !strings.Contains(string(body), `"error"`) {
			t.Errorf("case %d: error body is not JSON {error: ...}: %s", i, body)
		}
	}
	// Node-to-node calls are not on the admin API (they run over the
	// cluster's mutual TLS), even with the operator's token.
	if code, body, err := nd.api("POST", "/v1/internal/apply", `{}`); err != nil || code != 404 {
		t.Errorf("POST /v1/internal/apply on the admin API: %d %s %v, want 404", code, body, err)
	}
	// Nothing changed.
	code, body, _ := nd.api("GET", "/v1/backends", nil)
	if code != 200 || strings.Contains(string(body), `"x"`) {
		t.Fatalf("a refused request changed the table: %s", body)
	}
	if !strings.Contains(nd.log(), "level=") || strings.Contains(nd.log(), "panic") {
		t.Fatal("node panicked")
	}
}

// Voters are capped at max_voters (the rest join as non-voters), and a
// member dead for longer than dead_node_reap is removed from raft.
func TestClusterVotersAndReap(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.84"})
	nodes := newClusterWith(t, 3, 1, "2s", 1, dc, "routes: {default_pool: main}")
	for _, nd := range nodes {
		nd.start()
	}
	peers := func() string {
		out, _ := nodes[0].cli("cluster", "peers", "--json")
		return out
	}
	waitFor(t, "1 voter and 2 non-voters", 20*time.Second, func() bool {
		p := peers()
		return strings.Count(p, `"voter"`) == 1 && strings.Count(p, `"nonvoter"`) == 2
	})
	nodes[2].kill()
	start := time.Now()
	var last string
	defer func() {
		if t.Failed() {
			t.Logf("last peers: %s", last)
		}
	}()
	waitFor(t, "the dead member reaped", 30*time.Second, func() bool {
		last = peers()
		return !strings.Contains(last, `"n3"`) && strings.Count(last, `"nonvoter"`) == 1
	})
	t.Logf("dead non-voter removed %v after the kill (memberlist detection + 2s reap)", time.Since(start).Round(100*time.Millisecond))
}

// `portico cluster remove-peer`: refused for a live node; a dead one
// leaves raft's configuration at once, long before dead_node_reap, and
// the two left still commit writes.
func TestClusterRemovePeer(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.84"})
	nodes := newCluster(t, 3, dc, "routes: {default_pool: main}")
	for _, nd := range nodes {
		nd.start()
	}
	waitFor(t, "3 voters", 20*time.Second, func() bool {
		out, err := nodes[0].cli("cluster", "peers", "--json")
		return err == nil && strings.Count(out, `"voter"`) == 3
	})
	if out, err := nodes[1].cli("cluster", "remove-peer", "n3"); err == nil || !strings.Contains(out, "alive") {
		t.Fatalf("remove-peer of a live node: %v\n%s", err, out)
	}
	nodes[2].kill()
	// Both survivors must see it gone: the node asked checks its own view,
	// and the leader decides by its own.
	seenDead := func(nd *procNode) bool {
		out, err := nd.cli("cluster", "members", "--json")
		var ms []struct{ Name, State string }
		if err != nil || json.Unmarshal([]byte(out), &ms) != nil {
			return false
		}
		for _, m := range ms {
			if m.Name == "n3" {
				return m.State != "alive"
			}
		}
		return false
	}
	waitFor(t, "n3 seen dead by n1 and n2", 30*time.Second, func() bool { return seenDead(nodes[0]) && seenDead(nodes[1]) })
	if out, err := nodes[1].cli("cluster", "remove-peer", "n3"); err != nil || !strings.Contains(out, "removed n3") {
		t.Fatalf("remove-peer n3: %v\n%s", err, out)
	}
	out, err := nodes[0].cli("cluster", "peers", "--json")
	if err != nil || strings.Contains(out, `"n3"`) || strings.Count(out, `"voter"`) != 2 {
		t.Fatalf("peers after remove-peer: %v\n%s", err, out)
	}
	if out, err := nodes[0].cli("route", "set", "alice@example.com", "--backend", "dc1"); err != nil {
		t.Fatalf("a write with 2 of 2 voters: %v\n%s", err, out)
	}
}

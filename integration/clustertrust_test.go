package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/loopback"
	"github.com/portico-mail/portico/routing"
)

// Against real processes set up as the README says (cluster certificates,
// gossip key): hashicorp/raft's own client without a certificate cannot
// append a route to the attacker's host; a member without the gossip key
// cannot join; a portico node with a certificate from another CA joins the
// gossip with the key but never becomes a raft server, and the cluster
// port refuses it.
func TestClusterTrustRealProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.105"})
	nodes := newClusterWith(t, 3, 3, "1h", 3, dc, "routes: {default_pool: main}\n")
	for _, nd := range nodes {
		nd.start()
	}
	waitSeeded(t, nodes)
	leader := clusterLeader(t, nodes)

	// 1. The raft port, with raft's own transport and no certificate.
	client, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, 2*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	cmd, _ := routing.Command{Type: routing.CmdPutUsers, Users: []routing.UserRoute{{User: "alice@example.com", Target: routing.Target{Backend: "dc1"}}}}.Encode()
	hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("evil"), Addr: []byte(client.LocalAddr())}
	for _, nd := range nodes {
		target := raft.ServerAddress(nd.raft)
		var ae raft.AppendEntriesResponse
		if err := client.AppendEntries(raft.ServerID(nd.name), target, &raft.AppendEntriesRequest{RPCHeader: hdr, Term: 1 << 20,
			Entries: []*raft.Log{{Index: 1 << 20, Term: 1 << 20, Type: raft.LogCommand, Data: cmd}}, LeaderCommitIndex: 1 << 20}, &ae); err == nil {
			t.Errorf("%s: AppendEntries without a certificate: %+v", nd.name, ae)
		}
		var rv raft.RequestVoteResponse
		if err := client.RequestVote(raft.ServerID(nd.name), target, &raft.RequestVoteRequest{RPCHeader: hdr, Term: 1 << 20, LastLogIndex: 1 << 20, LastLogTerm: 1 << 20}, &rv); err == nil {
			t.Errorf("%s: RequestVote without a certificate: %+v", nd.name, rv)
		}
		var tn raft.TimeoutNowResponse
		if err := client.TimeoutNow(raft.ServerID(nd.name), target, &raft.TimeoutNowRequest{RPCHeader: hdr}, &tn); err == nil {
			t.Errorf("%s: TimeoutNow without a certificate", nd.name)
		}
	}
	for _, nd := range nodes {
		if code, body, err := nd.api("GET", "/v1/routes/users/alice@example.com", nil); err != nil || code != 404 {
			t.Fatalf("%s: an unauthenticated append changed the routes: %d %s %v", nd.name, code, body, err)
		}
	}
	if l := clusterLeader(t, nodes); l.name != leader.name {
		t.Errorf("leadership moved from %s to %s after the attack", leader.name, l.name)
	}
	if v := metricValue(t, leader, "portico_cluster_tls_refused_total"); v < 3 {
		t.Errorf("refused handshakes on the leader: %v", v)
	}

	// 2. Gossip without the key.
	mc := memberlist.DefaultLANConfig()
	mc.Name, mc.BindAddr, mc.BindPort, mc.LogOutput = "keyless", "127.0.0.1", 0, io.Discard
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Shutdown()
	if n, err := ml.Join([]string{nodes[0].gossip}); err == nil && n > 0 {
		time.Sleep(time.Second)
		for _, m := range ml.Members() {
			if m.Name != "keyless" {
				t.Errorf("a member without the gossip key sees %s", m.Name)
			}
		}
	}

	// 3. A portico node with the gossip key and a certificate of another
	// CA (its own name, its own CA): it may gossip, but it is never made a
	// raft server, and its raft and RPC connections are refused.
	cfg0, _ := os.ReadFile(nodes[0].cfgPath)
	key := configValue(string(cfg0), "encrypt_key")
	ip := loopback.Addr(t)
	p := loopback.Ports(t, ip, 4)
	at := func(port int) string { return netip.AddrPortFrom(ip, uint16(port)).String() }
	intruder := &procNode{t: t, name: "intruder", ip: ip.String(), dir: t.TempDir(), admin: at(p[0]), imap: at(p[1]),
		raft: at(p[2]), gossip: at(p[3]), token: clusterToken}
	foreign := clusterPKI(t, "intruder")["intruder"]
	intruder.cfgPath = filepath.Join(intruder.dir, "portico.yaml")
	writeFile(t, intruder.cfgPath, []byte(fmt.Sprintf(`
node_name: intruder
data_dir: %s
listeners:
  - {name: imap, protocol: imap, address: "%s"}
admin: {address: "%s", token: %s}
cluster:
  raft_address: "%s"
  gossip_address: "%s"
  join: ["%s"]
  tls: %s
  encrypt_key: %s
`, filepath.Join(intruder.dir, "data"), intruder.imap, intruder.admin, clusterToken, intruder.raft, intruder.gossip, nodes[0].gossip, foreign, key)))
	intruder.start()
	defer intruder.kill()
	waitFor(t, "the intruder in the gossip", 20*time.Second, func() bool {
		out, err := leader.cli("cluster", "members", "--json")
		return err == nil && strings.Contains(out, `"intruder"`)
	})
	// Give the leader several reconcile rounds (one a second).
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		out, err := leader.cli("cluster", "peers", "--json")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "intruder") {
			t.Fatalf("a node with another CA's certificate became a raft server:\n%s", out)
		}
		time.Sleep(300 * time.Millisecond)
	}
	var members []struct {
		Name     string `json:"name"`
		Verified bool   `json:"verified"`
	}
	out, _ := leader.cli("cluster", "members", "--json")
	if err := json.Unmarshal([]byte(out), &members); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, m := range members {
		if m.Verified != (m.Name != "intruder") {
			t.Errorf("member %s verified=%v", m.Name, m.Verified)
		}
	}
	// Both ways: the cluster's nodes refuse the intruder's certificate,
	// and the intruder refuses theirs when they come to verify it.
	waitFor(t, "the intruder refusing the cluster's certificates", 10*time.Second, func() bool {
		return metricValue(t, intruder, "portico_cluster_tls_refused_total") > 0
	})

	// The cluster still works.
	if _, err := nodes[1].cli("backend", "set", "dc2", "--host", dc.Addr, "--imap-port", fmt.Sprint(dc.IMAPPort)); err != nil {
		t.Fatalf("write through a follower with the intruder around: %v", err)
	}
}

// configValue returns the value of the first "key: value" line in s.
func configValue(s, key string) string {
	i := strings.Index(s, key+": ")
	if i < 0 {
		return ""
	}
	rest := s[i+len(key)+2:]
	if j := strings.IndexByte(rest, '\n'); j >= 0 {
		rest = rest[:j]
	}
	return strings.TrimSpace(rest)
}

// clusterLeader returns the node the cluster names as its leader.
func clusterLeader(t *testing.T, nodes []*procNode) *procNode {
	t.Helper()
	var leader *procNode
	waitFor(t, "a leader", 20*time.Second, func() bool {
		code, b, err := nodes[0].api("GET", "/v1/cluster/leader", nil)
		if err != nil || code != 200 {
			return false
		}
		var l struct {
			Name string `json:"name"`
		}
		_ = json.Unmarshal(b, &l)
		for _, nd := range nodes {
			if nd.name == l.Name {
				leader = nd
			}
		}
		return leader != nil
	})
	return leader
}

// A node whose log holds a command its binary does not know (a newer node
// wrote it) stops with exit status 70 and says what to do, every time it
// is started, instead of panicking or diverging.
func TestUnknownCommandStopsNode(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	cfgPath := filepath.Join(dir, "portico.yaml")
	writeFile(t, cfgPath, []byte(fmt.Sprintf(`
node_name: solo
data_dir: %s
admin: {address: "127.0.0.1:0"}
cluster: {raft_address: "127.0.0.1:0", gossip_address: "127.0.0.1:0"}
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0"}
backends:
  - {id: b1, host: 127.0.0.1, imap_port: 1}
pools:
  - {name: main, backends: [b1]}
routes: {default_pool: main}
`, data)))
	run := func() (int, string) {
		cmd := exec.Command(porticoBinary(t), "serve", "--config", cfgPath)
		var out lockedBuf
		cmd.Stderr, cmd.Stdout = &out, &out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("still running after 30 s:\n%s", tail(out.String(), 30))
		}
		return cmd.ProcessState.ExitCode(), out.String()
	}
	// A first start writes the file's routes; stop it.
	cmd := exec.Command(porticoBinary(t), "serve", "--config", cfgPath)
	var out lockedBuf
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "routes written", 20*time.Second, func() bool {
		return strings.Contains(out.String(), "routes from the configuration file written")
	})
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()

	// Append an entry of an unknown command type to the raft log, as a
	// newer leader would have replicated it.
	walDir := filepath.Join(data, "raft", "wal")
	meta := &metadb.BoltMetaDB{}
	w, err := wal.Open(walDir, wal.WithMetaStore(meta))
	if err != nil {
		t.Fatal(err)
	}
	last, _ := w.LastIndex()
	term, _ := w.GetUint64([]byte("CurrentTerm"))
	if err := w.StoreLogs([]*raft.Log{{Index: last + 1, Term: term, Type: raft.LogCommand, Data: []byte{250, 1, '{', '}'}}}); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	_ = meta.Close()

	for i := 0; i < 2; i++ {
		code, log := run()
		if code != 70 || !strings.Contains(log, "cannot apply the replicated routing log") || !strings.Contains(log, "Upgrade this node's binary") || strings.Contains(log, "panic") {
			t.Fatalf("start %d: exit %d\n%s", i+1, code, tail(log, 20))
		}
	}
}

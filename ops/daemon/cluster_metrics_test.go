package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portico-mail/portico/ops/config"
)

func TestClusterMetrics(t *testing.T) {
	cfg, err := config.Parse([]byte(`
listeners: [{protocol: imap, address: "127.0.0.1:0"}]
admin: {address: "127.0.0.1:0"}
data_dir: ` + t.TempDir() + `
cluster: {raft_address: "127.0.0.1:0", gossip_address: "127.0.0.1:0"}
backends: [{id: b1, host: 127.0.0.1, imap_port: 1}]
pools: [{name: p, backends: [b1]}]
routes: {default_pool: p}
`))
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(cfg, Options{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	defer d.Shutdown(t.Context())
	deadline := time.Now().Add(10 * time.Second)
	for !d.cluster.IsLeader() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	want := `
# HELP portico_raft_state 1 for this node's current raft state.
# TYPE portico_raft_state gauge
portico_raft_state{state="candidate"} 0
portico_raft_state{state="follower"} 0
portico_raft_state{state="leader"} 1
portico_raft_state{state="shutdown"} 0
`
	if err := testutil.GatherAndCompare(d.Metrics, strings.NewReader(want), "portico_raft_state"); err != nil {
		t.Fatal(err)
	}
	n, err := testutil.GatherAndCount(d.Metrics, "portico_backend_up", "portico_cluster_members", "portico_raft_term", "portico_routing_last_apply_index")
	if err != nil || n < 4 {
		t.Fatalf("cluster metrics: %d series, %v", n, err)
	}
	if probs, err := testutil.GatherAndLint(d.Metrics); err != nil || len(probs) > 0 {
		t.Fatalf("promlint: %v %v", probs, err)
	}
}

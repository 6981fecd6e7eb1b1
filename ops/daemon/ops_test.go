package daemon

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/routing"
)

func startNode(t *testing.T, yamlText string) *Daemon {
	t.Helper()
	cfg, err := config.Parse([]byte(yamlText))
	if err != nil {
		t.Fatal(err)
	}
	return startCfg(t, cfg)
}

func startCfg(t *testing.T, cfg *config.Config) *Daemon {
	t.Helper()
	d, err := New(cfg, Options{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Shutdown(t.Context()) })
	return d
}

func get(t *testing.T, d *Daemon, path, token string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+d.AdminAddr().String()+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

type readyBody struct {
	Status  string   `json:"status"`
	Reasons []string `json:"reasons"`
}

func readyz(t *testing.T, d *Daemon) (int, readyBody) {
	t.Helper()
	code, b := get(t, d, "/readyz", "")
	var r readyBody
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("/readyz: %v: %s", err, b)
	}
	return code, r
}

func waitReady(t *testing.T, d *Daemon) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, r := readyz(t, d)
		if code == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %v", r.Reasons)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const clusterNode = `
node_name: n1
listeners: [{name: imap, protocol: imap, address: "127.0.0.1:0"}]
admin: {address: "127.0.0.1:0", token: "s3cret"}
cluster: {raft_address: "127.0.0.1:0", gossip_address: "127.0.0.1:0"}
`

func TestReadinessChecks(t *testing.T) {
	d := startNode(t, clusterNode+"data_dir: "+t.TempDir()+"\nbackends: [{id: b1, host: 127.0.0.1, imap_port: 1}]\n")
	waitReady(t, d)
	if !d.fsm.Loaded() {
		t.Fatal("caught-up latch not set once the table was loaded")
	}

	// The last backend is deleted: serving would refuse every login.
	if err := d.cluster.Apply(t.Context(), routing.Command{Type: routing.CmdDeleteBackend, Names: []string{"b1"}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, r := readyz(t, d)
		if code == 503 && slices.Equal(r.Reasons, []string{"routing: the routing table has no backends"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz %d %v", code, r.Reasons)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A backend arrives through the API: ready again, without a restart.
	b := routing.Backend{ID: "b1", Host: "127.0.0.1", IMAPPort: 1}
	if err := d.cluster.Apply(t.Context(), routing.Command{Type: routing.CmdPutBackend, Backend: &b}); err != nil {
		t.Fatal(err)
	}
	waitReady(t, d)

	// Stages add their own checks; the drain stage flips draining.
	var failing error = errors.New("auth server unreachable")
	d.addReadyCheck("auth", func() error { return failing })
	d.setDraining(true)
	code, r := readyz(t, d)
	if code != 503 || !slices.Equal(r.Reasons, []string{"draining", "auth: auth server unreachable"}) || r.Status != "not ready" {
		t.Fatalf("/readyz %d %+v", code, r)
	}
	if !d.Draining() {
		t.Fatal("Draining() false")
	}
	var st Status
	if code, b := get(t, d, "/v1/status", "s3cret"); code != 200 || json.Unmarshal(b, &st) != nil {
		t.Fatalf("/v1/status %d %s", code, b)
	}
	if st.Ready || !st.Draining || len(st.NotReady) != 2 {
		t.Fatalf("status readiness: ready %v draining %v %v", st.Ready, st.Draining, st.NotReady)
	}
	failing = nil
	d.setDraining(false)
	waitReady(t, d)

	// The metric follows.
	_, body := get(t, d, "/metrics", "")
	if !strings.Contains(string(body), "\nportico_ready 1\n") || !strings.Contains(string(body), "\nportico_draining 0\n") {
		t.Fatalf("portico_ready / portico_draining not exported as 1 / 0")
	}
	// /healthz stays 200 throughout; /v1/status needs the token, /metrics does not.
	if code, _ := get(t, d, "/healthz", ""); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	if code, _ := get(t, d, "/v1/status", ""); code != 401 {
		t.Fatalf("/v1/status without token: %d", code)
	}
	d.Shutdown(t.Context())
	if r := d.NotReady(); len(r) == 0 || r[0] != "shutting down" {
		t.Fatalf("after shutdown: %v", r)
	}
}

func TestStatusClusterAndContributors(t *testing.T) {
	d := startNode(t, clusterNode+"data_dir: "+t.TempDir()+`
backends: [{id: b1, host: 127.0.0.1, imap_port: 1}, {id: b2, host: 127.0.0.1, pop3_port: 2}]
pools: [{name: p, backends: [b1]}]
routes: {default_pool: p, users: {alice: {backend: b2}}}
`)
	waitReady(t, d)
	// A later stage contributes its section.
	d.addStatus(func(st *Status) { st.VIP = &VIPSection{Addresses: []string{"198.18.0.1"}, Owner: "n9"} })
	var st Status
	code, b := get(t, d, "/v1/status", "s3cret")
	if code != 200 || json.Unmarshal(b, &st) != nil {
		t.Fatalf("/v1/status %d %s", code, b)
	}
	if st.Node != "n1" || st.Role != "leader" || !st.Ready || st.Cluster == nil || st.Cluster.Leader != "n1" {
		t.Fatalf("status: %s", b)
	}
	if len(st.Cluster.Members) != 1 || st.Cluster.Members[0].Name != "n1" || st.Cluster.Members[0].State != "alive" {
		t.Fatalf("members: %+v", st.Cluster.Members)
	}
	if st.Routing.Backends != 2 || st.Routing.Pools != 1 || st.Routing.Users != 1 || st.Routing.AppliedIndex == 0 {
		t.Fatalf("routing: %+v", st.Routing)
	}
	if len(st.Backends) != 2 || st.Backends[0].ID != "b1" || st.Backends[0].State != "active" || st.Backends[0].Health == "" {
		t.Fatalf("backends: %+v", st.Backends)
	}
	if len(st.Listeners) != 1 || st.Listeners[0].Name != "imap" || st.Listeners[0].Address != d.Addr("imap").String() {
		t.Fatalf("listeners: %+v", st.Listeners)
	}
	if _, ok := st.Sessions["imap"]; !ok {
		t.Fatalf("sessions: %+v", st.Sessions)
	}
	if st.VIP == nil || st.VIP.Owner != "n9" {
		t.Fatalf("contributed VIP section missing: %s", b)
	}
}

func TestStatusStandalone(t *testing.T) {
	cfg, err := config.FromProxyFlags(config.ProxyFlags{From: []string{"imap://127.0.0.1:0"}, To: []string{"imap://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Admin.Address = "127.0.0.1:0"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d := startCfg(t, cfg)
	waitReady(t, d)
	st := d.Status()
	if st.Role != "standalone" || st.Cluster != nil || st.VIP != nil {
		t.Fatalf("standalone status: %+v", st)
	}
	if len(st.Backends) != 1 || st.Backends[0].Health != "-" {
		t.Fatalf("backends without health checks: %+v", st.Backends)
	}
	// Every node metric is exported, promlint-clean, by a node without a cluster too.
	_, body := get(t, d, "/metrics", "")
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"portico_build_info", "portico_sessions_open", "portico_logins_total", "portico_routing_table_entries", "process_open_fds"} {
		if mfs[n] == nil {
			t.Errorf("%s not exported", n)
		}
	}
}

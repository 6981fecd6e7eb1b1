package integration

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/ops/metrics"
)

// promServer is a real Prometheus server started by a test.
type promServer struct {
	t    *testing.T
	addr string
	cmd  *exec.Cmd
	log  *lockedBuf
}

// startPrometheus runs the prometheus binary (Debian package prometheus)
// with a temporary configuration scraping target every second and loading
// examples/alerts.yml. Without the binary the test is skipped, unless
// PORTICO_REQUIRE_DOVECOT=1 (CI), where it fails.
func startPrometheus(t *testing.T, target string) *promServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv(dovecot.EnvRequire) == "1" {
			t.Fatalf("prometheus binary not found (Debian package prometheus): %v", err)
		}
		t.Skipf("prometheus binary not found (install the Debian package prometheus): %v", err)
	}
	rules, err := filepath.Abs("../examples/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.91:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: portico
    static_configs:
      - targets: [%q]
`, rules, target)
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ps := &promServer{t: t, addr: addr, log: &lockedBuf{}}
	ps.cmd = exec.Command(bin, "--config.file="+cfgFile, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	ps.cmd.Stdout, ps.cmd.Stderr = ps.log, ps.log
	if err := ps.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = ps.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = ps.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = ps.cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", ps.log.String())
		}
	})
	waitFor(t, "prometheus ready", 30*time.Second, func() bool {
		select {
		case <-exited:
			t.Fatalf("prometheus exited:\n%s", ps.log.String())
		default:
		}
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return ps
}

// api GETs a Prometheus API path and decodes its "data".
func (ps *promServer) api(path string, q url.Values, data any) error {
	resp, err := http.Get("http://" + ps.addr + path + "?" + q.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var r struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("%s: %v: %s", path, err, raw)
	}
	if r.Status != "success" {
		return fmt.Errorf("%s: %s", path, r.Error)
	}
	return json.Unmarshal(r.Data, data)
}

type vector []struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query runs an instant query.
func (ps *promServer) query(expr string) (vector, error) {
	var d struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := ps.api("/api/v1/query", url.Values{"query": {expr}}, &d); err != nil {
		return nil, err
	}
	if d.ResultType != "vector" {
		return nil, nil // scalar results (valid, nothing to read here)
	}
	var v vector
	err := json.Unmarshal(d.Result, &v)
	return v, err
}

// scalar returns the single value of a query, or -1 when it has none.
func (ps *promServer) scalar(expr string) float64 {
	v, err := ps.query(expr)
	if err != nil {
		ps.t.Fatal(err)
	}
	if len(v) != 1 {
		return -1
	}
	s, _ := v[0].Value[1].(string)
	f, _ := strconv.ParseFloat(s, 64)
	return f
}

// A real Prometheus scrapes a node; its HTTP API returns the logins that
// happened; it loads the alert rules without errors; and every expression
// of the example dashboard runs. The node has a certificate (an implicit
// TLS listener) so that the expiry gauge and its alerts have data.
func TestPrometheusScrapesNode(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.88"})
	cert, key := demoCert(t)
	// A directory source (a popmap file naming bob), asked on a miss, so
	// that the portico_source_* panels and alerts have data: alice is not
	// in it and goes to the default pool.
	popmap := filepath.Join(t.TempDir(), "users.popmap")
	if err := os.WriteFile(popmap, []byte("bob: dc1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startPortico(t, fmt.Sprintf(`
tls:
  certificates: [{cert: %q, key: %q}]
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0"}
  - {name: imaps, protocol: imap, address: "127.0.0.1:0", tls: implicit}
limits: {auth_failure_delay: 10ms}
backends:
  - {id: dc1, host: %s, imap_port: %d, forward: id}
pools:
  - {name: main, backends: [dc1]}
routes: {default_pool: main}
sources:
  - {name: users, type: popmap, interval: 1s, popmap: {path: %q}, on_miss: {enabled: true}}
`, cert, key, dc.Addr, dc.IMAPPort, popmap))
	ps := startPrometheus(t, p.d.AdminAddr().String())
	waitFor(t, "the node scraped", 30*time.Second, func() bool {
		return ps.scalar(`up{job="portico"}`) == 1
	})

	const good, bad = 4, 1
	for i := 0; i < good+bad; i++ {
		c := dialLine(t, p.addr("imap"), false)
		c.until("* OK")
		pass := "secret"
		if i >= good {
			pass = "wrong"
		}
		c.send("a1 LOGIN alice " + pass + "\r\n")
		c.until("a1 ")
		c.send("a2 LOGOUT\r\n")
		c.readAll()
	}
	took := waitFor(t, "the login counts in Prometheus", 30*time.Second, func() bool {
		return ps.scalar(`sum(portico_logins_total{job="portico",result="ok"})`) == good &&
			ps.scalar(`sum(portico_logins_total{job="portico",result="bad_credentials"})`) == bad
	})
	t.Logf("login counts visible through the Prometheus API %v after the last login", took)
	if n := ps.scalar(`sum(portico_login_duration_seconds_count{job="portico"})`); n != good+bad {
		t.Errorf("login latency observations in Prometheus: %v, want %d", n, good+bad)
	}

	// The certificate expiry gauge, through Prometheus: the time left on
	// the demo certificate.
	leaf, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	x, err := x509.ParseCertificate(leaf.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	left := ps.scalar(`portico_tls_certificate_expiry_seconds{job="portico"}`)
	if want := time.Until(x.NotAfter).Seconds(); left < want-120 || left > want+1 {
		t.Errorf("certificate expiry gauge %v s, want about %v s", left, want)
	}

	// The alert rules load and evaluate without errors on live data.
	ruleText, err := os.ReadFile("../examples/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	nRules := strings.Count(string(ruleText), "- alert: ")
	waitFor(t, "every alert rule evaluated", 30*time.Second, func() bool {
		var d struct {
			Groups []struct {
				Rules []struct {
					Name           string `json:"name"`
					Health         string `json:"health"`
					LastError      string `json:"lastError"`
					LastEvaluation string `json:"lastEvaluation"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := ps.api("/api/v1/rules", url.Values{"type": {"alert"}}, &d); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, g := range d.Groups {
			for _, r := range g.Rules {
				if r.Health == "err" {
					t.Fatalf("alert %s: %s", r.Name, r.LastError)
				}
				if r.Health == "ok" {
					n++
				}
			}
		}
		return n == nRules // the rules of examples/alerts.yml
	})
	// Nothing fires on a healthy single node.
	var alerts struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	}
	if err := ps.api("/api/v1/alerts", nil, &alerts); err != nil {
		t.Fatal(err)
	}
	if len(alerts.Alerts) > 0 {
		t.Errorf("alerts on a healthy node: %+v", alerts.Alerts)
	}

	// The dashboard's expressions are valid PromQL over these metrics.
	raw, err := os.ReadFile("../examples/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	exprs := metrics.DashboardExprs(dash)
	// Rates need two samples of series that appeared with the logins.
	waitFor(t, "three scrapes since the logins", 30*time.Second, func() bool {
		return ps.scalar(`min(count_over_time(portico_sessions_ended_total{job="portico"}[1m]))`) >= 3
	})
	r := strings.NewReplacer("$instance", ".*", "$__rate_interval", "1m", "$__range", "1h")
	withData := 0
	for _, e := range exprs {
		v, err := ps.query(r.Replace(e))
		switch {
		case err != nil:
			t.Errorf("dashboard expression %q: %v", e, err)
		case len(v) > 0:
			withData++
		case !strings.Contains(e, "portico_vip_") && // no VIP on this node
			!strings.Contains(e, "portico_source_skipped_entries_total"): // only LDAP and SQL sources count skips, and this node's popmap source has none
			t.Errorf("dashboard expression %q returns nothing", e)
		}
	}
	t.Logf("%d dashboard expressions run, %d with data on a single node without VIP", len(exprs), withData)
}

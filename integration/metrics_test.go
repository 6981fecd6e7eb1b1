package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/ops/daemon"
	"github.com/portico-mail/portico/ops/metrics"
)

// startPorticoLogged is startPortico with the node's log kept in a buffer
// (JSON lines) for assertions on the access log.
func startPorticoLogged(t *testing.T, yamlText string) (*portico, *lockedBuf) {
	t.Helper()
	yamlText += fmt.Sprintf("\nadmin: {address: \"127.0.0.1:0\"}\ndata_dir: %q\ncluster: {raft_address: \"127.0.0.1:0\", gossip_address: \"127.0.0.1:0\"}\n", t.TempDir())
	cfg, err := config.Parse([]byte(yamlText))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yamlText)
	}
	buf := &lockedBuf{}
	var out io.Writer = buf
	if testing.Verbose() {
		out = io.MultiWriter(buf, testWriter{t})
	}
	return runPortico(t, cfg, daemon.Options{Logger: slog.New(slog.NewJSONHandler(out, nil))}), buf
}

// scrape fetches and parses a node's /metrics.
func scrape(t *testing.T, p *portico) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	resp, err := http.Get("http://" + p.d.AdminAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %v", resp.StatusCode, err)
	}
	tp := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := tp.TextToMetricFamilies(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return mfs, string(raw)
}

// value returns the value of the series of family name whose labels
// include all of want (a histogram: its count); ok=false if none.
func value(mfs map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
	sum, found := 0.0, false
next:
	for _, m := range mf.GetMetric() {
		labels := map[string]string{}
		for _, lp := range m.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum, found
}

// l builds a label set: l("listener", "imap", "result", "ok").
func l(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// readAll reads until the server closes, closes too (as a client does
// after LOGOUT / QUIT) and returns how many bytes came.
func (lc *lineConn) readAll() int {
	lc.t.Helper()
	n, err := io.Copy(io.Discard, lc.br)
	if err != nil {
		lc.t.Fatalf("reading to EOF: %v", err)
	}
	lc.c.Close()
	return int(n)
}

// Real logins through a node against a real Dovecot move every counter by
// exactly what happened; the exposition is promlint-clean and holds every
// catalogued metric; the access log has one complete line per login.
func TestMetricsAfterLogins(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.87"})
	cert, key := demoCert(t)
	p, logBuf := startPorticoLogged(t, fmt.Sprintf(`
node_name: metrics-node
tls:
  certificates: [{cert: %s, key: %s}]
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0"}
  - {name: imaps, protocol: imap, address: "127.0.0.1:0", tls: implicit}
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0"}
  - {name: imap-short, protocol: imap, address: "127.0.0.1:0", limits: {preauth_timeout: 300ms}}
limits: {auth_failure_delay: 10ms, max_errors: 3}
backends:
  - {id: dc1, host: %s, imap_port: %d, pop3_port: %d, forward: id}
pools:
  - {name: main, backends: [dc1]}
routes: {default_pool: main}
`, cert, key, dc.Addr, dc.IMAPPort, dc.POP3Port))
	waitFor(t, "readiness", 15*time.Second, func() bool {
		resp, err := http.Get("http://" + p.d.AdminAddr().String() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	bytesUp := map[string]int{}   // client -> backend after login, by listener
	bytesDown := map[string]int{} // backend -> client after login

	// imapSession logs in, sends NOOP and LOGOUT through the relay and
	// reads to the end, counting the relayed bytes.
	imapSession := func(listener string, implicitTLS bool, during func()) {
		c := dialLine(t, p.addr(listener), implicitTLS)
		c.until("* OK")
		c.send("a1 LOGIN alice secret\r\n")
		if got := c.until("a1 "); !strings.HasPrefix(got, "a1 OK") {
			t.Fatalf("login: %q", got)
		}
		if during != nil {
			during()
		}
		for _, cmd := range []string{"a2 NOOP\r\n", "a3 LOGOUT\r\n"} {
			c.send(cmd)
			bytesUp[listener] += len(cmd)
		}
		bytesDown[listener] += c.readAll()
	}
	// 1. Three IMAP sessions; during the first, the gauges show it.
	imapSession("imap", false, func() {
		mfs, _ := scrape(t, p)
		if v, _ := value(mfs, "portico_sessions_open", l("listener", "imap", "state", "relayed")); v != 1 {
			t.Errorf("relayed sessions during a session: %v", v)
		}
		if v, _ := value(mfs, "portico_backend_sessions", l("backend", "dc1")); v != 1 {
			t.Errorf("sessions on dc1 during a session: %v", v)
		}
	})
	imapSession("imap", false, nil)
	imapSession("imap", false, nil)
	// 2. Two wrong passwords, then LOGOUT.
	c := dialLine(t, p.addr("imap"), false)
	c.until("* OK")
	for _, tag := range []string{"b1", "b2"} {
		c.send(tag + " LOGIN alice wrong\r\n")
		if got := c.until(tag + " "); !strings.HasPrefix(got, tag+" NO") {
			t.Fatalf("wrong password: %q", got)
		}
	}
	c.send("b3 LOGOUT\r\n")
	c.readAll()
	// 3. One implicit-TLS session.
	imapSession("imaps", true, nil)
	// 4. POP3: one bad command, login, QUIT through the relay.
	c = dialLine(t, p.addr("pop3"), false)
	c.until("+OK")
	c.send("FOO\r\n")
	c.until("-ERR")
	c.send("USER alice\r\n")
	c.until("+OK")
	c.send("PASS secret\r\n")
	c.until("+OK")
	c.send("QUIT\r\n")
	bytesUp["pop3"] += len("QUIT\r\n")
	bytesDown["pop3"] += c.readAll()
	// 5. POP3 without login: QUIT before login.
	c = dialLine(t, p.addr("pop3"), false)
	c.until("+OK")
	c.send("QUIT\r\n")
	c.readAll()
	// 6. Three invalid IMAP commands: max_errors.
	c = dialLine(t, p.addr("imap"), false)
	c.until("* OK")
	for _, tag := range []string{"c1", "c2", "c3"} {
		c.send(tag + " FROB\r\n")
	}
	if got := c.until("* BYE"); !strings.Contains(got, "Too many invalid") {
		t.Fatalf("max_errors: %q", got)
	}
	c.readAll()
	// 7. Plaintext on the implicit-TLS port.
	c = dialLine(t, p.addr("imaps"), false)
	c.send("a1 LOGIN alice secret\r\n")
	c.readAll()
	// 8. A client that says nothing: preauth_timeout.
	c = dialLine(t, p.addr("imap-short"), false)
	c.until("* OK")
	if got := c.until("* BYE"); !strings.Contains(got, "inactivity") {
		t.Fatalf("timeout: %q", got)
	}
	c.readAll()

	// Sessions close asynchronously after the last byte.
	var mfs map[string]*dto.MetricFamily
	var text string
	waitFor(t, "every session accounted for", 10*time.Second, func() bool {
		mfs, text = scrape(t, p)
		relayed, _ := value(mfs, "portico_sessions_ended_total", l("phase", "relayed"))
		preauth, _ := value(mfs, "portico_sessions_ended_total", l("phase", "preauth"))
		// The open-sessions gauge is decremented apart from the ended
		// counter: a scrape can fall between the two (CI saw it 1).
		open, _ := value(mfs, "portico_sessions_open", nil)
		return relayed == 5 && preauth == 5 && open == 0
	})
	type check struct {
		name   string
		labels map[string]string
		want   float64
	}
	checks := []check{
		{"portico_logins_total", l("listener", "imap", "result", "ok"), 3},
		{"portico_logins_total", l("listener", "imap", "result", "bad_credentials"), 2},
		{"portico_logins_total", l("listener", "imaps", "result", "ok"), 1},
		{"portico_logins_total", l("listener", "pop3", "protocol", "pop3", "result", "ok"), 1},
		{"portico_logins_total", l("result", "backend_unavailable"), 0},
		{"portico_logins_total", l("result", "timeout"), 0},
		{"portico_login_duration_seconds", l("protocol", "imap", "result", "ok"), 4},
		{"portico_login_duration_seconds", l("protocol", "imap", "result", "bad_credentials"), 2},
		{"portico_login_duration_seconds", l("protocol", "pop3", "result", "ok"), 1},
		{"portico_backend_connect_duration_seconds", l("protocol", "imap"), 6},
		{"portico_backend_connect_duration_seconds", l("protocol", "pop3"), 1},
		{"portico_connections_total", l("listener", "imap"), 5},
		{"portico_connections_total", l("listener", "imaps"), 2},
		{"portico_connections_total", l("listener", "pop3"), 2},
		{"portico_connections_total", l("listener", "imap-short"), 1},
		{"portico_sessions_ended_total", l("listener", "imap", "phase", "relayed", "reason", "closed"), 3},
		{"portico_sessions_ended_total", l("listener", "imaps", "phase", "relayed", "reason", "closed"), 1},
		{"portico_sessions_ended_total", l("listener", "pop3", "phase", "relayed", "reason", "closed"), 1},
		{"portico_sessions_ended_total", l("listener", "imap", "phase", "preauth", "reason", "logout"), 1},
		{"portico_sessions_ended_total", l("listener", "imap", "phase", "preauth", "reason", "too_many_errors"), 1},
		{"portico_sessions_ended_total", l("listener", "pop3", "phase", "preauth", "reason", "logout"), 1},
		{"portico_sessions_ended_total", l("listener", "imaps", "phase", "preauth", "reason", "tls_handshake_failed"), 1},
		{"portico_sessions_ended_total", l("listener", "imap-short", "phase", "preauth", "reason", "timeout"), 1},
		{"portico_session_duration_seconds", l("protocol", "imap"), 4},
		{"portico_session_duration_seconds", l("protocol", "pop3"), 1},
		{"portico_preauth_errors_total", l("listener", "imap"), 3},
		{"portico_preauth_errors_total", l("listener", "pop3"), 1},
		{"portico_tls_handshake_failures_total", l("listener", "imaps", "reason", "error"), 1},
		{"portico_tls_handshake_failures_total", l("listener", "imaps", "reason", "timeout"), 0},
		{"portico_sessions_open", nil, 0},
		{"portico_backend_sessions", l("backend", "dc1"), 0},
		{"portico_routing_table_entries", l("kind", "backends"), 1},
		{"portico_routing_table_entries", l("kind", "pools"), 1},
		{"portico_backend_up", l("backend", "dc1"), 1},
		{"portico_ready", nil, 1},
		{"portico_draining", nil, 0},
		{"portico_raft_state", l("state", "leader"), 1},
	}
	for _, lst := range []string{"imap", "imaps", "pop3"} {
		checks = append(checks,
			check{"portico_relay_bytes_total", l("listener", lst, "direction", "client_to_backend"), float64(bytesUp[lst])},
			check{"portico_relay_bytes_total", l("listener", lst, "direction", "backend_to_client"), float64(bytesDown[lst])})
	}
	for _, ck := range checks {
		got, ok := value(mfs, ck.name, ck.labels)
		if !ok || got != ck.want {
			t.Errorf("%s%v = %v (present %v), want %v", ck.name, ck.labels, got, ok, ck.want)
		}
	}
	if bytesDown["imap"] == 0 || bytesUp["imap"] == 0 {
		t.Fatalf("nothing relayed? %v %v", bytesUp, bytesDown)
	}
	t.Logf("relayed bytes measured by the clients: up %v, down %v", bytesUp, bytesDown)

	// Build info carries this binary's version.
	if v, ok := value(mfs, "portico_build_info", l("version", daemon.Version, "commit", daemon.Commit)); !ok || v != 1 {
		t.Errorf("portico_build_info for %s/%s missing", daemon.Version, daemon.Commit)
	}
	// Every catalogued metric is exported (the VIP ones need a vip
	// section: TestMetricsVIP), and the exposition is promlint-clean.
	for _, info := range metrics.Catalog {
		if info.Source != "vip" && info.Source != "source" && mfs[info.Name] == nil {
			t.Errorf("catalogued metric %s missing from the scrape", info.Name)
		}
	}
	var fams []*dto.MetricFamily
	for _, mf := range mfs {
		fams = append(fams, mf)
	}
	if probs, err := promlint.NewWithMetricFamilies(fams).Lint(); err != nil || len(probs) > 0 {
		t.Errorf("promlint: %v %v", probs, err)
	}
	// No client-controlled value leaks into labels.
	if strings.Contains(text, "alice") || regexp.MustCompile(`="127\.0\.0\.1:\d+"`).MatchString(text) {
		t.Error("a user name or client address appears in /metrics")
	}

	// The access log: one JSON line per login attempt with node,
	// listener, protocol, client, user, result, latency (and backend).
	var logins []map[string]any
	for _, line := range strings.Split(logBuf.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "login" {
			logins = append(logins, rec)
		}
	}
	if len(logins) != 7 {
		t.Fatalf("%d login lines, want 7", len(logins))
	}
	results := map[string]int{}
	for _, rec := range logins {
		for _, k := range []string{"time", "node", "listener", "protocol", "client", "user", "result", "latency", "session"} {
			if rec[k] == nil || rec[k] == "" {
				t.Errorf("login line without %s: %v", k, rec)
			}
		}
		if rec["node"] != "metrics-node" || rec["user"] != "alice" || !strings.HasPrefix(fmt.Sprint(rec["client"]), "127.0.0.1:") {
			t.Errorf("login line: %v", rec)
		}
		if rec["result"] == "ok" && rec["backend"] != "dc1" {
			t.Errorf("successful login without its backend: %v", rec)
		}
		results[fmt.Sprint(rec["listener"], "/", rec["protocol"], "/", rec["result"])]++
	}
	want := map[string]int{"imap/imap/ok": 3, "imap/imap/bad_credentials": 2, "imaps/imap/ok": 1, "pop3/pop3/ok": 1}
	if fmt.Sprint(results) != fmt.Sprint(want) {
		t.Errorf("login lines by listener/protocol/result: %v, want %v", results, want)
	}

	// The status API and command agree with the metrics.
	out, err := exec.Command(porticoBinary(t), "status", "--admin", p.d.AdminAddr().String()).CombinedOutput()
	if err != nil {
		t.Fatalf("portico status: %v\n%s", err, out)
	}
	for _, want := range []string{`role:\s+leader`, `ready:\s+yes`, `metrics-node\s+alive\s+leader`, `dc1\s+127\.0\.0\.87 \(imap \d+, pop3 \d+\)\s+active\s+up\s+0`} {
		if !regexp.MustCompile(`(?m)^` + want).Match(out) {
			t.Errorf("portico status lacks %q:\n%s", want, out)
		}
	}
}

// The VIP metrics and status section, on a node that holds a virtual IP:
// run inside a network namespace of its own (root only), like vip's tests.
func TestMetricsVIP(t *testing.T) {
	if os.Getenv("PORTICO_METRICS_VIP_CHILD") == "1" {
		metricsVIPChild(t)
		return
	}
	if os.Getuid() != 0 {
		if os.Getenv(dovecot.EnvRequire) == "1" {
			t.Fatal("the VIP metrics test needs root (network namespaces)")
		}
		t.Skip("the VIP metrics test needs root (network namespaces)")
	}
	ns := fmt.Sprintf("ptmet%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run("ip", "-n", ns, "link", "set", "lo", "up")
	run("ip", "-n", ns, "link", "add", "vip0", "type", "veth", "peer", "name", "vip1")
	run("ip", "-n", ns, "link", "set", "vip0", "up")
	run("ip", "-n", ns, "link", "set", "vip1", "up")
	run("ip", "-n", ns, "addr", "add", "198.18.7.1/24", "dev", "vip0")
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestMetricsVIP$", "-test.v")
	cmd.Env = append(os.Environ(), "PORTICO_METRICS_VIP_CHILD=1")
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	if err != nil || !strings.Contains(string(out), "--- PASS: TestMetricsVIP") {
		t.Fatalf("child failed: %v", err)
	}
}

func metricsVIPChild(t *testing.T) {
	p := startPortico(t, `
node_name: vip-node
listeners: [{name: imap, protocol: imap, address: "127.0.0.1:0"}]
backends: [{id: b1, host: 127.0.0.1, imap_port: 1}]
vip: {addresses: [{address: 198.18.7.100/24, interface: vip0}]}
`)
	var mfs map[string]*dto.MetricFamily
	waitFor(t, "the VIP acquired", 15*time.Second, func() bool {
		mfs, _ = scrape(t, p)
		v, _ := value(mfs, "portico_vip_owner", l("vip", "198.18.7.100"))
		return v == 1
	})
	if v, _ := value(mfs, "portico_vip_ownership_changes_total", nil); v != 1 {
		t.Errorf("ownership changes %v, want 1", v)
	}
	waitFor(t, "an announcement", 10*time.Second, func() bool {
		mfs, _ = scrape(t, p)
		v, _ := value(mfs, "portico_vip_announcements_total", nil)
		return v >= 1
	})
	var missing []string
	for _, info := range metrics.Catalog {
		if info.Source == "vip" && mfs[info.Name] == nil {
			missing = append(missing, info.Name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("VIP metrics missing: %v", missing)
	}
	st := p.d.Status()
	if st.VIP == nil || st.VIP.Owner != "vip-node" || !st.VIP.SelfOwns || len(st.VIP.Addresses) != 1 || st.VIP.Addresses[0] != "198.18.7.100/24@vip0" {
		t.Errorf("status VIP section: %+v", st.VIP)
	}
}

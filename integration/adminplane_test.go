package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/testcert"
	"github.com/portico-mail/portico/ops/admin"
)

// porticoCLI runs the real portico binary with a clean PORTICO_*
// environment plus env.
func porticoCLI(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(porticoBinary(t), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PORTICO_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// useAdminTLS gives every node its own admin certificate signed by one CA
// and switches its admin section to TLS with a token file; it returns the
// CA file.
func useAdminTLS(t *testing.T, nodes []*procNode) string {
	t.Helper()
	ca, err := testcert.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "admin-ca.pem")
	if err := ca.WriteCA(caFile); err != nil {
		t.Fatal(err)
	}
	for _, nd := range nodes {
		if _, _, err := ca.Issue(filepath.Join(nd.dir, "admin"), nd.ip); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(nd.dir, "admin.token"), []byte(nd.token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(nd.cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		plain := fmt.Sprintf("admin: {address: %q, token: %s}", nd.admin, nd.token)
		withTLS := fmt.Sprintf("admin: {address: %q, token_file: admin.token,\n"+
			"  tls: {cert_file: admin/cert.pem, key_file: admin/key.pem, ca_file: %s}}", nd.admin, caFile)
		if !strings.Contains(string(b), plain) {
			t.Fatalf("%s: admin line not found in\n%s", nd.cfgPath, b)
		}
		if err := os.WriteFile(nd.cfgPath, []byte(strings.Replace(string(b), plain, withTLS, 1)), 0o600); err != nil {
			t.Fatal(err)
		}
		if nd.tls, err = admin.ClientTLS(caFile, ""); err != nil {
			t.Fatal(err)
		}
	}
	return caFile
}

// Two real nodes whose admin APIs serve TLS with their own certificates
// from one CA, driven by the real CLI: with --config (address, token file
// and CA from the node's file), with --admin/--ca and with the
// environment. Followers forward a write and a consistent read to the
// leader over https, an import goes through a follower, a reload and an
// in-place upgrade of the leader keep the API on TLS. Without the CA, or
// over plain http, the CLI fails and says why.
func TestAdminTLSWithCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.84"})
	nodes := newCluster(t, 2, dc, "routes: {default_pool: main}")
	caFile := useAdminTLS(t, nodes)
	for _, nd := range nodes {
		nd.start()
	}
	waitSeeded(t, nodes)

	cli := func(nd *procNode, args ...string) string {
		t.Helper()
		out, err := porticoCLI(t, nil, append(args, "--config", nd.cfgPath)...)
		if err != nil {
			t.Fatalf("portico %s --config %s: %v\n%s", strings.Join(args, " "), nd.name, err, out)
		}
		return out
	}
	var leader, follower *procNode
	waitFor(t, "a leader", 20*time.Second, func() bool {
		out, err := porticoCLI(t, nil, "cluster", "leader", "--json", "--config", nodes[0].cfgPath)
		if err != nil {
			return false
		}
		var l struct {
			Name, API string
		}
		if json.Unmarshal([]byte(out), &l) != nil || l.Name == "" {
			return false
		}
		if !strings.HasPrefix(l.API, "https://") {
			t.Fatalf("leader's API is not gossiped as https: %s", out)
		}
		for _, nd := range nodes {
			if nd.name == l.Name {
				leader = nd
			} else {
				follower = nd
			}
		}
		return true
	})

	// A write and a consistent read on the follower go to the leader over
	// https (the follower verifies it with ca_file).
	if out := cli(follower, "route", "set", "alice@example.com", "--backend", "dc1"); !strings.Contains(out, "ok (raft index") {
		t.Fatalf("route set on the follower: %s", out)
	}
	if out := cli(follower, "route", "get", "alice@example.com", "--consistent", "--json"); !strings.Contains(out, `"dc1"`) {
		t.Fatalf("consistent read on the follower: %s", out)
	}
	popmap := filepath.Join(t.TempDir(), "users.popmap")
	os.WriteFile(popmap, []byte("bulk1@example.org: dc1\nbulk2@example.org: "+dc.Addr+"\n"), 0o600)
	if out := cli(follower, "import", popmap, "--format", "popmap"); !strings.Contains(out, "imported 2 users") {
		t.Fatalf("import through the follower: %s", out)
	}
	waitFor(t, "imported users on the leader", 10*time.Second, func() bool { return hasUser(leader, "bulk2@example.org") })
	if out := cli(follower, "status"); !strings.Contains(out, "ready:") || !strings.Contains(out, "leader:") {
		t.Fatalf("status: %s", out)
	}

	// The same node by address, CA and token from flags; and from the
	// environment, where a bare host:port with a CA means https.
	tokenFile := filepath.Join(follower.dir, "admin.token")
	if out, err := porticoCLI(t, nil, "cluster", "members", "--admin", "https://"+follower.admin, "--ca", caFile, "--token-file", tokenFile); err != nil || strings.Count(out, "alive") != 2 {
		t.Fatalf("members with --admin https:// --ca: %v\n%s", err, out)
	}
	env := []string{"PORTICO_ADMIN=" + follower.admin, "PORTICO_CA=" + caFile, "PORTICO_TOKEN=" + follower.token}
	if out, err := porticoCLI(t, env, "drain", "--status", "--json"); err != nil || !strings.Contains(out, `"draining": false`) {
		t.Fatalf("drain --status from the environment: %v\n%s", err, out)
	}
	env = []string{"PORTICO_CONFIG=" + follower.cfgPath}
	if out, err := porticoCLI(t, env, "route", "lookup", "alice@example.com"); err != nil || !strings.Contains(out, "-> dc1") {
		t.Fatalf("PORTICO_CONFIG: %v\n%s", err, out)
	}

	// Failures that say what to do.
	out, err := porticoCLI(t, nil, "status", "--admin", "https://"+follower.admin, "--token", follower.token)
	if err == nil || !strings.Contains(out, "--ca") {
		t.Fatalf("without the CA: %v\n%s", err, out)
	}
	out, err = porticoCLI(t, nil, "status", "--admin", "http://"+follower.admin, "--token", follower.token)
	if err == nil || !strings.Contains(out, "serves HTTPS") {
		t.Fatalf("plain http to the TLS listener: %v\n%s", err, out)
	}
	out, err = porticoCLI(t, nil, "status", "--admin", "https://"+follower.admin, "--ca", caFile)
	if err == nil || !strings.Contains(out, "HTTP 401") {
		t.Fatalf("without the token: %v\n%s", err, out)
	}

	// Reload (a new certificate for the leader, in place).
	if out := cli(leader, "reload"); !strings.Contains(out, "reloaded") || strings.Contains(out, "restart") {
		t.Fatalf("reload: %s", out)
	}

	// In-place upgrade of the leader: the new process serves the inherited
	// admin socket with TLS.
	out = cli(leader, "upgrade", "--json")
	var up struct {
		PID int `json:"pid"`
	}
	if json.Unmarshal([]byte(out), &up) != nil || up.PID == 0 {
		t.Fatalf("upgrade: %s", out)
	}
	t.Cleanup(func() { _ = syscall.Kill(up.PID, syscall.SIGKILL) })
	waitFor(t, "the upgraded leader answering over https", 20*time.Second, func() bool {
		out, err := porticoCLI(t, nil, "status", "--json", "--config", leader.cfgPath)
		return err == nil && strings.Contains(out, `"ready": true`)
	})
	if out := cli(follower, "route", "set", "carol@example.com", "--backend", "dc1"); !strings.Contains(out, "ok (raft index") {
		t.Fatalf("write after the upgrade: %s", out)
	}
	if strings.Contains(leader.log()+follower.log(), "certificate signed by unknown authority") {
		t.Fatalf("a node could not verify a peer's admin certificate:\n%s", leader.log()+follower.log())
	}
}

// A browser page attacking a node whose admin API has the single-node
// defaults (loopback, no token): DNS rebinding (a foreign Host) and
// cross-site form, text/plain and multipart POSTs to drain, reload and
// import are refused with JSON errors, and the node stays ready; the CLI's
// own drain then works, so the refusals were not an accident.
func TestAdminBrowserAttack(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.84"})
	nodes := newCluster(t, 1, dc, "routes: {default_pool: main}")
	nd := nodes[0]
	// No token: rewrite the admin line to the loopback default's shape.
	b, _ := os.ReadFile(nd.cfgPath)
	plain := fmt.Sprintf("admin: {address: %q, token: %s}", nd.admin, nd.token)
	os.WriteFile(nd.cfgPath, []byte(strings.Replace(string(b), plain, fmt.Sprintf("admin: {address: %q}", nd.admin), 1)), 0o600)
	nd.token = ""
	nd.start()
	waitSeeded(t, nodes)

	base := "http://" + nd.admin
	port := nd.admin[strings.LastIndexByte(nd.admin, ':'):]
	browser := &http.Client{Timeout: 10 * time.Second}
	send := func(method, path, host string, header map[string]string, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if host != "" {
			req.Host = host
		}
		req.Header.Set("User-Agent", "Mozilla/5.0")
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := browser.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(raw)
	}
	ready := func() bool {
		code, _ := send("GET", "/readyz", "", nil, "")
		return code == 200
	}
	if !ready() {
		t.Fatal("not ready before the attack")
	}
	rebound := "attacker.example" + port
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://attacker.example", "Sec-Fetch-Site": "cross-site"}
	for _, c := range []struct {
		name, method, path, host string
		header                   map[string]string
		body                     string
		want                     int
	}{
		{"rebound status", "GET", "/v1/status", rebound, nil, "", 421},
		{"rebound metrics", "GET", "/metrics", rebound, nil, "", 421},
		{"rebound readyz", "GET", "/readyz", rebound, nil, "", 421},
		{"rebound JSON drain (same-origin for the rebound page)", "POST", "/v1/drain", rebound, map[string]string{"Content-Type": "application/json", "Origin": "http://" + rebound, "Sec-Fetch-Site": "same-origin"}, "", 421},
		{"cross-site form drain", "POST", "/v1/drain", "", form, "x=1", 403},
		{"cross-site form reload", "POST", "/v1/reload", "", form, "", 403},
		{"form drain, no Origin (old browser)", "POST", "/v1/drain", "", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, "x=1", 415},
		{"text/plain drain", "POST", "/v1/drain", "", map[string]string{"Content-Type": "text/plain"}, "{}", 415},
		{"text/plain reload", "POST", "/v1/reload", "", map[string]string{"Content-Type": "text/plain"}, "", 415},
		{"text/plain import", "POST", "/v1/import?format=popmap", "", map[string]string{"Content-Type": "text/plain"}, "mallory@example.com: dc1\n", 415},
		{"multipart import", "POST", "/v1/import", "", map[string]string{"Content-Type": "multipart/form-data; boundary=b"}, "--b\r\n\r\nmallory@example.com: dc1\r\n--b--\r\n", 415},
		{"JSON import, foreign Origin", "POST", "/v1/import", "", map[string]string{"Content-Type": "application/json", "Origin": "http://attacker.example"}, `{"data": "mallory@example.com: dc1\n"}`, 403},
	} {
		code, body := send(c.method, c.path, c.host, c.header, c.body)
		var e struct{ Error string }
		if code != c.want || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
			t.Errorf("%s: %d %s, want %d with a JSON error", c.name, code, body, c.want)
		}
	}
	if !ready() {
		t.Fatal("the attack took the node out of service")
	}
	if hasUser(nd, "mallory@example.com") {
		t.Fatal("the attack imported a route")
	}
	out, err := porticoCLI(t, nil, "status", "--json", "--config", nd.cfgPath)
	if err != nil || !strings.Contains(out, `"draining": false`) {
		t.Fatalf("status after the attack: %v\n%s", err, out)
	}

	// The operator's CLI, on the same unauthenticated loopback API.
	if out, err := porticoCLI(t, nil, "drain", "--config", nd.cfgPath); err != nil {
		t.Fatalf("drain: %v\n%s", err, out)
	}
	waitFor(t, "not ready after the CLI's drain", 10*time.Second, func() bool { return !ready() })
	if out, err := porticoCLI(t, nil, "drain", "--cancel", "--config", nd.cfgPath); err != nil {
		t.Fatalf("drain --cancel: %v\n%s", err, out)
	}
	waitFor(t, "ready again", 10*time.Second, ready)
}

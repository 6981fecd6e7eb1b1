package daemon

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/testcert"
	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/ops/config"
)

// tlsNode starts a one-node cluster from a file whose admin listener serves
// TLS with certificate dir/a; it returns the node, the file and a client
// that trusts the test CA.
func tlsNode(t *testing.T) (*Daemon, string, *testcert.CA, *http.Client) {
	t.Helper()
	dir := t.TempDir()
	ca, err := testcert.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := ca.WriteCA(caFile); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.Issue(filepath.Join(dir, "a"), "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "portico.yaml")
	writeAdminTLSConfig(t, path, "a", nil)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(cfg, Options{Logger: discardLogger(), ConfigPath: path})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Shutdown(t.Context()) })
	tc, err := admin.ClientTLS(caFile, "")
	if err != nil {
		t.Fatal(err)
	}
	return d, path, ca, &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
}

// writeAdminTLSConfig writes the node's file with the admin certificate in
// directory certDir (relative to the file), and allowed hosts.
func writeAdminTLSConfig(t *testing.T, path, certDir string, allowed []string) {
	t.Helper()
	hosts, _ := json.Marshal(allowed)
	tlsLine := ""
	if certDir != "" {
		tlsLine = ", tls: {cert_file: " + certDir + "/cert.pem, key_file: " + certDir + "/key.pem, ca_file: ca.pem}"
	}
	yml := "node_name: n1\ndata_dir: data\n" +
		"listeners: [{name: imap, protocol: imap, address: \"127.0.0.1:0\"}]\n" +
		"admin: {address: \"127.0.0.1:0\", token: s3cret, allowed_hosts: " + string(hosts) + tlsLine + "}\n" +
		"cluster: {raft_address: \"127.0.0.1:0\", gossip_address: \"127.0.0.1:0\"}\n" +
		"backends: [{id: b1, host: 127.0.0.1, imap_port: 1}]\n"
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
}

func adminReq(t *testing.T, c *http.Client, d *Daemon, method, path, host, ctype, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "https://"+d.AdminAddr().String()+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer s3cret")
	if host != "" {
		req.Host = host
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A node with admin TLS: the API answers over HTTPS only, the cluster
// gossips an https:// API address, and a reload replaces the certificate
// and allowed_hosts in place (no restart needed), while turning TLS off is
// reported as needing a restart and changes nothing.
func TestAdminTLSAndReload(t *testing.T) {
	d, path, ca, c := tlsNode(t)
	waitReadyTLS(t, c, d)
	code, body := adminReq(t, c, d, "GET", "/v1/cluster/leader", "", "", "")
	if code != 200 || !strings.Contains(body, `"api": "https://127.0.0.1:`) {
		t.Fatalf("leader: %d %s", code, body)
	}
	if code, _ := adminReq(t, c, d, "GET", "/metrics", "admin.example.com", "", ""); code != 421 {
		t.Fatalf("unlisted name: %d", code)
	}
	serial := func() string {
		conn, err := tls.Dial("tcp", d.AdminAddr().String(), c.Transport.(*http.Transport).TLSClientConfig)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := serial()

	// New certificate (new files) and a new allowed name.
	if _, _, err := ca.Issue(filepath.Join(filepath.Dir(path), "b"), "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	writeAdminTLSConfig(t, path, "b", []string{"admin.example.com"})
	code, body = adminReq(t, c, d, "POST", "/v1/reload", "", "application/json", "")
	if code != 200 || strings.Contains(body, "restart_required") {
		t.Fatalf("reload: %d %s", code, body)
	}
	if serial() == before {
		t.Fatal("the reload did not replace the certificate")
	}
	if code, _ := adminReq(t, c, d, "GET", "/metrics", "admin.example.com", "", ""); code != 200 {
		t.Fatalf("newly allowed name: %d", code)
	}

	// A broken certificate: the reload fails and nothing changes.
	os.WriteFile(filepath.Join(filepath.Dir(path), "b", "key.pem"), []byte("junk"), 0o600)
	writeAdminTLSConfig(t, path, "b", nil)
	if code, body := adminReq(t, c, d, "POST", "/v1/reload", "", "application/json", ""); code != 422 || !strings.Contains(body, "admin TLS") {
		t.Fatalf("reload with a broken key: %d %s", code, body)
	}
	if code, _ := adminReq(t, c, d, "GET", "/metrics", "admin.example.com", "", ""); code != 200 {
		t.Fatal("a failed reload changed allowed_hosts")
	}

	// TLS off needs a restart; the listener goes on serving HTTPS.
	writeAdminTLSConfig(t, path, "", nil)
	code, body = adminReq(t, c, d, "POST", "/v1/reload", "", "application/json", "")
	if code != 200 || !strings.Contains(body, `"admin"`) {
		t.Fatalf("reload turning TLS off: %d %s", code, body)
	}
	if code, _ := adminReq(t, c, d, "GET", "/v1/status", "", "", ""); code != 200 {
		t.Fatal("HTTPS stopped")
	}
}

func waitReadyTLS(t *testing.T, c *http.Client, d *Daemon) {
	t.Helper()
	waitReadyWith(t, func() int {
		code, _ := adminReq(t, c, d, "GET", "/readyz", "", "", "")
		return code
	})
}

// POST /v1/import takes the file as a JSON string; the old text/plain body
// is refused (it is what a cross-site form could send).
func TestImportJSON(t *testing.T) {
	d, _, _, c := tlsNode(t)
	waitReadyTLS(t, c, d)
	for _, x := range []struct {
		ctype, body string
		want        int
		msg         string
	}{
		{"text/plain", "alice: b1\n", 415, "application/json"},
		{"application/json", `{"format": "csv", "data": "user,target\nalice,b1\nbob,b1\n"}`, 200, `"imported": 2`},
		{"application/json", `{"data": "carol: 127.0.0.1:1\n"}`, 200, `"imported": 1`},
		{"application/json", `{"format": "xml", "data": ""}`, 400, "format must be"},
		{"application/json", `{"format": "popmap", "data": "x", "extra": 1}`, 400, "unknown field"},
	} {
		code, body := adminReq(t, c, d, "POST", "/v1/import", "", x.ctype, x.body)
		if code != x.want || !strings.Contains(body, x.msg) {
			t.Errorf("%s %q: %d %s, want %d with %q", x.ctype, x.body, code, body, x.want, x.msg)
		}
	}
	if code, body := adminReq(t, c, d, "GET", "/v1/routes/users/carol", "", "", ""); code != 200 || !strings.Contains(body, "b1") {
		t.Fatalf("carol: %d %s", code, body)
	}
}

func waitReadyWith(t *testing.T, probe func() int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for probe() != 200 {
		if time.Now().After(deadline) {
			t.Fatal("not ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

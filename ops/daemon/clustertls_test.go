package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/cluster/pki"
	"github.com/portico-mail/portico/ops/config"
)

// A reload replaces the node's cluster certificate in place (renewal, CA
// rotation) without asking for a restart; a certificate for another node
// name, or one that does not verify, changes nothing.
func TestClusterTLSReload(t *testing.T) {
	dir := t.TempDir()
	issue := func(ca, caKey []byte, node, prefix string) {
		c, k, err := pki.CreateNodeCert(ca, caKey, node, time.Hour, nil)
		if err != nil {
			t.Fatal(err)
		}
		writeTestFile(t, filepath.Join(dir, prefix+".pem"), c)
		writeTestFile(t, filepath.Join(dir, prefix+"-key.pem"), k)
	}
	caA, caAKey, _ := pki.CreateCA("A", time.Hour)
	caB, caBKey, _ := pki.CreateCA("B", time.Hour)
	writeTestFile(t, filepath.Join(dir, "ca.pem"), caA)
	issue(caA, caAKey, "n1", "node")
	cfgPath := filepath.Join(dir, "portico.yaml")
	yml := fmt.Sprintf(`
node_name: n1
data_dir: %s
listeners: [{name: imap, protocol: imap, address: "127.0.0.1:0"}]
admin: {address: "127.0.0.1:0", token: "s3cret"}
backends: [{id: b1, host: 127.0.0.1, imap_port: 1}]
cluster:
  raft_address: "127.0.0.1:0"
  gossip_address: "127.0.0.1:0"
  tls: {ca_file: %s, cert_file: %s, key_file: %s}
`, filepath.Join(dir, "data"), filepath.Join(dir, "ca.pem"), filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem"))
	writeTestFile(t, cfgPath, []byte(yml))
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(cfg, Options{Logger: discardLogger(), ConfigPath: cfgPath})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Shutdown(t.Context()) })
	waitReady(t, d)
	first := d.cluster.TLSIdentity()

	// CA rotation, step 2 and 3: a bundle of both CAs, a certificate of B.
	writeTestFile(t, filepath.Join(dir, "ca.pem"), append(append([]byte{}, caA...), caB...))
	issue(caB, caBKey, "n1", "node")
	res, err := d.ReloadFile()
	if err != nil || len(res.RestartRequired) > 0 {
		t.Fatalf("reload: %+v %v", res, err)
	}
	second := d.cluster.TLSIdentity()
	if second.KeyID == first.KeyID || second.Name != "n1" {
		t.Fatalf("certificate not replaced: %v -> %v", first.KeyID, second.KeyID)
	}
	// A certificate for another node: refused, nothing changes.
	issue(caB, caBKey, "n2", "node")
	if _, err := d.ReloadFile(); err == nil || !strings.Contains(err.Error(), `is for node "n2"`) {
		t.Fatalf("reload with n2's certificate: %v", err)
	}
	// One that does not verify against the bundle: refused.
	caC, caCKey, _ := pki.CreateCA("C", time.Hour)
	issue(caC, caCKey, "n1", "node")
	if _, err := d.ReloadFile(); err == nil || !strings.Contains(err.Error(), "not a certificate of this cluster") {
		t.Fatalf("reload with a certificate of an unknown CA: %v", err)
	}
	if d.cluster.TLSIdentity().KeyID != second.KeyID {
		t.Fatal("a refused reload changed the certificate")
	}
	waitReady(t, d)
}

func writeTestFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

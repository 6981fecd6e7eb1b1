package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/cluster/pki"
)

// writePKI issues a CA and a certificate for node into dir and returns the
// cluster.tls flow mapping.
func writePKI(t *testing.T, dir, node string) string {
	t.Helper()
	caC, caK, err := pki.CreateCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, k, err := pki.CreateNodeCert(caC, caK, node, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"ca.pem": caC, "n.pem": c, "n-key.pem": k} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return "{ca_file: " + filepath.Join(dir, "ca.pem") + ", cert_file: " + filepath.Join(dir, "n.pem") + ", key_file: " + filepath.Join(dir, "n-key.pem") + "}"
}

const gossipKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

// The node-to-node security settings: a node with peers or on a
// non-loopback address needs a node certificate, and the gossip key on a
// non-loopback address; each refusal names what to set and how.
func TestClusterTrust(t *testing.T) {
	dir := t.TempDir()
	tlsN1 := writePKI(t, dir, "n1")
	base := good + "node_name: n1\ndata_dir: " + dir + "\n"
	cases := []struct {
		name, cluster, want string
	}{
		{"single node on loopback: nothing needed", `{}`, ""},
		{"join without certificate", `{join: ["127.0.0.2:7145"]}`, "a node with peers (join or bootstrap_expect) needs a node certificate"},
		{"bootstrap_expect without certificate", `{bootstrap_expect: 3, tls: ` + tlsN1 + `}`, ""},
		{"LAN address without anything", `{raft_address: "10.0.0.1:7144", gossip_address: "10.0.0.1:7145"}`, "portico tls ca create"},
		{"LAN address without the key", `{raft_address: "10.0.0.1:7144", gossip_address: "10.0.0.1:7145", tls: ` + tlsN1 + `}`, "required: 10.0.0.1:7144 and 10.0.0.1:7145 are not loopback addresses"},
		{"wildcard gossip", `{gossip_address: "0.0.0.0:7145", encrypt_key: ` + gossipKey + `}`, "needs a node certificate"},
		{"LAN address, certificate and key", `{raft_address: "10.0.0.1:7144", gossip_address: "10.0.0.1:7145", tls: ` + tlsN1 + `, encrypt_key: ` + gossipKey + `}`, ""},
		{"certificate of another node", `{join: ["127.0.0.2:7145"], tls: ` + strings.Replace(tlsN1, "n.pem", "ca.pem", 1) + `}`, "cluster.tls"},
		{"incomplete tls", `{tls: {ca_file: ` + filepath.Join(dir, "ca.pem") + `}}`, "cluster.tls.cert_file"},
		{"missing file", `{tls: {ca_file: /nonexistent/ca.pem, cert_file: x, key_file: y}}`, "cluster CA: open /nonexistent/ca.pem"},
	}
	for _, c := range cases {
		cfg, err := Parse([]byte(base + "cluster: " + c.cluster + "\n"))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		case c.want == "" && strings.Contains(c.cluster, "tls:") && cfg.Cluster.Material == nil:
			t.Errorf("%s: certificate not loaded", c.name)
		}
	}
	// A certificate for another node name.
	other := t.TempDir()
	tlsN2 := writePKI(t, other, "n2")
	if _, err := Parse([]byte(base + "cluster: {tls: " + tlsN2 + "}\n")); err == nil || !strings.Contains(err.Error(), `is for node "n2", but this node is "n1"`) {
		t.Errorf("certificate of n2 on n1: %v", err)
	}
}

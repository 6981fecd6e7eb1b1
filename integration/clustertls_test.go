package integration

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/portico-mail/portico/cluster/pki"
)

// clusterPKI issues a cluster CA and a node certificate for each name in
// a temporary directory, as `portico tls ca create` and `portico tls cert
// create` do, and returns each node's cluster.tls setting (a YAML flow
// mapping) by name.
func clusterPKI(t *testing.T, names ...string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	caCert, caKey, err := pki.CreateCA("test cluster CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	writeFile(t, caFile, caCert)
	writeFile(t, filepath.Join(dir, "ca-key.pem"), caKey)
	out := map[string]string{}
	for _, n := range names {
		cert, key, err := pki.CreateNodeCert(caCert, caKey, n, time.Hour, nil)
		if err != nil {
			t.Fatal(err)
		}
		cf, kf := filepath.Join(dir, n+".pem"), filepath.Join(dir, n+"-key.pem")
		writeFile(t, cf, cert)
		writeFile(t, kf, key)
		out[n] = fmt.Sprintf("{ca_file: %q, cert_file: %q, key_file: %q}", caFile, cf, kf)
	}
	return out
}

// gossipKey returns a fresh gossip encryption key (portico keygen).
func gossipKey(t *testing.T) string {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(k)
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

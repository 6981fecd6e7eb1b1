package integration

import (
	"crypto/rand"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portico-mail/portico/integration/testcert"
	"github.com/portico-mail/portico/ops/config"
)

// The README's bare-metal walkthrough stays true: its node configuration
// validates (with its files in place), and its nftables partition recipe
// is the one the drills run.
func TestReadmeVIPWalkthrough(t *testing.T) {
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	const marker = "# /etc/portico/portico.yaml on mail-proxy-1\n"
	i := strings.Index(readme, marker)
	if i < 0 {
		t.Fatal("README: node 1 configuration not found")
	}
	yml := readme[i:]
	yml = yml[:strings.Index(yml, "```")]

	dir := t.TempDir()
	cert, key, certPEM, err := testcert.Write(dir, "mail.example.com")
	if err != nil {
		t.Fatal(err)
	}
	gk := make([]byte, 32)
	_, _ = rand.Read(gk)
	files := map[string]string{
		"admin.token":  "0123456789abcdef0123456789abcdef\n",
		"gossip.key":   base64.StdEncoding.EncodeToString(gk) + "\n",
		"admin-ca.pem": string(certPEM),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The cluster certificates, made by the README's own commands.
	for _, args := range [][]string{
		{"tls", "ca", "create", "--dir", dir},
		{"tls", "cert", "create", "--node", "mail-proxy-1", "--ca", filepath.Join(dir, "portico-ca.pem"), "--ca-key", filepath.Join(dir, "portico-ca-key.pem"), "--dir", dir},
	} {
		if out, err := exec.Command(porticoBinary(t), args...).CombinedOutput(); err != nil {
			t.Fatalf("portico %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	yml = strings.NewReplacer("/etc/portico/mail.pem", cert, "/etc/portico/mail.key", key,
		"/etc/portico/", dir+"/", "/var/lib/portico", filepath.Join(dir, "data")).Replace(yml)
	cfg, err := config.Parse([]byte(yml))
	if err != nil {
		t.Fatalf("README node configuration: %v\n%s", err, yml)
	}
	if len(cfg.VIP.Addresses) != 2 || cfg.Cluster.BootstrapExpect != 3 || cfg.Admin.TLS == nil || cfg.Cluster.Material == nil || len(cfg.Cluster.Key) == 0 {
		t.Fatalf("README node configuration: %+v %+v %+v", cfg.VIP, cfg.Cluster, cfg.Admin)
	}
	if !strings.Contains(readme, drillNft) {
		t.Errorf("README's drill.nft differs from the one the drills run:\n%s", drillNft)
	}
}

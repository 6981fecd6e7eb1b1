package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portico-mail/portico/ops/admin"
)

const oneListener = "listeners: [{protocol: imap, address: 127.0.0.1:1143}]\n"

func TestAdminAllowedHostsAndTLS(t *testing.T) {
	c, err := Parse([]byte(oneListener + `admin:
  allowed_hosts: [portico1.example.com, "proxy.example.com:8443", "[2001:db8::1]"]
  tls: {cert_file: /etc/portico/admin.pem, key_file: /etc/portico/admin.key}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Admin.AllowedHosts) != 3 || c.Admin.TLS == nil || c.Admin.TLS.CertFile != "/etc/portico/admin.pem" {
		t.Fatalf("%+v", c.Admin)
	}
	for _, bad := range []struct{ yaml, want string }{
		{"admin: {allowed_hosts: [\"https://x.example\"]}", "admin.allowed_hosts[0] (line 2)"},
		{"admin: {allowed_hosts: [ok.example, \"*.example.com\"]}", "admin.allowed_hosts[1]"},
		{"admin: {allowed_hosts: [\"x.example:0\"]}", "port outside"},
		{"admin: {tls: {cert_file: a.pem}}", "admin.tls (line 2): both cert_file and key_file"},
		{"admin: {tls: {cert_file: a.pem, key_file: a.key, ca_file: /nonexistent/ca.pem}}", "admin.tls.ca_file"},
		{"admin: {tls: {cert: a.pem}}", "field cert not found"},
	} {
		_, err := Parse([]byte(oneListener + bad.yaml))
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want %q", bad.yaml, err, bad.want)
		}
	}
}

// LoadAdmin gives a CLI what it needs from a node's file: the admin
// section validated, relative file names resolved, the token read from its
// file; sections it does not need (an unreadable gossip key) do not stop it.
func TestLoadAdmin(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "admin.token"), []byte("tok-123\n"), 0o600)
	path := filepath.Join(dir, "portico.yaml")
	os.WriteFile(path, []byte(oneListener+`admin:
  address: "0.0.0.0:7143"
  token_file: admin.token
  tls: {cert_file: admin.pem, key_file: admin.key, ca_file: admin.token}
cluster:
  advertise: 192.0.2.11
  encrypt_key_file: /nonexistent/gossip.key
`), 0o600)
	if _, err := Load(path); err == nil {
		t.Fatal("Load took the missing gossip key (the test assumes it does not)")
	}
	a, adv, err := LoadAdmin(path)
	if err != nil {
		t.Fatal(err)
	}
	if a.Address != "0.0.0.0:7143" || a.Token != "tok-123" || adv != "192.0.2.11" ||
		a.TLS.CertFile != filepath.Join(dir, "admin.pem") || a.TLS.CAFile != filepath.Join(dir, "admin.token") {
		t.Fatalf("%+v %+v %q", a, a.TLS, adv)
	}
	// Defaults, and errors that name the file and the key.
	os.WriteFile(path, []byte(oneListener), 0o600)
	if a, _, err := LoadAdmin(path); err != nil || a.Address != admin.DefaultConfig().Address || a.TLS != nil {
		t.Fatalf("defaults: %+v %v", a, err)
	}
	os.WriteFile(path, []byte(oneListener+"admin: {token_file: missing.token}\n"), 0o600)
	if _, _, err := LoadAdmin(path); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "admin.token_file") {
		t.Fatalf("missing token file: %v", err)
	}
	os.WriteFile(path, []byte(oneListener+"admin: {adress: x}\n"), 0o600)
	if _, _, err := LoadAdmin(path); err == nil || !strings.Contains(err.Error(), "adress") {
		t.Fatalf("unknown key: %v", err)
	}
	if _, _, err := LoadAdmin(filepath.Join(dir, "none.yaml")); err == nil {
		t.Fatal("missing file")
	}
}

package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/portico-mail/portico/ops/admin"
)

// Admin configures the admin HTTP listener (API, /metrics, /healthz).
type Admin struct {
	// Address to listen on; default admin.DefaultConfig's. "off" disables
	// it.
	Address string `yaml:"address"`
	// Token is the bearer token for /v1/; TokenFile reads it from a file.
	// Without a token the address must be a loopback address.
	Token     string `yaml:"token"`
	TokenFile string `yaml:"token_file"`
	// AllowedHosts are names (or name:port) the listener also answers to
	// in the Host header, besides its own addresses: DNS names operators
	// and Prometheus use for it, a proxy in front of it.
	AllowedHosts []string `yaml:"allowed_hosts"`
	// TLS makes the listener serve HTTPS.
	TLS *AdminTLS `yaml:"tls"`
}

// AdminTLS is the admin listener's certificate, and the CA its clients
// (the portico CLI with --config, the other nodes) verify it with.
type AdminTLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// CAFile is for clients; without it they trust the system's roots and
	// CertFile itself (a self-signed certificate).
	CAFile string `yaml:"ca_file"`
}

func (v *validator) admin() {
	a := &v.c.Admin
	if a.Address == "" {
		a.Address = admin.DefaultConfig().Address
	}
	if a.Address == "off" {
		return
	}
	host, _, err := net.SplitHostPort(a.Address)
	if err != nil {
		v.errf("admin.address", "%q is not host:port", a.Address)
		return
	}
	if a.Token != "" && a.TokenFile != "" {
		v.errf("admin.token_file", "set token or token_file, not both")
	}
	if a.TokenFile != "" {
		b, err := os.ReadFile(a.TokenFile)
		if err != nil {
			v.errf("admin.token_file", "%v", err)
		} else if a.Token = strings.TrimSpace(string(b)); a.Token == "" {
			v.errf("admin.token_file", "%s is empty", a.TokenFile)
		}
	}
	if a.Token == "" && !Loopback(host) {
		v.errf("admin.address", "%s is not a loopback address: set admin.token (or token_file) to expose the admin API", a.Address)
	}
	for i, h := range a.AllowedHosts {
		if _, _, err := admin.ParseHost(h); err != nil {
			v.errf(fmt.Sprintf("admin.allowed_hosts[%d]", i), "%v", err)
		}
	}
	if t := a.TLS; t != nil {
		if t.CertFile == "" || t.KeyFile == "" {
			v.errf("admin.tls", "both cert_file and key_file are required")
		}
		if t.CAFile != "" {
			if _, err := os.Stat(t.CAFile); err != nil {
				v.errf("admin.tls.ca_file", "%v", err)
			}
		}
	}
}

// Loopback reports whether host (a name or an IP) is this machine's
// loopback: "localhost" or a loopback address.
func Loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// LoadAdmin reads only what an admin API client needs from a node's
// configuration file: the admin section (address, token, TLS), and
// cluster.advertise (where peers reach a node bound to a wildcard
// address). The whole file is decoded strictly, but only the admin
// section is validated, so that a file whose other secrets the caller
// cannot read (the gossip key) still serves.
func LoadAdmin(path string) (*Admin, string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, "", fmt.Errorf("%s: empty configuration", path)
		}
		return nil, "", fmt.Errorf("%s: %w", path, cleanYAMLError(err))
	}
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err == nil {
		c.root = &root
	}
	c.resolvePaths(filepath.Dir(path))
	v := &validator{c: &c}
	v.admin()
	if len(v.errs) > 0 {
		return nil, "", fmt.Errorf("%s: %w", path, v.errs)
	}
	return &c.Admin, c.Cluster.Advertise, nil
}

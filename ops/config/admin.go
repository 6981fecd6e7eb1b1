package config

import (
	"net"
	"net/netip"
	"os"
	"strings"
)

// Admin configures the admin HTTP listener (API, /metrics, /healthz).
type Admin struct {
	// Address to listen on; default 127.0.0.1:7143. "off" disables it.
	Address string `yaml:"address"`
	// Token is the bearer token for /v1/; TokenFile reads it from a file.
	// Without a token the address must be a loopback address.
	Token     string `yaml:"token"`
	TokenFile string `yaml:"token_file"`
}

// DefaultAdminAddress is where the admin API listens by default.
const DefaultAdminAddress = "127.0.0.1:7143"

func (v *validator) admin() {
	a := &v.c.Admin
	if a.Address == "" {
		a.Address = DefaultAdminAddress
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
	if a.Token == "" && !loopback(host) {
		v.errf("admin.address", "%s is not a loopback address: set admin.token (or token_file) to expose the admin API", a.Address)
	}
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

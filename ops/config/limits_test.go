package config

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node"
)

// Connection limits: finite by default (the total from the descriptor
// limit, 100 per client address), -1 for none, and the throttle's trusted
// networks exempt from the per-address limit; preauth_lifetime defaults to
// 3m and may be set globally or per listener.
func TestConnectionLimitDefaults(t *testing.T) {
	c, err := Parse([]byte(strings.Replace(good, "  max_connections: 100\n", "", 1)))
	if err != nil {
		t.Fatal(err)
	}
	nc := c.NodeConfig()
	if want := node.DefaultMaxConnections(); nc.MaxConnections != want || want <= 0 {
		t.Errorf("max_connections default %d, want %d from the descriptor limit", nc.MaxConnections, want)
	}
	if nc.MaxConnectionsPerIP != node.DefaultConfig().MaxConnectionsPerIP {
		t.Errorf("max_connections_per_ip default %d", nc.MaxConnectionsPerIP)
	}
	if len(nc.PerIPExempt) != 2 || !nc.PerIPExempt[0].Contains(netip.MustParseAddr("127.0.0.1")) {
		t.Errorf("exempt %v, want the throttle's trusted networks (loopback)", nc.PerIPExempt)
	}
	if lim := c.EffectiveLimits(0); lim.PreAuthLifetime != 3*time.Minute {
		t.Errorf("preauth_lifetime default %v", lim.PreAuthLifetime)
	}

	cfg := strings.Replace(good, "  max_connections: 100\n", "  max_connections: -1\n  max_connections_per_ip: -1\n  preauth_lifetime: 90s\n", 1)
	cfg = strings.Replace(cfg, "    address: 127.0.0.1:1110\n", "    address: 127.0.0.1:1110\n    limits: {preauth_lifetime: 10m}\n", 1)
	cfg += "throttle:\n  trusted_networks: [192.0.2.10]\n"
	c, err = Parse([]byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	nc = c.NodeConfig()
	if nc.MaxConnections != 0 || nc.MaxConnectionsPerIP != 0 {
		t.Errorf("-1 should mean no limit: %d, %d", nc.MaxConnections, nc.MaxConnectionsPerIP)
	}
	if len(nc.PerIPExempt) != 1 || nc.PerIPExempt[0] != netip.MustParsePrefix("192.0.2.10/32") {
		t.Errorf("exempt %v", nc.PerIPExempt)
	}
	if a, b := c.EffectiveLimits(0).PreAuthLifetime, c.EffectiveLimits(1).PreAuthLifetime; a != 90*time.Second || b != 10*time.Minute {
		t.Errorf("preauth_lifetime %v, %v", a, b)
	}

	for _, bad := range []string{"  max_connections: -2\n", "  max_connections_per_ip: -5\n", "  preauth_lifetime: 500ms\n"} {
		_, err := Parse([]byte(strings.Replace(good, "  max_connections: 100\n", bad, 1)))
		if err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

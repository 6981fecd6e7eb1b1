package config

import (
	"strings"
	"testing"

	"github.com/portico-mail/portico/vip"
)

// The vip section: the leader mode by default, the spread mode's keys and
// their defaults, and the refusals that keep the two apart.
func TestVIPSection(t *testing.T) {
	base := "listeners: [{protocol: imap, address: 127.0.0.1:1143}]\n"
	c, err := Parse([]byte(base + "vip: {addresses: [{address: 198.18.0.100/24, interface: eth0}]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.VIP.Mode != VIPModeLeader || c.VIP.NotifyTimeout.D() != vip.DefaultNotifyTimeout || c.VIP.Lease != 0 {
		t.Fatalf("leader-mode defaults: %+v", c.VIP)
	}
	c, err = Parse([]byte(base + `vip:
  mode: spread
  rebalance: true
  notify: /usr/local/sbin/vip-notify --quiet
  addresses:
    - {address: 198.18.0.101/24, interface: eth0, prefer: [n1, n2]}
    - {address: 198.18.0.102/24, interface: eth0}
`))
	if err != nil {
		t.Fatal(err)
	}
	x := c.VIP
	if x.Mode != VIPModeSpread || x.Lease.D() != vip.DefaultLease || x.RebalanceDelay.D() != vip.DefaultRebalanceDelay ||
		!x.Rebalance || len(x.Addresses[0].Prefer) != 2 || x.Notify != "/usr/local/sbin/vip-notify --quiet" {
		t.Fatalf("spread mode: %+v", x)
	}
	for _, tc := range []struct{ vip, want string }{
		{"{mode: both, addresses: [{address: 198.18.0.1/24, interface: eth0}]}", "vip.mode"},
		{"{mode: spread, preferred: [n1], addresses: [{address: 198.18.0.1/24, interface: eth0}]}", "vip.preferred"},
		{"{addresses: [{address: 198.18.0.1/24, interface: eth0, prefer: [n1]}]}", "prefer"},
		{"{rebalance: true, addresses: [{address: 198.18.0.1/24, interface: eth0}]}", "vip.mode"},
		{"{mode: spread, lease: 50ms, addresses: [{address: 198.18.0.1/24, interface: eth0}]}", "vip.lease"},
		{"{notify: vip-notify, addresses: [{address: 198.18.0.1/24, interface: eth0}]}", "vip.notify"},
		{"{mode: spread, addresses: [{address: 198.18.0.1/24, interface: eth0, prefer: [\"a b\"]}]}", "prefer"},
	} {
		_, err := Parse([]byte(base + "vip: " + tc.vip + "\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("vip %s: %v, want an error about %s", tc.vip, err, tc.want)
		}
	}
}

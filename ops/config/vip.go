package config

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/portico-mail/portico/vip"
)

// VIP configures the floating service address(es) held by one node at a
// time (the raft leader).
type VIP struct {
	Addresses []VIPAddress `yaml:"addresses"`
	// Preferred nodes get the VIP back after PreemptDelay of being healthy
	// members; empty (the default): no preemption.
	Preferred    []string `yaml:"preferred"`
	PreemptDelay Duration `yaml:"preempt_delay"` // default vip.DefaultPreemptDelay
	// Announcements after acquiring and while owning; zero values take
	// vip.DefaultConfig's.
	BurstCount    int      `yaml:"burst_count"`
	BurstInterval Duration `yaml:"burst_interval"`
	Refresh       Duration `yaml:"refresh"`
	Reconcile     Duration `yaml:"reconcile"`
	// MoveDrain bounds how long `vip move` waits for sessions to end at a
	// response boundary before moving anyway; default vip.DefaultMoveDrain.
	MoveDrain Duration `yaml:"move_drain"`
}

// VIPAddress is one virtual address with its network prefix.
type VIPAddress struct {
	Address   string `yaml:"address"`   // e.g. 198.18.0.100/24 or fd00::100/64
	Interface string `yaml:"interface"` // e.g. eth0

	Prefix netip.Prefix `yaml:"-"`
}

func (v *validator) vip() {
	x := &v.c.VIP
	if len(x.Addresses) == 0 {
		if len(x.Preferred) > 0 {
			v.errf("vip.preferred", "set without vip.addresses")
		}
		return
	}
	if v.c.Standalone {
		v.errf("vip", "needs the cluster (not available on a standalone node, nor with portico proxy)")
	}
	seen := map[netip.Addr]bool{}
	for i := range x.Addresses {
		a := &x.Addresses[i]
		p := fmt.Sprintf("vip.addresses[%d]", i)
		pf, err := netip.ParsePrefix(a.Address)
		if err != nil {
			v.errf(p+".address", "%q is not address/prefix (e.g. 198.18.0.100/24)", a.Address)
			continue
		}
		if seen[pf.Addr()] {
			v.errf(p+".address", "%s listed twice", pf.Addr())
		}
		seen[pf.Addr()] = true
		a.Prefix = pf
		if a.Interface == "" {
			v.errf(p+".interface", "required")
		}
	}
	if x.PreemptDelay == 0 {
		x.PreemptDelay = Duration(vip.DefaultPreemptDelay)
	}
	if x.MoveDrain == 0 {
		x.MoveDrain = Duration(vip.DefaultMoveDrain)
	}
	if x.Reconcile != 0 && x.Reconcile.D() < 10*time.Millisecond {
		v.errf("vip.reconcile", "at least 10ms")
	}
}

package config

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/portico-mail/portico/vip"
)

// VIP configures the floating service addresses: in the leader mode (the
// default) all of them held by the raft leader, in the spread mode each
// placed on one node by the leader (active-active).
type VIP struct {
	// Mode is "leader" (every address on the raft leader) or "spread"
	// (each address on one node, placed by the leader).
	Mode      string       `yaml:"mode"`
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
	// Lease (spread mode): how long a node holds its addresses after it
	// last reached the leader; default vip.DefaultLease.
	Lease Duration `yaml:"lease"`
	// Rebalance (spread mode) moves addresses of live nodes back to their
	// preferred nodes and towards balance, one at a time, RebalanceDelay
	// apart; off by default (a node that returns gets nothing back).
	Rebalance      bool     `yaml:"rebalance"`
	RebalanceDelay Duration `yaml:"rebalance_delay"` // default vip.DefaultRebalanceDelay
	// Notify is a program (with fixed arguments, split on spaces, no
	// shell) run when this node acquires or releases an address, with
	// the address, "acquire" or "release", and the node's name appended.
	Notify        string   `yaml:"notify"`
	NotifyTimeout Duration `yaml:"notify_timeout"` // default vip.DefaultNotifyTimeout
}

// VIP modes.
const (
	VIPModeLeader = "leader"
	VIPModeSpread = "spread"
)

// VIPAddress is one virtual address with its network prefix.
type VIPAddress struct {
	Address   string `yaml:"address"`   // e.g. 198.18.0.100/24 or fd00::100/64
	Interface string `yaml:"interface"` // e.g. eth0
	// Prefer (spread mode): nodes that should hold the address, in
	// order, when they can.
	Prefer []string `yaml:"prefer"`

	Prefix netip.Prefix `yaml:"-"`
}

func (v *validator) vip() {
	x := &v.c.VIP
	switch x.Mode {
	case "":
		x.Mode = VIPModeLeader
	case VIPModeLeader, VIPModeSpread:
	default:
		v.errf("vip.mode", "%q: leader or spread", x.Mode)
	}
	if len(x.Addresses) == 0 {
		if len(x.Preferred) > 0 {
			v.errf("vip.preferred", "set without vip.addresses")
		}
		return
	}
	if x.Mode == VIPModeSpread && len(x.Preferred) > 0 {
		v.errf("vip.preferred", "leader mode only: in the spread mode give each address its own prefer list")
	}
	if x.Mode == VIPModeLeader && (x.Rebalance || x.Lease != 0 || x.RebalanceDelay != 0) {
		v.errf("vip.mode", "lease, rebalance and rebalance_delay need mode: spread")
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
		if len(a.Prefer) > 0 && x.Mode != VIPModeSpread {
			v.errf(p+".prefer", "needs vip.mode: spread (in the leader mode, vip.preferred)")
		}
		for _, n := range a.Prefer {
			if n == "" || strings.ContainsAny(n, " \t\r\n/") {
				v.errf(p+".prefer", "%q is not a node name", n)
			}
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
	if x.Mode == VIPModeSpread {
		if x.Lease == 0 {
			x.Lease = Duration(vip.DefaultLease)
		}
		if x.Lease.D() < 200*time.Millisecond {
			v.errf("vip.lease", "at least 200ms")
		}
		if x.RebalanceDelay == 0 {
			x.RebalanceDelay = Duration(vip.DefaultRebalanceDelay)
		}
	}
	if x.Notify != "" {
		if f := strings.Fields(x.Notify); len(f) == 0 || !filepath.IsAbs(f[0]) {
			v.errf("vip.notify", "%q: an absolute path to a program (arguments may follow, separated by spaces)", x.Notify)
		}
	}
	if x.NotifyTimeout == 0 {
		x.NotifyTimeout = Duration(vip.DefaultNotifyTimeout)
	}
}

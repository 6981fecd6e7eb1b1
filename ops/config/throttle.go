package config

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/portico-mail/portico/node/throttle"
)

// Throttle configures the failed-login throttle (brute-force protection,
// node/throttle): progressive delays, then temporary blocks per client
// network, per user from a network, and for users under attack, counted
// across the cluster. It is on by default; every field has a default.
type Throttle struct {
	Enabled *bool `yaml:"enabled"` // default true
	// Window: failures are counted over this sliding span; default 10m.
	Window Duration `yaml:"window"`
	// BlockFor: how long a blocked network or user/network pair stays
	// blocked; default 15m.
	BlockFor Duration `yaml:"block_for"`
	// Delay: the first failure's reply waits this long (at least
	// limits.auth_failure_delay applies anyway), doubling with each further
	// failure of the user from the network up to MaxDelay; defaults 1s and
	// 15s; delay 0s turns the progressive delay off.
	Delay    *Duration `yaml:"delay"`
	MaxDelay Duration  `yaml:"max_delay"`
	// Limits; 0 turns a rule off.
	IPLimit     *int `yaml:"ip_limit"`      // failures from a network (all users); default 50
	UserIPLimit *int `yaml:"user_ip_limit"` // failures of a user from a network; default 10
	UserLimit   *int `yaml:"user_limit"`    // failures of a user from all networks (under attack); default 100
	// UnderAttackLimit replaces user_ip_limit while the user is under
	// attack; default 3.
	UnderAttackLimit int `yaml:"under_attack_limit"`
	// A network is an IPv4 address masked to IPv4Prefix bits (default 32)
	// or an IPv6 address masked to IPv6Prefix bits (default 64).
	IPv4Prefix int `yaml:"ipv4_prefix"`
	IPv6Prefix int `yaml:"ipv6_prefix"`
	// TrustedNetworks are exempt (webmail servers, monitoring); default
	// the loopback networks, [] for none.
	TrustedNetworks []string `yaml:"trusted_networks"`
	// MaxEntries caps the counters kept in memory; default 100000.
	MaxEntries int `yaml:"max_entries"`

	trusted []netip.Prefix
}

func (v *validator) throttle() {
	t := &v.c.Throttle
	def := throttle.DefaultConfig()
	const p = "throttle"
	if t.Enabled == nil {
		on := def.Enabled
		t.Enabled = &on
	}
	dur := func(name string, d *Duration, dflt, lo, hi time.Duration) {
		if *d == 0 {
			*d = Duration(dflt)
		}
		if d.D() < lo || d.D() > hi {
			v.errf(p+"."+name, "%s is outside %s..%s", d.D(), lo, hi)
		}
	}
	dur("window", &t.Window, def.Window, time.Second, 24*time.Hour)
	dur("block_for", &t.BlockFor, def.BlockFor, time.Second, 7*24*time.Hour)
	if t.Delay == nil {
		d := Duration(def.Delay)
		t.Delay = &d
	} else if t.Delay.D() > time.Minute {
		v.errf(p+".delay", "%s is over 1m", t.Delay.D())
	}
	dur("max_delay", &t.MaxDelay, def.MaxDelay, 0, 2*time.Minute)
	if t.MaxDelay < *t.Delay {
		v.errf(p+".max_delay", "%s is below delay %s", t.MaxDelay.D(), t.Delay.D())
	}
	limit := func(name string, n **int, dflt int) {
		if *n == nil {
			*n = &dflt
		} else if **n < 0 || **n > 1_000_000 {
			v.errf(p+"."+name, "%d is outside 0..1000000 (0 turns the rule off)", **n)
		}
	}
	limit("ip_limit", &t.IPLimit, def.IPLimit)
	limit("user_ip_limit", &t.UserIPLimit, def.UserIPLimit)
	limit("user_limit", &t.UserLimit, def.UserLimit)
	if t.UnderAttackLimit == 0 {
		t.UnderAttackLimit = def.UnderAttackLimit
	} else if t.UnderAttackLimit < 1 || t.UnderAttackLimit > 1_000_000 {
		v.errf(p+".under_attack_limit", "%d is outside 1..1000000", t.UnderAttackLimit)
	}
	if t.IPv4Prefix == 0 {
		t.IPv4Prefix = def.IPv4Prefix
	} else if t.IPv4Prefix < 8 || t.IPv4Prefix > 32 {
		v.errf(p+".ipv4_prefix", "%d is outside 8..32", t.IPv4Prefix)
	}
	if t.IPv6Prefix == 0 {
		t.IPv6Prefix = def.IPv6Prefix
	} else if t.IPv6Prefix < 32 || t.IPv6Prefix > 128 {
		v.errf(p+".ipv6_prefix", "%d is outside 32..128", t.IPv6Prefix)
	}
	if t.MaxEntries == 0 {
		t.MaxEntries = def.MaxEntries
	} else if t.MaxEntries < 1000 || t.MaxEntries > 10_000_000 {
		v.errf(p+".max_entries", "%d is outside 1000..10000000", t.MaxEntries)
	}
	t.trusted = nil
	if t.TrustedNetworks == nil {
		for _, pf := range def.Trusted {
			t.TrustedNetworks = append(t.TrustedNetworks, pf.String())
		}
	}
	for i, s := range t.TrustedNetworks {
		pf, err := parsePrefix(s)
		if err != nil {
			v.errf(fmt.Sprintf("%s.trusted_networks[%d]", p, i), "%v", err)
			continue
		}
		t.trusted = append(t.trusted, pf)
	}
}

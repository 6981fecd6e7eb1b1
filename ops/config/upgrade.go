package config

import (
	"path/filepath"
	"time"
)

// Upgrade configures in-place binary upgrades (`portico upgrade`,
// SIGUSR2).
type Upgrade struct {
	// Binary is the program the new process runs; default: the path this
	// process was started from (replace the file, then upgrade).
	Binary string `yaml:"binary"`
	// Timeout bounds each step of the new process's start-up; default
	// DefaultUpgrade's.
	Timeout Duration `yaml:"timeout"`
	// SessionGrace: how long the old process keeps relaying its sessions
	// before ending the rest at a response boundary; default
	// DefaultUpgrade's.
	SessionGrace Duration `yaml:"session_grace"`
	// LeaderHold: upgrading the VIP owner (the raft leader), the other
	// voters hold their elections this long while the new process
	// restarts raft and wins the next election, so the VIP stays on the
	// node; default DefaultUpgrade's, 0s to hand leadership and the VIP
	// over instead.
	LeaderHold *Duration `yaml:"leader_hold"`
}

// DefaultUpgrade is the upgrade section's default: 60 s for each step of
// the new process's start-up, an hour for the old process's sessions, the
// other voters' elections held for 10 s when the VIP owner upgrades.
func DefaultUpgrade() Upgrade {
	hold := Duration(10 * time.Second)
	return Upgrade{Timeout: Duration(60 * time.Second), SessionGrace: Duration(time.Hour), LeaderHold: &hold}
}

func (v *validator) upgrade() {
	u := &v.c.Upgrade
	def := DefaultUpgrade()
	if u.Timeout == 0 {
		u.Timeout = def.Timeout
	} else if u.Timeout < 0 {
		v.errf("upgrade.timeout", "must be positive")
	}
	if u.SessionGrace == 0 {
		u.SessionGrace = def.SessionGrace
	} else if u.SessionGrace < 0 {
		v.errf("upgrade.session_grace", "must be positive")
	}
	if u.LeaderHold == nil {
		u.LeaderHold = def.LeaderHold
	} else if *u.LeaderHold != 0 && (*u.LeaderHold < Duration(3*time.Second) || *u.LeaderHold > Duration(5*time.Minute)) {
		v.errf("upgrade.leader_hold", "between 3s and 5m, or 0s")
	}
	if u.Binary != "" && !filepath.IsAbs(u.Binary) {
		v.errf("upgrade.binary", "%q must be an absolute path", u.Binary)
	}
}

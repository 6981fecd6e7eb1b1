package daemon

import "github.com/portico-mail/portico/ops/config"

// setupOps installs operations features: metrics, health, drain, upgrade.
func (d *Daemon) setupOps(cfg *config.Config) error {
	_ = cfg
	return nil
}

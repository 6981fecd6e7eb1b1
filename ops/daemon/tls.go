package daemon

import "github.com/portico-mail/portico/ops/config"

// warnConfig logs the settings of cfg that are valid but weaken security
// (config.Warnings: a listener accepting TLS 1.0 or 1.1), at start and at
// each reload, so that they stay visible for as long as they are set.
func (d *Daemon) warnConfig(cfg *config.Config) {
	for _, w := range cfg.Warnings() {
		d.Log.Warn("configuration weakens security", "warning", w)
	}
}

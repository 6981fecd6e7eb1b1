package daemon

import (
	"github.com/portico-mail/portico/node"
	"github.com/portico-mail/portico/ops/config"
)

// setupAuth installs authentication sources and abuse protection. With the
// default passthrough authentication there is nothing to do: d.env's
// Director routes by user and the backend checks the password.
func (d *Daemon) setupAuth(cfg *config.Config, nc *node.Config) error {
	_, _ = cfg, nc
	return nil
}

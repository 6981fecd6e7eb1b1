package daemon

import (
	"github.com/portico-mail/portico/node"
	"github.com/portico-mail/portico/ops/config"
)

// setupAuth installs authentication sources and abuse protection. With the
// default passthrough authentication d.env's Director routes by user and
// the backend checks the password; listeners with `auth: {mode: http}`
// ask an nginx auth_http server instead (authhttp.go).
func (d *Daemon) setupAuth(cfg *config.Config, nc *node.Config) error {
	_ = nc
	// Master-user logins ("user*master") are routed to user's backend.
	d.env.SetMasterSeparator(cfg.Routes.MasterUserSeparator)
	d.onReload(func(next *config.Config) (func(), error) {
		return func() { d.env.SetMasterSeparator(next.Routes.MasterUserSeparator) }, nil
	})
	// auth_http wraps d.env.Director; abuse protection that must run
	// before any authentication source wraps it after this.
	return d.setupAuthHTTP(cfg)
}

package daemon

import (
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/routing"
)

// setupRouting installs the route source: the table from the
// configuration file, replaced as a whole on reload.
func (d *Daemon) setupRouting(cfg *config.Config) error {
	table, err := routing.NewTable(cfg.RoutingSpec())
	if err != nil {
		return err
	}
	d.static = routing.NewStatic(table)
	d.router = d.static
	d.onReload(func(next *config.Config) (func(), error) {
		t, err := routing.NewTable(next.RoutingSpec())
		if err != nil {
			return nil, err
		}
		return func() { d.static.Swap(t) }, nil
	})
	return nil
}

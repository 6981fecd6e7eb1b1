package daemon

import (
	"context"
	"net/netip"
	"time"

	"github.com/portico-mail/portico/node/throttle"
	"github.com/portico-mail/portico/ops/admin/throttleapi"
	"github.com/portico-mail/portico/ops/config"
)

// gossipThrottle is the throttle's gossip channel (1 is backend health).
const gossipThrottle = 2

// setupThrottle installs the failed-login throttle (brute-force
// protection) in every authentication mode: sessions ask it before their
// Director and tell it each result. With a cluster its counters are
// gossiped (broadcasts of changes, full state at push/pull); `portico
// proxy` counts locally. A reload changes its settings in place.
func (d *Daemon) setupThrottle(cfg *config.Config) error {
	l := throttle.New(cfg.Throttle.LimiterConfig(), nil)
	if err := d.Metrics.Register(throttle.NewCollector(l)); err != nil {
		return err
	}
	if d.cluster != nil {
		agent := d.cluster
		l.SetGossip(&throttle.Gossip{Broadcast: func(b []byte) { agent.Broadcast(gossipThrottle, b) }})
		agent.Register(gossipThrottle, l)
	}
	d.env.Throttle = l
	if d.admin != nil {
		throttleapi.Register(d.admin, l, d.Log.With("component", "throttle"))
	}
	log := d.Log.With("component", "throttle")
	l.OnBlock(func(scope string, ip netip.Addr, user string, until time.Time) {
		log.Warn("blocking after too many failed logins", "scope", scope, "client", ip, "user", user,
			"until", until.UTC().Format(time.RFC3339))
	})
	d.onStart(func() error {
		l.Start()
		return nil
	})
	d.onClose(func(context.Context) { l.Close() })
	d.onReload(func(next *config.Config) (func(), error) {
		c := next.Throttle.LimiterConfig()
		return func() { l.SetConfig(c) }, nil
	})
	if c := l.Config(); c.Enabled {
		d.Log.Info("throttle", "window", c.Window, "block_for", c.BlockFor, "ip_limit", c.IPLimit,
			"user_ip_limit", c.UserIPLimit, "user_limit", c.UserLimit, "trusted_networks", len(c.Trusted))
	}
	return nil
}

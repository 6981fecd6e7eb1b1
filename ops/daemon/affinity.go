package daemon

import (
	"context"

	"github.com/portico-mail/portico/node/affinity"
	"github.com/portico-mail/portico/ops/config"
)

// gossipAffinity is the users' affinity's gossip channel (1 is backend
// health, 2 the throttle).
const gossipAffinity = 3

// setupAffinity installs the users' affinity in shared_storage pools:
// relayed sessions bind it (session.Env.Affinity), route lookups consult
// it (the routing table's SetAffinity). With a cluster its bindings are
// gossiped (broadcasts of changes, full state at push/pull); `portico
// proxy` keeps them locally. A reload changes its settings in place.
func (d *Daemon) setupAffinity(cfg *config.Config) error {
	t := affinity.New(cfg.Affinity.TableConfig(), nil)
	if err := d.Metrics.Register(affinity.NewCollector(t)); err != nil {
		return err
	}
	if d.cluster != nil {
		agent := d.cluster
		t.SetGossip(&affinity.Gossip{
			Self:      agent.Name(),
			Broadcast: func(b []byte) { agent.Broadcast(gossipAffinity, b) },
			Peers: func() bool {
				for _, m := range agent.Members() {
					if m.Name != agent.Name() && m.State == "alive" {
						return true
					}
				}
				return false
			},
		})
		agent.Register(gossipAffinity, t)
	}
	d.affinity = t
	d.env.Affinity = t
	if d.fsm != nil {
		d.fsm.SetAffinity(t)
	}
	if d.static != nil {
		d.static.SetAffinity(t)
	}
	d.onStart(func() error {
		t.Start()
		return nil
	})
	d.onClose(func(context.Context) { t.Close() })
	d.onReload(func(next *config.Config) (func(), error) {
		c := next.Affinity.TableConfig()
		return func() { t.SetConfig(c) }, nil
	})
	return nil
}

// ClearAffinity forgets user's affinity on every node of the cluster (here
// at once, on the others when the gossip arrives). A user's move
// (sessionsapi's Forget) calls it on each node after re-pinning the user
// and before ending its sessions there, so that the client's reconnections
// go to the new route.
func (d *Daemon) ClearAffinity(user string) { d.affinity.Clear(user) }

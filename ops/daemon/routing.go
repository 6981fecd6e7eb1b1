package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/ops/admin/routesapi"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/routing"
)

// startupWait bounds how long Start waits for the routing table to catch
// up with the cluster before reporting started anyway; the catch-up goes
// on in the background, and until it is done logins are answered
// "unavailable" (routing.ErrNotReady).
const startupWait = 15 * time.Second

// setupRouting installs the route source. A standalone node (`portico
// proxy`, or `standalone: true` in the file) serves the table from its
// configuration, replaced as a whole on reload. Everything else runs the
// replicated table: raft + memberlist (cluster package), the
// file's backends, pools and routes seeded into it at start and reload.
func (d *Daemon) setupRouting(cfg *config.Config) error {
	if cfg.Standalone {
		table, err := routing.NewTable(cfg.RoutingSpec())
		if err != nil {
			return err
		}
		d.static = routing.NewStatic(table)
		d.router = d.static
		d.onStart(func() error {
			d.group.Go(d.rotateTicketsStandalone)
			return nil
		})
		d.onReload(func(next *config.Config) (func(), error) {
			t, err := routing.NewTable(next.RoutingSpec())
			if err != nil {
				return nil, err
			}
			return func() { d.static.Swap(t) }, nil
		})
		return nil
	}
	// The file's routing section must make sense on its own (all of its
	// references resolve), even though it is applied to a shared table.
	if _, err := routing.NewTable(cfg.RoutingSpec()); err != nil {
		return err
	}
	// Lock the data directory before binding anything, so that a second
	// process on it fails with that message, not with "address in use".
	lock, err := cluster.LockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	d.fsm = routing.NewFSM()
	d.fsm.OnTickets = d.installTickets // before raft restores a snapshot
	d.router = d.fsm
	apiAddr := ""
	if d.admin != nil {
		if err := d.admin.Listen(); err != nil {
			lock.Close()
			return err
		}
		apiAddr = d.advertiseAPI(cfg.Cluster.Advertise)
	}
	// From here on the agent owns the lock (also when cluster.New fails).
	cc := cfg.ClusterConfig()
	cc.Version, cc.APIAddr, cc.Log, cc.Lock = Version, apiAddr, d.Log, lock
	agent, err := cluster.New(cc, d.fsm)
	if err != nil {
		return err
	}
	d.cluster = agent
	agent.RunWhileLeader(d.rotateTicketsWhileLeader)
	d.onClose(func(context.Context) {
		if h := d.health.Load(); h != nil {
			h.Stop()
		}
		if err := agent.Shutdown(); err != nil {
			d.Log.Warn("cluster shutdown", "error", err)
		}
	})
	// Started by an in-place upgrade: the old process snapshotted the table
	// it served from just before handing over, and raft has restored it
	// (cluster.New). If the old table had caught up, and the restored one
	// is at least as recent, this one has caught up too: serve at once.
	if idx, ok := d.inherit.TableIndex(); ok && d.fsm.IndexKnown() && d.fsm.AppliedIndex() >= idx {
		d.fsm.SetLoaded()
	}
	if d.admin != nil {
		routesapi.Register(d.admin, routesapi.Config{Cluster: agent, FSM: d.fsm, Down: d.BackendDown, Node: &backendDrains{d: d}})
	}
	d.registerClusterMetrics()
	d.onReload(func(next *config.Config) (func(), error) {
		if _, err := routing.NewTable(next.RoutingSpec()); err != nil {
			return nil, err
		}
		mat := next.Cluster.Material
		if mat == nil && cfg.Cluster.Material != nil {
			return nil, fmt.Errorf("cluster.tls: a node started with a node certificate keeps one (restart to change that)")
		}
		if mat != nil && mat.Self.Name != agent.Name() {
			return nil, fmt.Errorf("cluster.tls: the certificate is for %q, this node is %q", mat.Self.Name, agent.Name())
		}
		return func() {
			if mat != nil {
				if err := agent.SetTLS(mat); err != nil {
					d.Log.Error("replacing the cluster TLS identity", "error", err)
				}
			}
			d.group.Go(func(ctx context.Context) {
				ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				if err := d.seed(ctx, next); err != nil {
					d.Log.Error("writing the reloaded routes to the replicated table failed", "error", err)
				}
			})
		}, nil
	})
	return nil
}

// startCluster is the cluster's start stage (New registers it after the
// VIP's, so that the VIP's goroutines already run when the cluster first
// reports leadership): it joins or forms the cluster, starts health
// checks, writes the file's routes and waits (up to startupWait) for the
// table to catch up.
func (d *Daemon) startCluster(cfg *config.Config) error {
	agent := d.cluster
	if err := agent.Start(); err != nil {
		return err
	}
	hc := cfg.HealthConfig()
	hc.Probe = backendProbe(d.env.Dialer)
	d.health.Store(agent.StartHealth(d.fsm, hc))
	d.group.Go(d.gossipSessions)
	seedCtx, cancel := context.WithTimeout(d.group.ctx, startupWait)
	defer cancel()
	if err := d.seed(seedCtx, cfg); err != nil {
		d.Log.Warn("routes from the configuration file not yet written to the replicated table; retrying in the background", "error", err)
		d.group.Go(func(ctx context.Context) { d.seedRetry(ctx, cfg) })
	}
	if d.fsm.Loaded() {
		return nil
	}
	if err := agent.CatchUp(seedCtx); err != nil {
		d.Log.Warn("routing table not caught up with the cluster yet; serving anyway (logins get 'unavailable' until it is)", "error", err)
		d.group.Go(d.catchUpLater)
		return nil
	}
	d.tableLoaded()
	return nil
}

// catchUpLater keeps catching up after Start gave up waiting, until done
// or shutdown (ctx).
func (d *Daemon) catchUpLater(ctx context.Context) {
	if err := d.cluster.CatchUp(ctx); err == nil {
		d.tableLoaded()
	}
}

// tableLoaded lets the routing table answer lookups: it has caught up.
func (d *Daemon) tableLoaded() {
	d.fsm.SetLoaded()
	d.Log.Info("routing table caught up with the cluster; serving logins", "applied_index", d.fsm.AppliedIndex())
}

// seed writes the file's backends, pools and routes into the replicated
// table as one seed command: the table applies only what the file changed
// since the last seed (routing.Seed), so a drain or any other change made
// through the API survives this node's starts and reloads, and every
// other node's. The command is idempotent: safe on every start, on every
// node, and on reload.
func (d *Daemon) seed(ctx context.Context, cfg *config.Config) error {
	err := d.writeSeed(ctx, cfg)
	if err == nil {
		d.seededOnce.Do(func() { close(d.seeded) })
	}
	return err
}

func (d *Daemon) writeSeed(ctx context.Context, cfg *config.Config) error {
	s := routing.SeedOf(cfg.RoutingSpec())
	if s.IsEmpty() {
		return d.seedHashKey(ctx, cfg)
	}
	err := d.cluster.Apply(ctx, routing.Command{Type: routing.CmdSeed, Seed: &s})
	if errors.Is(err, cluster.ErrUnsupported) {
		// A rolling upgrade from a version without seeds is under way:
		// write the file as those versions do, until every node has the
		// record.
		d.Log.Warn("not every node knows seed commands yet: the configuration file's routes are written over the table's", "error", err)
		if err := d.seedPuts(ctx, cfg); err != nil {
			return err
		}
		return d.seedHashKey(ctx, cfg)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", routing.CmdSeed, err)
	}
	d.Log.Info("routes from the configuration file written to the replicated table (a seed: only what the file changed since the last one)",
		"backends", len(s.Backends), "pools", len(s.Pools), "users", len(s.Users), "domains", len(s.Domains))
	return d.seedHashKey(ctx, cfg)
}

// seedHashKey writes the file's routes.hash_key into the replicated table,
// where every node reads it: the part of user names pools hash on must be
// the same on every node, or one user would land on different backends
// through different nodes. A file without the key leaves the table's as
// it is (like the file never deleting), so going back to the default
// takes "hash_key: address". The command is idempotent: it is written at
// every start and reload that names a key.
func (d *Daemon) seedHashKey(ctx context.Context, cfg *config.Config) error {
	cur := d.fsm.Table().HashKey()
	if cfg.Routes.HashKey == "" {
		if cur != routing.HashAddress {
			d.Log.Info("the replicated table's pools hash on the "+string(cur)+" of user names (routes.hash_key of a node's configuration file); this file does not set it", "hash_key", cur)
		}
		return nil
	}
	want, err := routing.ParseHashKey(cfg.Routes.HashKey)
	if err != nil {
		return err
	}
	err = d.cluster.Apply(ctx, routing.Command{Type: routing.CmdSetHashKey, Target: string(want)})
	if errors.Is(err, cluster.ErrUnsupported) {
		// Older nodes would go on hashing the whole address: the key waits
		// until every node knows it (a start or reload after the upgrade).
		d.Log.Warn("routes.hash_key not written: not every node knows it yet; start or reload a node once all run this version", "hash_key", want, "error", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", routing.CmdSetHashKey, err)
	}
	if cur != want && d.fsm.Loaded() {
		// (Before the table has caught up, cur may just be stale.)
		d.Log.Warn("routes.hash_key changed in the replicated table: pools now hash on the "+string(want)+
			" of user names; users move to the backends the new key chooses (in pools without shared storage their mail must move too)",
			"hash_key", want, "was", cur)
	}
	return nil
}

// seedPuts writes the file's backends, pools and routes as puts (the file
// wins for what it names), as versions before seed commands did.
func (d *Daemon) seedPuts(ctx context.Context, cfg *config.Config) error {
	spec := cfg.RoutingSpec()
	var cmds []routing.Command
	for i := range spec.Backends {
		b := spec.Backends[i]
		cmds = append(cmds, routing.Command{Type: routing.CmdPutBackend, Backend: &b})
	}
	for i := range spec.Pools {
		p := spec.Pools[i]
		cmds = append(cmds, routing.Command{Type: routing.CmdPutPool, Pool: &p})
	}
	if len(spec.Users) > 0 {
		var us []routing.UserRoute
		for u, t := range spec.Users {
			us = append(us, routing.UserRoute{User: u, Target: t})
		}
		cmds = append(cmds, routing.Command{Type: routing.CmdPutUsers, Users: us})
	}
	for dom, pool := range spec.Domains {
		cmds = append(cmds, routing.Command{Type: routing.CmdPutDomain, Domain: dom, Target: pool})
	}
	if spec.DefaultPool != "" {
		cmds = append(cmds, routing.Command{Type: routing.CmdSetDefaultPool, Target: spec.DefaultPool})
	}
	for _, c := range cmds {
		if err := d.cluster.Apply(ctx, c); err != nil {
			return fmt.Errorf("%s: %w", c.Type, err)
		}
	}
	if len(cmds) > 0 {
		d.Log.Info("routes from the configuration file written to the replicated table", "changes", len(cmds))
	}
	return nil
}

// seedRetry retries seed (for about 10 minutes) until it succeeds or ctx
// ends (shutdown).
func (d *Daemon) seedRetry(ctx context.Context, cfg *config.Config) {
	for i := 0; i < 120; i++ {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := d.seed(sctx, cfg)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

// advertised returns addr with an unspecified host replaced by adv (or
// left as is).
func advertised(addr, adv string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() || host == "" {
		if adv == "" {
			return addr
		}
		return net.JoinHostPort(adv, port)
	}
	if adv != "" {
		return net.JoinHostPort(adv, port)
	}
	return addr
}

// gossipSessions keeps this node's session count in its gossiped
// metadata, until ctx ends.
func (d *Daemon) gossipSessions(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n := int(d.srv.Connections())
			d.cluster.SetLocal(func(m *cluster.Meta) { m.Sessions = n })
		}
	}
}

// Halted is closed when the replicated routing table met a command this
// binary cannot apply (a newer node wrote it): the node must stop (see
// routing.FSM). It never fires without a replicated table.
func (d *Daemon) Halted() <-chan struct{} {
	if d.fsm == nil {
		return nil
	}
	return d.fsm.Halted()
}

// HaltError says why the routing table halted.
func (d *Daemon) HaltError() error {
	if d.fsm == nil {
		return nil
	}
	return d.fsm.HaltError()
}

// BackendDown reports whether the cluster considers backend id down.
func (d *Daemon) BackendDown(id string) bool {
	h := d.health.Load()
	return h != nil && h.IsDown(id)
}

// Package daemon assembles a Portico node from a validated configuration:
// routing table, certificates, relay engine, protocol handlers, the
// listening server, the cluster agent, the VIP, the admin API. It is the
// composition root: it wires the packages that decide things (see
// ARCHITECTURE.md) and owns the node's lifetime (start, reload, drain,
// shutdown). The portico command runs one; tests run several in one
// process.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/node"
	"github.com/portico-mail/portico/node/affinity"
	"github.com/portico-mail/portico/node/imap"
	"github.com/portico-mail/portico/node/pop3"
	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/node/sieve"
	"github.com/portico-mail/portico/node/submission"
	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/ops/admin/sessionsapi"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/ops/upgrade"
	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source/syncer"
)

// Version and Commit identify the build (set by the portico command).
var (
	Version = "dev"
	Commit  = "unknown"
)

// Daemon is one running node.
//
// It is assembled in stages, each in its own file: adminplane.go (the
// admin listener), routing.go (the route source: the cluster agent and the
// routing API), sources.go (directory sources: syncs on the leader, the
// on-miss lookup, /v1/sources), auth.go (authentication sources), throttle.go (failed-login
// throttling), affinity.go (users' affinity in shared_storage pools),
// vip.go (the floating address), ops.go (metrics, readiness, status),
// lifecycle.go (drain, reload), upgrade.go (in-place upgrade). A
// stage may register start, reload and close hooks (onStart, onReload,
// onClose) and start goroutines in the daemon's group (group.go), which
// Shutdown joins.
type Daemon struct {
	Log *slog.Logger
	// Metrics is this node's registry (never the global one, so that tests
	// can run several nodes in one process).
	Metrics *prometheus.Registry

	level   *slog.LevelVar
	router  routing.Router
	static  *routing.Static // `portico proxy`: routes from flags only
	fsm     *routing.FSM    // the replicated table (otherwise)
	cluster *cluster.Agent
	health  atomic.Pointer[cluster.Health] // set once the cluster started
	certs   *node.CertStore
	engine  *relay.Engine
	srv     *node.Server
	admin   *admin.Server // nil when admin.address is "off"

	env      *session.Env
	affinity *affinity.Table // users' affinity in shared_storage pools (affinity.go)
	sources  *syncer.Manager // directory sources' syncs (sources.go); nil without sources
	miss     *syncer.OnMiss  // their on-miss lookup; nil when none enables it
	// seeded is closed once this node has written the configuration
	// file's routes (seed): the sources' syncs wait for it, so a first
	// sync on a fresh cluster resolves targets against the file's backends
	// instead of taking their ids for unknown hosts.
	seeded     chan struct{}
	seededOnce sync.Once

	// TLS session-ticket keys of every listener (tickets.go), and a
	// standalone node's own ring (ticketMu).
	tickets    *node.TicketKeys
	ticketMu   sync.Mutex
	ticketRing *routing.TicketRing

	// group owns every goroutine the daemon starts; its context ends at
	// shutdown, and Shutdown waits for them.
	group *group

	// cfg is the running configuration, replaced whole by Reload
	// (reloadMu serializes reloads).
	cfg      atomic.Pointer[config.Config]
	reloadMu sync.Mutex
	closeLog func()

	vip        *vipState
	inherit    *upgrade.Handover // set when started by an in-place upgrade
	drain      *drainState       // lifecycle.go
	configPath string            // re-read by POST /v1/reload
	upgrade    *upgrade.Upgrader
	ops        *opsState // metrics, readiness, status (ops.go)

	beforeShutdown []func(context.Context)
	startHooks     []func() error
	closers        []func(context.Context) // onClose
	closeOnce      sync.Once
	reloadHooks    []func(*config.Config) (commit func(), err error)
}

// conf returns the running configuration.
func (d *Daemon) conf() *config.Config { return d.cfg.Load() }

// onStart registers f to run after the listeners are bound.
func (d *Daemon) onStart(f func() error) { d.startHooks = append(d.startHooks, f) }

// onClose registers f to release a resource New acquired: closers run
// in reverse order, once, when the daemon shuts down (after the proxy and
// the daemon's goroutines stopped), or when New or Start fails part-way,
// so that a partial start leaks nothing. f must work whether or not Start
// ran.
func (d *Daemon) onClose(f func(context.Context)) {
	d.closers = append(d.closers, f)
}

// close runs the closers (once).
func (d *Daemon) close(ctx context.Context) {
	d.closeOnce.Do(func() {
		for i := len(d.closers) - 1; i >= 0; i-- {
			d.closers[i](ctx)
		}
	})
}

// onReload registers a reload stage: it validates and prepares the new
// configuration and returns a commit function; commits run only when every
// stage prepared successfully, so a bad configuration changes nothing.
func (d *Daemon) onReload(f func(*config.Config) (func(), error)) {
	d.reloadHooks = append(d.reloadHooks, f)
}

// Options for New.
type Options struct {
	// Logger to use; nil builds one from the configuration's log section
	// writing to stderr. Level, if set, is adjusted on reload.
	Logger *slog.Logger
	Level  *slog.LevelVar
	// ConfigPath is the file the configuration came from, re-read by
	// POST /v1/reload; "" when there is none (portico proxy).
	ConfigPath string
	// Executable and Args start the new process of an in-place upgrade
	// (the program's path and its arguments, e.g. serve --config FILE).
	Executable string
	Args       []string
	// Inherit, when this process was started by an in-place upgrade,
	// provides the previous process's listening sockets.
	Inherit *upgrade.Handover
}

// New builds a node from cfg without starting it. If it fails, whatever
// it had opened (admin socket, cluster agent and its ports, data
// directory lock, relay engine, log) is closed again.
func New(cfg *config.Config, o Options) (_ *Daemon, err error) {
	d := &Daemon{Log: o.Logger, level: o.Level, Metrics: prometheus.NewRegistry(), inherit: o.Inherit, group: newGroup(), seeded: make(chan struct{})}
	d.cfg.Store(cfg)
	if d.level == nil {
		d.level = new(slog.LevelVar)
	}
	SetLevel(d.level, cfg.Log.Level)
	if d.Log == nil {
		d.Log, d.closeLog = NewLogger(cfg.Log, d.level)
	}
	defer func() {
		if err != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = d.group.wait(ctx)
			d.close(ctx)
			if d.closeLog != nil {
				d.closeLog()
			}
		}
	}()
	d.warnConfig(cfg)
	d.certs = &node.CertStore{}
	if pairs := cfg.CertPairs(); len(pairs) > 0 {
		if err := d.certs.Load(pairs); err != nil {
			return nil, err
		}
	}
	if err := d.setupAdmin(cfg, o); err != nil {
		return nil, err
	}
	d.setupTickets(cfg)
	if err := d.setupRouting(cfg); err != nil {
		return nil, err
	}
	if err := d.setupSources(cfg); err != nil {
		return nil, err
	}
	if d.engine, err = relay.NewEngine(); err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	engine := d.engine
	d.onClose(func(context.Context) { engine.Close() })
	dir := session.RouteDirector{Router: d.router}
	if d.miss != nil {
		dir.Lookup = d.miss
	}
	d.env = &session.Env{
		Director: dir,
		Dialer:   &session.Dialer{},
		Log:      d.Log,
	}
	nc := cfg.NodeConfig()
	nc.Tickets = d.tickets
	if o.Inherit != nil {
		nc.Inherit = o.Inherit.Listener
	}
	if err := d.setupAuth(cfg, &nc); err != nil {
		return nil, err
	}
	if err := d.setupThrottle(cfg); err != nil {
		return nil, err
	}
	if err := d.setupAffinity(cfg); err != nil {
		return nil, err
	}
	handlers := map[routing.Protocol]session.Handler{
		routing.IMAP:  imap.New(imap.Options{}),
		routing.POP3:  pop3.New(pop3.Options{}),
		routing.Sieve: sieve.New(sieve.Options{}),
		// Greets as the system's host name; a listener's submission
		// section may name another.
		routing.Submission: submission.New(submission.Options{}),
	}
	d.srv = node.NewServer(nc, d.env, handlers, d.certs, d.engine)
	if d.admin != nil {
		sc := sessionsapi.Config{Proxy: d.srv, NodeName: cfg.NodeName, FSM: d.fsm, Forget: d.ClearAffinity}
		if d.cluster != nil {
			sc.Cluster = d.cluster
		}
		sessionsapi.Register(d.admin, sc)
	}
	if d.cluster != nil {
		// The VIP's start stage runs before the cluster's: its mechanism
		// removes an address a crashed process left at once, and the
		// first leadership notification finds its goroutines running.
		if err := d.setupVIP(cfg); err != nil {
			return nil, err
		}
		d.onStart(func() error { return d.startCluster(cfg) })
	}
	if err := d.setupOps(cfg); err != nil {
		return nil, err
	}
	d.setupLifecycle(o)
	d.setupUpgrade(o)
	return d, nil
}

// AdminAddr returns the admin listener's address (nil when off or not started).
func (d *Daemon) AdminAddr() net.Addr {
	if d.admin == nil {
		return nil
	}
	return d.admin.Addr()
}

// Start binds the listeners and starts the stages (the cluster first
// joins or forms). If it fails, everything is stopped and closed again.
func (d *Daemon) Start() error {
	fail := func(err error) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = d.Shutdown(ctx)
		return err
	}
	if d.admin != nil {
		if err := d.admin.Start(); err != nil {
			return fail(err)
		}
	}
	if err := d.srv.Start(); err != nil {
		return fail(err)
	}
	for _, f := range d.startHooks {
		if err := f(); err != nil {
			return fail(err)
		}
	}
	return nil
}

// Addr returns the bound address of the named listener (nil if unknown).
func (d *Daemon) Addr(listener string) net.Addr { return d.srv.Addrs()[listener] }

// Server returns the node's server.
func (d *Daemon) Server() *node.Server { return d.srv }

// Reload applies a new configuration: every stage validates and prepares
// first; only if all succeed do they take effect. Certificates and the log
// level change here; routes, authentication and listeners in their stages.
// Sessions in flight are untouched. On error nothing changes.
func (d *Daemon) Reload(cfg *config.Config) error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	var commits []func()
	if pairs := cfg.CertPairs(); len(pairs) > 0 {
		next := &node.CertStore{}
		if err := next.Load(pairs); err != nil {
			return err
		}
		commits = append(commits, func() { _ = d.certs.Load(pairs) })
	}
	for _, f := range d.reloadHooks {
		commit, err := f(cfg)
		if err != nil {
			return err
		}
		if commit != nil {
			commits = append(commits, commit)
		}
	}
	for _, c := range commits {
		c()
	}
	SetLevel(d.level, cfg.Log.Level)
	d.warnConfig(cfg)
	d.cfg.Store(cfg)
	return nil
}

// Shutdown stops the node gracefully (see node.Server.Shutdown): the VIP
// is handed away first; the daemon's background goroutines are told to
// stop; the proxy drains its sessions (until ctx ends) while the VIP's
// guard, and a drain or an upgrade's retirement in progress, keep ending
// sessions at response boundaries; then they are told to stop too, every
// goroutine is waited for (they all end promptly once told, so for a few
// seconds at most even when ctx has ended) and the stages' resources are
// closed.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.setDraining(true)
	for _, f := range d.beforeShutdown {
		f(ctx)
	}
	d.group.stop()
	err := d.srv.Shutdown(ctx)
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	if werr := d.group.wait(wctx); werr != nil {
		d.Log.Warn("shutdown: some of the node's tasks had not finished", "error", werr)
	}
	cancel()
	d.close(ctx)
	d.Log.Info("stopped")
	if d.closeLog != nil {
		d.closeLog()
	}
	return err
}

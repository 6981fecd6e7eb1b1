// Package daemon assembles a Portico node from a validated configuration:
// routing table, certificates, relay engine, protocol handlers and the
// listening server. The portico command runs one; tests run several in one
// process.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"net/http"

	"github.com/portico-mail/portico/node"
	"github.com/portico-mail/portico/node/imap"
	"github.com/portico-mail/portico/node/pop3"
	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/routing"
)

// Daemon is one running node.
type Daemon struct {
	Log    *slog.Logger
	level  *slog.LevelVar
	router *routing.Static
	certs  *node.CertStore
	engine *relay.Engine
	srv    *node.Server
	admin  *admin.Server // nil when admin.address is "off"

	mu       sync.Mutex
	cfg      *config.Config
	closeLog func()
}

// Options for New.
type Options struct {
	// Logger to use; nil builds one from the configuration's log section
	// writing to stderr. Level, if set, is adjusted on reload.
	Logger *slog.Logger
	Level  *slog.LevelVar
}

// New builds a node from cfg without starting it.
func New(cfg *config.Config, o Options) (*Daemon, error) {
	d := &Daemon{cfg: cfg, Log: o.Logger, level: o.Level}
	if d.level == nil {
		d.level = new(slog.LevelVar)
	}
	SetLevel(d.level, cfg.Log.Level)
	if d.Log == nil {
		d.Log, d.closeLog = NewLogger(cfg.Log, d.level)
	}
	table, err := routing.NewTable(cfg.RoutingSpec())
	if err != nil {
		return nil, err
	}
	d.router = routing.NewStatic(table)
	d.certs = &node.CertStore{}
	if pairs := cfg.CertPairs(); len(pairs) > 0 {
		if err := d.certs.Load(pairs); err != nil {
			return nil, err
		}
	}
	if d.engine, err = relay.NewEngine(); err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	env := &session.Env{
		Director: session.RouteDirector{Router: d.router},
		Dialer:   &session.Dialer{},
		Log:      d.Log,
	}
	handlers := map[routing.Protocol]session.Handler{
		routing.IMAP: imap.New(imap.Options{}),
		routing.POP3: pop3.New(pop3.Options{}),
	}
	d.srv = node.NewServer(cfg.NodeConfig(), env, handlers, d.certs, d.engine)
	if cfg.Admin.Address != "off" {
		d.admin = admin.New(cfg.Admin.Address, cfg.Admin.Token, d.Log)
		d.admin.HandlePublic("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			admin.JSON(w, http.StatusOK, map[string]string{"status": "ok"})
		}))
	}
	return d, nil
}

// AdminAddr returns the admin listener's address (nil when off or not started).
func (d *Daemon) AdminAddr() net.Addr {
	if d.admin == nil {
		return nil
	}
	return d.admin.Addr()
}

// Start binds the listeners.
func (d *Daemon) Start() error {
	fail := func(err error) error {
		d.engine.Close()
		if d.closeLog != nil {
			d.closeLog()
		}
		return err
	}
	if d.admin != nil {
		if err := d.admin.Start(); err != nil {
			return fail(err)
		}
	}
	if err := d.srv.Start(); err != nil {
		if d.admin != nil {
			_ = d.admin.Shutdown(context.Background())
		}
		return fail(err)
	}
	return nil
}

// Addr returns the bound address of the named listener (nil if unknown).
func (d *Daemon) Addr(listener string) net.Addr { return d.srv.Addrs()[listener] }

// Server returns the node's server.
func (d *Daemon) Server() *node.Server { return d.srv }

// Reload applies a new configuration: routes, certificates and the log
// level take effect; sessions in flight are untouched. On error nothing
// changes.
func (d *Daemon) Reload(cfg *config.Config) error {
	table, err := routing.NewTable(cfg.RoutingSpec())
	if err != nil {
		return err
	}
	if pairs := cfg.CertPairs(); len(pairs) > 0 {
		if err := d.certs.Load(pairs); err != nil {
			return err
		}
	}
	d.router.Swap(table)
	SetLevel(d.level, cfg.Log.Level)
	d.mu.Lock()
	d.cfg = cfg
	d.mu.Unlock()
	return nil
}

// Shutdown stops the node gracefully (see node.Server.Shutdown).
func (d *Daemon) Shutdown(ctx context.Context) error {
	err := d.srv.Shutdown(ctx)
	d.engine.Close()
	if d.admin != nil {
		actx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = d.admin.Shutdown(actx)
		cancel()
	}
	d.Log.Info("stopped")
	if d.closeLog != nil {
		d.closeLog()
	}
	return err
}

package daemon

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/portico-mail/portico/node/auth"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/routing"
)

// authDispatch is the node's Director when any listener uses auth_http:
// it sends each login to its listener's auth_http director, or to next
// (the routing table: passthrough). The table of directors is replaced
// as a whole on reload, so listeners added, removed or changed by a
// reload need no other plumbing.
type authDispatch struct {
	next  session.Director
	table atomic.Pointer[authTable]
}

type authTable struct {
	byListener map[string]*auth.Director
	clients    []*auth.Client
}

// Direct implements session.Director.
func (a *authDispatch) Direct(ctx context.Context, at *session.Attempt) (*session.Target, error) {
	if d := a.table.Load().byListener[at.Client.Listener.Name]; d != nil {
		return d.Direct(ctx, at)
	}
	return a.next.Direct(ctx, at)
}

func (t *authTable) close() {
	for _, c := range t.clients {
		c.Close()
	}
}

// setupAuthHTTP installs auth_http for the listeners whose (own or
// global) auth section says mode http. It wraps d.env.Director, so
// protection that must run before any authentication source (throttling)
// wraps it afterwards. Reloads rebuild the directors; one metrics set
// serves them all.
func (d *Daemon) setupAuthHTTP(cfg *config.Config) error {
	m := auth.NewMetrics(d.Metrics)
	disp := &authDispatch{next: d.env.Director}
	t, err := d.authTable(cfg, m)
	if err != nil {
		return err
	}
	disp.table.Store(t)
	d.env.Director = disp
	d.onReload(func(next *config.Config) (func(), error) {
		t, err := d.authTable(next, m)
		if err != nil {
			return nil, err
		}
		return func() { disp.table.Swap(t).close() }, nil
	})
	d.onClose(func(context.Context) { disp.table.Load().close() })
	return nil
}

// authTable builds a director per auth_http listener. Listeners sharing
// the global section share its director, so they share its cache and
// keep-alive connections.
func (d *Daemon) authTable(cfg *config.Config, m *auth.Metrics) (*authTable, error) {
	t := &authTable{byListener: map[string]*auth.Director{}}
	shared := map[*config.Auth]*auth.Director{}
	for i, l := range cfg.Listeners {
		a := cfg.ListenerAuth(i)
		if !a.IsHTTP() {
			continue
		}
		if dir := shared[a]; dir != nil {
			t.byListener[l.Name] = dir
			continue
		}
		cl, err := auth.NewClient(a.ClientConfig())
		if err != nil {
			t.close()
			return nil, fmt.Errorf("listener %s: auth: %w", l.Name, err)
		}
		t.clients = append(t.clients, cl)
		dir := &auth.Director{
			Client: cl, Cache: auth.NewCache(a.CacheConfig()), Metrics: m, Log: d.Log,
			Backend: d.backendByID, Forward: routing.ForwardMode(a.BackendForward), Relaxed: a.RelaxedLimits,
		}
		shared[a] = dir
		t.byListener[l.Name] = dir
		d.Log.Info("auth_http", "listener", l.Name, "server", cl.Server(), "keepalive", a.KeepAlive)
	}
	return t, nil
}

// backendByID looks a backend up in the routing table (auth_http servers
// may answer with a backend id instead of an address).
func (d *Daemon) backendByID(id string) *routing.Backend {
	switch {
	case d.fsm != nil:
		return d.fsm.Table().Backend(id)
	case d.static != nil:
		return d.static.Table().Backend(id)
	}
	return nil
}

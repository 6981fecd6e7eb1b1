package daemon

import (
	"context"
	"sync"
	"time"

	"github.com/portico-mail/portico/node"
)

// backendDrainText is what a client whose session a backend drain ends is
// told (IMAP: "* BYE [UNAVAILABLE] ...").
const backendDrainText = "Backend going down for maintenance, please reconnect."

// backendDrainSettle is how long, after the spread, a node keeps ending
// sessions that log in to a draining backend: a login routed just before
// the drain reached this node may complete a little later (the backend's
// greeting and login), and would otherwise hold the backend open.
const backendDrainSettle = 10 * time.Second

// backendDrains ends this node's sessions on a backend for a backend drain
// (routesapi.Node): the admin API on whichever node the operator asked
// sets the backend's state, then calls every node's through the cluster.
type backendDrains struct {
	d       *Daemon
	mu      sync.Mutex
	running map[string]bool // backend ids with an ending under way
}

// BackendSessions counts this node's relayed sessions on backend id.
func (b *backendDrains) BackendSessions(id string) int {
	return len(b.d.srv.Sessions(node.SessionFilter{Backend: id}))
}

// EndBackendSessions starts ending this node's sessions on backend id in
// the daemon's group (GoLate: a shutdown that begins meanwhile lets it
// finish ending sessions at response boundaries while the proxy drains).
// One ending per backend runs at a time: a drain asked again while one is
// under way goes on as it started.
func (b *backendDrains) EndBackendSessions(id string, spread time.Duration, draining func() bool) {
	if spread < 0 {
		spread = b.d.srv.EndSpread()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.running[id] {
		return
	}
	if b.running == nil {
		b.running = map[string]bool{}
	}
	b.running[id] = true
	started := b.d.group.GoLate(func(ctx context.Context) {
		defer func() {
			b.mu.Lock()
			delete(b.running, id)
			b.mu.Unlock()
		}()
		b.end(ctx, id, spread, draining)
	})
	if !started {
		delete(b.running, id)
	}
}

// end ends the sessions on backend id over spread, then keeps ending the
// ones that still log in to it for backendDrainSettle, unless the backend
// is made active again.
func (b *backendDrains) end(ctx context.Context, id string, spread time.Duration, draining func() bool) {
	srv, log := b.d.srv, b.d.Log.With("backend", id)
	f := node.SessionFilter{Backend: id}
	log.Info("backend drain: ending its sessions", "sessions", len(srv.Sessions(f)), "spread", spread)
	ended := srv.Kick(ctx, f, backendDrainText, spread)
	for settle := time.Now().Add(backendDrainSettle); time.Now().Before(settle) && ctx.Err() == nil; {
		sleepCtx(ctx, time.Second)
		if !draining() {
			log.Info("backend drain: the backend is active again; no more sessions ended", "sessions_ended", ended)
			return
		}
		ended += srv.Kick(ctx, f, backendDrainText, 0)
	}
	log.Info("backend drain: done on this node", "sessions_ended", ended, "sessions", len(srv.Sessions(f)))
}

package daemon

import (
	"context"
	"sync"
)

// group owns the goroutines the daemon starts, and Shutdown waits for all
// of them. It stops in two steps:
//
//   - stop, when shutdown begins: the context of Go's goroutines ends
//     (background work: gossip, seeding, catching up).
//   - stopLate, once the proxy has stopped (its sessions ended or the
//     grace ran out): the context of GoLate's goroutines ends. These take
//     part in ending sessions gracefully while the proxy drains: the VIP's
//     guard (which ends the sessions on an address this node handed
//     away), a drain or an upgrade's retirement ending sessions at a
//     response boundary.
//
// Once a step is taken, the group starts no more goroutines of its kind
// (Go or GoLate return false), so none can slip in after the wait began.
type group struct {
	ctx, late          context.Context
	cancel, cancelLate context.CancelFunc
	wg                 sync.WaitGroup

	mu                   sync.Mutex
	stopped, lateStopped bool
}

func newGroup() *group {
	g := &group{}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.late, g.cancelLate = context.WithCancel(context.Background())
	return g
}

// Go runs f in a goroutine of the group, with a context that ends when
// shutdown begins; false (and f is not run) once it has.
func (g *group) Go(f func(ctx context.Context)) bool {
	return g.start(f, g.ctx, &g.stopped)
}

// GoLate runs f in a goroutine of the group, with a context that ends
// once the proxy has stopped at shutdown; false (and f is not run) once it
// has.
func (g *group) GoLate(f func(ctx context.Context)) bool {
	return g.start(f, g.late, &g.lateStopped)
}

func (g *group) start(f func(ctx context.Context), ctx context.Context, stopped *bool) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if *stopped {
		return false
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		f(ctx)
	}()
	return true
}

// Done is closed when shutdown begins (stop).
func (g *group) Done() <-chan struct{} { return g.ctx.Done() }

// stop ends Go's context and refuses new Go goroutines.
func (g *group) stop() {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
	g.cancel()
}

// stopLate ends GoLate's context and refuses new goroutines of any kind.
func (g *group) stopLate() {
	g.stop()
	g.mu.Lock()
	g.lateStopped = true
	g.mu.Unlock()
	g.cancelLate()
}

// wait stops the group (both steps) and waits for its goroutines, or for
// ctx to end.
func (g *group) wait(ctx context.Context) error {
	g.stopLate()
	done := make(chan struct{})
	go func() {
		g.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

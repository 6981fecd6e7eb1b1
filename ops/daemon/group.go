package daemon

import (
	"context"
	"sync"
)

// group owns the goroutines the daemon starts: each runs with the group's
// context, which ends when the daemon shuts down, and Shutdown waits for
// all of them. Once stopped, the group starts nothing more (Go returns
// false), so a goroutine cannot slip in after the wait began.
type group struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	stopped bool
}

func newGroup() *group {
	ctx, cancel := context.WithCancel(context.Background())
	return &group{ctx: ctx, cancel: cancel}
}

// Go runs f in a goroutine of the group, with the group's context; false
// (and f is not run) once the group has stopped.
func (g *group) Go(f func(ctx context.Context)) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return false
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		f(g.ctx)
	}()
	return true
}

// Done is closed when the group stops.
func (g *group) Done() <-chan struct{} { return g.ctx.Done() }

// stop ends the group's context and refuses new goroutines.
func (g *group) stop() {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
	g.cancel()
}

// wait stops the group and waits for its goroutines, or for ctx to end.
func (g *group) wait(ctx context.Context) error {
	g.stop()
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

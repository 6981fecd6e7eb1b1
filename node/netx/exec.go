package netx

import (
	"context"
	"net/netip"
	"time"
)

// Executor is what a session that runs as a task of an event loop
// (node/evloop) uses for what is not a read or a write on its own
// connections: a task must never block its goroutine (a channel, a timer,
// a lock held for long, a Go connection), which would stall every session
// of its loop. The node puts one in the session's context
// (WithExecutor); a session on a goroutine of its own has none.
type Executor interface {
	// Block runs f, which may block its goroutine, without stalling the
	// loop, and returns once f has returned.
	Block(f func())
	// DialTCP connects to addr, giving up at deadline (zero: none), on a
	// connection of the loop.
	DialTCP(addr netip.AddrPort, deadline time.Time) (*Conn, error)
}

type execKey struct{}

// WithExecutor returns ctx carrying e.
func WithExecutor(ctx context.Context, e Executor) context.Context {
	return context.WithValue(ctx, execKey{}, e)
}

// ExecutorFrom returns the Executor ctx carries (nil: the session runs on
// a goroutine of its own).
func ExecutorFrom(ctx context.Context) Executor {
	e, _ := ctx.Value(execKey{}).(Executor)
	return e
}

// Block runs f, which may wait on something other than the session's
// connections: through the Executor ctx carries, else (a session on a
// goroutine of its own) directly. Code a session calls wraps its waits in
// it: the throttle's wait for attempts in flight, an auth_http request, a
// directory lookup, a failure delay.
func Block(ctx context.Context, f func()) {
	if e := ExecutorFrom(ctx); e != nil {
		e.Block(f)
		return
	}
	f()
}

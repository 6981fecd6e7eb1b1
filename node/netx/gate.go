package netx

import (
	"context"
	"sync/atomic"
)

// Gate bounds how many pre-login sessions compute at once. A session takes
// a slot (its Hold) when it starts and gives it back whenever it waits:
// for the client or the backend (Conn's reads and writes), for a backend
// connection, for an authentication source, for the throttle. It takes a
// slot again, in arrival order, before it goes on.
//
// Why: a reconnect storm (every client of a failed node logging in at
// once) makes thousands of goroutines runnable, each with up to a
// millisecond of TLS and login work. Go's scheduler has no priorities, so
// every other goroutine of the process, among them raft's heartbeats and
// replies and the relayed sessions' I/O, waits behind them: measured with
// 9,000 TLS clients on two cores, the new VIP owner lost its raft lease
// (250 ms) again and again, the address moved with it, and each move ended
// the sessions the previous owner had just taken. With the gate, the work
// waiting for a slot is a goroutine blocked on a channel, not a runnable
// one, so the scheduler's queue stays short whatever the storm; and since
// a session holds a slot only while it computes, a slow client or backend
// never holds one.
type Gate struct {
	slots  chan struct{}
	waited atomic.Uint64
}

// NewGate returns a gate with n slots (at least one).
func NewGate(n int) *Gate {
	return &Gate{slots: make(chan struct{}, max(n, 1))}
}

// Size is the number of slots.
func (g *Gate) Size() int { return cap(g.slots) }

// Busy is the number of slots held now.
func (g *Gate) Busy() int { return len(g.slots) }

// Waited counts the times a session had to wait for a slot.
func (g *Gate) Waited() uint64 { return g.waited.Load() }

// Hold is one session's claim on a Gate. It is used by the session's own
// goroutine only. A nil Hold (no gate) does nothing.
type Hold struct {
	g      *Gate
	done   <-chan struct{}
	held   bool
	closed bool
}

// Hold returns a claim that does not hold a slot yet. Once done is closed
// (the server shuts down), Acquire goes on without a slot.
func (g *Gate) Hold(done <-chan struct{}) *Hold {
	if g == nil {
		return nil
	}
	return &Hold{g: g, done: done}
}

// Acquire takes a slot, waiting for one if none is free.
func (h *Hold) Acquire() {
	if h == nil || h.held || h.closed {
		return
	}
	select {
	case h.g.slots <- struct{}{}:
		h.held = true
		return
	default:
	}
	h.g.waited.Add(1)
	select {
	case h.g.slots <- struct{}{}:
		h.held = true
	case <-h.done:
	}
}

// Release gives the slot back, if held.
func (h *Hold) Release() {
	if h == nil || !h.held {
		return
	}
	h.held = false
	<-h.g.slots
}

// Close gives the slot back for good: Acquire does nothing afterwards.
func (h *Hold) Close() {
	if h == nil {
		return
	}
	h.Release()
	h.closed = true
}

type holdKey struct{}

// WithHold returns ctx carrying h, for the code a session calls that waits
// on something other than its connections (HoldFrom).
func WithHold(ctx context.Context, h *Hold) context.Context {
	if h == nil {
		return ctx
	}
	return context.WithValue(ctx, holdKey{}, h)
}

// HoldFrom returns the Hold ctx carries (nil if none).
func HoldFrom(ctx context.Context) *Hold {
	h, _ := ctx.Value(holdKey{}).(*Hold)
	return h
}

// Waiting runs f, which waits, without the slot ctx's Hold holds.
func Waiting[T any](ctx context.Context, f func() T) T {
	h := HoldFrom(ctx)
	h.Release()
	defer h.Acquire()
	return f()
}

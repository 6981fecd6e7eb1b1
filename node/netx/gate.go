package netx

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Gate bounds how many pre-login sessions compute at once. A session takes
// a slot (its Hold) when it starts and gives it back whenever it waits:
// for the client or the backend (Conn's reads and writes), for a backend
// connection, for an authentication source, for the throttle. It takes a
// slot again before it goes on.
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
//
// Sessions that have started (waited once and want to go on) get a free
// slot before new ones: a login, once begun, runs to its end as fast as
// its client and backend allow, and the gate admits new logins only when
// the started ones leave CPUs idle. Without that order, every login of a
// storm would wait its turn at each of its five or so round trips, and
// all of them would finish together at the end, as with no gate.
//
// Neither rule may let a client keep slots for itself. Nothing bounds the
// commands a client sends before login (an IMAP client may NOOP for
// PreAuthLifetime), so a session that pipelines commands without pause
// never waits, and one that does waits in the started sessions' queue: a
// few such connections, one more than there are slots, held every slot
// and starved every new session for minutes, where without a gate they
// would only have taken their share of the CPUs. So a session goes first
// only for its first startedTurns waits (a login needs a handful), and
// one that has held its slot for holdQuantum without waiting gives it to
// a waiting session at its next read or write that does not wait (Yield).
type Gate struct {
	mu     sync.Mutex
	size   int
	free   int
	next   waitQueue // sessions that have started
	fresh  waitQueue // new sessions
	waited atomic.Uint64
}

// waitQueue is a FIFO of waiters; a waiter's channel is closed when it is
// given a slot.
type waitQueue struct{ q []chan struct{} }

func (w *waitQueue) push(c chan struct{}) { w.q = append(w.q, c) }

func (w *waitQueue) pop() chan struct{} {
	c := w.q[0]
	w.q[0] = nil
	w.q = w.q[1:]
	if len(w.q) == 0 {
		w.q = nil // let the backing array go after a storm
	}
	return c
}

// remove takes c out of the queue; false if it is not there (given a
// slot meanwhile).
func (w *waitQueue) remove(c chan struct{}) bool {
	for i, x := range w.q {
		if x == c {
			w.q = append(w.q[:i], w.q[i+1:]...)
			return true
		}
	}
	return false
}

// Bounds of what a session may take before others (see Gate).
const (
	// startedTurns: a session's waits for a slot that go before new
	// sessions. A login waits a handful of times (TLS, the greeting,
	// CAPABILITY, STARTTLS, ID, the login and the backend's round trips).
	startedTurns = 32
	// holdQuantum: how long a session computes without waiting before it
	// lets a waiting session go first. A full TLS login computes about
	// 1.5 ms in all.
	holdQuantum = 2 * time.Millisecond
)

// NewGate returns a gate with n slots (at least one).
func NewGate(n int) *Gate {
	n = max(n, 1)
	return &Gate{size: n, free: n}
}

// Size is the number of slots.
func (g *Gate) Size() int { return g.size }

// Busy is the number of slots held now.
func (g *Gate) Busy() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.size - g.free
}

// Waiting is the number of sessions waiting for a slot now.
func (g *Gate) Waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.next.q) + len(g.fresh.q)
}

// Waited counts the times a session had to wait for a slot.
func (g *Gate) Waited() uint64 { return g.waited.Load() }

// acquire takes a slot, waiting in the started or the new sessions'
// queue; false if done ended the wait first (no slot taken).
func (g *Gate) acquire(started bool, done <-chan struct{}) bool {
	g.mu.Lock()
	if g.free > 0 && (started || len(g.next.q) == 0) {
		g.free--
		g.mu.Unlock()
		return true
	}
	c := make(chan struct{})
	q := &g.fresh
	if started {
		q = &g.next
	}
	q.push(c)
	g.mu.Unlock()
	g.waited.Add(1)
	select {
	case <-c:
		return true
	case <-done:
	}
	g.mu.Lock()
	removed := q.remove(c)
	g.mu.Unlock()
	if !removed {
		g.release() // given a slot as done closed: pass it on
	}
	return false
}

// release gives a slot back: to the first started session waiting, else
// to the first new one, else to the free count.
func (g *Gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case len(g.next.q) > 0:
		close(g.next.pop())
	case len(g.fresh.q) > 0:
		close(g.fresh.pop())
	default:
		g.free++
	}
}

// Hold is one session's claim on a Gate. It is used by the session's own
// goroutine only. A nil Hold (no gate) does nothing.
type Hold struct {
	g       *Gate
	done    <-chan struct{}
	held    bool
	started bool // has held a slot: waits in the started sessions' queue
	closed  bool
	turns   int       // waits in the started sessions' queue (startedTurns)
	since   time.Time // when the slot held was taken
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
	first := h.started && h.turns < startedTurns
	if first {
		h.turns++
	}
	h.held = h.g.acquire(first, h.done)
	h.started = true
	if h.held {
		h.since = time.Now()
	}
}

// Yield gives the slot to a waiting session and waits for one again, if
// the session has held it for holdQuantum (see Gate). It is called after
// a read or a write that did not wait.
func (h *Hold) Yield() {
	if h == nil || !h.held || time.Since(h.since) < holdQuantum {
		return
	}
	if h.g.Waiting() == 0 {
		h.since = time.Now()
		return
	}
	h.Release()
	h.Acquire()
}

// Release gives the slot back, if held.
func (h *Hold) Release() {
	if h == nil || !h.held {
		return
	}
	h.held = false
	h.g.release()
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

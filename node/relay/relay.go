// Package relay moves bytes both ways between a client and its backend
// after login, at the lowest memory cost per session the kernel allows.
//
// Each session has two directions (pumps). A pump runs on a goroutine only
// while its source has data: it copies until the source would block, then
// parks: it registers the source socket with the engine's epoll poller and
// its goroutine exits, returning any buffer or pipe it borrowed. An idle
// session therefore holds no goroutine, no buffer and no pipe, only its
// connections and a small struct. When the source becomes readable the
// poller starts a new goroutine for the pump.
//
// Plain TCP on both sides is spliced inside the kernel (splice(2) through a
// borrowed pipe); a TLS side forces a copy through user space, done with a
// pooled 16 KiB buffer borrowed only for the duration of a burst.
//
// Half-close is passed on (end of stream on one side shuts down the write
// side of the other, with close_notify for TLS); the session closes when
// both directions have ended, on an error, after the idle timeout, or when
// asked to.
//
// A side's TCP connection (Socket) is of one of two kinds. A *netx.Conn is
// a Go connection, registered with the runtime's netpoller, as the
// goroutine-per-connection pre-login phase has it. A *netx.FD is a raw
// non-blocking descriptor that the runtime never sees, as an event loop
// of our own accepts and connects them: making a Go connection of it
// would cost a dup, fcntl and setsockopt calls and the runtime's
// registration, whose immediate EPOLLOUT wakes an idle thread, more than
// the loop's whole login (bench/RESULTS.md, "Fourth pass"); handed over as
// it is, it costs the relay's two epoll_ctl and nothing else. The relay
// treats both alike: it only ever reads them without waiting (its pollers
// wait for readability), and a write to a full destination waits, a
// netx.Conn's in Go's netpoller, an FD's on its netx.Waiter (a one-shot
// EPOLLOUT on an epoll of its own, itself parked in the netpoller): either
// way a goroutine blocked on the runtime, never an OS thread. An FD is for
// plaintext sides only: crypto/tls needs a net.Conn, so a TLS side is
// always a netx.Conn (a session may have one of each).
package relay

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/portico-mail/portico/node/netx"
)

// Side is one end of a relayed session.
type Side struct {
	// Conn is the TCP connection: a *netx.Conn (a Go connection) or, for
	// a plaintext side only, a *netx.FD (a raw descriptor the runtime
	// never sees).
	Conn Socket
	TLS  *tls.Conn // the TLS layer over Conn (a *netx.Conn), or nil for plaintext
}

// Socket is what the relay needs of a side's TCP connection. The two
// kinds, *netx.Conn and *netx.FD, differ only in how they wait: a
// netx.Conn's writes wait in Go's netpoller, an FD's on a netx.Waiter
// (see the package comment).
type Socket interface {
	// Read reads without waiting once SetNonblock(true) was called:
	// netx.ErrWouldBlock when there is nothing, io.EOF at end of stream.
	Read(p []byte) (int, error)
	// Write writes all of p, waiting for the socket to take it.
	Write(p []byte) (int, error)
	CloseWrite() error
	Close() error
	LocalAddr() net.Addr
	SetDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
	SetNonblock(on bool)
	// Prefixed reports read-ahead bytes still to be read.
	Prefixed() bool
	// Raw gives the descriptor for splice and the pollers: Control pins
	// it, Read runs a non-blocking read on it, Write runs a write and
	// waits for writability each time the function returns false.
	Raw() syscall.RawConn
}

var (
	_ Socket = (*netx.Conn)(nil)
	_ Socket = (*netx.FD)(nil)
)

func (s Side) plain() bool { return s.TLS == nil }

// Stats describe a finished session.
type Stats struct {
	ClientToBackend int64 // bytes relayed from client to backend
	BackendToClient int64 // bytes relayed from backend to client
	Duration        time.Duration
	Reason          string // why the session ended
	Err             error  // the error that ended it, if any
}

// Options for one session.
type Options struct {
	// IdleTimeout closes the session when no byte moved either way for
	// this long. 0 means no timeout.
	IdleTimeout time.Duration
	// OnClose is called once, after both connections are closed.
	OnClose func(Stats)
	// Counters, if set, accumulate the bytes this session moves as they
	// move (shared by many sessions, e.g. all of a listener's; metrics read
	// them while sessions run).
	Counters *Counters
	// Framer, if set, follows the protocol's response boundaries so that
	// End can end the session between two responses (one per session:
	// it holds the session's parsing state).
	Framer Framer
	// Tag is the caller's description of the session (who, where), kept
	// for Session.Tag; the engine never looks at it.
	Tag any
}

// Counters total the bytes relayed by a group of sessions.
type Counters struct {
	ClientToBackend atomic.Int64
	BackendToClient atomic.Int64
}

// Reasons a session ends (Stats.Reason).
const (
	ReasonClosed   = "closed"        // both sides ended their streams
	ReasonClient   = "client error"  // reading from or writing to the client failed
	ReasonBackend  = "backend error" // reading from or writing to the backend failed
	ReasonIdle     = "idle timeout"
	ReasonHalfOpen = "half-closed timeout" // one side ended, the other did not follow
	ReasonShutdown = "shutdown"
	ReasonEnded    = "ended by server" // End: at a response boundary
	ReasonEndLate  = "ended by server without a response boundary"
)

// byeTimeout bounds writing the goodbye to a client that does not read
// (a variable for tests).
var byeTimeout = 5 * time.Second

// halfCloseIdle bounds how long a session stays open after one side ended
// its stream and the other did not follow: it closes once nothing has
// moved for this long. (IMAP and POP3 servers close after LOGOUT/QUIT; a
// client that keeps its end open would otherwise hold the session until
// the idle timeout.) A transfer still in progress keeps it open. (A
// variable for tests.)
var halfCloseIdle = 5 * time.Second

// Engine runs relayed sessions. One engine per process is enough.
type Engine struct {
	pollers []*poller
	nextID  atomic.Uint64

	mu       sync.Mutex
	sessions map[uint64]*Session

	now       func() time.Time
	reapEvery time.Duration
	stop      chan struct{}
	reaped    chan struct{}
	closed    atomic.Bool
}

// NewEngine starts an engine with its pollers and idle reaper.
func NewEngine() (*Engine, error) { return newEngine(time.Second) }

func newEngine(reapEvery time.Duration) (*Engine, error) {
	e := &Engine{
		reapEvery: reapEvery,
		sessions:  make(map[uint64]*Session),
		now:       time.Now,
		stop:      make(chan struct{}),
		reaped:    make(chan struct{}),
	}
	n := runtime.GOMAXPROCS(0)
	if n > 4 {
		n = 4
	}
	for i := 0; i < n; i++ {
		p, err := newPoller()
		if err != nil {
			for _, q := range e.pollers {
				q.close()
			}
			return nil, err
		}
		e.pollers = append(e.pollers, p)
	}
	go e.reaper()
	return e, nil
}

// Start begins relaying between client and backend. toBackend are bytes
// already read from the client (pipelined after its login command) that
// must reach the backend first; toClient likewise for the backend. The
// engine owns both connections from now on.
func (e *Engine) Start(client, backend Side, toBackend, toClient []byte, opts Options) *Session {
	s := &Session{
		e:       e,
		id:      e.nextID.Add(1),
		client:  client,
		backend: backend,
		opts:    opts,
		start:   e.now(),
	}
	s.lastActive.Store(s.start.UnixNano())
	// Deadlines set during the pre-login phase would otherwise fail every
	// later read and write (raw reads check them too): the relay's own
	// idle timeout replaces them.
	_ = client.Conn.SetDeadline(time.Time{})
	_ = backend.Conn.SetDeadline(time.Time{})
	s.up = s.newPump(&s.client, &s.backend, toBackend, e.nextID.Add(1))
	s.down = s.newPump(&s.backend, &s.client, toClient, e.nextID.Add(1))

	e.mu.Lock()
	closed := e.closed.Load()
	if !closed {
		e.sessions[s.id] = s
	}
	e.mu.Unlock()
	if closed {
		s.closeWith(ReasonShutdown, nil)
		return s
	}
	s.up.poller.add(s.up)
	s.down.poller.add(s.down)
	s.up.state.Store(stateRunning)
	s.down.state.Store(stateRunning)
	s.up.begin()
	s.down.begin()
	return s
}

// Len returns the number of live sessions.
func (e *Engine) Len() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.sessions)
}

// Sessions returns a snapshot of the live sessions.
func (e *Engine) Sessions() []*Session {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]*Session, 0, len(e.sessions))
	for _, s := range e.sessions {
		out = append(out, s)
	}
	return out
}

// Recent returns the live sessions that match (all if match is nil) and
// moved a byte at or after since, the most recently active first, at most
// limit of them (no limit if limit <= 0).
func (e *Engine) Recent(match func(*Session) bool, since time.Time, limit int) []*Session {
	type active struct {
		s  *Session
		at int64 // read once: sessions go on moving bytes meanwhile
	}
	var found []active
	for _, s := range e.Sessions() {
		if at := s.lastActive.Load(); at >= since.UnixNano() && (match == nil || match(s)) {
			found = append(found, active{s, at})
		}
	}
	slices.SortFunc(found, func(a, b active) int { return cmp.Compare(b.at, a.at) })
	if limit > 0 && len(found) > limit {
		found = found[:limit]
	}
	out := make([]*Session, len(found))
	for i, a := range found {
		out[i] = a.s
	}
	return out
}

// CloseAll ends every live session with reason.
func (e *Engine) CloseAll(reason string) {
	for _, s := range e.Sessions() {
		s.closeWith(reason, nil)
	}
}

// EndAll ends the live sessions that match (all if match is nil), each at
// a response boundary with Session.End, starting them evenly spread over
// spread so that their clients do not all reconnect at once. Sessions
// still open when ctx is done are closed anyway (ReasonEndLate). It
// returns once every matched session is closed, with their number.
func (e *Engine) EndAll(ctx context.Context, match func(*Session) bool, text string, spread time.Duration) int {
	var todo []*Session
	for _, s := range e.Sessions() {
		if match == nil || match(s) {
			todo = append(todo, s)
		}
	}
	if len(todo) == 0 {
		return 0
	}
	step := spread / time.Duration(len(todo))
	start := time.Now()
	for i, s := range todo {
		if step > 0 {
			wait := time.Until(start.Add(time.Duration(i) * step))
			if wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
				case <-t.C:
				}
				t.Stop()
			}
		}
		s.End(text)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		open := 0
		for _, s := range todo {
			if !s.Closed() {
				open++
			}
		}
		if open == 0 {
			return len(todo)
		}
		select {
		case <-ctx.Done():
			for _, s := range todo {
				s.closeWith(ReasonEndLate, nil)
			}
			return len(todo)
		case <-tick.C:
		}
	}
}

// Close ends all sessions and stops the engine's goroutines.
func (e *Engine) Close() {
	if e.closed.Swap(true) {
		return
	}
	e.CloseAll(ReasonShutdown)
	close(e.stop)
	<-e.reaped
	for _, p := range e.pollers {
		p.close()
	}
}

// reaper closes sessions that have been idle for longer than their timeout.
// One sweep over all sessions per tick is cheaper than a timer per session
// that is reset on every burst.
func (e *Engine) reaper() {
	defer close(e.reaped)
	t := time.NewTicker(e.reapEvery)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		now := e.now().UnixNano()
		for _, s := range e.Sessions() {
			if d := s.opts.IdleTimeout; d > 0 && now-s.lastActive.Load() > int64(d) {
				s.closeWith(ReasonIdle, nil)
			}
			if hc := s.halfClosedAt.Load(); hc != 0 && now-max(hc, s.lastActive.Load()) > int64(halfCloseIdle) {
				s.closeWith(ReasonHalfOpen, nil)
			}
		}
	}
}

// Session is one relayed client/backend pair.
type Session struct {
	e               *Engine
	id              uint64
	client, backend Side
	up, down        *pump
	opts            Options
	start           time.Time

	lastActive   atomic.Int64 // unix nanos of the last byte moved
	halfClosedAt atomic.Int64 // unix nanos when the first direction ended
	ended        atomic.Int32 // directions that reached end of stream
	closeOnce    sync.Once
	closed       atomic.Bool
	ending       atomic.Pointer[string] // End's text, once called
}

// ID returns the engine-local session id.
func (s *Session) ID() uint64 { return s.id }

// Bytes returns the bytes relayed so far in each direction.
func (s *Session) Bytes() (clientToBackend, backendToClient int64) {
	return s.up.n.Load(), s.down.n.Load()
}

// End ends the session at the next response boundary of the
// backend->client stream (see Framer): the client gets the framer's
// goodbye (IMAP: "* BYE [UNAVAILABLE] text") after the last complete
// response, then both connections close with ReasonEnded. It returns at
// once; a session whose backend is idle between responses ends at once,
// one in the middle of a response when it completes. Callers bound the
// wait with Close. Without a framer the session ends as soon as the
// backend has nothing more to send.
func (s *Session) End(text string) {
	if s.closed.Load() || s.up == nil {
		return
	}
	s.ending.Store(&text)
	if s.down.state.Load() == stateDone {
		// The backend already ended its stream: nothing can be cut.
		s.closeWith(ReasonEnded, nil)
		return
	}
	s.down.kick()
}

// Tag returns Options.Tag.
func (s *Session) Tag() any { return s.opts.Tag }

// Started returns when the relay took the session over.
func (s *Session) Started() time.Time { return s.start }

// Closed reports whether the session has ended.
func (s *Session) Closed() bool { return s.closed.Load() }

// LocalAddr is the address the client connected to.
func (s *Session) LocalAddr() net.Addr { return s.client.Conn.LocalAddr() }

// Close ends the session now.
func (s *Session) Close(reason string) { s.closeWith(reason, nil) }

func (s *Session) touch() { s.lastActive.Store(s.e.now().UnixNano()) }

// dirEnded records that one direction reached end of stream.
func (s *Session) dirEnded() {
	if s.ended.Add(1) == 2 {
		s.closeWith(ReasonClosed, nil)
		return
	}
	s.halfClosedAt.Store(s.e.now().UnixNano())
}

// closeWith closes both connections once. Closing the TCP sockets (not the
// TLS layers) never blocks; a direction still running sees an error and
// exits, a parked one is dropped from its poller (the kernel forgets the
// epoll registration when the socket closes).
func (s *Session) closeWith(reason string, err error) {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		if s.up != nil {
			s.up.state.Store(stateDone)
			s.down.state.Store(stateDone)
			s.up.poller.remove(s.up)
			s.down.poller.remove(s.down)
		}
		_ = s.client.Conn.Close()
		_ = s.backend.Conn.Close()
		s.e.mu.Lock()
		delete(s.e.sessions, s.id)
		s.e.mu.Unlock()
		if s.opts.OnClose != nil {
			st := Stats{Duration: s.e.now().Sub(s.start), Reason: reason, Err: err}
			if s.up != nil {
				st.ClientToBackend, st.BackendToClient = s.up.n.Load(), s.down.n.Load()
			}
			s.opts.OnClose(st)
		}
	})
}

var errClosed = errors.New("session closed")

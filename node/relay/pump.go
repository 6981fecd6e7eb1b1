package relay

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portico-mail/portico/node/netx"
)

const (
	stateParked  = 0 // waiting in the poller; no goroutine
	stateRunning = 1 // a goroutine owns the pump
	stateDone    = 2 // ended; never runs again
)

const bufSize = 16 << 10 // one maximal TLS record of plaintext

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// pump moves bytes from src to dst.
type pump struct {
	s        *Session
	id       uint64
	src, dst *Side
	toClient bool // direction backend -> client
	pending  []byte
	poller   *poller
	splice   bool
	framer   Framer // the session's framer, nil if none
	observe  bool   // client->backend: show the bytes to the framer
	sp       *spliceIO

	state atomic.Int32
	added atomic.Bool // registered with the poller once (poller.arm)
	n     atomic.Int64
	total *atomic.Int64 // the group's counter for this direction, or nil
}

func (s *Session) newPump(src, dst *Side, pending []byte, id uint64) *pump {
	p := &pump{
		s:        s,
		id:       id,
		src:      src,
		dst:      dst,
		toClient: src == &s.backend,
		pending:  pending,
		poller:   s.e.pollers[id%uint64(len(s.e.pollers))],
		splice:   src.plain() && dst.plain(),
		framer:   s.opts.Framer,
	}
	if p.framer != nil && !p.toClient && p.framer.WantsClientData() {
		p.observe, p.splice = true, false
	}
	if c := s.opts.Counters; c != nil {
		p.total = &c.ClientToBackend
		if p.toClient {
			p.total = &c.BackendToClient
		}
	}
	// The source is only ever read without blocking: through TLS this makes
	// tls.Conn.Read return netx.ErrWouldBlock instead of waiting.
	src.Conn.SetNonblock(true)
	return p
}

// begin starts a pump that Start has marked running. A plain source with
// nothing read ahead parks at once: its registration is level-triggered,
// so bytes already in the socket wake it at once, and parking first
// spares a goroutine and a read that would find nothing (most sessions
// have nothing to relay the moment they are handed over). Anything else,
// a TLS source (crypto/tls may hold bytes it read ahead) or bytes to
// deliver, runs on a goroutine of its own.
func (p *pump) begin() {
	if len(p.pending) > 0 || !p.src.plain() || p.src.Conn.Prefixed() || (p.toClient && p.s.ending.Load() != nil) {
		go p.run()
		return
	}
	if err := p.park(); err != nil {
		p.fail(err, true)
	}
}

// run copies until the source would block, then parks. It is only ever
// run by one goroutine at a time (guarded by state).
func (p *pump) run() {
	if len(p.pending) > 0 {
		pend := p.pending
		p.pending = nil
		ended, err := p.deliver(pend)
		if err != nil {
			p.fail(err, false)
			return
		}
		if ended {
			return
		}
	}
	var err error
	switch {
	case !p.splice || p.src.Conn.Prefixed():
		err = p.runCopy()
	case p.toClient && p.framer != nil:
		err = p.runFramed()
	default:
		err = p.runSplice()
	}
	switch {
	case err == nil: // parked
	case err == io.EOF:
		p.finish()
	default:
		p.fail(err, true)
	}
}

// park registers the source with the poller. The state must become parked
// before the registration: the event may fire at once.
func (p *pump) park() error {
	if p.state.Load() == stateDone {
		return errClosed
	}
	// Ending (Session.End) and the backend has nothing more to send for
	// now: end here if the stream is at a response boundary, else wait for
	// the rest of the response.
	var ending *string
	if p.toClient {
		if ending = p.s.ending.Load(); ending != nil && (p.framer == nil || p.framer.AtBoundary()) {
			p.endNow(*ending)
			return nil
		}
	}
	p.state.Store(stateParked)
	var aerr error
	err := p.src.Conn.Raw().Control(func(fd uintptr) { aerr = p.poller.arm(int(fd), p) })
	if err == nil {
		err = aerr
	}
	if err != nil && p.state.CompareAndSwap(stateParked, stateRunning) {
		return err
	}
	// If the registration failed but the state is no longer parked, the
	// session was closed meanwhile: nothing to do.
	if p.toClient && ending == nil && p.s.ending.Load() != nil {
		// End was called while this pump was about to park: it may have
		// found it running and left the ending to it.
		p.kick()
	}
	return nil
}

// kick runs a parked pump now (without waiting for data).
func (p *pump) kick() {
	if p.state.CompareAndSwap(stateParked, stateRunning) {
		go p.run()
	}
}

// deliver passes b (read from the source) on to the destination, showing it
// to the framer. When the session is ending and b holds a response
// boundary, only the bytes up to the last boundary are passed on, then the
// session ends: ended is true and the pump must stop.
func (p *pump) deliver(b []byte) (ended bool, err error) {
	if p.framer != nil {
		if p.toClient {
			k := p.framer.ServerData(b)
			if t := p.s.ending.Load(); t != nil && k >= 0 {
				if k > 0 {
					if _, err := p.write(b[:k]); err != nil {
						return false, writeErr{err}
					}
					p.count(k)
				}
				p.endNow(*t)
				return true, nil
			}
		} else if p.observe {
			p.framer.ClientData(b)
			if g, ok := p.framer.(ClientGuard); ok {
				if err := g.ClientRefused(); err != nil {
					return false, refusedErr{err}
				}
			}
		}
	}
	if _, err := p.write(b); err != nil {
		return false, writeErr{err}
	}
	p.count(len(b))
	p.s.touch()
	return false, nil
}

// endNow ends the session at a response boundary: the framer's goodbye to
// the client, then close. Only the backend->client pump's owner calls it.
func (p *pump) endNow(text string) {
	if p.framer != nil {
		if bye := p.framer.Bye(text); len(bye) > 0 {
			// Bounded: a client that does not read must not hold the
			// session open.
			_ = p.dst.Conn.SetWriteDeadline(time.Now().Add(byeTimeout))
			_, _ = p.write(bye)
		}
	}
	p.s.closeWith(ReasonEnded, nil)
}

// runCopy copies through a pooled buffer, borrowed for this burst only.
func (p *pump) runCopy() error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		if done, err := p.copyOnce(buf); done {
			return err
		}
	}
}

// copyOnce reads what the source has (up to len(buf)) and delivers it.
// done means the pump must stop: with a nil error it parked or the
// session ended, else the error ended it.
func (p *pump) copyOnce(buf []byte) (done bool, err error) {
	n, rerr := p.read(buf)
	if n > 0 {
		ended, werr := p.deliver(buf[:n])
		if werr != nil {
			return true, werr
		}
		if ended {
			return true, nil
		}
	}
	if rerr != nil {
		if errors.Is(rerr, netx.ErrWouldBlock) {
			return true, p.park()
		}
		return true, rerr
	}
	return false, nil
}

// runFramed relays backend -> client for a session with a framer, both
// sides plain TCP: the framer reads the protocol's lines in user space,
// and literal bodies (the bulk of the bytes: message contents) are
// spliced inside the kernel unseen.
func (p *pump) runFramed() error {
	var pp *pipe
	var bp *[]byte
	noPipe := false
	defer func() {
		if pp != nil {
			putPipe(pp)
		}
		if bp != nil {
			bufPool.Put(bp)
		}
	}()
	for {
		op := p.framer.Opaque()
		if op > 0 && pp == nil && !noPipe {
			var err error
			if pp, err = getPipe(); err != nil {
				pp, noPipe = nil, true // out of descriptors: copy instead
			}
		}
		if op > 0 && pp != nil {
			n, dirty, err := p.spliceOnce(pp, int(min(op, spliceChunk)))
			if dirty {
				pp.close()
				pp = nil
			}
			if n > 0 {
				p.framer.Skip(int64(n))
			}
			switch {
			case err == errAgain:
				return p.park()
			case err != nil:
				return err
			}
			continue
		}
		if bp == nil {
			bp = bufPool.Get().(*[]byte)
		}
		if done, err := p.copyOnce(*bp); done {
			return err
		}
	}
}

// count records n bytes moved, counting them as they move (not at the
// end of the session) so that the group's total is current.
func (p *pump) count(n int) {
	p.n.Add(int64(n))
	if p.total != nil {
		p.total.Add(int64(n))
	}
}

func (p *pump) read(buf []byte) (int, error) {
	if p.src.TLS != nil {
		return p.src.TLS.Read(buf)
	}
	return p.src.Conn.Read(buf)
}

func (p *pump) write(b []byte) (int, error) {
	if p.dst.TLS != nil {
		return p.dst.TLS.Write(b)
	}
	return p.dst.Conn.Write(b)
}

// runSplice moves bytes socket -> pipe -> socket inside the kernel.
func (p *pump) runSplice() error {
	pp, err := getPipe()
	if err != nil {
		// Out of descriptors for a pipe: copy through user space instead.
		return p.runCopy()
	}
	for {
		_, dirty, err := p.spliceOnce(pp, spliceChunk)
		if dirty {
			pp.close()
			return err
		}
		if err == errAgain {
			putPipe(pp)
			return p.park()
		}
		if err != nil {
			putPipe(pp)
			return err
		}
	}
}

// spliceOnce moves up to max bytes from the source to the destination
// through pp, waiting for the destination to accept them. It returns
// errAgain when the source has nothing to read, io.EOF at its end of
// stream. dirty means pp may still hold bytes and must be closed, not
// reused.
func (p *pump) spliceOnce(pp *pipe, max int) (n int, dirty bool, err error) {
	sp := p.sp
	if sp == nil {
		sp = p.newSpliceIO()
	}
	sp.pp, sp.max, sp.n, sp.err = pp, max, 0, nil
	if rerr := p.src.Conn.Raw().Read(sp.readFn); rerr != nil {
		return 0, false, rerr
	}
	if sp.err != nil {
		return 0, false, sp.err
	}
	n = sp.n
	if n == 0 {
		return 0, false, io.EOF
	}
	// Drain the pipe into the destination, waiting for it to accept.
	sp.left = n
	for sp.left > 0 {
		sp.err = nil
		if err := p.dst.Conn.Raw().Write(sp.writeFn); err != nil {
			return n - sp.left, true, writeErr{err}
		}
		if sp.err != nil && sp.err != errAgain {
			return n - sp.left, true, writeErr{sp.err}
		}
	}
	p.s.touch()
	return n, false, nil
}

// spliceIO is the state of a pump's splice, with the functions the
// sockets' RawConn run made once per pump (a closure per call escapes
// to the heap: allocations on every chunk).
type spliceIO struct {
	pp              *pipe
	max, n, left    int
	err             error
	readFn, writeFn func(fd uintptr) bool
}

func (p *pump) newSpliceIO() *spliceIO {
	sp := &spliceIO{}
	sp.readFn = func(fd uintptr) bool {
		sp.n, sp.err = spliceRead(int(fd), sp.pp, sp.max)
		return true
	}
	sp.writeFn = func(fd uintptr) bool {
		m, err := spliceWrite(sp.pp, int(fd), sp.left)
		sp.left -= m
		sp.err = err
		p.count(m)
		return err != errAgain || sp.left == 0
	}
	p.sp = sp
	return sp
}

// refusedErr marks client bytes the framer refused (ClientGuard): the
// session ends as a client error, whichever way the bytes came.
type refusedErr struct{ error }

func (e refusedErr) Unwrap() error { return e.error }

// writeErr marks an error that happened on the destination side.
type writeErr struct{ error }

func (e writeErr) Unwrap() error { return e.error }

// finish passes end of stream on: shut down the destination's write side.
func (p *pump) finish() {
	if p.dst.TLS != nil {
		_ = p.dst.TLS.CloseWrite()
	}
	_ = p.dst.Conn.CloseWrite()
	p.state.Store(stateDone)
	p.poller.remove(p)
	p.s.dirEnded()
}

// fail ends the session because of err. srcSide tells whether err came
// from reading the source (unless wrapped as writeErr).
func (p *pump) fail(err error, srcSide bool) {
	if p.s.closed.Load() {
		return
	}
	var re refusedErr
	if errors.As(err, &re) {
		p.s.closeWith(ReasonClient, re.error)
		return
	}
	var we writeErr
	if errors.As(err, &we) {
		srcSide = false
		err = we.error
	}
	fromBackend := p.toClient == srcSide
	reason := ReasonClient
	if fromBackend {
		reason = ReasonBackend
	}
	p.s.closeWith(reason, err)
}

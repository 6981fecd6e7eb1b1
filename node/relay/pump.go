package relay

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"

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

	state atomic.Int32
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

// run copies until the source would block, then parks. It is only ever
// run by one goroutine at a time (guarded by state).
func (p *pump) run() {
	if len(p.pending) > 0 {
		pend := p.pending
		p.pending = nil
		if _, err := p.write(pend); err != nil {
			p.fail(err, false)
			return
		}
		p.count(len(pend))
		p.s.touch()
	}
	var err error
	if p.splice && !p.src.Conn.Prefixed() {
		err = p.runSplice()
	} else {
		err = p.runCopy()
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
	return nil
}

// runCopy copies through a pooled buffer, borrowed for this burst only.
func (p *pump) runCopy() error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := p.read(buf)
		if n > 0 {
			if _, werr := p.write(buf[:n]); werr != nil {
				return writeErr{werr}
			}
			p.count(n)
			p.s.touch()
		}
		if err != nil {
			if errors.Is(err, netx.ErrWouldBlock) {
				return p.park()
			}
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
	clean := true
	defer func() {
		if clean {
			putPipe(pp)
		} else {
			pp.close()
		}
	}()
	dstRaw := p.dst.Conn.Raw()
	for {
		var n int
		var serr error
		rerr := p.src.Conn.Raw().Read(func(fd uintptr) bool {
			n, serr = spliceRead(int(fd), pp, spliceChunk)
			return true
		})
		if rerr != nil {
			return rerr
		}
		if serr == errAgain {
			return p.park()
		}
		if serr != nil {
			return serr
		}
		if n == 0 {
			return io.EOF
		}
		// Drain the pipe into the destination, waiting for it to accept.
		left := n
		clean = false
		for left > 0 {
			var m int
			var werr error
			err := dstRaw.Write(func(fd uintptr) bool {
				m, werr = spliceWrite(pp, int(fd), left)
				left -= m
				p.count(m)
				return werr != errAgain || left == 0
			})
			if err != nil {
				return writeErr{err}
			}
			if werr != nil && werr != errAgain {
				return writeErr{werr}
			}
		}
		clean = true
		p.s.touch()
	}
}

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

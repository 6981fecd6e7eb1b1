//go:build linux

package evloop

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fdState is the loop's view of one descriptor: its epoll registration and
// the tasks waiting on it. gen tells its events from those of an earlier
// descriptor with the same number.
type fdState struct {
	fd     int32
	gen    uint32
	mask   uint32 // registered events
	added  bool   // registered with epoll
	rw, ww *Task  // waiting to read, to write
	conn   *Conn
	// shared: a listening socket whose open file other loops watch too
	// (SharedListener): registered with EPOLLEXCLUSIVE, so that a
	// connection wakes one loop rather than all, and removed from the
	// epoll set before its descriptor is closed (the registration would
	// outlive a descriptor whose file stays open elsewhere).
	shared bool
}

// Conn is a TCP connection on a raw non-blocking descriptor that only the
// loop waits on. It implements net.Conn and syscall.Conn (its RawConn's
// Read and Write wait by yielding to the loop).
type Conn struct {
	l            *Loop
	fd           int
	laddr, raddr net.Addr
	asked        atomic.Pointer[net.TCPAddr] // laddr asked of the kernel
	st           *fdState                    // the loop's state, made on the first wait

	closed   atomic.Bool
	shared   bool         // see fdState.shared
	rdl, wdl atomic.Int64 // deadlines, unix nanos (0: none)
	waiting  atomic.Int32 // tasks waiting on it: a deadline change must reach the loop
}

// NewConn wraps fd, a connected non-blocking TCP socket the Conn now owns.
// laddr and raddr are its addresses (known to whoever accepted or dialed
// it: no getsockname per connection).
func (l *Loop) NewConn(fd int, laddr, raddr net.Addr) *Conn {
	return &Conn{l: l, fd: fd, laddr: laddr, raddr: raddr}
}

// LocalAddr implements net.Conn. When the address was not known at
// construction it is asked of the kernel, once.
func (c *Conn) LocalAddr() net.Addr {
	if c.laddr != nil {
		return c.laddr
	}
	if a := c.asked.Load(); a != nil {
		return a
	}
	if c.closed.Load() {
		return nil
	}
	var rsa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	_, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(c.fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)))
	if e != 0 {
		return nil
	}
	a, _ := addrOf(&rsa).(*net.TCPAddr)
	if a == nil {
		return nil
	}
	c.asked.Store(a)
	return a
}

// KnownLocalAddr is the local address if it is known without asking the
// kernel (nil otherwise).
func (c *Conn) KnownLocalAddr() net.Addr {
	if c.laddr != nil {
		return c.laddr
	}
	if a := c.asked.Load(); a != nil {
		return a
	}
	return nil
}

// RemoteAddr implements net.Conn.
func (c *Conn) RemoteAddr() net.Addr { return c.raddr }

// FD returns the descriptor (valid until Close).
func (c *Conn) FD() int { return c.fd }

func (c *Conn) opErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrStopped) {
		err = net.ErrClosed
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.laddr, Addr: c.raddr, Err: err}
}

// Read reads what the socket has, waiting (yielding) for data. It must be
// called from a task of the Conn's loop.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := c.l.giveWay(); err != nil {
		return 0, c.opErr("read", err)
	}
	for {
		if c.closed.Load() {
			return 0, c.opErr("read", net.ErrClosed)
		}
		r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(c.fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			if r == 0 {
				return 0, io.EOF
			}
			return int(r), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if err := c.wait(unix.EPOLLIN, &c.rdl); err != nil {
				return 0, c.opErr("read", err)
			}
		default:
			return 0, c.opErr("read", os.NewSyscallError("read", e))
		}
	}
}

// Write writes all of p, waiting (yielding) for room. It must be called
// from a task of the Conn's loop.
func (c *Conn) Write(p []byte) (int, error) {
	if err := c.l.giveWay(); err != nil {
		return 0, c.opErr("write", err)
	}
	n := 0
	for n < len(p) {
		if c.closed.Load() {
			return n, c.opErr("write", net.ErrClosed)
		}
		r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(c.fd), uintptr(unsafe.Pointer(&p[n])), uintptr(len(p)-n))
		switch e {
		case 0:
			n += int(r)
		case unix.EINTR:
		case unix.EAGAIN:
			if err := c.wait(unix.EPOLLOUT, &c.wdl); err != nil {
				return n, c.opErr("write", err)
			}
		default:
			return n, c.opErr("write", os.NewSyscallError("write", e))
		}
	}
	return n, nil
}

// SetLinger sets SO_LINGER as net.TCPConn's SetLinger does (0: Close
// resets the connection).
func (c *Conn) SetLinger(sec int) error {
	if c.closed.Load() {
		return c.opErr("set", net.ErrClosed)
	}
	lg := unix.Linger{Onoff: 1, Linger: int32(sec)}
	if sec < 0 {
		lg = unix.Linger{}
	}
	if err := unix.SetsockoptLinger(c.fd, unix.SOL_SOCKET, unix.SO_LINGER, &lg); err != nil {
		return c.opErr("set", os.NewSyscallError("setsockopt", err))
	}
	return nil
}

// CloseWrite shuts down the sending side.
func (c *Conn) CloseWrite() error {
	if c.closed.Load() {
		return c.opErr("shutdown", net.ErrClosed)
	}
	if e := rawShutdownWrite(c.fd); e != 0 {
		return c.opErr("shutdown", os.NewSyscallError("shutdown", e))
	}
	return nil
}

// Close closes the connection. Safe from any goroutine: a task waiting on
// it is woken with net.ErrClosed, and the descriptor is closed in the loop.
func (c *Conn) Close() error {
	if c.closed.Swap(true) {
		return c.opErr("close", net.ErrClosed)
	}
	if !c.l.post(c.closeNow) {
		// The loop is gone: nothing waits on the descriptor any more.
		rawClose(c.fd)
	}
	return nil
}

func (c *Conn) closeNow() {
	if st := c.st; st != nil {
		for _, t := range []*Task{st.rw, st.ww} {
			if t != nil {
				c.l.wake(t, net.ErrClosed)
			}
		}
		if st.added && st.shared {
			_ = c.l.ctl(unix.EPOLL_CTL_DEL, st, 0)
		}
		if c.l.fds[st.fd] == st {
			delete(c.l.fds, st.fd)
		}
		c.st = nil
	}
	rawClose(c.fd) // also ends its epoll registration (unless shared)
}

// Detach takes the descriptor out of the loop without closing it, for the
// caller to own from then on (a logged-in session handed to the relay):
// its epoll registration is removed, and the Conn is closed as far as its
// methods go (Close afterwards does not touch the descriptor). It fails if
// the Conn was closed. It must be called from a task of the Conn's loop,
// with no task waiting on the Conn.
func (c *Conn) Detach() (int, error) {
	if c.l.cur == nil {
		panic("evloop: Detach outside a task of the Conn's loop")
	}
	if c.closed.Swap(true) {
		return -1, c.opErr("detach", net.ErrClosed)
	}
	if st := c.st; st != nil {
		if st.added {
			if err := c.l.ctl(unix.EPOLL_CTL_DEL, st, 0); err != nil {
				rawClose(c.fd)
				return -1, c.opErr("detach", err)
			}
		}
		if c.l.fds[st.fd] == st {
			delete(c.l.fds, st.fd)
		}
		c.st = nil
	}
	return c.fd, nil
}

// SetDeadline sets both deadlines. Safe from any goroutine.
func (c *Conn) SetDeadline(t time.Time) error {
	c.rdl.Store(nanos(t))
	c.wdl.Store(nanos(t))
	c.deadlinesChanged()
	return nil
}

// SetReadDeadline implements net.Conn. Safe from any goroutine.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.rdl.Store(nanos(t))
	c.deadlinesChanged()
	return nil
}

// SetWriteDeadline implements net.Conn. Safe from any goroutine.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.wdl.Store(nanos(t))
	c.deadlinesChanged()
	return nil
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	if n := t.UnixNano(); n > 0 {
		return n
	}
	return 1 // before 1970: already passed
}

// deadlinesChanged brings a waiting task's timer up to date. A task
// setting its own connection's deadline is not waiting on it (it is
// running), so only another goroutine's change needs the loop: the order
// of the waiting count and the deadlines (both atomic) makes sure that a
// wait starting meanwhile sees the new deadline or the loop is told.
func (c *Conn) deadlinesChanged() {
	if c.waiting.Load() == 0 {
		return
	}
	c.l.post(func() {
		st := c.st
		if st == nil {
			return
		}
		if st.rw != nil {
			c.l.retime(st.rw, c.rdl.Load())
		}
		if st.ww != nil {
			c.l.retime(st.ww, c.wdl.Load())
		}
	})
}

// retime moves a waiting task's deadline to dl (0: none).
func (l *Loop) retime(t *Task, dl int64) {
	switch {
	case dl == 0:
		l.stopTimer(t)
	case dl <= l.now().UnixNano():
		l.wake(t, os.ErrDeadlineExceeded)
	default:
		l.startTimer(t, dl)
	}
}

// wait registers the current task as waiting for ev on c and yields until
// c is ready, its deadline (read from dlp) passes or it is closed.
func (c *Conn) wait(ev uint32, dlp *atomic.Int64) error {
	l := c.l
	t := l.cur
	if t == nil {
		panic("evloop: Conn used outside a task of its loop")
	}
	c.waiting.Add(1)
	defer c.waiting.Add(-1)
	dl := dlp.Load()
	if dl != 0 && dl <= l.now().UnixNano() {
		return os.ErrDeadlineExceeded
	}
	if c.closed.Load() {
		return net.ErrClosed
	}
	st := c.state()
	if ev == unix.EPOLLIN {
		if st.rw != nil {
			return errors.New("evloop: concurrent reads")
		}
		st.rw = t
	} else {
		if st.ww != nil {
			return errors.New("evloop: concurrent writes")
		}
		st.ww = t
	}
	t.wfd = st
	if err := l.arm(st); err != nil {
		l.forget(t)
		return err
	}
	if dl != 0 {
		l.startTimer(t, dl)
	}
	return l.park()
}

// state returns c's loop state, made on first use.
func (c *Conn) state() *fdState {
	if c.st != nil {
		return c.st
	}
	c.l.gen++
	if c.l.gen == 0 {
		c.l.gen++ // 0 marks the eventfd
	}
	st := &fdState{fd: int32(c.fd), gen: c.l.gen, conn: c, shared: c.shared}
	c.l.fds[st.fd] = st
	c.st = st
	return st
}

// need is the events st's waiters wait for.
func (st *fdState) need() uint32 {
	var m uint32
	if st.rw != nil {
		m |= unix.EPOLLIN
	}
	if st.ww != nil {
		m |= unix.EPOLLOUT
	}
	return m
}

// arm registers st with the loop's epoll on its first wait. A connection
// is registered once for both directions, edge-triggered (as Go's
// netpoller and nginx do), and never modified: an edge that comes while
// nobody waits is dropped, which is safe because a task waits only after
// its read or write found the socket dry, and the loop takes events only
// while its tasks wait (an ADD reports a socket that is ready already). A
// shared listening socket is registered level-triggered with
// EPOLLEXCLUSIVE (which allows no EPOLL_CTL_MOD); ready removes it when
// an event comes that nobody waits for (an accept backing off), and the
// next wait adds it again.
func (l *Loop) arm(st *fdState) error {
	if st.added {
		return nil
	}
	events, mask := uint32(unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP|unix.EPOLLET), uint32(unix.EPOLLIN|unix.EPOLLOUT)
	if st.shared {
		events, mask = unix.EPOLLIN|unix.EPOLLEXCLUSIVE, unix.EPOLLIN
	}
	if err := l.ctl(unix.EPOLL_CTL_ADD, st, events); err != nil {
		return err
	}
	st.added, st.mask = true, mask
	return nil
}

func (l *Loop) ctl(op int, st *fdState, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: st.fd, Pad: int32(st.gen)}
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(l.epfd), uintptr(op), uintptr(st.fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
	if e != 0 {
		return os.NewSyscallError("epoll_ctl", e)
	}
	return nil
}

// ready handles an event for a descriptor: wakes its waiters (an error
// or hang-up wakes both). A shared listener's registration is removed
// when nobody waits (level-triggered, it would come back at every poll).
func (l *Loop) ready(ev *unix.EpollEvent) {
	st := l.fds[ev.Fd]
	if st == nil || st.gen != uint32(ev.Pad) {
		return // a closed descriptor's
	}
	e := ev.Events
	bad := e&(unix.EPOLLERR|unix.EPOLLHUP) != 0
	need := st.need()
	if st.rw != nil && (e&(unix.EPOLLIN|unix.EPOLLRDHUP) != 0 || bad) {
		l.wake(st.rw, nil)
	}
	if st.ww != nil && (e&unix.EPOLLOUT != 0 || bad) {
		l.wake(st.ww, nil)
	}
	if st.shared && need == 0 {
		if l.ctl(unix.EPOLL_CTL_DEL, st, 0) == nil {
			st.added, st.mask = false, 0
		}
	}
}

// SyscallConn implements syscall.Conn.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return rawConn{c}, nil }

// rawConn's Read and Write wait by yielding to the loop, as a
// *net.TCPConn's wait in Go's netpoller.
type rawConn struct{ c *Conn }

func (r rawConn) Control(f func(fd uintptr)) error {
	if r.c.closed.Load() {
		return net.ErrClosed
	}
	f(uintptr(r.c.fd))
	return nil
}

func (r rawConn) Read(f func(fd uintptr) bool) error {
	if err := r.c.l.giveWay(); err != nil {
		return err
	}
	for {
		if r.c.closed.Load() {
			return net.ErrClosed
		}
		if f(uintptr(r.c.fd)) {
			return nil
		}
		if err := r.c.wait(unix.EPOLLIN, &r.c.rdl); err != nil {
			return err
		}
	}
}

func (r rawConn) Write(f func(fd uintptr) bool) error {
	if err := r.c.l.giveWay(); err != nil {
		return err
	}
	for {
		if r.c.closed.Load() {
			return net.ErrClosed
		}
		if f(uintptr(r.c.fd)) {
			return nil
		}
		if err := r.c.wait(unix.EPOLLOUT, &r.c.wdl); err != nil {
			return err
		}
	}
}

package netx

import (
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FD is a TCP connection held as a raw, non-blocking socket descriptor
// that Go's runtime never sees: no os.File, no netpoller registration, no
// socket options set on it. It exists for sockets that an event loop of
// our own accepted or connected (accept4 and connect with SOCK_NONBLOCK)
// and hands on as they are: turning such a descriptor into a
// *net.TCPConn (net.FileConn) costs a dup, fcntl calls, Go's default
// keepalive (four setsockopt calls), getsockname and getpeername, and the
// runtime's registration, whose immediate EPOLLOUT wakes an idle thread:
// about as much CPU as the whole loop's login (bench/RESULTS.md, "Fourth
// pass").
//
// Reads never wait: Read returns ErrWouldBlock when the socket has
// nothing (the owner of an FD waits for readability on an epoll of its
// own, as node/relay's pollers do). Writes do wait, for as long as the
// socket's send buffer is full, without an OS thread and without the
// runtime's netpoller: the writing goroutine blocks on a channel, and a
// Waiter (one epoll descriptor per process, itself parked in Go's
// netpoller) wakes it when the socket becomes writable, or the write
// deadline passes, or the FD is closed.
//
// Close may be called at any time from any goroutine: the descriptor is
// closed when the last operation in progress on it has finished (a
// reference count, as the runtime's own fdMutex does), so that its
// number cannot be reused by a new socket while a read, write or splice
// still uses it. Writes are serialised; reads must come from one
// goroutine at a time.
type FD struct {
	fd           int
	state        atomic.Uint64 // fdClosed | operations in progress
	laddr, raddr net.Addr
	asked        atomic.Pointer[net.TCPAddr] // laddr asked of the kernel (laddr nil)
	w            *Waiter

	wmu      sync.Mutex   // one writer at a time (Write, Raw().Write)
	deadline atomic.Int64 // the write deadline, unix nanoseconds; 0: none
	key      uint64       // the Waiter's registration key; 0 before the first wait (wmu)
	added    bool         // the descriptor is in the Waiter's epoll set (wmu)
	wake     atomic.Pointer[chan struct{}]
}

const fdClosed = 1 << 63

// closeFD is close(2) (a variable for tests).
var closeFD = unix.Close

// NewFD takes ownership of fd, a connected TCP socket already in
// non-blocking mode. local and peer are its addresses (given, not asked
// of the kernel: the caller knows them from accept and connect; a nil
// local address is asked of the kernel when first needed); w is the
// Waiter its writes wait on (nil: a write to a full socket fails). NewFD
// makes no syscall and sets no socket option: the caller sets what it
// wants (Go's own connections have TCP_NODELAY, which relayed
// request/response traffic needs to avoid Nagle's delays).
func NewFD(fd int, local, peer net.Addr, w *Waiter) *FD {
	return &FD{fd: fd, laddr: local, raddr: peer, w: w}
}

// incref pins the descriptor for one operation; false once Close was
// called.
func (f *FD) incref() bool {
	for {
		s := f.state.Load()
		if s&fdClosed != 0 {
			return false
		}
		if f.state.CompareAndSwap(s, s+1) {
			return true
		}
	}
}

// decref ends an operation; the last one after Close closes the
// descriptor.
func (f *FD) decref() {
	if f.state.Add(^uint64(0)) == fdClosed {
		_ = closeFD(f.fd)
	}
}

// Close closes the connection: at once if no operation is in progress,
// else when the last one ends (which Close hurries: a write waiting for
// the socket to drain is woken and fails with net.ErrClosed).
func (f *FD) Close() error {
	for {
		s := f.state.Load()
		if s&fdClosed != 0 {
			return f.opErr("close", net.ErrClosed)
		}
		if !f.state.CompareAndSwap(s, s|fdClosed) {
			continue
		}
		if s == 0 {
			return closeFD(f.fd)
		}
		f.poke()
		return nil
	}
}

// poke wakes a write waiting on the FD, if any, to look at its state again.
func (f *FD) poke() {
	if ch := f.wake.Load(); ch != nil {
		select {
		case *ch <- struct{}{}:
		default:
		}
	}
}

func (f *FD) closed() bool { return f.state.Load()&fdClosed != 0 }

// LocalAddr returns the local address given to NewFD, or if none was,
// the socket's (asked of the kernel once).
func (f *FD) LocalAddr() net.Addr {
	if f.laddr != nil {
		return f.laddr
	}
	if a := f.asked.Load(); a != nil {
		return a
	}
	var a *net.TCPAddr
	if f.incref() {
		if sa, err := unix.Getsockname(f.fd); err == nil {
			switch s := sa.(type) {
			case *unix.SockaddrInet4:
				a = &net.TCPAddr{IP: net.IP(append([]byte(nil), s.Addr[:]...)), Port: s.Port}
			case *unix.SockaddrInet6:
				a = &net.TCPAddr{IP: net.IP(append([]byte(nil), s.Addr[:]...)), Port: s.Port}
			}
		}
		f.decref()
	}
	if a == nil {
		return &net.TCPAddr{} // closed, or not an IP socket: never a nil interface
	}
	f.asked.Store(a)
	return a
}

// RemoteAddr returns the peer's address given to NewFD.
func (f *FD) RemoteAddr() net.Addr { return f.raddr }

// SetNonblock does nothing: an FD is always non-blocking for reads. (It
// is there so that an FD and a Conn can be used alike.)
func (f *FD) SetNonblock(bool) {}

// Prefixed reports false: an FD holds no read-ahead bytes.
func (f *FD) Prefixed() bool { return false }

// SetDeadline sets the write deadline (reads never wait, so they need
// none).
func (f *FD) SetDeadline(t time.Time) error { return f.SetWriteDeadline(t) }

// SetReadDeadline does nothing: reads never wait.
func (f *FD) SetReadDeadline(time.Time) error { return nil }

// SetWriteDeadline bounds writes, including one waiting now: past t a
// write fails with an error that wraps os.ErrDeadlineExceeded. The zero
// time means no deadline.
func (f *FD) SetWriteDeadline(t time.Time) error {
	if f.closed() {
		return f.opErr("set", net.ErrClosed)
	}
	var d int64
	if !t.IsZero() {
		d = t.UnixNano()
		if d == 0 {
			d = 1
		}
	}
	f.deadline.Store(d)
	f.poke()
	return nil
}

// expired reports whether the write deadline has passed.
func (f *FD) expired() bool {
	d := f.deadline.Load()
	return d != 0 && time.Now().UnixNano() >= d
}

// Read reads what the socket has now: ErrWouldBlock if nothing, io.EOF at
// end of stream.
func (f *FD) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if !f.incref() {
		return 0, f.opErr("read", net.ErrClosed)
	}
	var n int
	var e unix.Errno
	for {
		n, e = rawRead(f.fd, p)
		if e != unix.EINTR {
			break
		}
	}
	f.decref()
	switch {
	case e == unix.EAGAIN:
		return 0, ErrWouldBlock
	case e != 0:
		return 0, f.opErr("read", os.NewSyscallError("read", e))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting (see FD) while the socket's send buffer
// is full. It returns early with an error on a socket error, when the FD
// is closed, or past the write deadline.
func (f *FD) Write(p []byte) (int, error) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if !f.incref() {
		return 0, f.opErr("write", net.ErrClosed)
	}
	defer f.decref()
	var n int
	for {
		if f.closed() {
			return n, f.opErr("write", net.ErrClosed)
		}
		if f.expired() {
			return n, f.opErr("write", os.ErrDeadlineExceeded)
		}
		if n == len(p) {
			return n, nil
		}
		m, e := rawWrite(f.fd, p[n:])
		switch e {
		case 0:
			n += m
		case unix.EINTR:
		case unix.EAGAIN:
			if err := f.waitWritable(); err != nil {
				return n, f.opErr("write", err)
			}
		default:
			return n, f.opErr("write", os.NewSyscallError("write", e))
		}
	}
}

// CloseWrite shuts down the sending side (the peer reads end of stream).
func (f *FD) CloseWrite() error {
	if !f.incref() {
		return f.opErr("close", net.ErrClosed)
	}
	defer f.decref()
	if err := unix.Shutdown(f.fd, unix.SHUT_WR); err != nil {
		return f.opErr("close", os.NewSyscallError("shutdown", err))
	}
	return nil
}

// Raw gives access to the descriptor for splice(2) and for registering it
// with an epoll of the caller's. Its Control and Write behave as
// syscall.RawConn's; its Read never waits: when the function returns
// false, Read returns ErrWouldBlock.
func (f *FD) Raw() syscall.RawConn { return (*fdRaw)(f) }

type fdRaw FD

func (r *fdRaw) Control(fn func(fd uintptr)) error {
	f := (*FD)(r)
	if !f.incref() {
		return f.opErr("raw-control", net.ErrClosed)
	}
	fn(uintptr(f.fd))
	f.decref()
	return nil
}

func (r *fdRaw) Read(fn func(fd uintptr) bool) error {
	f := (*FD)(r)
	if !f.incref() {
		return f.opErr("raw-read", net.ErrClosed)
	}
	done := fn(uintptr(f.fd))
	f.decref()
	if !done {
		return ErrWouldBlock
	}
	return nil
}

func (r *fdRaw) Write(fn func(fd uintptr) bool) error {
	f := (*FD)(r)
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if !f.incref() {
		return f.opErr("raw-write", net.ErrClosed)
	}
	defer f.decref()
	for {
		if f.closed() {
			return f.opErr("raw-write", net.ErrClosed)
		}
		if f.expired() {
			return f.opErr("raw-write", os.ErrDeadlineExceeded)
		}
		if fn(uintptr(f.fd)) {
			return nil
		}
		if err := f.waitWritable(); err != nil {
			return f.opErr("raw-write", err)
		}
	}
}

// waitWritable waits for the socket to become writable, the deadline,
// Close or the Waiter's end. The caller holds wmu and a reference (so the
// descriptor cannot be closed, nor its number reused, meanwhile). A nil
// error may be a spurious wake-up: the caller tries again.
func (f *FD) waitWritable() error {
	if f.w == nil {
		return errNoWaiter
	}
	ch := f.wake.Load()
	if ch == nil {
		c := make(chan struct{}, 1)
		ch = &c
		f.wake.Store(ch)
	}
	select { // a stale wake-up (an earlier event, Close, a deadline change)
	case <-*ch:
	default:
	}
	if f.closed() { // after the channel is visible to Close's poke
		return net.ErrClosed
	}
	var timeout <-chan time.Time
	if d := f.deadline.Load(); d != 0 {
		left := time.Until(time.Unix(0, d))
		if left <= 0 {
			return os.ErrDeadlineExceeded
		}
		t := time.NewTimer(left)
		defer t.Stop()
		timeout = t.C
	}
	if err := f.w.arm(f); err != nil {
		return err
	}
	defer f.w.disarm(f.key)
	select {
	case <-*ch:
	case <-timeout:
		return os.ErrDeadlineExceeded
	}
	if f.closed() {
		return net.ErrClosed
	}
	return f.w.err()
}

var errNoWaiter = errors.New("netx: socket full and no Waiter to wait on")

func (f *FD) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: f.laddr, Addr: f.raddr, Err: err}
}

// rawRead and rawWrite are read(2) and write(2) on a non-blocking
// descriptor, made without telling the scheduler (they do not block, and
// entering a syscall the ordinary way may wake sysmon).
func rawRead(fd int, p []byte) (int, unix.Errno) {
	ptr := unsafe.Pointer(&p[0])
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(ptr), uintptr(len(p)))
	runtime.KeepAlive(ptr)
	return int(n), e
}

func rawWrite(fd int, p []byte) (int, unix.Errno) {
	ptr := unsafe.Pointer(&p[0])
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(ptr), uintptr(len(p)))
	runtime.KeepAlive(ptr)
	return int(n), e
}

package netx

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrWaiterClosed is returned by an FD write that had to wait after its
// Waiter was closed.
var ErrWaiterClosed = errors.New("netx: waiter closed")

// Waiter wakes FD writes waiting for their socket to become writable.
// It has an epoll descriptor of its own, non-blocking and watched by Go's
// netpoller (an epoll descriptor is readable while it has events), so its
// goroutine parks like any network read instead of holding an OS thread
// in epoll_wait. A waiting write registers its socket for one EPOLLOUT
// (EPOLLONESHOT), keyed by a number the FD draws from the Waiter, never
// by the descriptor's number: an event for a descriptor closed meanwhile,
// whose number a new socket may already have, finds no wait and is
// dropped. One Waiter per process is
// enough: only writes to a full socket wait, and each costs one epoll_ctl
// and one wake-up.
type Waiter struct {
	ep  *os.File
	raw syscall.RawConn
	// epfd is ep's descriptor for epoll_ctl, used under epMu's read lock
	// (Close takes the write lock before closing ep): a RawConn.Control
	// per wait would allocate its closure.
	epMu     sync.RWMutex
	epfd     int
	epClosed bool

	mu     sync.Mutex
	waits  map[uint64]*FD
	closed bool
	next   atomic.Uint64
	stale  atomic.Uint64 // events dropped: their wait had ended (tests)
	waited atomic.Uint64

	done chan struct{}
}

// NewWaiter starts a Waiter; Close stops it.
func NewWaiter() (*Waiter, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, err
	}
	f := os.NewFile(uintptr(epfd), "netx-waiter")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	w := &Waiter{ep: f, raw: raw, epfd: epfd, waits: make(map[uint64]*FD), done: make(chan struct{})}
	go w.loop()
	return w, nil
}

// Close stops the Waiter. Writes waiting on it fail with ErrWaiterClosed,
// and so do later writes that would have to wait.
func (w *Waiter) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	for _, f := range w.waits {
		f.poke()
	}
	w.mu.Unlock()
	w.epMu.Lock()
	w.epClosed = true
	err := w.ep.Close()
	w.epMu.Unlock()
	<-w.done
	return err
}

func (w *Waiter) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrWaiterClosed
	}
	return nil
}

func setEventKey(ev *unix.EpollEvent, key uint64) {
	ev.Fd = int32(uint32(key))
	ev.Pad = int32(uint32(key >> 32))
}

func eventKey(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// arm registers f's descriptor for one writability event. The caller
// holds f's write lock and a reference to the descriptor.
func (w *Waiter) arm(f *FD) error {
	if f.key == 0 {
		f.key = w.next.Add(1)
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return ErrWaiterClosed
	}
	w.waits[f.key] = f
	w.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLOUT | unix.EPOLLONESHOT}
	setEventKey(&ev, f.key)
	// The descriptor stays in the set, disabled, after its event: MOD
	// re-arms it. ADD the first time (or if the kernel forgot it).
	first, second := unix.EPOLL_CTL_MOD, unix.EPOLL_CTL_ADD
	if !f.added {
		first, second = second, first
	}
	var err error
	w.epMu.RLock()
	if w.epClosed {
		err = ErrWaiterClosed
	} else {
		err = unix.EpollCtl(w.epfd, first, f.fd, &ev)
		if err == unix.ENOENT || err == unix.EEXIST {
			err = unix.EpollCtl(w.epfd, second, f.fd, &ev)
		}
		if err != nil {
			err = os.NewSyscallError("epoll_ctl", err)
		}
	}
	w.epMu.RUnlock()
	if err != nil {
		w.disarm(f.key)
		return err
	}
	f.added = true
	w.waited.Add(1)
	return nil
}

// Waited returns how many times a write has waited for its socket to
// drain so far.
func (w *Waiter) Waited() uint64 { return w.waited.Load() }

// disarm forgets a wait: an event still to come for it is dropped.
func (w *Waiter) disarm(key uint64) {
	w.mu.Lock()
	delete(w.waits, key)
	w.mu.Unlock()
}

func (w *Waiter) loop() {
	defer close(w.done)
	events := make([]unix.EpollEvent, 128)
	var n int
	wait := func(epfd uintptr) bool {
		var werr error
		n, werr = unix.EpollWait(int(epfd), events, 0)
		if werr != nil {
			n = 0 // EINTR: try again after the next wake-up
		}
		return n > 0 // false: park until the epoll descriptor is readable
	}
	for {
		if err := w.raw.Read(wait); err != nil {
			return // closed
		}
		w.mu.Lock()
		for i := 0; i < n; i++ {
			if f := w.waits[eventKey(&events[i])]; f != nil {
				f.poke()
			} else {
				w.stale.Add(1)
			}
		}
		w.mu.Unlock()
	}
}

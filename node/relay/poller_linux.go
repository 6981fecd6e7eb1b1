package relay

import (
	"errors"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// poller waits for readability of parked relay directions on its own epoll
// instance and starts a goroutine for each one that becomes readable.
//
// Go's runtime poller already watches every socket (edge-triggered), but it
// only wakes a goroutine that is blocked on the socket, and such a goroutine
// is what an idle session must not cost. So parked directions are also
// registered here, level-triggered with EPOLLONESHOT: one wake-up per park.
// The registration is keyed by a pump id (not the fd number), so an event
// for a connection that was closed meanwhile finds nothing and is dropped.
type poller struct {
	ep  *os.File        // the epoll instance, itself watched by Go's netpoller
	raw syscall.RawConn // for EpollWait on it
	// epfd is ep's descriptor for epoll_ctl, used under epMu's read lock
	// (close takes the write lock before closing ep): raw.Control would
	// take a closure, allocated on every park.
	epMu     sync.RWMutex
	epfd     int
	epClosed bool

	mu    sync.Mutex
	pumps map[uint64]*pump

	done chan struct{}
}

// The epoll descriptor is non-blocking and handed to Go's own netpoller
// (an epoll fd is readable while it has events), so the poller goroutine
// parks like any network read instead of blocking an OS thread in
// epoll_wait. A thread blocked in a raw epoll_wait holds its P in syscall
// state; goroutines it starts then wait for sysmon to retake the P, which
// cost up to 10 ms per wake-up under light load.
func newPoller() (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, err
	}
	f := os.NewFile(uintptr(epfd), "relay-epoll")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	p := &poller{ep: f, raw: raw, epfd: epfd, pumps: make(map[uint64]*pump), done: make(chan struct{})}
	go p.loop()
	return p, nil
}

func setKey(ev *unix.EpollEvent, key uint64) {
	ev.Fd = int32(uint32(key))
	ev.Pad = int32(uint32(key >> 32))
}

func getKey(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

func (p *poller) add(pu *pump) {
	p.mu.Lock()
	p.pumps[pu.id] = pu
	p.mu.Unlock()
}

func (p *poller) remove(pu *pump) {
	p.mu.Lock()
	delete(p.pumps, pu.id)
	p.mu.Unlock()
}

// arm registers fd for one readability event on behalf of pu. The fd must
// be pinned by the caller (called inside RawConn.Control).
func (p *poller) arm(fd int, pu *pump) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
	setKey(&ev, pu.id)
	// A pump parks many times but is added once: ADD the first time, MOD
	// after. The flag is a hint, set once an ADD succeeded: the pump may
	// already be running again (and park again) on another goroutine
	// before it is set, so each operation falls back to the other.
	first, second := unix.EPOLL_CTL_MOD, unix.EPOLL_CTL_ADD
	if !pu.added.Load() {
		first, second = second, first
	}
	p.epMu.RLock()
	if p.epClosed {
		p.epMu.RUnlock()
		return os.ErrClosed
	}
	err := unix.EpollCtl(p.epfd, first, fd, &ev)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EEXIST) {
		err = unix.EpollCtl(p.epfd, second, fd, &ev)
		if second == unix.EPOLL_CTL_ADD && errors.Is(err, unix.EEXIST) {
			err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, fd, &ev)
		}
	}
	p.epMu.RUnlock()
	if err == nil {
		pu.added.Store(true)
	}
	return err
}

func (p *poller) loop() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 256)
	var n int
	wait := func(epfd uintptr) bool {
		var werr error
		n, werr = unix.EpollWait(int(epfd), events, 0)
		if werr != nil {
			n = 0 // EINTR: try again after the next wake-up
		}
		return n > 0 // false: park until the epoll fd is readable
	}
	for {
		if err := p.raw.Read(wait); err != nil {
			return // closed
		}
		for i := 0; i < n; i++ {
			key := getKey(&events[i])
			p.mu.Lock()
			pu := p.pumps[key]
			p.mu.Unlock()
			if pu != nil && pu.state.CompareAndSwap(stateParked, stateRunning) {
				go pu.run()
			}
		}
	}
}

func (p *poller) close() {
	p.epMu.Lock()
	p.epClosed = true
	p.ep.Close()
	p.epMu.Unlock()
	<-p.done
}

package relay

import (
	"errors"
	"sync"
	"sync/atomic"

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
	epfd   int
	wakefd int // eventfd used to stop the loop

	mu    sync.Mutex
	pumps map[uint64]*pump

	stopped atomic.Bool
	done    chan struct{}
}

func newPoller() (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setKey(&ev, 0)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wfd)
		return nil, err
	}
	p := &poller{epfd: epfd, wakefd: wfd, pumps: make(map[uint64]*pump), done: make(chan struct{})}
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
	// MOD first: a pump parks many times but is added once. No per-pump
	// "added" flag: the pump may already be running again on another
	// goroutine by the time this returns.
	err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, fd, &ev)
	if errors.Is(err, unix.ENOENT) {
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
		if errors.Is(err, unix.EEXIST) {
			err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, fd, &ev)
		}
	}
	return err
}

func (p *poller) loop() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			// EBADF/EINVAL: the poller was closed underneath us.
			return
		}
		for i := 0; i < n; i++ {
			key := getKey(&events[i])
			if key == 0 {
				if p.stopped.Load() {
					return
				}
				continue
			}
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
	if p.stopped.Swap(true) {
		return
	}
	var one = [8]byte{1}
	_, _ = unix.Write(p.wakefd, one[:])
	<-p.done
	unix.Close(p.epfd)
	unix.Close(p.wakefd)
}

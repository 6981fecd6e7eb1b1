//go:build linux

package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/relay"
)

// Session states of the epoll loop.
const (
	stLogin  = iota // greeting written, reading the client's LOGIN line
	stBGreet        // backend connecting; reading its greeting
	stBReply        // LOGIN sent; reading up to the tagged reply
	stRelay         // relaying both ways
)

// Directions of a pending (short-written) buffer.
const (
	toClient  = 0
	toBackend = 1
)

const (
	evIn  = unix.EPOLLIN
	evOut = unix.EPOLLOUT
	evBad = unix.EPOLLERR | unix.EPOLLHUP
)

type session struct {
	cfd, bfd     int
	gen          uint32 // tells a reused descriptor's events from stale ones
	state        uint8
	cmask, bmask uint32 // the registered interest of cfd, bfd
	n, lineLen   int    // bytes in buf; length of the LOGIN line at its start
	tagLen       int
	buf          [2 * lineMax]byte // the LOGIN line, then what the backend sends
	pend         [2][]byte         // unwritten bytes per direction

	co         func() (struct{}, bool) // coroutine mode: resumes the login
	coStop     func()
	creg, breg bool // cfd, bfd registered with epoll (coroutine mode)
}

// loop is one event loop: a listener, an epoll instance and the sessions.
type loop struct {
	lfd, epfd int
	backend   unix.RawSockaddrInet4
	raw       bool
	park      bool // wait in Go's netpoller instead of a blocking epoll_wait
	gen       uint32
	byFD      []*session // both descriptors of a session point to it
	free      []*session
	buf       []byte // relay scratch buffer
	live      atomic.Int64
	handoff   *relay.Engine // if set, logged-in sessions go to node/relay
	coro      bool          // run each login as a coroutine of the loop (coro.go)
	// handoffFD, if set, makes the hand-off give the relay the raw
	// descriptors (*netx.FD, writes waiting on this Waiter) instead of
	// *net.TCPConns; local and backendAddr are their addresses (the
	// client's own is not asked for: the relay needs none).
	handoffFD          *netx.Waiter
	local, backendAddr *net.TCPAddr
}

// newLoop makes a non-blocking listener on addr (with SO_REUSEPORT if
// reusePort) and an epoll instance.
func newLoop(addr string, backend *net.TCPAddr, raw, park, reusePort bool) (*loop, error) {
	la, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		return nil, err
	}
	b4 := backend.IP.To4()
	if b4 == nil {
		return nil, fmt.Errorf("backend %v: epoll mode needs an IPv4 address", backend)
	}
	l := &loop{raw: raw, park: park, buf: make([]byte, 64<<10)}
	l.backend.Family = unix.AF_INET
	*(*[2]byte)(unsafe.Pointer(&l.backend.Port)) = [2]byte{byte(backend.Port >> 8), byte(backend.Port)} // network order
	copy(l.backend.Addr[:], b4)
	l.lfd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.SetsockoptInt(l.lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		unix.Close(l.lfd)
		return nil, err
	}
	if reusePort {
		if err := unix.SetsockoptInt(l.lfd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			unix.Close(l.lfd)
			return nil, err
		}
	}
	sa := &unix.SockaddrInet4{Port: la.Port}
	if ip := la.IP.To4(); ip != nil {
		copy(sa.Addr[:], ip)
	}
	if err := unix.Bind(l.lfd, sa); err != nil {
		unix.Close(l.lfd)
		return nil, err
	}
	if err := unix.Listen(l.lfd, 4096); err != nil {
		unix.Close(l.lfd)
		return nil, err
	}
	l.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		unix.Close(l.lfd)
		return nil, err
	}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, l.lfd, &unix.EpollEvent{Events: evIn, Fd: int32(l.lfd)}); err != nil {
		unix.Close(l.lfd)
		unix.Close(l.epfd)
		return nil, err
	}
	return l, nil
}

// addr is the listener's address.
func (l *loop) addr() string {
	sa, err := unix.Getsockname(l.lfd)
	if err != nil {
		return ""
	}
	a := sa.(*unix.SockaddrInet4)
	return (&net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}).String()
}

// run is the loop; it returns only on an epoll error.
func (l *loop) run() error {
	events := make([]unix.EpollEvent, 256)
	wait := func() (int, error) { return unix.EpollWait(l.epfd, events, -1) }
	if l.park {
		// The epoll descriptor, non-blocking, in Go's netpoller (an epoll
		// descriptor is readable while it has events): the goroutine parks
		// like a network read, as node/relay's poller does.
		if err := unix.SetNonblock(l.epfd, true); err != nil {
			return err
		}
		rc, err := os.NewFile(uintptr(l.epfd), "floor-epoll").SyscallConn()
		if err != nil {
			return err
		}
		wait = func() (n int, err error) {
			rerr := rc.Read(func(fd uintptr) bool {
				p := unsafe.Pointer(&events[0])
				r, e := l.sys6(unix.SYS_EPOLL_PWAIT, fd, uintptr(p), uintptr(len(events)), 0, 0, 0)
				runtime.KeepAlive(p)
				n, err = r, nil
				if e != 0 {
					n, err = 0, e
				}
				return n > 0 || (e != 0 && e != unix.EINTR)
			})
			if rerr != nil {
				return 0, rerr
			}
			return n, err
		}
	} else {
		runtime.LockOSThread()
	}
	for {
		n, err := wait()
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		for i := range events[:n] {
			ev := &events[i]
			fd := int(ev.Fd)
			if fd == l.lfd {
				l.accept()
				continue
			}
			if fd >= len(l.byFD) {
				continue
			}
			s := l.byFD[fd]
			if s == nil || s.gen != uint32(ev.Pad) {
				continue // closed earlier in this batch
			}
			l.event(s, fd, ev.Events)
		}
	}
}

// The syscalls. With l.raw they skip the runtime's entersyscall; none of
// them can block (the descriptors are non-blocking, close has no linger).

func (l *loop) sys(trap, a1, a2, a3 uintptr) (int, unix.Errno) {
	var r uintptr
	var e unix.Errno
	if l.raw {
		r, _, e = unix.RawSyscall(trap, a1, a2, a3)
	} else {
		r, _, e = unix.Syscall(trap, a1, a2, a3)
	}
	return int(r), e
}

func (l *loop) sys6(trap, a1, a2, a3, a4, a5, a6 uintptr) (int, unix.Errno) {
	var r uintptr
	var e unix.Errno
	if l.raw {
		r, _, e = unix.RawSyscall6(trap, a1, a2, a3, a4, a5, a6)
	} else {
		r, _, e = unix.Syscall6(trap, a1, a2, a3, a4, a5, a6)
	}
	return int(r), e
}

func (l *loop) read(fd int, b []byte) (int, unix.Errno) {
	p := unsafe.Pointer(&b[0])
	n, e := l.sys(unix.SYS_READ, uintptr(fd), uintptr(p), uintptr(len(b)))
	runtime.KeepAlive(p)
	return n, e
}

func (l *loop) write(fd int, b []byte) (int, unix.Errno) {
	p := unsafe.Pointer(&b[0])
	n, e := l.sys(unix.SYS_WRITE, uintptr(fd), uintptr(p), uintptr(len(b)))
	runtime.KeepAlive(p)
	return n, e
}

func (l *loop) ctl(op, fd int, events uint32, gen uint32) unix.Errno {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd), Pad: int32(gen)}
	p := unsafe.Pointer(&ev)
	_, e := l.sys6(unix.SYS_EPOLL_CTL, uintptr(l.epfd), uintptr(op), uintptr(fd), uintptr(p), 0, 0)
	runtime.KeepAlive(p)
	return e
}

func (l *loop) nodelay(fd int) {
	one := int32(1)
	p := unsafe.Pointer(&one)
	l.sys6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, uintptr(p), 4, 0)
	runtime.KeepAlive(p)
}

func (l *loop) close(fd int) { l.sys(unix.SYS_CLOSE, uintptr(fd), 0, 0) }

// accept takes one connection per readiness event, as nginx does by
// default (the listener is level-triggered: more pending ones wake the
// loop again), writes the greeting and registers it.
func (l *loop) accept() {
	fd, e := l.sys6(unix.SYS_ACCEPT4, uintptr(l.lfd), 0, 0, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return // EAGAIN, or out of descriptors: the listener stays readable
	}
	l.nodelay(fd)
	if l.coro {
		l.startCoro(l.newSession(fd))
		return
	}
	if n, e := l.write(fd, greeting); e != 0 || n != len(greeting) {
		l.close(fd) // a fresh socket's send buffer takes 12 bytes, or the peer is gone
		return
	}
	s := l.newSession(fd)
	if l.ctl(unix.EPOLL_CTL_ADD, fd, evIn, s.gen) != 0 {
		l.end(s)
		return
	}
	s.cmask = evIn
}

func (l *loop) newSession(cfd int) *session {
	var s *session
	if k := len(l.free); k > 0 {
		s = l.free[k-1]
		l.free = l.free[:k-1]
	} else {
		s = new(session)
	}
	l.gen++
	s.cfd, s.bfd, s.gen, s.state = cfd, -1, l.gen, stLogin
	l.setFD(cfd, s)
	l.live.Add(1)
	return s
}

func (l *loop) setFD(fd int, s *session) {
	for fd >= len(l.byFD) {
		l.byFD = append(l.byFD, nil)
	}
	l.byFD[fd] = s
}

// end closes both descriptors of s (which takes them out of epoll) and
// recycles it.
func (l *loop) end(s *session) {
	if s.coStop != nil {
		stop := s.coStop
		s.co, s.coStop = nil, nil
		stop() // the coroutine's yield returns false; it returns
	}
	s.creg, s.breg = false, false
	l.close(s.cfd)
	l.byFD[s.cfd] = nil
	if s.bfd >= 0 {
		l.close(s.bfd)
		l.byFD[s.bfd] = nil
	}
	s.n, s.lineLen, s.tagLen, s.cmask, s.bmask = 0, 0, 0, 0, 0
	s.pend[0], s.pend[1] = nil, nil
	l.free = append(l.free, s)
	l.live.Add(-1)
}

func (l *loop) event(s *session, fd int, ev uint32) {
	if s.state == stCoro {
		l.resume(s)
		return
	}
	if s.state == stRelay {
		l.relayEvent(s, fd, ev)
		return
	}
	if fd == s.cfd {
		if s.state == stLogin && ev&evIn != 0 {
			l.readLogin(s)
			return
		}
		if ev&evBad != 0 {
			l.end(s)
			return
		}
		// The client sent more, or closed, while the backend is being
		// logged in to: stop listening until the relay starts.
		if s.cmask != 0 && l.ctl(unix.EPOLL_CTL_MOD, s.cfd, 0, s.gen) == 0 {
			s.cmask = 0
		}
		return
	}
	// The backend (readable, or failed to connect).
	room := s.buf[s.lineLen+s.n:]
	if len(room) == 0 {
		l.end(s)
		return
	}
	n, e := l.read(s.bfd, room)
	if e == unix.EAGAIN {
		return
	}
	if e != 0 || n == 0 {
		l.end(s)
		return
	}
	s.n += n
	got := s.buf[s.lineLen : s.lineLen+s.n]
	if s.state == stBGreet {
		if indexLF(got) < 0 {
			return
		}
		// Greeting complete: send the LOGIN line in one write.
		if w, e := l.write(s.bfd, s.buf[:s.lineLen]); e != 0 || w != s.lineLen {
			l.end(s)
			return
		}
		s.n, s.state = 0, stBReply
		return
	}
	if taggedEnd(got, s.buf[:s.tagLen]) < 0 {
		return
	}
	s.state = stRelay
	if l.handoff != nil {
		l.handOff(s, got)
		return
	}
	l.send(s, toClient, got)
}

func indexLF(b []byte) int {
	for i, c := range b {
		if c == '\n' {
			return i
		}
	}
	return -1
}

// readLogin reads the client's LOGIN line; once complete, starts the
// backend connection.
func (l *loop) readLogin(s *session) {
	room := s.buf[s.n:lineMax]
	if len(room) == 0 {
		l.end(s)
		return
	}
	n, e := l.read(s.cfd, room)
	if e == unix.EAGAIN {
		return
	}
	if e != 0 || n == 0 {
		l.end(s)
		return
	}
	s.n += n
	i := indexLF(s.buf[:s.n])
	if i < 0 {
		return
	}
	line := s.buf[:i+1]
	tagSP, ok := parseLogin(line)
	if !ok {
		if tagSP != nil {
			msg := append(append(l.buf[:0], tagSP...), "BAD only LOGIN\r\n"...)
			l.write(s.cfd, msg)
		}
		l.end(s)
		return
	}
	s.lineLen, s.tagLen, s.n = i+1, len(tagSP), 0
	fd, e := l.sys(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		l.end(s)
		return
	}
	s.bfd = fd
	l.setFD(fd, s)
	l.nodelay(fd)
	p := unsafe.Pointer(&l.backend)
	_, e = l.sys(unix.SYS_CONNECT, uintptr(fd), uintptr(p), unix.SizeofSockaddrInet4)
	runtime.KeepAlive(p)
	if e != 0 && e != unix.EINPROGRESS {
		l.end(s)
		return
	}
	// IMAP servers speak first: the greeting becoming readable is the
	// connect's completion (a failed connect reports EPOLLERR/EPOLLHUP).
	if l.ctl(unix.EPOLL_CTL_ADD, fd, evIn, s.gen) != 0 {
		l.end(s)
		return
	}
	s.bmask = evIn
	s.state = stBGreet
}

// relayEvent moves bytes for one readiness event of fd.
func (l *loop) relayEvent(s *session, fd int, ev uint32) {
	src, dir := s.cfd, toBackend
	if fd == s.bfd {
		src, dir = s.bfd, toClient
	}
	if ev&evOut != 0 {
		// fd can take what was left for it.
		out := toClient
		if fd == s.bfd {
			out = toBackend
		}
		if len(s.pend[out]) > 0 {
			l.send(s, out, s.pend[out])
			if l.byFD[fd] != s {
				return
			}
		}
	}
	if len(s.pend[dir]) > 0 {
		if ev&evBad != 0 {
			l.end(s) // the source is gone before its peer took everything
		}
		return
	}
	if ev&(evIn|evBad) == 0 {
		return
	}
	n, e := l.read(src, l.buf)
	if e == unix.EAGAIN {
		return
	}
	if e != 0 || n == 0 {
		l.end(s)
		return
	}
	l.send(s, dir, l.buf[:n])
}

// send writes b in direction dir; what the peer cannot take now is kept,
// and the interests are changed so that the loop stops reading the source
// and waits for the destination to drain.
func (l *loop) send(s *session, dir int, b []byte) {
	dst := s.cfd
	if dir == toBackend {
		dst = s.bfd
	}
	for len(b) > 0 {
		n, e := l.write(dst, b)
		if e == unix.EAGAIN {
			break
		}
		if e != 0 {
			l.end(s)
			return
		}
		b = b[n:]
	}
	// b may be the tail of s.pend[dir] itself: append's copy allows that.
	s.pend[dir] = append(s.pend[dir][:0], b...)
	l.interest(s)
}

// interest registers what each descriptor of a relaying session waits for:
// reading while nothing is pending towards its peer, writing while
// something is pending towards itself.
func (l *loop) interest(s *session) {
	cm, bm := uint32(0), uint32(0)
	if len(s.pend[toBackend]) == 0 {
		cm |= evIn
	} else {
		bm |= evOut
	}
	if len(s.pend[toClient]) == 0 {
		bm |= evIn
	} else {
		cm |= evOut
	}
	if cm != s.cmask {
		if l.ctl(unix.EPOLL_CTL_MOD, s.cfd, cm, s.gen) != 0 {
			l.end(s)
			return
		}
		s.cmask = cm
	}
	if bm != s.bmask {
		if l.ctl(unix.EPOLL_CTL_MOD, s.bfd, bm, s.gen) != 0 {
			l.end(s)
			return
		}
		s.bmask = bm
	}
}

// handOff writes the login reply, takes both descriptors out of the loop
// and gives them to node/relay as *net.TCPConn (net.FileConn: a dup and
// the runtime's registration each; the loop's descriptors are closed):
// what a pre-login loop inside Portico would do at the hand-off; or, with
// handoffFD, as the raw descriptors themselves (*netx.FD).
func (l *loop) handOff(s *session, reply []byte) {
	if n, e := l.write(s.cfd, reply); e != 0 || n != len(reply) {
		l.end(s)
		return
	}
	cfd, bfd := s.cfd, s.bfd
	l.ctl(unix.EPOLL_CTL_DEL, cfd, 0, 0)
	l.ctl(unix.EPOLL_CTL_DEL, bfd, 0, 0)
	if l.handoffFD != nil {
		l.byFD[cfd], l.byFD[bfd] = nil, nil
		s.n, s.lineLen, s.tagLen, s.cmask, s.bmask = 0, 0, 0, 0, 0
		l.free = append(l.free, s)
		l.live.Add(-1)
		cs := relay.Side{Conn: netx.NewFD(cfd, l.local, nil, l.handoffFD)}
		bs := relay.Side{Conn: netx.NewFD(bfd, nil, l.backendAddr, l.handoffFD)}
		l.handoff.Start(cs, bs, nil, nil, relay.Options{})
		return
	}
	cc, err1 := fileConn(cfd)
	bc, err2 := fileConn(bfd)
	l.byFD[cfd], l.byFD[bfd] = nil, nil
	s.n, s.lineLen, s.tagLen, s.cmask, s.bmask = 0, 0, 0, 0, 0
	l.free = append(l.free, s)
	l.live.Add(-1)
	if err1 != nil || err2 != nil {
		for _, c := range []*netx.Conn{cc, bc} {
			if c != nil {
				_ = c.Close()
			}
		}
		return
	}
	l.handoff.Start(relay.Side{Conn: cc}, relay.Side{Conn: bc}, nil, nil, relay.Options{})
}

// fileConn turns fd into a *netx.Conn and closes fd.
func fileConn(fd int) (*netx.Conn, error) {
	f := os.NewFile(uintptr(fd), "")
	c, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		return nil, err
	}
	return netx.NewConn(c.(*net.TCPConn), nil)
}

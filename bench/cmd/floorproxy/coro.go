//go:build linux

package main

import (
	"iter"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Coroutine mode (-coro, with -mode epoll): the login is written as
// straight-line code, as in goroutine mode, but runs as a coroutine
// (iter.Pull) of the loop's goroutine: a read or write that would block
// registers its descriptor with the loop's epoll and yields; the loop
// resumes the coroutine when the descriptor is ready. Switching between
// the loop and a coroutine is a direct hand-off on the same thread
// (runtime.coroswitch), without the scheduler's run queue, idle-thread
// wake-ups or the netpoller. After the login the session goes to the
// loop's relay, as in plain epoll mode. This measures what it costs to
// keep the login's logic sequential (as Portico's is) inside an event
// loop, against the hand-written state machine of epoll mode.

// stCoro: the session's coroutine is running the login.
const stCoro = stRelay + 1

// startCoro starts the login coroutine of a freshly accepted session.
func (l *loop) startCoro(s *session) {
	s.state = stCoro
	s.co, s.coStop = iter.Pull(func(yield func(struct{}) bool) { l.coLogin(s, yield) })
	l.resume(s)
}

// resume runs s's coroutine until it waits again or ends. A coroutine
// that ended without reaching the relay failed: the session ends.
func (l *loop) resume(s *session) {
	if _, ok := s.co(); ok {
		return // waiting for an event
	}
	s.co, s.coStop = nil, nil
	if s.state == stCoro {
		l.end(s)
	}
}

// coWait makes fd the only descriptor of s the loop waits for, with
// events ev, and yields until it is ready (false: the session is being
// torn down).
func (l *loop) coWait(s *session, fd int, ev uint32, yield func(struct{}) bool) bool {
	other := s.bfd
	if fd == s.bfd {
		other = s.cfd
	}
	if !l.want(s, fd, ev) {
		return false
	}
	if other >= 0 && !l.want(s, other, 0) {
		return false
	}
	return yield(struct{}{})
}

// want sets the registered interest of fd (one of s's) to ev.
func (l *loop) want(s *session, fd int, ev uint32) bool {
	mask := &s.cmask
	if fd == s.bfd {
		mask = &s.bmask
	}
	if *mask == ev && s.registered(fd) {
		return true
	}
	op := unix.EPOLL_CTL_MOD
	if !s.registered(fd) {
		op = unix.EPOLL_CTL_ADD
	}
	if l.ctl(op, fd, ev, s.gen) != 0 {
		return false
	}
	*mask = ev
	s.setRegistered(fd)
	return true
}

func (s *session) registered(fd int) bool {
	if fd == s.cfd {
		return s.creg
	}
	return s.breg
}

func (s *session) setRegistered(fd int) {
	if fd == s.cfd {
		s.creg = true
	} else {
		s.breg = true
	}
}

// coRead reads what fd has into b, waiting for it.
func (l *loop) coRead(s *session, fd int, b []byte, yield func(struct{}) bool) (int, bool) {
	for {
		n, e := l.read(fd, b)
		if e == unix.EAGAIN {
			if !l.coWait(s, fd, evIn, yield) {
				return 0, false
			}
			continue
		}
		return n, e == 0 && n > 0
	}
}

// coWrite writes all of b to fd, waiting for room.
func (l *loop) coWrite(s *session, fd int, b []byte, yield func(struct{}) bool) bool {
	for len(b) > 0 {
		n, e := l.write(fd, b)
		if e == unix.EAGAIN {
			if !l.coWait(s, fd, evOut, yield) {
				return false
			}
			continue
		}
		if e != 0 {
			return false
		}
		b = b[n:]
	}
	return true
}

// coLogin is the login dialogue of epoll mode, written straight.
func (l *loop) coLogin(s *session, yield func(struct{}) bool) {
	if !l.coWrite(s, s.cfd, greeting, yield) {
		return
	}
	// The client's LOGIN line.
	n, end := 0, -1
	for end < 0 {
		if n == lineMax {
			return
		}
		m, ok := l.coRead(s, s.cfd, s.buf[n:lineMax], yield)
		if !ok {
			return
		}
		n += m
		end = indexLF(s.buf[:n])
	}
	line := s.buf[:end+1]
	tagSP, ok := parseLogin(line)
	if !ok {
		if tagSP != nil {
			l.coWrite(s, s.cfd, append(append(l.buf[:0], tagSP...), "BAD only LOGIN\r\n"...), yield)
		}
		return
	}
	s.lineLen, s.tagLen = end+1, len(tagSP)
	// Connect to the backend; its greeting becoming readable completes
	// the connect (a failed one reads an error).
	fd, e := l.sys(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return
	}
	s.bfd = fd
	l.setFD(fd, s)
	l.nodelay(fd)
	p := unsafe.Pointer(&l.backend)
	_, e = l.sys(unix.SYS_CONNECT, uintptr(fd), uintptr(p), unix.SizeofSockaddrInet4)
	runtime.KeepAlive(p)
	if e != 0 && e != unix.EINPROGRESS {
		return
	}
	bb := s.buf[s.lineLen:]
	for n, end = 0, -1; end < 0; {
		if n == len(bb) {
			return
		}
		m, ok := l.coRead(s, fd, bb[n:], yield)
		if !ok {
			return
		}
		n += m
		end = indexLF(bb[:n])
	}
	if !l.coWrite(s, fd, s.buf[:s.lineLen], yield) {
		return
	}
	// Up to the tagged reply; everything read goes to the client.
	tag := s.buf[:s.tagLen]
	for n, end = 0, -1; end < 0; {
		if n == len(bb) {
			return
		}
		m, ok := l.coRead(s, fd, bb[n:], yield)
		if !ok {
			return
		}
		n += m
		end = taggedEnd(bb[:n], tag)
	}
	if !l.coWrite(s, s.cfd, bb[:n], yield) {
		return
	}
	// The relay's interest: both sides readable (nothing is pending).
	if l.want(s, s.cfd, evIn) && l.want(s, fd, evIn) {
		s.state = stRelay
	}
}

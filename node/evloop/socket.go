//go:build linux

package evloop

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DialTCP connects to addr without blocking a thread: a non-blocking
// connect whose completion the task waits for (yielding), until deadline
// (zero: none). TCP_NODELAY is set, as Go's net does. It must be called
// from a task of l.
func (l *Loop) DialTCP(addr netip.AddrPort, deadline time.Time) (*Conn, error) {
	raddr := net.TCPAddrFromAddrPort(addr)
	ip := addr.Addr().Unmap()
	if ip.Zone() != "" {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: raddr, Err: errors.New("evloop: zoned IPv6 addresses are not supported")}
	}
	family := unix.AF_INET6
	if ip.Is4() {
		family = unix.AF_INET
	}
	fd, e := rawSocket(family)
	if e != 0 {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: raddr, Err: os.NewSyscallError("socket", e)}
	}
	rawNodelay(fd)
	c := l.NewConn(fd, nil, raddr)
	c.wdl.Store(nanos(deadline))
	fail := func(err error) (*Conn, error) {
		c.closed.Store(true)
		c.closeNow()
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: raddr, Err: err}
	}
	switch e := rawConnect(fd, addr); e {
	case 0:
	case unix.EINPROGRESS, unix.EINTR:
		if err := c.wait(unix.EPOLLOUT, &c.wdl); err != nil {
			return fail(err)
		}
		soerr, e := rawSoError(fd)
		if e != 0 {
			return fail(os.NewSyscallError("getsockopt", e))
		}
		if soerr != 0 {
			return fail(os.NewSyscallError("connect", unix.Errno(soerr)))
		}
	default:
		return fail(os.NewSyscallError("connect", e))
	}
	c.wdl.Store(0)
	return c, nil
}

// Listener accepts connections in a task of its loop.
type Listener struct {
	c *Conn // the listening socket (its Conn's read wait is Accept's)
	// took: the last Accept returned a connection. The next one waits
	// first rather than asking the kernel for another at once: the
	// registration is level-triggered, so a connection still queued is
	// reported by the loop's next poll, and one accept per connection
	// saves the accept4 that would find the queue empty (at a moderate
	// rate, every other accept4).
	took bool
}

// NewListener wraps fd, a listening non-blocking TCP socket the Listener
// now owns; addr is its address.
func (l *Loop) NewListener(fd int, addr net.Addr) *Listener {
	return &Listener{c: l.NewConn(fd, addr, nil)}
}

// NewSharedListener is NewListener for a listening socket whose open file
// other loops accept on too, each through a descriptor of its own (a dup):
// a connection wakes one of the loops waiting (EPOLLEXCLUSIVE), not all of
// them, and whichever accepts first has it.
func (l *Loop) NewSharedListener(fd int, addr net.Addr) *Listener {
	c := l.NewConn(fd, addr, nil)
	c.shared = true
	return &Listener{c: c}
}

// Accept waits (yielding) for a connection. The new Conn's local address
// is the listener's unless it listens on a wildcard address (then it is
// asked of the kernel when LocalAddr is first called). It must be called
// from a task of the listener's loop.
func (ln *Listener) Accept() (*Conn, error) {
	c := ln.c
	var rsa unix.RawSockaddrAny
	if ln.took && c.shared {
		ln.took = false
		if err := c.wait(unix.EPOLLIN, &c.rdl); err != nil {
			return nil, c.opErr("accept", err)
		}
	}
	for {
		if c.closed.Load() {
			return nil, c.opErr("accept", net.ErrClosed)
		}
		n := uint32(unix.SizeofSockaddrAny)
		fd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(c.fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
			nc := c.l.NewConn(int(fd), c.laddr, addrOf(&rsa))
			if a, ok := c.laddr.(*net.TCPAddr); !ok || a.IP.IsUnspecified() {
				nc.laddr = nil
			}
			rawNodelay(int(fd))
			ln.took = true
			return nc, nil
		case unix.EINTR, unix.ECONNABORTED:
			continue
		case unix.EAGAIN:
			if err := c.wait(unix.EPOLLIN, &c.rdl); err != nil {
				return nil, c.opErr("accept", err)
			}
		default:
			// Out of descriptors and the like: the caller backs off.
			return nil, c.opErr("accept", os.NewSyscallError("accept4", e))
		}
	}
}

// Close closes the listening socket, waking a task in Accept.
func (ln *Listener) Close() error { return ln.c.Close() }

// Addr is the listener's address.
func (ln *Listener) Addr() net.Addr { return ln.c.laddr }

func addrOf(rsa *unix.RawSockaddrAny) net.Addr {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		port := int(p.Port>>8 | p.Port<<8)
		return &net.TCPAddr{IP: net.IP(append([]byte(nil), p.Addr[:]...)), Port: port}
	case unix.AF_INET6:
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		port := int(p.Port>>8 | p.Port<<8)
		return &net.TCPAddr{IP: net.IP(append([]byte(nil), p.Addr[:]...)), Port: port}
	}
	return nil
}

//go:build linux

package evloop

import (
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
	sa, family := sockaddr(addr)
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: os.NewSyscallError("socket", err)}
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	c := l.NewConn(fd, nil, net.TCPAddrFromAddrPort(addr))
	c.wdl.Store(nanos(deadline))
	fail := func(err error) (*Conn, error) {
		c.closed.Store(true)
		c.closeNow()
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: c.raddr, Err: err}
	}
	switch err := unix.Connect(fd, sa); err {
	case nil:
	case unix.EINPROGRESS, unix.EINTR:
		if err := c.wait(unix.EPOLLOUT, &c.wdl); err != nil {
			return fail(err)
		}
		soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return fail(os.NewSyscallError("getsockopt", err))
		}
		if soerr != 0 {
			return fail(os.NewSyscallError("connect", unix.Errno(soerr)))
		}
	default:
		return fail(os.NewSyscallError("connect", err))
	}
	c.wdl.Store(0)
	return c, nil
}

func sockaddr(a netip.AddrPort) (unix.Sockaddr, int) {
	ip := a.Addr().Unmap()
	if ip.Is4() {
		return &unix.SockaddrInet4{Port: int(a.Port()), Addr: ip.As4()}, unix.AF_INET
	}
	sa := &unix.SockaddrInet6{Port: int(a.Port()), Addr: ip.As16()}
	if z := ip.Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		}
	}
	return sa, unix.AF_INET6
}

// Listener accepts connections in a task of its loop.
type Listener struct {
	c *Conn // the listening socket (its Conn's read wait is Accept's)
}

// NewListener wraps fd, a listening non-blocking TCP socket the Listener
// now owns; addr is its address.
func (l *Loop) NewListener(fd int, addr net.Addr) *Listener {
	return &Listener{c: l.NewConn(fd, addr, nil)}
}

// Accept waits (yielding) for a connection. The new Conn's local address
// is the listener's unless it listens on a wildcard address (then it is
// asked of the kernel when LocalAddr is first called). It must be called
// from a task of the listener's loop.
func (ln *Listener) Accept() (*Conn, error) {
	c := ln.c
	var rsa unix.RawSockaddrAny
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
			_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
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

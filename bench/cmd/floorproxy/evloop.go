//go:build linux

package main

import (
	"errors"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portico-mail/portico/node/evloop"
)

// serveEvloop runs goroutine mode's handle, unchanged, as tasks of a
// node/evloop loop: the same straight-line login and relay code, with
// Conns whose waits yield to the loop instead of parking a goroutine in
// Go's netpoller.
func serveEvloop(addr string, backend *net.TCPAddr) (*evloop.Loop, net.Addr, error) {
	la, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		return nil, nil, err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	sa := &unix.SockaddrInet4{Port: la.Port}
	copy(sa.Addr[:], la.IP.To4())
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	if err := unix.Listen(fd, 4096); err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	bound, _ := unix.Getsockname(fd)
	b4 := bound.(*unix.SockaddrInet4)
	laddr := &net.TCPAddr{IP: net.IP(b4.Addr[:]), Port: b4.Port}
	l, err := evloop.New()
	if err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	ln := l.NewListener(fd, laddr)
	bap := backend.AddrPort()
	e := env{
		dial:  func() (net.Conn, error) { return l.DialTCP(bap, time.Time{}) },
		spawn: l.Spawn,
	}
	started := make(chan struct{})
	l.Go(func() {
		close(started)
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
					_ = l.Sleep(10 * time.Millisecond)
					continue
				}
				return
			}
			l.Spawn(func() { handle(c, e) })
		}
	})
	<-started
	return l, laddr, nil
}

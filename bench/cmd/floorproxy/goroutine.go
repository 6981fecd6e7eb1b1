//go:build linux

package main

import (
	"bytes"
	"errors"
	"net"
	"syscall"
	"time"
)

const relayBuf = 4 << 10 // per direction, goroutine mode

var dialer = net.Dialer{KeepAlive: -1}

// serveGoroutine accepts on ln and serves each connection in a goroutine of
// its own until ln is closed.
func serveGoroutine(ln *net.TCPListener, backend *net.TCPAddr) error {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		go handle(c, goEnv(backend))
	}
}

// env is what handle needs from its mode: a backend connection, and a way
// to run the relay's second direction concurrently.
type env struct {
	dial  func() (net.Conn, error)
	spawn func(func())
}

func goEnv(backend *net.TCPAddr) env {
	return env{
		dial:  func() (net.Conn, error) { return dialer.Dial("tcp", backend.String()) },
		spawn: func(f func()) { go f() },
	}
}

// handle runs one session: the login dialogue, then the relay (this
// goroutine client to backend, a second one backend to client). The same
// code runs as a goroutine (goroutine mode) and as a task of an event
// loop (evloop mode, node/evloop).
func handle(c net.Conn, e env) {
	defer c.Close()
	buf := make([]byte, 2*relayBuf) // [0:relayBuf) client side, the rest backend side
	if _, err := c.Write(greeting); err != nil {
		return
	}
	cb := buf[:relayBuf]
	n, end := 0, -1
	for end < 0 {
		if n == lineMax {
			return
		}
		m, err := c.Read(cb[n:lineMax])
		if err != nil {
			return
		}
		n += m
		end = bytes.IndexByte(cb[:n], '\n') + 1
		if end == 0 {
			end = -1
		}
	}
	login := cb[:end] // anything after the line is ignored: loadimap waits for the reply
	tagSP, ok := parseLogin(login)
	if !ok {
		if tagSP != nil {
			c.Write(append(tagSP, "BAD only LOGIN\r\n"...))
		}
		return
	}
	b, err := e.dial()
	if err != nil {
		return
	}
	defer b.Close()
	bb := buf[relayBuf:]
	// The backend's greeting.
	for n, end = 0, -1; end < 0; {
		if n == lineMax {
			return
		}
		m, err := b.Read(bb[n:lineMax])
		if err != nil {
			return
		}
		n += m
		if i := bytes.IndexByte(bb[:n], '\n'); i >= 0 {
			end = i + 1
		}
	}
	if _, err := b.Write(login); err != nil {
		return
	}
	// Up to the tagged reply; everything read goes to the client.
	for n, end = 0, -1; end < 0; {
		if n == len(bb) {
			return
		}
		m, err := b.Read(bb[n:])
		if err != nil {
			return
		}
		n += m
		end = taggedEnd(bb[:n], tagSP)
	}
	if _, err := c.Write(bb[:n]); err != nil {
		return
	}
	e.spawn(func() {
		relayBoth(c, b, bb)
		c.Close()
		b.Close()
	})
	relayBoth(b, c, cb)
}

// relay copies src to dst until either fails or src ends. (io.CopyBuffer
// would splice between two TCP connections.)
func relayBoth(dst, src net.Conn, buf []byte) {
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

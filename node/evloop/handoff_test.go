//go:build linux

package evloop

import (
	"bufio"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Detach hands a descriptor that waited in the loop over, still open and
// out of the loop's epoll set: the loop's events no longer concern it, and
// the Conn's Close does not touch it.
func TestDetach(t *testing.T) {
	l := newLoop(t)
	client, c := accepted(t, l)
	br := bufio.NewReader(client)
	var fd int
	run(t, l, func() {
		// Wait once in the loop so the descriptor is registered.
		go func() { time.Sleep(20 * time.Millisecond); client.Write([]byte("ping\n")) }()
		buf := make([]byte, 16)
		if n, err := c.Read(buf); err != nil || string(buf[:n]) != "ping\n" {
			t.Errorf("read %q, %v", buf[:n], err)
		}
		var err error
		if fd, err = c.Detach(); err != nil {
			t.Error(err)
		}
		if _, err := c.Read(buf); !errors.Is(err, net.ErrClosed) {
			t.Errorf("read after Detach: %v, want net.ErrClosed", err)
		}
		if l.fds[int32(fd)] != nil {
			t.Error("the loop still tracks the descriptor")
		}
	})
	if fd < 0 {
		t.FailNow()
	}
	defer unix.Close(fd)
	if err := c.Close(); err == nil {
		t.Error("Close after Detach succeeded")
	}
	// Data arriving now wakes nothing in the loop (no registration left):
	// the descriptor is ours, and works.
	client.Write([]byte("more\n"))
	time.Sleep(20 * time.Millisecond)
	buf := make([]byte, 16)
	n, err := unix.Read(fd, buf)
	if err != nil || string(buf[:n]) != "more\n" {
		t.Fatalf("read from the detached descriptor: %q, %v", buf[:n], err)
	}
	if _, err := unix.Write(fd, []byte("pong\n")); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if s, err := br.ReadString('\n'); err != nil || s != "pong\n" {
		t.Fatalf("client read %q, %v", s, err)
	}
	// A second Detach fails.
	run(t, l, func() {
		if _, err := c.Detach(); err == nil {
			t.Error("second Detach succeeded")
		}
	})
}

// Several loops accept on one listening socket, each through a descriptor
// of its own: every connection is accepted exactly once, and closing one
// loop's listener leaves the others serving.
func TestSharedListener(t *testing.T) {
	loops := []*Loop{newLoop(t), newLoop(t)}
	base := listen(t, loops[0]) // owns the socket; nobody accepts on it
	defer base.Close()
	var lns []*Listener
	var accepted [2]atomic.Int32
	var wg sync.WaitGroup
	for i, l := range loops {
		fd, err := unix.FcntlInt(uintptr(base.c.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		ln := l.NewSharedListener(fd, base.Addr())
		lns = append(lns, ln)
		wg.Add(1)
		l.Go(func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				accepted[i].Add(1)
				l.Spawn(func() {
					defer c.Close()
					c.Write([]byte("hi\n"))
				})
			}
		})
	}
	greet := func() {
		c := dial(t, base.Addr())
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if s, err := bufio.NewReader(c).ReadString('\n'); err != nil || s != "hi\n" {
			t.Fatalf("greeting %q, %v", s, err)
		}
	}
	const n = 200
	for range n {
		greet()
	}
	if a, b := accepted[0].Load(), accepted[1].Load(); a+b != n {
		t.Fatalf("accepted %d + %d, want %d", a, b, n)
	}
	lns[0].Close()
	for range 20 {
		greet()
	}
	if got := accepted[0].Load() + accepted[1].Load(); got != n+20 {
		t.Fatalf("accepted %d after one listener closed, want %d", got, n+20)
	}
	lns[1].Close()
	wg.Wait()
	// Both registrations are gone with their descriptors: a connection
	// now waits in the backlog without waking (or spinning) either loop.
	c := dial(t, base.Addr())
	defer c.Close()
	time.Sleep(50 * time.Millisecond)
	for i, l := range loops {
		run(t, l, func() {
			if len(l.fds) != 0 {
				t.Errorf("loop %d still tracks %d descriptors", i, len(l.fds))
			}
		})
	}
}

// A task whose socket never runs dry gives way to the others after its
// quantum: a loop is not held by one busy session.
func TestGiveWay(t *testing.T) {
	l := newLoop(t)
	client, c := accepted(t, l)
	go io.Copy(io.Discard, client) // reads all: the task's writes never wait
	var busyDone atomic.Bool
	l.Go(func() {
		msg := []byte("* 1 EXISTS\r\n")
		for !busyDone.Load() {
			if _, err := c.Write(msg); err != nil {
				return
			}
		}
	})
	// Another task gets to run while the first one reads on.
	start := time.Now()
	run(t, l, func() {})
	busyDone.Store(true)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("a second task waited %v behind a busy one", d)
	}
}

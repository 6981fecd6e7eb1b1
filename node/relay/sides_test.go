package relay

import (
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portico-mail/portico/node/netx"
)

// plain says which kind of socket the tests give the relay for a
// plaintext side: a Go connection (*netx.Conn, w nil) or a raw
// descriptor (*netx.FD) whose writes wait on w. TLS sides are always
// *netx.Conn.
type plain struct{ w *netx.Waiter }

func (k plain) String() string {
	if k.w == nil {
		return "conn"
	}
	return "fd"
}

// eachKind runs f once with each kind of plain side, and checks that
// each run left no descriptor open (goroutines: TestMain).
func eachKind(t *testing.T, f func(t *testing.T, k plain)) {
	t.Run("conn", func(t *testing.T) { noFDLeak(t); f(t, plain{}) })
	t.Run("fd", func(t *testing.T) { noFDLeak(t); f(t, plain{w: testWaiter(t)}) })
}

// noFDLeak checks, after the test's own cleanups (which close its
// engine), that it left no descriptor open but pipes: the relay keeps up
// to maxIdlePipe idle ones for reuse, process-wide.
func noFDLeak(t *testing.T) {
	base := openFDs(t)
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for n := openFDs(t); n > base; n = openFDs(t) {
			if time.Now().After(deadline) {
				t.Errorf("%d descriptors open (not counting pipes), %d before the test", n, base)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

func openFDs(t testing.TB) int {
	d, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range d {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "pipe:") {
			continue
		}
		n++
	}
	return n
}

func testWaiter(t testing.TB) *netx.Waiter {
	w, err := netx.NewWaiter()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// sock returns c as the kind of socket k stands for.
func (k plain) sock(t testing.TB, c *net.TCPConn) Socket {
	if k.w == nil {
		return wrap(t, c)
	}
	return rawFD(t, c, k.w)
}

// rawFD moves c's socket to a *netx.FD: a duplicate of its descriptor
// (the open file, non-blocking since Go made it so, is shared), then c
// is closed, which takes it out of the runtime's netpoller.
func rawFD(t testing.TB, c *net.TCPConn, w *netx.Waiter) *netx.FD {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		t.Fatal(err)
	}
	if derr != nil {
		t.Fatal(derr)
	}
	la, ra := c.LocalAddr(), c.RemoteAddr()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	return netx.NewFD(fd, la, ra, w)
}

package netx

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// fdPair returns the two ends of a loopback TCP connection: the local one
// as an FD (its descriptor moved out of Go's runtime), the peer as a Go
// connection.
func fdPair(t *testing.T, w *Waiter) (*FD, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); ch <- c }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-ch
	if peer == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { peer.Close() })
	return toFD(t, c.(*net.TCPConn), w), peer.(*net.TCPConn)
}

// toFD duplicates c's descriptor (the open file, non-blocking, is shared)
// and closes c, which takes the socket out of the runtime's netpoller.
func toFD(t *testing.T, c *net.TCPConn, w *Waiter) *FD {
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
	c.Close()
	f := NewFD(fd, la, ra, w)
	t.Cleanup(func() { f.Close() })
	return f
}

func newWaiter(t *testing.T) *Waiter {
	t.Helper()
	w, err := NewWaiter()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// openFDs counts the process's descriptors.
func openFDs(t *testing.T) int {
	d, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(d)
}

// noLeaks checks, after the test's own cleanups, that it left no
// goroutine and no descriptor behind.
func noLeaks(t *testing.T) {
	base := openFDs(t)
	t.Cleanup(func() {
		goleak.VerifyNone(t)
		deadline := time.Now().Add(5 * time.Second)
		for openFDs(t) > base {
			if time.Now().After(deadline) {
				t.Fatalf("%d descriptors open, %d before the test", openFDs(t), base)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// fill writes to f without waiting until its socket takes no more.
func fill(t *testing.T, f *FD) int {
	t.Helper()
	chunk := make([]byte, 64<<10)
	total := 0
	err := f.Raw().Control(func(fd uintptr) {
		for {
			n, err := unix.Write(int(fd), chunk)
			if err == unix.EAGAIN {
				return
			}
			if err != nil {
				t.Error(err)
				return
			}
			total += n
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

func TestFDReadWriteClose(t *testing.T) {
	noLeaks(t)
	w := newWaiter(t)
	f, peer := fdPair(t, w)
	if f.LocalAddr().String() != peer.RemoteAddr().String() || f.RemoteAddr().String() != peer.LocalAddr().String() {
		t.Fatalf("addresses %v %v, peer's %v %v", f.LocalAddr(), f.RemoteAddr(), peer.LocalAddr(), peer.RemoteAddr())
	}
	buf := make([]byte, 64)
	if _, err := f.Read(buf); err != ErrWouldBlock {
		t.Fatalf("read with nothing to read: %v, want ErrWouldBlock", err)
	}
	if _, err := peer.Write([]byte("a NOOP\r\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	var got []byte
	for len(got) < 8 && time.Now().Before(deadline) {
		n, err := f.Read(buf)
		if err != nil && err != ErrWouldBlock {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != "a NOOP\r\n" {
		t.Fatalf("read %q", got)
	}
	if n, err := f.Write([]byte("a OK\r\n")); n != 6 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	if err := f.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(peer); err != nil || string(b) != "a OK\r\n" {
		t.Fatalf("peer read %q, %v (want the reply, then end of stream)", b, err)
	}
	peer.Close()
	for {
		_, err := f.Read(buf)
		if err == io.EOF {
			break
		}
		if err != ErrWouldBlock {
			t.Fatalf("read after the peer closed: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("no end of stream")
		}
		time.Sleep(time.Millisecond)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
	if _, err := f.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if _, err := f.Write(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
}

// A write to a socket whose peer does not read waits, with no OS thread
// per waiting write and no spinning, and goes on when the peer reads.
func TestFDWriteWaitsForFullSocket(t *testing.T) {
	noLeaks(t)
	w := newWaiter(t)
	const writers = 40
	type end struct {
		f    *FD
		peer *net.TCPConn
		data []byte
		n    int
		err  error
	}
	ends := make([]*end, writers)
	for i := range ends {
		f, peer := fdPair(t, w)
		ends[i] = &end{f: f, peer: peer, data: randBytes(4 << 20)}
	}
	threads := func() int {
		b, err := os.ReadFile("/proc/self/status")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Threads:"); ok {
				n, _ := strconv.Atoi(strings.TrimSpace(v))
				return n
			}
		}
		t.Fatal("no Threads line")
		return 0
	}
	before := threads()
	var wg sync.WaitGroup
	for _, e := range ends {
		wg.Add(1)
		go func() { defer wg.Done(); e.n, e.err = e.f.Write(e.data) }()
	}
	time.Sleep(200 * time.Millisecond) // every writer fills its socket and waits
	var r0, r1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
	time.Sleep(500 * time.Millisecond)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
	cpu := time.Duration(syscall.TimevalToNsec(r1.Utime) - syscall.TimevalToNsec(r0.Utime) +
		syscall.TimevalToNsec(r1.Stime) - syscall.TimevalToNsec(r0.Stime))
	if cpu > 100*time.Millisecond {
		t.Errorf("%d waiting writes used %v of CPU in 500 ms: spinning?", writers, cpu)
	}
	if n := threads(); n > before+writers/4 {
		t.Errorf("%d threads while %d writes wait, %d before", n, writers, before)
	}
	for _, e := range ends {
		_ = e.peer.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, len(e.data))
		if _, err := io.ReadFull(e.peer, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, e.data) {
			t.Fatal("bytes differ")
		}
	}
	wg.Wait()
	for _, e := range ends {
		if e.n != len(e.data) || e.err != nil {
			t.Fatalf("write: %d of %d, %v", e.n, len(e.data), e.err)
		}
	}
	t.Logf("cpu while waiting: %v; threads %d -> %d", cpu, before, threads())
}

// A write deadline ends a wait with a timeout, whether it was set before
// the write or while it waits; an expired one fails a write at once.
func TestFDWriteDeadline(t *testing.T) {
	noLeaks(t)
	w := newWaiter(t)
	f, _ := fdPair(t, w)
	fill(t, f)
	data := randBytes(1 << 20)

	start := time.Now()
	_ = f.SetWriteDeadline(start.Add(150 * time.Millisecond))
	n, err := f.Write(data)
	d := time.Since(start)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n == len(data) {
		t.Fatalf("write: %d, %v; want a timeout", n, err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("%v is not a net.Error timeout", err)
	}
	if d < 150*time.Millisecond || d > 2*time.Second {
		t.Fatalf("timed out after %v, want 150 ms", d)
	}
	if _, err := f.Write(data); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write past the deadline: %v", err)
	}

	_ = f.SetWriteDeadline(time.Time{})
	done := make(chan error, 1)
	go func() { _, err := f.Write(data); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("write without a deadline to a full socket returned: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	_ = f.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("write: %v, want a timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a deadline set while the write waited did not end it")
	}
}

// Close wakes a waiting write (net.ErrClosed), and the descriptor is
// closed once that write has let go of it: the peer sees the end.
func TestFDCloseDuringWait(t *testing.T) {
	noLeaks(t)
	w := newWaiter(t)
	f, peer := fdPair(t, w)
	fill(t, f)
	done := make(chan error, 1)
	go func() { _, err := f.Write(randBytes(1 << 20)); done <- err }()
	time.Sleep(100 * time.Millisecond)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("write: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake the waiting write")
	}
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, peer); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("peer: %v, want the end of the stream", err)
	}
	w.mu.Lock()
	n := len(w.waits)
	w.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d waits registered after the write ended", n)
	}
}

// The descriptor is closed only when no operation uses it any more, so
// that its number is not reused under a running read, write or splice.
func TestFDCloseWaitsForOperations(t *testing.T) {
	noLeaks(t)
	w := newWaiter(t)
	f, _ := fdPair(t, w)
	var st0 unix.Stat_t
	err := f.Raw().Control(func(fd uintptr) {
		if err := unix.Fstat(int(fd), &st0); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(fd), &st); err != nil || st.Ino != st0.Ino {
			t.Fatalf("descriptor closed under a running operation: %v", err)
		}
		if err := f.Raw().Control(func(uintptr) {}); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("a new operation after Close: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err == nil && st.Ino == st0.Ino {
		t.Fatal("descriptor still open after the last operation")
	}
}

// A descriptor number reused by a new socket while the Waiter still holds
// the old socket's registration (its open file kept alive, as a fork's
// child would keep it): the old registration's event must not wake the
// new socket's wait, and the new socket's waits work.
func TestFDReuseOfDescriptorNumber(t *testing.T) {
	noLeaks(t)
	w := newWaiter(t)
	a, aPeer := fdPair(t, w)
	// The new socket's connection, made now (its descriptor moves to a's
	// number below).
	c, bPeer := func() (*net.TCPConn, *net.TCPConn) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ch := make(chan net.Conn, 1)
		go func() { c, _ := ln.Accept(); ch <- c }()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		p := <-ch
		t.Cleanup(func() { p.Close() })
		return c.(*net.TCPConn), p.(*net.TCPConn)
	}()
	rc, _ := c.SyscallConn()
	x := -1
	var derr error
	if err := rc.Control(func(s uintptr) { x, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
		t.Fatal(err, derr)
	}
	la, ra := c.LocalAddr(), c.RemoteAddr()
	c.Close()

	// a's socket full for good (the first fill may still drain into the
	// peer's receive buffer), and registered for EPOLLOUT as a write's
	// wait that ended (a deadline, Close) leaves it: armed, its key no
	// longer waited on.
	for i := 0; i < 3; i++ {
		fill(t, a)
		time.Sleep(50 * time.Millisecond)
	}
	a.wmu.Lock()
	if err := w.arm(a); err != nil {
		t.Fatal(err)
	}
	w.disarm(a.key)
	a.wmu.Unlock()
	num := a.fd
	keep, err := unix.Dup(num) // the old open file outlives a's descriptor
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(keep)
	a.Close()
	// a's number is free now (the write let go of it): the new socket
	// takes it.
	if _, err := unix.FcntlInt(uintptr(num), unix.F_GETFD, 0); err != unix.EBADF {
		unix.Close(x)
		t.Skipf("descriptor %d taken again meanwhile (%v)", num, err)
	}
	if err := unix.Dup3(x, num, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	unix.Close(x)
	b := NewFD(num, la, ra, w)
	defer b.Close()
	fill(t, b)
	bdone := make(chan error, 1)
	bdata := randBytes(256 << 10)
	go func() { _, err := b.Write(bdata); bdone <- err }()
	time.Sleep(100 * time.Millisecond)

	// The old socket becomes writable: its registration (a's key) fires,
	// and the Waiter drops the event (keyed by descriptor number, it would
	// wake b's write, which waits on the same number).
	stale := w.stale.Load()
	aDrained := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, aPeer); close(aDrained) }()
	defer func() { aPeer.Close(); <-aDrained }()
	for end := time.Now().Add(5 * time.Second); w.stale.Load() == stale; {
		if time.Now().After(end) {
			t.Fatal("no event for the old socket's registration")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-bdone:
		t.Fatalf("b's write returned (%v) though its socket is still full", err)
	case <-time.After(100 * time.Millisecond):
	}
	// b's own peer reads: b's write completes.
	go func() { _, _ = io.Copy(io.Discard, bPeer) }()
	select {
	case err := <-bdone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("b's write did not complete")
	}
	b.Close()
	bPeer.Close()
}

// Closing the Waiter fails the writes waiting on it, and later ones that
// would have to wait.
func TestWaiterClose(t *testing.T) {
	noLeaks(t)
	w, err := NewWaiter()
	if err != nil {
		t.Fatal(err)
	}
	f, _ := fdPair(t, w)
	fill(t, f)
	done := make(chan error, 1)
	go func() { _, err := f.Write(randBytes(1 << 20)); done <- err }()
	time.Sleep(100 * time.Millisecond)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrWaiterClosed) {
			t.Fatalf("write: %v, want ErrWaiterClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("closing the Waiter did not end the wait")
	}
	if _, err := f.Write(randBytes(1 << 20)); !errors.Is(err, ErrWaiterClosed) {
		t.Fatalf("write after the Waiter closed: %v", err)
	}
}

// Reads, writes (some waiting), deadlines and Close, all at once and at
// random moments, many times: every FD's descriptor is closed exactly
// once, after the last operation on it, and nothing is left behind.
func TestFDConcurrentClose(t *testing.T) {
	noLeaks(t)
	w := newWaiter(t)
	var mu sync.Mutex
	closes := map[int]int{}
	closeFD = func(fd int) error {
		mu.Lock()
		closes[fd]++
		mu.Unlock()
		return unix.Close(fd)
	}
	t.Cleanup(func() { closeFD = unix.Close })
	for round := 0; round < 100; round++ {
		f, peer := fdPair(t, w)
		var wg sync.WaitGroup
		wg.Add(4)
		go func() { // a writer that fills the socket and waits
			defer wg.Done()
			_, _ = f.Write(randBytes(8 << 20))
		}()
		go func() { // a reader
			defer wg.Done()
			buf := make([]byte, 4096)
			for {
				if _, err := f.Read(buf); err != nil && err != ErrWouldBlock {
					return
				}
				time.Sleep(100 * time.Microsecond)
			}
		}()
		go func() { // the peer reads a little and writes a little
			defer wg.Done()
			_ = peer.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = peer.Write([]byte("hello"))
			_, _ = io.CopyN(io.Discard, peer, int64(round)<<14)
		}()
		go func() { // deadlines, then Close, at a moment that varies
			defer wg.Done()
			time.Sleep(time.Duration(round%10) * time.Millisecond)
			_ = f.SetWriteDeadline(time.Now().Add(time.Duration(round%7) * time.Millisecond))
			_ = f.SetWriteDeadline(time.Time{})
			_ = f.Close()
		}()
		wg.Wait()
		peer.Close()
		mu.Lock()
		n := closes[f.fd]
		delete(closes, f.fd) // the number may be reused next round
		mu.Unlock()
		if n != 1 {
			t.Fatalf("round %d: descriptor closed %d times", round, n)
		}
		if st := f.state.Load(); st != fdClosed {
			t.Fatalf("round %d: state %#x after every operation ended", round, st)
		}
	}
}

// Without a Waiter a write that would have to wait fails instead.
func TestFDWithoutWaiter(t *testing.T) {
	noLeaks(t)
	f, _ := fdPair(t, nil)
	fill(t, f)
	if _, err := f.Write(randBytes(1 << 20)); !errors.Is(err, errNoWaiter) {
		t.Fatalf("write to a full socket: %v", err)
	}
}

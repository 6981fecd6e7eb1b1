//go:build linux

package evloop

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// listen makes a non-blocking listening socket on 127.0.0.1 and its
// Listener on l.
func listen(t *testing.T, l *Loop) *Listener {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	a := sa.(*unix.SockaddrInet4)
	return l.NewListener(fd, &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port})
}

// run runs fn as a task of l and waits for it to return.
func run(t *testing.T, l *Loop, fn func()) {
	t.Helper()
	done := make(chan struct{}, 1)
	if !l.Go(func() { fn(); done <- struct{}{} }) {
		t.Fatal("loop closed")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("task did not return")
	}
}

func newLoop(t *testing.T) *Loop {
	t.Helper()
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

// echo serves ln: one task per connection, echoing until EOF.
func echo(l *Loop, ln *Listener) {
	l.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.Spawn(func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if _, err := c.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			})
		}
	})
}

func dial(t *testing.T, a net.Addr) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", a.String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func TestEchoManyConnections(t *testing.T) {
	gs := runtime.NumGoroutine()
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t, l)
	echo(l, ln)
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			msg := []byte(strings.Repeat(string(rune('a'+i%26)), 1000+i*37))
			for round := 0; round < 3; round++ {
				if _, err := c.Write(msg); err != nil {
					errs <- err
					return
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(c, got); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, msg) {
					errs <- errors.New("echo differs")
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Every connection task ends when its client goes; the accept task
	// when the listener closes.
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := make(chan int, 1)
		l.Go(func() { n <- l.Tasks() - 1 }) // minus this task
		if <-n == 1 {                       // the accept task
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("connection tasks did not end")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ln.Close()
	l.Close()
	waitGoroutines(t, gs)
}

func waitGoroutines(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines: %d, want %d\n%s", runtime.NumGoroutine(), want, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// accepted returns a client connection and the loop's end of it.
func accepted(t *testing.T, l *Loop) (client net.Conn, c *Conn) {
	t.Helper()
	ln := listen(t, l)
	t.Cleanup(func() { ln.Close() })
	client = dial(t, ln.Addr())
	t.Cleanup(func() { client.Close() })
	run(t, l, func() {
		var err error
		if c, err = ln.Accept(); err != nil {
			t.Error(err)
		}
	})
	if c == nil {
		t.FailNow()
	}
	t.Cleanup(func() { c.Close() })
	return client, c
}

func TestReadDeadline(t *testing.T) {
	l := newLoop(t)
	_, c := accepted(t, l)
	var err error
	var took time.Duration
	run(t, l, func() {
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		start := time.Now()
		_, err = c.Read(make([]byte, 10))
		took = time.Since(start)
	})
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read error %v, want a timeout", err)
	}
	if took < 40*time.Millisecond {
		t.Fatalf("timed out after %v", took)
	}
	// A deadline in the past fails at once; none waits for data again.
	run(t, l, func() {
		_, err = c.Read(make([]byte, 10))
	})
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
}

// A deadline set from another goroutine wakes a task waiting on the
// connection (how a shutdown interrupts a session waiting for its client).
func TestDeadlineFromAnotherGoroutine(t *testing.T) {
	l := newLoop(t)
	_, c := accepted(t, l)
	res := make(chan error, 1)
	l.Go(func() {
		_, err := c.Read(make([]byte, 10))
		res <- err
	})
	time.Sleep(50 * time.Millisecond) // the task is waiting (nothing to read)
	c.SetReadDeadline(time.Now())
	select {
	case err := <-res:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read error %v, want a timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting read was not woken")
	}
}

func TestCloseFromAnotherGoroutine(t *testing.T) {
	l := newLoop(t)
	client, c := accepted(t, l)
	res := make(chan error, 1)
	l.Go(func() {
		_, err := c.Read(make([]byte, 10))
		res <- err
	})
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case err := <-res:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read error %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting read was not woken")
	}
	// The client sees the connection closed.
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("client read after close: %v", err)
	}
}

// A write to a client that does not read waits without holding the loop:
// other tasks go on meanwhile; the write completes once the client reads.
func TestWriteWaitsWithoutBlockingTheLoop(t *testing.T) {
	l := newLoop(t)
	slow, c := accepted(t, l)
	big := bytes.Repeat([]byte("x"), 16<<20)
	wrote := make(chan error, 1)
	l.Go(func() {
		_, err := c.Write(big)
		wrote <- err
	})
	// The echo service on the same loop still answers.
	ln := listen(t, l)
	defer ln.Close()
	echo(l, ln)
	e := dial(t, ln.Addr())
	defer e.Close()
	if _, err := e.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(e, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo while a write waits: %q %v", got, err)
	}
	select {
	case err := <-wrote:
		t.Fatalf("16 MiB written to a client that reads nothing: %v", err)
	default:
	}
	slow.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := io.CopyN(io.Discard, slow, int64(len(big)))
	if err != nil || n != int64(len(big)) {
		t.Fatalf("client read %d: %v", n, err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
}

func TestWriteDeadline(t *testing.T) {
	l := newLoop(t)
	_, c := accepted(t, l)
	var err error
	run(t, l, func() {
		c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		_, err = c.Write(bytes.Repeat([]byte("x"), 64<<20))
	})
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write error %v, want a timeout", err)
	}
}

func TestDial(t *testing.T) {
	l := newLoop(t)
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := gl.Addr().(*net.TCPAddr).AddrPort()
	go func() {
		c, err := gl.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("* OK hello\r\n"))
		c.Close()
	}()
	var got []byte
	run(t, l, func() {
		c, err := l.DialTCP(addr, time.Now().Add(5*time.Second))
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		if la, ok := c.LocalAddr().(*net.TCPAddr); !ok || !la.IP.IsLoopback() {
			t.Errorf("local address %v", c.LocalAddr())
		}
		got, err = io.ReadAll(c)
		if err != nil {
			t.Error(err)
		}
	})
	if string(got) != "* OK hello\r\n" {
		t.Fatalf("read %q", got)
	}
	gl.Close() // nothing listens there now
	run(t, l, func() {
		_, err = l.DialTCP(addr, time.Now().Add(5*time.Second))
	})
	if !errors.Is(err, unix.ECONNREFUSED) {
		t.Fatalf("dial to a closed port: %v", err)
	}
}

func TestSleepAndBlocking(t *testing.T) {
	l := newLoop(t)
	order := make(chan string, 3)
	l.Go(func() {
		l.Blocking(func() { time.Sleep(100 * time.Millisecond) })
		order <- "blocking"
	})
	l.Go(func() {
		l.Sleep(30 * time.Millisecond)
		order <- "sleep"
	})
	l.Go(func() { order <- "other" })
	var got []string
	for i := 0; i < 3; i++ {
		select {
		case s := <-order:
			got = append(got, s)
		case <-time.After(5 * time.Second):
			t.Fatalf("after %v", got)
		}
	}
	if strings.Join(got, " ") != "other sleep blocking" {
		t.Fatalf("order %v", got)
	}
}

// Closing the loop ends tasks that wait on a connection or a timer: they
// are told ErrStopped (net.ErrClosed through a Conn) and return; no
// goroutine is left.
func TestCloseEndsWaitingTasks(t *testing.T) {
	gs := runtime.NumGoroutine()
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t, l)
	client := dial(t, ln.Addr())
	defer client.Close()
	res := make(chan error, 3)
	l.Go(func() { res <- l.Blocking(func() { time.Sleep(200 * time.Millisecond) }) })
	l.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			res <- err
			return
		}
		_, err = c.Read(make([]byte, 1))
		c.Close()
		res <- err
	})
	l.Go(func() { res <- l.Sleep(time.Hour) })
	time.Sleep(50 * time.Millisecond)
	l.Close()
	for i := 0; i < 3; i++ {
		select {
		case err := <-res:
			if err == nil {
				t.Fatal("a waiting task was not told the loop stopped")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a waiting task did not end")
		}
	}
	ln.Close()
	waitGoroutines(t, gs)
}

// A descriptor closed and reused for a new connection: events for the
// old one must not reach the new one's waiter, and the new one works.
func TestDescriptorReuse(t *testing.T) {
	l := newLoop(t)
	ln := listen(t, l)
	defer ln.Close()
	for i := 0; i < 20; i++ {
		client := dial(t, ln.Addr())
		var c *Conn
		run(t, l, func() {
			var err error
			c, err = ln.Accept()
			if err != nil {
				t.Error(err)
			}
		})
		res := make(chan error, 1)
		l.Go(func() {
			buf := make([]byte, 3)
			_, err := io.ReadFull(c, buf)
			if err == nil && string(buf) != "abc" {
				err = errors.New("read " + string(buf))
			}
			res <- err
		})
		if i%2 == 0 {
			client.Write([]byte("abc"))
			if err := <-res; err != nil {
				t.Fatal(err)
			}
		} else {
			c.Close() // while waiting: the task is told, the number is free again
			if err := <-res; !errors.Is(err, net.ErrClosed) {
				t.Fatalf("read on a closed conn: %v", err)
			}
		}
		client.Close()
		c.Close()
	}
}

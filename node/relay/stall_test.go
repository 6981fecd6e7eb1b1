package relay

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestRelayStalledClient(t *testing.T) { eachKind(t, testRelayStalledClient) }

// A client that stops reading in the middle of a large response (a FETCH
// of a big message): the backend->client direction waits for the
// client's socket to drain without spinning and without a thread of its
// own, then goes on where it stopped; spliced or framed.
func testRelayStalledClient(t *testing.T, k plain) {
	for _, framed := range []bool{false, true} {
		t.Run(fmt.Sprintf("framed=%v", framed), func(t *testing.T) {
			e := testEngine(t)
			var opts Options
			if framed {
				opts.Framer = &lineFramer{}
			}
			r := newRig(t, e, k, false, false, nil, nil, opts)
			// A small receive buffer: the relay's socket to the client
			// fills up with a fraction of the response.
			if err := r.client.(*net.TCPConn).SetReadBuffer(64 << 10); err != nil {
				t.Fatal(err)
			}
			body := payload(8 << 20)
			data := append(append([]byte(fmt.Sprintf("LIT %d\n", len(body))), body...), " done\n"...)
			go func() { _, _ = r.backend.Write(data) }()
			time.Sleep(300 * time.Millisecond) // the client's socket fills up
			goroutines := runtime.NumGoroutine()
			var r0, r1 syscall.Rusage
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
			time.Sleep(500 * time.Millisecond)
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
			cpu := time.Duration(syscall.TimevalToNsec(r1.Utime) - syscall.TimevalToNsec(r0.Utime) +
				syscall.TimevalToNsec(r1.Stime) - syscall.TimevalToNsec(r0.Stime))
			if cpu > 100*time.Millisecond {
				t.Errorf("a stalled session used %v of CPU in 500 ms: spinning?", cpu)
			}
			if n := runtime.NumGoroutine(); n > goroutines+1 {
				t.Errorf("goroutines %d -> %d while stalled", goroutines, n)
			}
			_ = r.client.SetReadDeadline(time.Now().Add(20 * time.Second))
			got := make([]byte, len(data))
			if _, err := io.ReadFull(r.client, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("bytes differ after the stall")
			}
			if _, down := r.sess.Bytes(); down != int64(len(data)) {
				t.Fatalf("%d bytes counted, %d relayed", down, len(data))
			}
			if k.w != nil && k.w.Waited() == 0 {
				t.Fatal("the relay's writes to the client never waited on the Waiter")
			}
			t.Logf("cpu while stalled: %v", cpu)
		})
	}
}

func TestEndByeToClientThatDoesNotRead(t *testing.T) {
	eachKind(t, testEndByeToClientThatDoesNotRead)
}

// The goodbye to a client that does not read (its socket full) is
// bounded by byeTimeout: the session ends anyway.
func testEndByeToClientThatDoesNotRead(t *testing.T, k plain) {
	old := byeTimeout
	byeTimeout = 200 * time.Millisecond
	t.Cleanup(func() { byeTimeout = old })
	e := testEngine(t)
	cApp, cProxy := tcpPair(t)
	bProxy, bApp := tcpPair(t)
	t.Cleanup(func() { cApp.Close(); bApp.Close() })
	cs, bs := Side{Conn: k.sock(t, cProxy)}, Side{Conn: k.sock(t, bProxy)}
	// The client reads nothing: fill its socket before the hand-off.
	chunk := make([]byte, 64<<10)
	if err := cs.Conn.Raw().Control(func(fd uintptr) {
		for {
			if _, err := unix.Write(int(fd), chunk); err != nil {
				return // EAGAIN: full
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	stats := make(chan Stats, 1)
	s := e.Start(cs, bs, nil, nil, Options{Framer: &lineFramer{}, OnClose: func(st Stats) { stats <- st }})
	start := time.Now()
	s.End("moving")
	select {
	case st := <-stats:
		d := time.Since(start)
		if st.Reason != ReasonEnded {
			t.Fatalf("reason %q", st.Reason)
		}
		if d < byeTimeout || d > byeTimeout+3*time.Second {
			t.Fatalf("ended after %v; the goodbye's bound is %v", d, byeTimeout)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the session did not end")
	}
}

func TestCloseWhileWriteWaits(t *testing.T) { eachKind(t, testCloseWhileWriteWaits) }

// Closing a session whose backend->client direction waits for a client
// that does not read ends that wait: the session's goroutines end.
func testCloseWhileWriteWaits(t *testing.T, k plain) {
	e := testEngine(t)
	base := runtime.NumGoroutine()
	r := newRig(t, e, k, false, false, nil, nil, Options{})
	if err := r.client.(*net.TCPConn).SetReadBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = r.backend.Write(payload(8 << 20)) }()
	deadline := time.Now().Add(5 * time.Second)
	for _, down := r.sess.Bytes(); down < 1<<20; _, down = r.sess.Bytes() {
		if time.Now().After(deadline) {
			t.Fatalf("only %d bytes relayed", down)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the client's socket is full: the pump waits
	if _, down := r.sess.Bytes(); down >= 8<<20 {
		t.Fatal("the whole response was relayed: nothing waits")
	}
	r.sess.Close("test")
	if st := waitStats(t, r); st.Reason != "test" {
		t.Fatalf("reason %q", st.Reason)
	}
	r.backend.Close() // the test's writer
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, %d before the session", runtime.NumGoroutine(), base)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestClientResetWhileWriteWaits(t *testing.T) { eachKind(t, testClientResetWhileWriteWaits) }

// A client that resets its connection while the relay waits to write to
// it: the wait ends (an error event wakes it), and so does the session,
// as a client error.
func testClientResetWhileWriteWaits(t *testing.T, k plain) {
	e := testEngine(t)
	r := newRig(t, e, k, false, false, nil, nil, Options{})
	c := r.client.(*net.TCPConn)
	if err := c.SetReadBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = r.backend.Write(payload(8 << 20)) }()
	deadline := time.Now().Add(5 * time.Second)
	for _, down := r.sess.Bytes(); down < 1<<20; _, down = r.sess.Bytes() {
		if time.Now().After(deadline) {
			t.Fatalf("only %d bytes relayed", down)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the pump waits for the client
	_ = c.SetLinger(0)
	c.Close() // RST
	st := waitStats(t, r)
	if st.Reason != ReasonClient || st.Err == nil {
		t.Fatalf("reason %q, err %v; want a client error", st.Reason, st.Err)
	}
	r.backend.Close()
}

// A small exchange each way per op (a command and its reply, as an IMAP
// session's NOOP): each direction wakes from its poller, relays, and
// parks again, so this is what an interactive session costs per round
// trip, allocations included.
func BenchmarkRelayRoundTrip(b *testing.B)   { benchRoundTrip(b, plain{}) }
func BenchmarkRelayRoundTripFD(b *testing.B) { benchRoundTrip(b, plain{w: testWaiter(b)}) }

func benchRoundTrip(b *testing.B, k plain) {
	e, err := NewEngine()
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	cApp, cProxy := tcpPair(b)
	bProxy, bApp := tcpPair(b)
	defer cApp.Close()
	defer bApp.Close()
	e.Start(Side{Conn: k.sock(b, cProxy)}, Side{Conn: k.sock(b, bProxy)}, nil, nil, Options{Framer: &lineFramer{}})
	cmd, reply := []byte("a NOOP\n"), []byte("a OK NOOP completed\n")
	buf := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	r0 := cpuTime()
	for i := 0; i < b.N; i++ {
		if _, err := cApp.Write(cmd); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(bApp, buf[:len(cmd)]); err != nil {
			b.Fatal(err)
		}
		if _, err := bApp.Write(reply); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(cApp, buf[:len(reply)]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime()-r0)/float64(b.N), "cpu-ns/op")
}

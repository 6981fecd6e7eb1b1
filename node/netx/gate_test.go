package netx

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"
)

// acquired reports whether h.Acquire returns within d (it is then left
// running in the background otherwise: the caller frees a slot).
func acquired(h *Hold, d time.Duration) (bool, <-chan struct{}) {
	done := make(chan struct{})
	go func() { h.Acquire(); close(done) }()
	select {
	case <-done:
		return true, done
	case <-time.After(d):
		return false, done
	}
}

func TestGateBoundsHolders(t *testing.T) {
	g := NewGate(2)
	stop := make(chan struct{})
	a, b, c := g.Hold(stop), g.Hold(stop), g.Hold(stop)
	a.Acquire()
	b.Acquire()
	a.Acquire() // held already: no second slot
	if g.Busy() != 2 {
		t.Fatalf("busy %d, want 2", g.Busy())
	}
	ok, done := acquired(c, 50*time.Millisecond)
	if ok {
		t.Fatal("a third holder got a slot of a gate of two")
	}
	b.Release()
	<-done
	if g.Busy() != 2 || g.Waited() != 1 {
		t.Fatalf("busy %d waited %d, want 2 and 1", g.Busy(), g.Waited())
	}
	c.Close()
	c.Acquire() // closed: does nothing
	a.Close()
	if g.Busy() != 0 {
		t.Fatalf("busy %d after everyone let go", g.Busy())
	}
}

// A session that has started goes on before new ones: a login, once
// begun, is not held up behind the next arrivals.
func TestGateStartedSessionsFirst(t *testing.T) {
	g := NewGate(1)
	stop := make(chan struct{})
	a, started, fresh := g.Hold(stop), g.Hold(stop), g.Hold(stop)
	started.Acquire()
	started.Release() // waits on its client, say
	a.Acquire()
	okF, doneF := acquired(fresh, 20*time.Millisecond)
	okS, doneS := acquired(started, 20*time.Millisecond)
	if okF || okS {
		t.Fatal("a slot of a full gate")
	}
	a.Release()
	select {
	case <-doneS:
	case <-doneF:
		t.Fatal("a new session went before one that had started")
	case <-time.After(5 * time.Second):
		t.Fatal("nobody got the slot")
	}
	started.Release()
	<-doneF
	fresh.Close()
	if g.Busy() != 0 || g.Waiting() != 0 {
		t.Fatalf("busy %d waiting %d", g.Busy(), g.Waiting())
	}
}

// Once the server stops (done closed), a waiting session goes on without
// a slot: a shutdown is never held up by the gate.
func TestGateDoneLetsWaitersGo(t *testing.T) {
	g := NewGate(1)
	stop := make(chan struct{})
	a, b := g.Hold(stop), g.Hold(stop)
	a.Acquire()
	ok, done := acquired(b, 20*time.Millisecond)
	if ok {
		t.Fatal("second holder got the only slot")
	}
	close(stop)
	<-done
	b.Release() // holds nothing: must not take a's slot back
	if g.Busy() != 1 {
		t.Fatalf("busy %d, want a's 1", g.Busy())
	}
}

func TestNilGateAndHold(t *testing.T) {
	var g *Gate
	h := g.Hold(nil)
	h.Acquire()
	h.Release()
	h.Close()
	ctx := WithHold(context.Background(), h)
	if HoldFrom(ctx) != nil {
		t.Fatal("a nil hold in the context")
	}
	if got := Waiting(ctx, func() int { return 7 }); got != 7 {
		t.Fatal(got)
	}
}

// A Conn gives its holder's slot back while a read waits for the peer,
// and takes it again (waiting its turn) when the data is there.
func TestConnReadReleasesSlot(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	nc, _ := NewConn(sc.(*net.TCPConn), nil)
	defer nc.Close()

	g := NewGate(1)
	stop := make(chan struct{})
	defer close(stop)
	reader, other := g.Hold(stop), g.Hold(stop)
	reader.Acquire()
	nc.SetHold(reader)
	read := make(chan error, 1)
	go func() {
		var b [8]byte
		_, err := nc.Read(b[:])
		read <- err
	}()
	// The reader waits for data: its slot is free for another session.
	if ok, _ := acquired(other, 5*time.Second); !ok {
		t.Fatal("a read waiting for the peer kept its gate slot")
	}
	if _, err := peer.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-read:
		t.Fatalf("the read returned (%v) while another session held the only slot", err)
	case <-time.After(50 * time.Millisecond):
	}
	other.Release()
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	if !reader.held || g.Busy() != 1 {
		t.Fatalf("after the read: held %v, busy %d", reader.held, g.Busy())
	}
	// Writes give it back and take it again too; with no hold, nothing.
	if _, err := nc.Write([]byte("y")); err != nil || !reader.held {
		t.Fatalf("write: %v, held %v", err, reader.held)
	}
	nc.SetHold(nil)
	reader.Close()
	if _, err := nc.Write([]byte("z")); err != nil || g.Busy() != 0 {
		t.Fatalf("write without a hold: %v, busy %d", err, g.Busy())
	}
}

// Sessions that keep coming back (more of them than slots, each waiting
// and wanting its slot again at once) go first only for their first
// startedTurns waits: a new session is not starved behind them.
func TestGateStartedPriorityIsBounded(t *testing.T) {
	g := NewGate(1)
	stop := make(chan struct{})
	defer close(stop)
	busy := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := g.Hold(stop)
			defer h.Close()
			for {
				select {
				case <-busy:
					return
				default:
				}
				h.Acquire()
				time.Sleep(100 * time.Microsecond) // computes a little
				h.Release()                        // waits, say, for a command already sent
			}
		}()
	}
	for g.Waited() < 10 {
		time.Sleep(time.Millisecond)
	}
	fresh := g.Hold(stop)
	ok, done := acquired(fresh, 5*time.Second)
	close(busy)
	if !ok {
		<-done
		t.Fatal("a new session starved behind sessions that keep coming back")
	}
	fresh.Close()
	wg.Wait()
}

// A session that holds its slot without ever waiting gives it to a
// waiting session once it has held it for holdQuantum, at its next
// Yield; it does not while nobody waits, nor before the quantum.
func TestGateYield(t *testing.T) {
	g := NewGate(1)
	stop := make(chan struct{})
	defer close(stop)
	a, b := g.Hold(stop), g.Hold(stop)
	a.Acquire()
	time.Sleep(2 * holdQuantum)
	a.Yield() // nobody waiting: keeps it
	if !a.held || g.Busy() != 1 {
		t.Fatalf("held %v busy %d after a yield with nobody waiting", a.held, g.Busy())
	}
	ok, done := acquired(b, 20*time.Millisecond)
	if ok {
		t.Fatal("a second slot of a gate of one")
	}
	yielded := make(chan struct{})
	go func() { a.Yield(); close(yielded) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting session did not get the slot yielded")
	}
	select {
	case <-yielded:
		t.Fatal("the yielding session went on without a slot")
	case <-time.After(20 * time.Millisecond):
	}
	b.Close()
	<-yielded
	if !a.held || g.Busy() != 1 {
		t.Fatalf("after its turn came back: held %v busy %d", a.held, g.Busy())
	}
	a.Close()
}

// A read that did not wait yields a slot held past the quantum: a
// connection whose client always has its next bytes sent does not keep
// the slot while another session waits.
func TestConnReadYields(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	nc, _ := NewConn(sc.(*net.TCPConn), nil)
	defer nc.Close()
	g := NewGate(1)
	stop := make(chan struct{})
	defer close(stop)
	reader, other := g.Hold(stop), g.Hold(stop)
	reader.Acquire()
	nc.SetHold(reader)
	if _, err := peer.Write(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	ok, done := acquired(other, 20*time.Millisecond)
	if ok {
		t.Fatal("a second slot")
	}
	time.Sleep(2 * holdQuantum)
	read := make(chan error, 1)
	go func() {
		var b [8]byte
		_, err := nc.Read(b[:]) // data is there: does not wait, but yields
		read <- err
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a read that did not wait kept a slot held past the quantum")
	}
	other.Close()
	if err := <-read; err != nil || !reader.held {
		t.Fatalf("read %v, held %v", err, reader.held)
	}
	nc.SetHold(nil)
	reader.Close()
}

package relay

import (
	"io"
	"testing"
	"time"
)

// Counters total the bytes of every session sharing them, and are current
// while the sessions run (not only when they end).
func TestRelayCounters(t *testing.T) { eachKind(t, testRelayCounters) }

func testRelayCounters(t *testing.T, k plain) {
	e := testEngine(t)
	var c Counters
	r1 := newRig(t, e, k, false, false, []byte("pending\r\n"), nil, Options{Counters: &c})
	r2 := newRig(t, e, k, true, false, nil, nil, Options{Counters: &c})

	up, down := payload(100_000), payload(300_000)
	buf := make([]byte, len(down))
	if _, err := r1.client.Write(up); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r1.backend, buf[:len("pending\r\n")+len(up)]); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = r2.backend.Write(down) }()
	if _, err := io.ReadFull(r2.client, buf); err != nil {
		t.Fatal(err)
	}
	wantUp, wantDown := int64(len("pending\r\n")+len(up)), int64(len(down))
	deadline := time.Now().Add(5 * time.Second)
	for c.ClientToBackend.Load() != wantUp || c.BackendToClient.Load() != wantDown {
		if time.Now().After(deadline) {
			t.Fatalf("counters %d / %d while running, want %d / %d",
				c.ClientToBackend.Load(), c.BackendToClient.Load(), wantUp, wantDown)
		}
		time.Sleep(time.Millisecond)
	}
	// The per-session figures agree with the group's.
	u1, d1 := r1.sess.Bytes()
	u2, d2 := r2.sess.Bytes()
	if u1+u2 != wantUp || d1+d2 != wantDown {
		t.Fatalf("sessions %d+%d / %d+%d, group %d / %d", u1, u2, d1, d2, wantUp, wantDown)
	}
	r1.sess.Close("test")
	r2.sess.Close("test")
	<-r1.stats
	<-r2.stats
	if c.ClientToBackend.Load() != wantUp || c.BackendToClient.Load() != wantDown {
		t.Fatal("counters changed at close")
	}
}

// BenchmarkRelayPlainCounted is BenchmarkRelayPlain with group counters,
// to compare the cost of counting bytes as they move.
func BenchmarkRelayPlainCounted(b *testing.B) {
	var c Counters
	benchRelay(b, plain{}, false, false, &c)
	if want := int64(b.N) * (1 << 20); c.BackendToClient.Load() != want {
		b.Fatalf("counted %d of %d bytes", c.BackendToClient.Load(), want)
	}
}

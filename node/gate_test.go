package node

import (
	"strings"
	"testing"
	"time"
)

// Pre-login sessions waiting for their clients hold no slot of the gate:
// many more idle sessions than slots leave it free, a login still goes
// through, and a relayed session holds none either.
func TestGateIdleSessionsHoldNoSlot(t *testing.T) {
	s := startServer(t, Config{Listeners: []ListenerConfig{{Name: "l", Address: "127.0.0.1:0"}}})
	addr := s.Addrs()["l"].String()
	idle := 4 * s.Gate().Size()
	for range idle {
		_, br := dial(t, addr)
		if got := readLine(t, br); !strings.HasPrefix(got, "* OK") {
			t.Fatalf("greeting %q", got)
		}
	}
	waitBusy := func(want int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for s.Gate().Busy() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%d gate slots busy, want %d", s.Gate().Busy(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// Every idle session waits in a read, without its slot.
	waitBusy(0)
	c, br := dial(t, addr)
	readLine(t, br)
	if _, err := c.Write([]byte("login\r\n")); err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, br); got != "OK\r\n" {
		t.Fatalf("login: %q", got)
	}
	if _, err := c.Write([]byte("ping\r\n")); err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, br); got != "ping\r\n" {
		t.Fatalf("relayed: %q", got)
	}
	waitBusy(0)
}

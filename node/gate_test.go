package node

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
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

// A client cannot keep the gate for itself: connections that pipeline
// commands without pause before login (each always has its next command
// waiting, so its reads never wait and its slot is never given back;
// and it waits, if ever, in the started sessions' queue, which goes
// first) must not starve new sessions, with more of them than slots.
// Without the gate they would only have taken their share of the CPUs.
func TestGateBusyClientsCannotStarveNewSessions(t *testing.T) {
	s := startServer(t, Config{Listeners: []ListenerConfig{{Name: "l", Address: "127.0.0.1:0"}}})
	addr := s.Addrs()["l"].String()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(stop); wg.Wait() }()
	flood := bytes.Repeat([]byte("x\r\n"), 2000)
	for range 2*s.Gate().Size() + 1 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(2)
		go func() { // pipelines commands for as long as the test runs
			defer wg.Done()
			for {
				select {
				case <-stop:
					c.Close()
					return
				default:
				}
				c.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := c.Write(flood); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
					return
				}
			}
		}()
		go func() { // reads every answer at once, so no write of the server waits
			defer wg.Done()
			_, _ = io.Copy(io.Discard, c)
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	// On the event loops there is no gate: the flood's tasks give way to
	// the others after their quantum (evloop's giveWay) instead.
	for !testEventLoop && s.Gate().Busy() < s.Gate().Size() {
		if time.Now().After(deadline) {
			t.Fatalf("the flood holds %d of %d slots", s.Gate().Busy(), s.Gate().Size())
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a while under the flood
	for i := range 3 {
		start := time.Now()
		c, br := dial(t, addr)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		got, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(got, "* OK") {
			t.Fatalf("new session %d under the flood: greeting %q, %v after %v", i, got, err, time.Since(start))
		}
		if _, err := c.Write([]byte("login\r\n")); err != nil {
			t.Fatal(err)
		}
		if got, err := br.ReadString('\n'); err != nil || got != "OK\r\n" {
			t.Fatalf("new session %d under the flood: login %q, %v after %v", i, got, err, time.Since(start))
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("new session %d took %v to log in under the flood", i, d)
		}
		c.Close()
	}
}

package daemon

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
)

func TestOutputConcurrent(t *testing.T) {
	var o Output
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 100; j++ {
				fmt.Fprintf(&o, "x")
				_ = o.String()
			}
		}()
	}
	wg.Wait()
	if n := len(o.String()); n != 800 {
		t.Fatalf("got %d bytes, want 800", n)
	}
}

func TestFreePortsDistinctAndBindable(t *testing.T) {
	ports, err := FreePorts("127.0.0.1", 5)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("port %d handed out twice: %v", p, ports)
		}
		seen[p] = true
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d not free after FreePorts: %v", p, err)
		}
		l.Close()
	}
	if _, err := FreePorts("192.0.2.1", 1); err == nil {
		t.Fatal("a port on an address this host does not have was handed out")
	}
}

func TestAddrInUse(t *testing.T) {
	for _, s := range []string{
		"bind(127.0.0.1, 1234) failed: Address already in use",
		"FATAL:  could not bind IPv4 address \"127.0.0.1\": Address already in use",
		"daemon: bind: address already in use",
	} {
		if !AddrInUse(s) {
			t.Errorf("AddrInUse(%q) = false", s)
		}
	}
	if AddrInUse("permission denied") {
		t.Error("AddrInUse(permission denied) = true")
	}
}

func TestRetry(t *testing.T) {
	calls := 0
	v, err := Retry(func() (int, error) {
		calls++
		if calls < 2 {
			return 0, fmt.Errorf("start: %w", ErrAddrInUse)
		}
		return 7, nil
	})
	if err != nil || v != 7 || calls != 2 {
		t.Fatalf("retry after a taken port: v=%d err=%v calls=%d", v, err, calls)
	}

	calls = 0
	other := errors.New("bad config")
	if _, err := Retry(func() (int, error) { calls++; return 0, other }); !errors.Is(err, other) || calls != 1 {
		t.Fatalf("another error: err=%v calls=%d, want it at once", err, calls)
	}

	calls = 0
	if _, err := Retry(func() (int, error) { calls++; return 0, ErrAddrInUse }); !errors.Is(err, ErrAddrInUse) || calls != Attempts {
		t.Fatalf("always taken: err=%v calls=%d, want %d attempts", err, calls, Attempts)
	}
}

func TestStartStopsInCleanup(t *testing.T) {
	type srv struct{ stopped, logged bool }
	var s *srv
	t.Run("started", func(t *testing.T) {
		s = Start(t, "fake", nil, "PORTICO_TEST_UNUSED",
			func() (*srv, error) { return &srv{}, nil },
			func(s *srv) { s.stopped = true },
			func(s *srv) string { s.logged = true; return "" })
		if s == nil || s.stopped {
			t.Fatalf("Start returned %+v, want a running server", s)
		}
	})
	if !s.stopped {
		t.Error("the server was not stopped when the test ended")
	}
	if s.logged {
		t.Error("the log was read although the test passed")
	}

	started := false
	t.Run("unavailable", func(t *testing.T) {
		t.Setenv("PORTICO_TEST_UNUSED", "")
		Start(t, "fake", errors.New("not installed"), "PORTICO_TEST_UNUSED",
			func() (*srv, error) { started = true; return &srv{}, nil },
			func(*srv) {}, func(*srv) string { return "" })
		t.Error("Start went on although the server is unavailable")
	})
	if started {
		t.Error("an unavailable server was started")
	}
}

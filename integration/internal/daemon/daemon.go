// Package daemon holds what the harnesses that start real servers for the
// integration tests (Dovecot, Cyrus, slapd, PostgreSQL, MariaDB, Postfix)
// have in common: a process's output read while it is written, free ports
// for servers that take only a port number, a retry when such a port was
// taken before the server bound it, the skip-or-fail rule for a server
// that is not installed, and the start-for-a-test that stops the server
// when the test ends and shows its log when the test failed.
package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
)

// Output collects a process's output (its Stdout or Stderr) and can be read
// while the process writes it.
type Output struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// FreePorts returns n distinct ports on addr that were free when asked for.
// Every port is held open until all are picked, so the kernel cannot hand
// out one twice; once they are released another process may still take
// one before the server binds it, which is what Retry is for.
func FreePorts(addr string, n int) ([]int, error) {
	held := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
		if err != nil {
			return nil, fmt.Errorf("pick a free port on %s: %w", addr, err)
		}
		held = append(held, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// ErrAddrInUse marks a start that failed because a port was taken.
var ErrAddrInUse = errors.New("address already in use")

// AddrInUse reports whether a server's output or log says it could not
// bind a port because someone else holds it.
func AddrInUse(output string) bool {
	return strings.Contains(strings.ToLower(output), "address already in use")
}

// Attempts is how many times Retry starts a server.
const Attempts = 3

// Retry calls start until it succeeds, at most Attempts times, as long as
// it fails with ErrAddrInUse (each call is expected to pick fresh ports).
func Retry[T any](start func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for attempt := 0; attempt < Attempts; attempt++ {
		if v, err = start(); err == nil || !errors.Is(err, ErrAddrInUse) {
			return v, err
		}
	}
	return v, err
}

// Require skips t when a server is unavailable (unavailable is not nil),
// or fails it when the environment variable env is "1": CI sets it, so
// that a missing package fails the run instead of skipping its tests.
func Require(t testing.TB, unavailable error, env string) {
	t.Helper()
	if unavailable == nil {
		return
	}
	if os.Getenv(env) == "1" {
		t.Fatalf("%s=1 but %v", env, unavailable)
	}
	t.Skipf("skipping: %v (set %s=1 to fail instead)", unavailable, env)
}

// Start is a harness's Start for a test: it skips t (or fails it, see
// Require) when the server is unavailable, starts one with start, and in
// t.Cleanup stops it with stop and, if the test failed, writes what log
// returns (when not blank) to the test log, after the stop so that the
// server's last words are in it. what names the server in messages.
func Start[S any](t testing.TB, what string, unavailable error, env string, start func() (S, error), stop func(S), log func(S) string) S {
	t.Helper()
	Require(t, unavailable, env)
	s, err := start()
	if err != nil {
		t.Fatalf("start %s: %v", what, err)
	}
	t.Cleanup(func() {
		stop(s)
		if !t.Failed() {
			return
		}
		if out := log(s); strings.TrimSpace(out) != "" {
			t.Logf("%s log:\n%s", what, out)
		}
	})
	return s
}

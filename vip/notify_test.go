package vip

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The notify program runs asynchronously, in order per address, with the
// address, the event and the node; a slow run never blocks Notify; a run
// past the timeout is killed (its children too) and counted; a failing
// one is counted.
func TestNotifier(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "calls")
	script := filepath.Join(dir, "notify.sh")
	// "slow" as a fixed argument makes the first acquire of .1 take a
	// while, so that later events queue behind it; .3 fails; .4 hangs
	// (in a child, which the timeout must kill with it).
	err := os.WriteFile(script, []byte(`#!/bin/sh
mode=$1; addr=$2; ev=$3; node=$4
case "$addr" in
  198.18.0.1) [ "$ev" = acquire ] && [ ! -e "`+dir+`/slow-done" ] && { touch "`+dir+`/slow-done"; sleep 0.3; } ;;
  198.18.0.3) echo "boom" >&2; exit 3 ;;
  198.18.0.4) sleep 30 & wait; exit 0 ;;
esac
echo "$mode $addr $ev $node" >> "`+log+`"
`), 0o755)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	results := map[string]int{}
	n := NewNotifier(script+" fixed", "n7", 500*time.Millisecond, discard)
	n.OnResult = func(ev, res string) {
		mu.Lock()
		results[ev+" "+res]++
		mu.Unlock()
	}
	a1, a2 := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	start := time.Now()
	for i := 0; i < 3; i++ {
		n.Notify(a1, EventAcquire)
		n.Notify(a1, EventRelease)
	}
	n.Notify(a2, EventAcquire)
	n.Notify(netip.MustParseAddr("198.18.0.3"), EventRelease)
	n.Notify(netip.MustParseAddr("198.18.0.4"), EventAcquire)
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("Notify blocked for %v", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n.Wait(ctx)
	if ctx.Err() != nil {
		t.Fatal("runs did not finish (the hanging one was not killed)")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v: the timeout did not kill the hanging program's group", d)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	var got1 []string
	saw2 := false
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		if len(f) != 4 || f[0] != "fixed" || f[3] != "n7" {
			t.Fatalf("call %q: want the fixed argument, the address, the event and the node", l)
		}
		switch f[1] {
		case "198.18.0.1":
			got1 = append(got1, f[2])
		case "198.18.0.2":
			saw2 = true
		}
	}
	want := []string{"acquire", "release", "acquire", "release", "acquire", "release"}
	if strings.Join(got1, ",") != strings.Join(want, ",") {
		t.Fatalf("events of 198.18.0.1 in order %v, want %v", got1, want)
	}
	if !saw2 {
		t.Fatal("198.18.0.2's event did not run")
	}
	mu.Lock()
	defer mu.Unlock()
	if results["release failed"] != 1 || results["acquire timeout"] != 1 || results["acquire ok"] != 4 || results["release ok"] != 3 {
		t.Fatalf("results %v", results)
	}
}

// A run leaves nothing behind: a child the program sent to the
// background (output redirected, so nothing waits for it) is killed
// when the program exits, as at the timeout.
func TestNotifierLeavesNothingRunning(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child")
	script := filepath.Join(dir, "notify.sh")
	err := os.WriteFile(script, []byte(`#!/bin/sh
sleep 300 >/dev/null 2>&1 &
echo $! > "`+pidFile+`"
exit 0
`), 0o755)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var results []string
	n := NewNotifier(script, "n1", 5*time.Second, discard)
	n.OnResult = func(ev, res string) {
		mu.Lock()
		results = append(results, ev+" "+res)
		mu.Unlock()
	}
	n.Notify(netip.MustParseAddr("198.18.0.9"), EventAcquire)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n.Wait(ctx)
	mu.Lock()
	if strings.Join(results, ",") != "acquire ok" {
		t.Fatalf("results %v", results)
	}
	mu.Unlock()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(string(b))
	deadline := time.Now().Add(5 * time.Second)
	for running(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(atoi(t, pid), syscall.SIGKILL)
			t.Fatalf("the program's background child %s still runs after the run", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// running reports whether process pid exists and is not a zombie.
func running(pid string) bool {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func atoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

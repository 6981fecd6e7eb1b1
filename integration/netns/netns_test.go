package netns

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Two hosts reach each other over IPv4 and IPv6 through the bridge, a
// process runs inside a namespace, taking a port down cuts a host off, and
// cleanup removes every namespace.
func TestNetwork(t *testing.T) {
	var nsNames []string
	t.Run("build", func(t *testing.T) {
		n := New(t, "a", "b")
		a, b := n.Host("a"), n.Host("b")
		for _, h := range n.Hosts() {
			nsNames = append(nsNames, h.NS)
		}
		nsNames = append(nsNames, n.Bridge)
		if a.IP4.String() != "198.18.0.1" || b.IP6.String() != "fd00:198:18::2" {
			t.Fatalf("addresses: %v %v", a.IP4, b.IP6)
		}
		// A listener in b (created in its namespace), dialled from a.
		var ln net.Listener
		if err := b.Do(func() (err error) { ln, err = net.Listen("tcp", "[::]:7000"); return }); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "hello %s\n", c.RemoteAddr())
				c.Close()
			}
		}()
		for _, addr := range []string{"198.18.0.2:7000", "[fd00:198:18::2]:7000"} {
			c, err := a.DialTimeout("tcp", addr, 2*time.Second)
			if err != nil {
				t.Fatalf("dial %s from a: %v", addr, err)
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if !strings.Contains(line, "198.18.0.1") && !strings.Contains(line, "fd00:198:18::1") {
				t.Fatalf("peer saw %q", line)
			}
		}
		// Nothing of it is on the root namespace's interfaces.
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			t.Fatal(err)
		}
		for _, ad := range addrs {
			if s := ad.String(); strings.HasPrefix(s, "198.18.") || strings.HasPrefix(s, "fd00:198:18:") {
				t.Fatalf("root namespace has %s", s)
			}
		}
		// a's neighbour table learnt b's MAC.
		mac, _, err := a.Neighbour(b.IP4)
		if err != nil || mac.String() != b.MAC.String() {
			t.Fatalf("neighbour of b on a: %v %v (b is %v)", mac, err, b.MAC)
		}
		// A process in a namespace sees only that namespace's addresses.
		p, err := a.Start("ip", "-br", "addr", "show", "dev", Interface)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Err(); err != nil || !strings.Contains(p.Output(), "198.18.0.1/24") {
			t.Fatalf("ip addr in a: %v %q", err, p.Output())
		}
		// Cut b off.
		if err := b.SetLink(false); err != nil {
			t.Fatal(err)
		}
		if c, err := a.DialTimeout("tcp", "198.18.0.2:7000", 300*time.Millisecond); err == nil {
			c.Close()
			t.Fatal("reached b with its port down")
		}
		if err := b.SetLink(true); err != nil {
			t.Fatal(err)
		}
		// A long-running process is killed by cleanup.
		if _, err := a.Start("sleep", "600"); err != nil {
			t.Fatal(err)
		}
	})
	for _, ns := range nsNames {
		if _, err := os.Stat(filepath.Join(runDir, ns)); err == nil {
			t.Errorf("namespace %s left behind", ns)
		}
	}
}

// Leftovers of a run whose process is gone are removed, with what runs in
// them; namespaces of live processes are not.
func TestCleanStale(t *testing.T) {
	Require(t)
	dead := 0
	for pid := 4000000; pid > 3000000; pid-- {
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			dead = pid
			break
		}
	}
	stale := fmt.Sprintf("%s%d-abcdef-x", Prefix, dead)
	live := fmt.Sprintf("%s%d-abcdef-x", Prefix, os.Getppid())
	for _, ns := range []string{stale, live} {
		if out, err := ip("netns", "add", ns); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		t.Cleanup(func() { _ = removeNS(ns) })
	}
	cmd := exec.Command("ip", "netns", "exec", stale, "sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// Wait until the process is inside the namespace (ip netns exec
	// enters it after starting): cleaning before would not see it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := ip("netns", "pids", stale)
		if strings.TrimSpace(string(out)) != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the process never entered the stale namespace")
		}
		time.Sleep(10 * time.Millisecond)
	}
	CleanStale(t.Logf)
	if _, err := os.Stat(filepath.Join(runDir, stale)); err == nil {
		t.Error("stale namespace not removed")
	}
	if _, err := os.Stat(filepath.Join(runDir, live)); err != nil {
		t.Error("namespace of a live process removed")
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("process in the stale namespace still running")
	}
}

package vip

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"net"
)

// The VIP tests need a network namespace of their own: TestVIP creates one
// with a veth pair, and re-runs this test binary inside it (as
// TestVIPChild), so nothing touches the host's interfaces.
func TestVIP(t *testing.T) {
	if os.Getuid() != 0 {
		if os.Getenv("PORTICO_REQUIRE_DOVECOT") == "1" {
			t.Fatal("VIP tests need root (network namespaces)")
		}
		t.Skip("VIP tests need root (network namespaces)")
	}
	ns := fmt.Sprintf("ptvip%d", os.Getpid())
	run := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run("ip", "-n", ns, "link", "add", "vipa", "type", "veth", "peer", "name", "vipb")
	run("ip", "-n", ns, "link", "set", "vipa", "up")
	run("ip", "-n", ns, "link", "set", "vipb", "up")
	run("ip", "-n", ns, "link", "set", "lo", "up")
	run("ip", "-n", ns, "addr", "add", "198.18.9.1/24", "dev", "vipa")
	run("ip", "-n", ns, "addr", "add", "198.18.9.2/24", "dev", "vipb")
	run("ip", "-n", ns, "addr", "add", "fd00:198:18:9::1/64", "dev", "vipa", "nodad")
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestVIPChild$", "-test.v")
	cmd.Env = append(os.Environ(), "PORTICO_VIP_CHILD=1")
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	if err != nil || !strings.Contains(string(out), "--- PASS: TestVIPChild") {
		t.Fatalf("child failed: %v", err)
	}
}

func TestVIPChild(t *testing.T) {
	if os.Getenv("PORTICO_VIP_CHILD") != "1" {
		t.Skip("run by TestVIP inside a namespace")
	}
	v4 := Address{Prefix: netip.MustParsePrefix("198.18.9.100/24"), Interface: "vipa"}
	v6 := Address{Prefix: netip.MustParsePrefix("fd00:198:18:9::100/64"), Interface: "vipa"}

	// A stale address left by a crashed process is removed at start-up.
	if err := addAddr(v4); err != nil {
		t.Fatal(err)
	}
	// Watch for gratuitous ARP on the other end of the veth.
	peer, _ := net.InterfaceByName("vipb")
	ac, err := arp.Dial(peer)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	garps := make(chan *arp.Packet, 64)
	go func() {
		for {
			p, _, err := ac.Read()
			if err != nil {
				return
			}
			if p.SenderIP == v4.Prefix.Addr() && p.TargetIP == v4.Prefix.Addr() {
				garps <- p
			}
		}
	}()

	var changes []bool
	m, err := New(Config{Addresses: []Address{v4, v6}, BurstCount: 2, BurstInterval: 100 * time.Millisecond,
		Refresh: 300 * time.Millisecond, Reconcile: 50 * time.Millisecond,
		OnChange: func(_ Address, o bool) { changes = append(changes, o) }, Log: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()

	waitUntil(t, "stale address removed", waitLimit, func() bool { p, _ := hasAddr(v4); return !p })

	m.SetOwner(true)
	waitUntil(t, "addresses added", waitLimit, func() bool {
		a, _ := hasAddr(v4)
		b, _ := hasAddr(v6)
		return a && b && m.Owned()
	})
	// Both a request and a reply are announced.
	ops := map[arp.Operation]bool{}
	timeout := time.After(waitLimit)
	for !(ops[arp.OperationRequest] && ops[arp.OperationReply]) {
		select {
		case p := <-garps:
			ops[p.Operation] = true
			if p.SenderHardwareAddr.String() == peer.HardwareAddr.String() {
				t.Fatal("announcement from the wrong interface")
			}
		case <-timeout:
			t.Fatalf("no gratuitous ARP request and reply: %v", ops)
		}
	}
	// Never a source address: marked deprecated, and the kernel picks the
	// interface's own address for traffic to the network.
	l, _ := netlink.LinkByName("vipa")
	addrs, _ := netlink.AddrList(l, netlink.FAMILY_ALL)
	for _, a := range addrs {
		if a.IP.Equal(v4.Prefix.Addr().AsSlice()) && a.Flags&unix.IFA_F_DEPRECATED == 0 {
			t.Errorf("VIP flags %#x: not deprecated", a.Flags)
		}
	}
	for _, dst := range []string{"198.18.9.50", "fd00:198:18:9::50"} {
		out, err := exec.Command("ip", "route", "get", dst).CombinedOutput()
		if err != nil || strings.Contains(string(out), "src 198.18.9.100") || strings.Contains(string(out), "src fd00:198:18:9::100") {
			t.Errorf("route to %s: %v %s (the VIP must not be the source)", dst, err, out)
		}
	}
	// Deleted by hand: restored and announced within a reconcile period.
	_ = delAddr(v4)
	waitUntil(t, "address restored", waitLimit, func() bool { p, _ := hasAddr(v4); return p })
	// Refresh with a failing verification releases instead of announcing.
	m.SetVerify(func() error { return fmt.Errorf("not leader any more") })
	waitUntil(t, "released after failed verification", waitLimit, func() bool { p, _ := hasAddr(v4); return !p && !m.Owned() })

	m.SetVerify(nil)
	m.SetOwner(true)
	waitUntil(t, "re-acquired", waitLimit, func() bool { return m.Owned() })
	// Reannounce sends a round at once (after verification), only when owning.
	_, before := m.Counters()
	m.Reannounce()
	waitUntil(t, "an announcement after Reannounce", waitLimit, func() bool { _, a := m.Counters(); return a > before })
	// Release returns only once the addresses are off the interface.
	if err := m.Release(time.Second); err != nil {
		t.Fatal(err)
	}
	for _, a := range []Address{v4, v6} {
		if p, _ := hasAddr(a); p || m.Owned() {
			t.Fatalf("%v still held after Release", a)
		}
	}
	_, before = m.Counters()
	m.Reannounce()
	time.Sleep(200 * time.Millisecond)
	if _, a := m.Counters(); a != before {
		t.Fatal("Reannounce announced while not owning")
	}
	m.SetOwner(true)
	waitUntil(t, "re-acquired after release", waitLimit, func() bool { return m.Owned() })
	// Within the burst (rounds 100 ms apart here), a failed verification
	// releases instead of sending the next round: a node waking from a
	// freeze in its burst must not announce.
	time.Sleep(20 * time.Millisecond) // the acquisition's own round is counted
	_, afterAcquire := m.Counters()
	m.SetVerify(func() error { return fmt.Errorf("not leader any more") })
	waitUntil(t, "released in the burst after failed verification", waitLimit, func() bool { return !m.Owned() })
	if _, a := m.Counters(); a != afterAcquire {
		t.Fatalf("%d burst announcements without verification", a-afterAcquire)
	}
	m.SetVerify(nil)
	// One address of several (the spread mode): only it is held, and
	// ReleaseAddrs gives up only those it names.
	m.SetWant([]netip.Addr{v6.Prefix.Addr(), v4.Prefix.Addr()})
	waitUntil(t, "both held", waitLimit, func() bool { return m.Holds(v4.Prefix.Addr()) && m.Holds(v6.Prefix.Addr()) })
	if err := m.ReleaseAddrs([]netip.Addr{v4.Prefix.Addr()}, time.Second); err != nil {
		t.Fatal(err)
	}
	if p4, _ := hasAddr(v4); p4 || m.Holds(v4.Prefix.Addr()) || !m.Holds(v6.Prefix.Addr()) {
		t.Fatalf("after releasing %v: held %v", v4, m.Held())
	}
	if p6, _ := hasAddr(v6); !p6 {
		t.Fatalf("%v removed with %v", v6, v4)
	}
	cancel()
	<-done
	if p, _ := hasAddr(v4); p {
		t.Fatal("address kept after Run ended")
	}
	// RemoveAll (the supervisor's clean-up after a crash) removes what a
	// killed process left, and is a no-op when nothing is there.
	if err := addAddr(v4); err != nil {
		t.Fatal(err)
	}
	removed, err := RemoveAll([]Address{v4, v6})
	if err != nil || len(removed) != 1 || removed[0] != v4 {
		t.Fatalf("RemoveAll: %v %v", removed, err)
	}
	if p, _ := hasAddr(v4); p {
		t.Fatal("RemoveAll left the address")
	}
	if removed, err := RemoveAll([]Address{v4, v6}); err != nil || len(removed) != 0 {
		t.Fatalf("RemoveAll again: %v %v", removed, err)
	}
	c, a := m.Counters()
	if c < 4 || a < 4 {
		t.Fatalf("counters: %d changes, %d announcements", c, a)
	}
	t.Logf("changes %v, %d ownership changes, %d announcements", changes, c, a)

	inheritedAndDetach(t, v4, v6)
}

// inheritedAndDetach: the two halves of an in-place upgrade of the owner,
// with the mechanism on a real interface. The new process keeps the
// inherited address through its announcement rounds before it has won its
// election (the policy's check passes during the hold); the old process's
// Detach waits for a reconcile in flight, and nothing after it removes the
// address although the old process stops wanting it.
func inheritedAndDetach(t *testing.T, v4, v6 Address) {
	m, err := New(Config{Addresses: []Address{v4, v6}, BurstCount: 3, BurstInterval: 50 * time.Millisecond,
		Refresh: 100 * time.Millisecond, Reconcile: 20 * time.Millisecond, Log: discard})
	if err != nil {
		t.Fatal(err)
	}
	cl := &fakeCluster{rec: &recorder{}, self: "n1", voters: voters3, alive: allAlive} // no leader known: electing
	c := NewController(ControllerConfig{Holder: m, Leadership: cl, Sessions: &fakeSessions{rec: &recorder{}},
		Addresses: []netip.Addr{v4.Prefix.Addr(), v6.Prefix.Addr()}, HoldUntil: time.Now().Add(time.Minute),
		Go: func(func(context.Context)) bool { return false }, Log: discard})
	m.SetVerify(c.Verify)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	waitUntil(t, "the inherited addresses held", waitLimit, func() bool { return m.Owned() })
	// The burst's checked rounds and two refreshes, all before any leader.
	waitUntil(t, "five announcement rounds", waitLimit, func() bool { _, a := m.Counters(); return a >= 10 })
	changes, _ := m.Counters()
	if p, _ := hasAddr(v4); !p || changes != 2 || !m.Owned() {
		t.Fatalf("inherited address: present %v, %d ownership changes (want the 2 acquisitions only), owned %v", p, changes, m.Owned())
	}

	// The old process: a reconcile in flight (its check blocked) when
	// Detach is called; meanwhile the node stops leading.
	entered, unblock := make(chan struct{}), make(chan struct{})
	var once sync.Once
	m.SetVerify(func() error {
		once.Do(func() { close(entered) })
		<-unblock
		return fmt.Errorf("raft is shut down")
	})
	m.Reannounce()
	<-entered
	detached := make(chan struct{})
	go func() { m.Detach(); close(detached) }()
	select {
	case <-detached:
		t.Fatal("Detach returned while a reconcile was in flight")
	case <-time.After(100 * time.Millisecond):
	}
	m.SetOwner(false) // the old process lost leadership at the handoff
	close(unblock)
	<-detached
	<-done // Run returns after Detach
	if !m.HandedOn() {
		t.Fatal("Detach with the addresses held: not reported as handed on (the old process would reset connections it accepted last)")
	}
	time.Sleep(100 * time.Millisecond)
	for _, a := range []Address{v4, v6} {
		if p, _ := hasAddr(a); !p {
			t.Fatalf("%v removed after Detach", a)
		}
	}
	if _, err := RemoveAll([]Address{v4, v6}); err != nil {
		t.Fatal(err)
	}
}

// waitLimit bounds a wait for a condition: generous, because a test
// process starved of CPU (a loaded machine, packages tested in parallel)
// may take seconds to be scheduled; how fast the Manager acts is measured
// by the failover drills, not asserted here.
const waitLimit = 10 * time.Second

func waitUntil(t *testing.T, what string, d time.Duration, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if f() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

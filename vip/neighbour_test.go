package vip

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/netns"
)

// A client's neighbour cache follows the VIP only because of the
// announcements. Moved by hand (ip addr del on one host, add on another:
// the kernel sends nothing), the client keeps the old host's MAC and its
// connections to the VIP go nowhere; once a Manager owns the address on
// the new host, its gratuitous ARP and unsolicited neighbour advertisement
// update the client's IPv4 and IPv6 entries at once.
func TestAnnouncementsUpdateClientNeighbourCache(t *testing.T) {
	n := netns.New(t, "a", "b", "client")
	a, b, cl := n.Host("a"), n.Host("b"), n.Host("client")
	v4 := Address{Prefix: netip.MustParsePrefix("198.18.0.100/24"), Interface: netns.Interface}
	v6 := Address{Prefix: netip.MustParsePrefix("fd00:198:18::100/64"), Interface: netns.Interface}
	ipc := func(h *netns.Host, args ...string) {
		t.Helper()
		if out, err := h.IP(args...); err != nil {
			t.Fatalf("ip %v in %s: %v %s", args, h.Name, err, out)
		}
	}
	// dial reports whether a host answered for the VIP (a refused
	// connection is an answer: nothing listens on port 9).
	dial := func(addr netip.Addr) bool {
		c, err := cl.DialTimeout("tcp", netip.AddrPortFrom(addr, 9).String(), 300*time.Millisecond)
		if err == nil {
			c.Close()
			return true
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	}
	neigh := func(addr netip.Addr) string {
		mac, _, err := cl.Neighbour(addr)
		if err != nil {
			t.Fatal(err)
		}
		return mac.String()
	}
	vips := []netip.Addr{v4.Prefix.Addr(), v6.Prefix.Addr()}

	ipc(a, "addr", "add", v4.Prefix.String(), "dev", netns.Interface)
	ipc(a, "addr", "add", v6.Prefix.String(), "dev", netns.Interface, "nodad")
	for _, v := range vips {
		if !dial(v) {
			t.Fatalf("%v on a not reachable", v)
		}
		if got := neigh(v); got != a.MAC.String() {
			t.Fatalf("client's entry for %v: %s, want a's %v", v, got, a.MAC)
		}
	}

	// Moved by hand, without announcements: the client stays on a.
	ipc(a, "addr", "del", v4.Prefix.String(), "dev", netns.Interface)
	ipc(a, "addr", "del", v6.Prefix.String(), "dev", netns.Interface)
	ipc(b, "addr", "add", v4.Prefix.String(), "dev", netns.Interface)
	ipc(b, "addr", "add", v6.Prefix.String(), "dev", netns.Interface, "nodad")
	for _, v := range vips {
		if dial(v) {
			t.Fatalf("%v reachable after a silent move: the client should still be sending to a", v)
		}
		if got := neigh(v); got != a.MAC.String() {
			t.Fatalf("client's entry for %v changed to %s without an announcement", v, got)
		}
	}

	// A Manager owning the address on b announces it.
	// One announcement round and no refresh: if the client's entries
	// follow, that one round did it (however long the test took to get
	// there on a loaded machine).
	m, err := New(Config{Addresses: []Address{v4, v6}, Reconcile: 50 * time.Millisecond, BurstCount: 1, Refresh: time.Hour,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	m.SetOwner(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	// Run makes every netlink and packet socket on its own goroutine: run
	// it on a thread inside b's namespace.
	go func() { done <- b.Do(func() error { m.Run(ctx); return nil }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	start := time.Now()
	for _, v := range vips {
		for neigh(v) != b.MAC.String() {
			if time.Since(start) > 10*time.Second {
				t.Fatalf("client's entry for %v still %s 10 s after the Manager took it on b (%v): its one announcement did not reach the client", v, neigh(v), b.MAC)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	took := time.Since(start)
	// The only round did it, for IPv6 too although eth0's link-local
	// address may still be tentative this soon after the link came up.
	// (An announcement is counted after it is sent: the client can have
	// seen the last one a moment before it is counted.)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if _, ann := m.Counters(); ann >= uint64(len(vips)) {
			break
		}
	}
	if _, ann := m.Counters(); ann != uint64(len(vips)) {
		t.Errorf("%d announcements, want one round: one per address", ann)
	}
	for _, v := range vips {
		if !dial(v) {
			t.Errorf("%v not reachable on b after the announcement", v)
		}
	}
	t.Logf("client's IPv4 and IPv6 neighbour entries followed the VIP to b %v after the Manager acquired it (they stayed on a without announcements)", took.Round(time.Millisecond))
}

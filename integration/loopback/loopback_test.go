package loopback

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// lockedElsewhere reports whether another open file (as another test
// binary would have) cannot take a's lock now.
func lockedElsewhere(t *testing.T, a netip.Addr) bool {
	t.Helper()
	dir, err := lockDir()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, a.String()))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if err == nil {
		return false
	}
	if !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Fatal(err)
	}
	return true
}

func TestAddrIsReservedUntilTheTestEnds(t *testing.T) {
	var a, b netip.Addr
	t.Run("holder", func(t *testing.T) {
		a, b = Addr(t), Addr(t)
		if a == b || !block.Contains(a) || !block.Contains(b) {
			t.Fatalf("Addr gave %v and %v, want two addresses of %v", a, b, block)
		}
		if !lockedElsewhere(t, a) || !lockedElsewhere(t, b) {
			t.Fatal("a reserved address can be locked by another process")
		}
	})
	if lockedElsewhere(t, a) || lockedElsewhere(t, b) {
		t.Fatal("the addresses are still reserved after their test ended")
	}
}

func TestPortsAreFreeAndDistinct(t *testing.T) {
	a := Addr(t)
	ports := Ports(t, a, 4)
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] || p == 0 {
			t.Fatalf("ports %v: zero or repeated", ports)
		}
		seen[p] = true
		ap := netip.AddrPortFrom(a, uint16(p))
		ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
		if err != nil {
			t.Fatalf("TCP %v: %v", ap, err)
		}
		uc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		if err != nil {
			t.Fatalf("UDP %v: %v", ap, err)
		}
		ln.Close()
		uc.Close()
	}
	if hp := HostPort(t, a); netip.MustParseAddrPort(hp).Addr() != a {
		t.Fatalf("HostPort: %s is not on %v", hp, a)
	}
}

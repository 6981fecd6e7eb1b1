// Package loopback gives a test addresses of its own: an IP address in
// 127.0.0.0/8 that no other test, in this process or in another test
// binary running at the same time, is given until the test ends, and
// ports on it that are free when asked for.
//
// A test that must write its addresses into a configuration before
// anything listens (a cluster's join list, a listener added on reload, a
// node restarted on the same address) cannot use port 0; a fixed port may
// be taken (another Portico on the host, a service on a wildcard address).
// So such a test takes an address here and asks the kernel for free ports
// on it: nobody else binds that address while the test holds it, and a
// port the kernel handed out as free is not also held by a wildcard
// listener.
//
// The reservation is a lock (flock) on a file named after the address in
// a directory under os.TempDir(); the kernel drops it when the test ends
// or its process dies, so a crashed run never leaks an address.
package loopback

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// block is where the addresses come from: a /16 of 127.0.0.0/8 that no
// test names literally (they use 127.0.x.y).
var block = netip.MustParsePrefix("127.77.0.0/16")

// lockDir holds one lock file per address in use.
func lockDir() (string, error) {
	dir := filepath.Join(os.TempDir(), "portico-test-loopback")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// Test binaries of different users may share it.
	_ = os.Chmod(dir, 0o1777)
	return dir, nil
}

// Addr returns an address in 127.77.0.0/16 reserved for t until it ends.
func Addr(t testing.TB) netip.Addr {
	t.Helper()
	a, release, err := reserve()
	if err != nil {
		t.Fatalf("loopback: %v", err)
	}
	t.Cleanup(release)
	return a
}

func reserve() (netip.Addr, func(), error) {
	dir, err := lockDir()
	if err != nil {
		return netip.Addr{}, nil, err
	}
	const size = 1 << 16
	start := rand.IntN(size)
	for i := range size {
		n := (start + i) % size
		if n == 0 || n == size-1 {
			continue // the block's network and broadcast addresses
		}
		b := block.Addr().As4()
		b[2], b[3] = byte(n>>8), byte(n)
		a := netip.AddrFrom4(b)
		f, err := os.OpenFile(filepath.Join(dir, a.String()), os.O_RDWR|os.O_CREATE, 0o666)
		if err != nil {
			return netip.Addr{}, nil, err
		}
		// flock locks belong to the open file, so this also keeps out the
		// other tests of this process.
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				continue // another test binary has it
			}
			return netip.Addr{}, nil, err
		}
		return a, func() { f.Close() }, nil
	}
	return netip.Addr{}, nil, fmt.Errorf("every address of %v is in use", block)
}

// Ports returns n distinct ports of a that are free for TCP and UDP now
// (memberlist gossips over both on one port). Only the test holding a
// binds them, so they stay free until it does.
func Ports(t testing.TB, a netip.Addr, n int) []int {
	t.Helper()
	var (
		ports   []int
		closers []func()
	)
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		if tries > 100*n {
			t.Fatalf("loopback: no %d free ports on %v", n, a)
		}
		ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
		if err != nil {
			t.Fatalf("loopback: %v", err)
		}
		closers = append(closers, func() { ln.Close() })
		p := ln.Addr().(*net.TCPAddr).AddrPort().Port()
		uc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, p)))
		if err != nil {
			continue // taken for UDP: keep the TCP one open so it is not offered again
		}
		closers = append(closers, func() { uc.Close() })
		ports = append(ports, int(p))
	}
	return ports
}

// HostPort returns a with one free port (see Ports), as "host:port".
func HostPort(t testing.TB, a netip.Addr) string {
	t.Helper()
	return netip.AddrPortFrom(a, uint16(Ports(t, a, 1)[0])).String()
}

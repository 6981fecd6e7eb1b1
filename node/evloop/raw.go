//go:build linux

package evloop

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The calls a task makes per connection, as raw syscalls: none of them can
// block (the sockets are non-blocking; close has no linger), so they skip
// the runtime's entersyscall, whose first use after an idle moment wakes
// sysmon (bench/RESULTS.md, "Third pass": an ordinary syscall costs a
// context switch or two that way).

func rawSocket(family int) (int, unix.Errno) {
	fd, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	return int(fd), e
}

func rawNodelay(fd int) {
	one := int32(1)
	_, _, _ = unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, uintptr(unsafe.Pointer(&one)), 4, 0)
}

func rawSoError(fd int) (int, unix.Errno) {
	var v int32
	l := uint32(4)
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_ERROR, uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
	return int(v), e
}

func rawClose(fd int) { _, _, _ = unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0) }

func rawShutdownWrite(fd int) unix.Errno {
	_, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0)
	return e
}

// rawConnect starts a connection to a (IPv4, or IPv6 without a zone).
func rawConnect(fd int, a netip.AddrPort) unix.Errno {
	ip := a.Addr().Unmap()
	port := a.Port()
	if ip.Is4() {
		sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ip.As4()}
		sa.Port = port>>8 | port<<8 // network order
		_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet4)
		return e
	}
	sa := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ip.As16()}
	sa.Port = port>>8 | port<<8
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet6)
	return e
}

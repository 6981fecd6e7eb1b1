package netx

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// QuickAck makes the kernel acknowledge the next segments the peer sends
// at once instead of delaying the ACK (TCP_QUICKACK, not sticky: the
// kernel returns to delayed ACKs by itself). Call it after writing
// pipelined commands whose replies the peer may send as separate small
// segments: a peer with Nagle's algorithm on holds its second reply until
// the first is acknowledged, and a delayed ACK makes that 40 ms or more.
// Setting it before the write would not do: sending data puts the socket
// back into the delayed-ACK ("pingpong") mode of a request/response
// exchange.
func (c *Conn) QuickAck() error {
	var serr error
	err := c.raw.Control(func(fd uintptr) { serr = setQuickAck(int(fd)) })
	if err != nil {
		return err
	}
	return serr
}

// setQuickAck is a raw syscall, like the reads and writes of the held
// path (sysRead, sysWrite): none of them can block, and the runtime's
// entersyscall, whose first use after an idle moment wakes sysmon, cost
// about two context switches per login on an event loop.
func setQuickAck(fd int) error {
	one := int32(1)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, uintptr(unsafe.Pointer(&one)), 4, 0)
	if e != 0 {
		return os.NewSyscallError("setsockopt", e)
	}
	return nil
}

// sysRead and sysWrite are read(2) and write(2) on a non-blocking
// descriptor, as raw syscalls.
func sysRead(fd int, p []byte) (int, error) {
	n, e := rawRead(fd, p)
	if e != 0 {
		return -1, e
	}
	return n, nil
}

func sysWrite(fd int, p []byte) (int, error) {
	n, e := rawWrite(fd, p)
	if e != 0 {
		return -1, e
	}
	return n, nil
}

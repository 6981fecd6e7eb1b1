//go:build !linux

package netx

import "syscall"

// QuickAck does nothing where TCP_QUICKACK does not exist.
func (c *Conn) QuickAck() error { return nil }

func setQuickAck(int) error { return nil }

func sysRead(fd int, p []byte) (int, error) { return syscall.Read(fd, p) }

func sysWrite(fd int, p []byte) (int, error) { return syscall.Write(fd, p) }

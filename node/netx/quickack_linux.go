package netx

import "golang.org/x/sys/unix"

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

func setQuickAck(fd int) error {
	return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1)
}

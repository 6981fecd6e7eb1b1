// Package netx holds the connection plumbing shared by Portico's listeners,
// protocol state machines, backend dialer and relay.
//
// A Conn is a TCP connection (a *net.TCPConn, or a socket of an event loop
// of our own: NewSocketConn) with two additions the proxy needs:
//
//   - read-ahead bytes (a prefix) that are delivered before new socket data:
//     bytes a client pipelined after STARTTLS belong to the TLS handshake,
//     and bytes read past a PROXY protocol header belong to the session;
//   - a non-blocking read mode, in which Read returns ErrWouldBlock instead
//     of waiting. The relay uses it to find out that a direction is idle
//     without holding a buffer or a goroutine while it waits.
//
// A Stream adds small buffered reader/writer for the line-based pre-login
// dialogue and the STARTTLS / implicit TLS upgrade on top of a Conn.
//
// An FD (Linux) is the other kind of TCP connection the relay takes: a raw
// non-blocking descriptor that Go's runtime never sees, for sockets an
// event loop of our own accepted or connected; its writes wait for a full
// socket to drain on a Waiter instead of the runtime's netpoller.
package netx

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// ErrWouldBlock is returned by Conn.Read in non-blocking mode when the
// socket has no data. It is a net.Error whose Timeout and Temporary methods
// report true, which crypto/tls treats as recoverable: a tls.Conn reading
// through a non-blocking Conn keeps its state and can be read again later.
var ErrWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "read would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }
func (wouldBlock) Is(target error) bool {
	return target == os.ErrDeadlineExceeded
}

// Conn is a TCP connection with read-ahead bytes and a non-blocking mode.
// Reads must come from one goroutine at a time; writes may run
// concurrently with reads.
type Conn struct {
	Socket
	raw      syscall.RawConn
	prefix   []byte
	nonblock bool
	hold     *Hold // pre-login: a Gate slot, given back while a read or write waits
	held     *heldIO
}

// heldIO is the state of a read and a write through a Hold, with the
// callbacks RawConn runs made once per connection (a closure per call
// would allocate).
type heldIO struct {
	rp, wp          []byte
	rn, wn          int
	rerr, werr      error
	rwait, wwait    bool
	readFn, writeFn func(fd uintptr) bool
	// quickAck: acknowledge at once what was read since QuickAckOnWait
	// (gotData) when a read is about to wait (once).
	quickAck, gotData bool
}

// Socket is what a Conn runs on: a *net.TCPConn, an event loop's
// connection (node/evloop), or, once a loop has handed a session to the
// relay, an *FD. Its raw connection (syscall.RawConn) is given alongside.
type Socket interface {
	net.Conn
	CloseWrite() error
}

// NewConn wraps tc. prefix (may be nil) is delivered before socket data; the
// Conn takes ownership of it.
func NewConn(tc *net.TCPConn, prefix []byte) (*Conn, error) {
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &Conn{Socket: tc, raw: raw, prefix: prefix}, nil
}

// NewSocketConn wraps s, whose raw connection is raw (an event loop's
// connection: its RawConn's Read and Write wait as its Read and Write do).
func NewSocketConn(s Socket, raw syscall.RawConn, prefix []byte) *Conn {
	return &Conn{Socket: s, raw: raw, prefix: prefix}
}

// Rebase moves the Conn onto s (raw: its raw connection), the same
// descriptor as the socket it ran on, which the caller has taken from it
// (an event loop hands a logged-in session's sockets to the relay as FDs;
// a tls.Conn over this Conn carries on unchanged). Read-ahead bytes stay.
// Only the goroutine that reads and writes may call it, with no other
// operation in progress.
func (c *Conn) Rebase(s Socket, raw syscall.RawConn) {
	c.Socket, c.raw, c.hold, c.held = s, raw, nil, nil
}

// TCP returns the underlying connection if it is a Go one (else nil).
func (c *Conn) TCP() *net.TCPConn {
	tc, _ := c.Socket.(*net.TCPConn)
	return tc
}

// Raw returns the underlying syscall.RawConn.
func (c *Conn) Raw() syscall.RawConn { return c.raw }

// Prefixed reports whether read-ahead bytes are still pending.
func (c *Conn) Prefixed() bool { return len(c.prefix) > 0 }

// Unread prepends p to the bytes the next reads return.
func (c *Conn) Unread(p []byte) {
	if len(p) == 0 {
		return
	}
	if len(c.prefix) == 0 {
		c.prefix = append([]byte(nil), p...)
		return
	}
	c.prefix = append(append([]byte(nil), p...), c.prefix...)
}

// SetNonblock switches the non-blocking read mode on or off. Only the
// reading goroutine may call it.
func (c *Conn) SetNonblock(on bool) { c.nonblock = on }

// SetHold makes reads and writes give h's slot back while they wait for
// the socket (the pre-login phase; Gate); nil (before the relay takes the
// connection) stops it. Only the goroutine that reads and writes may call
// it.
func (c *Conn) SetHold(h *Hold) { c.hold = h }

// Write implements io.Writer.
func (c *Conn) Write(p []byte) (int, error) {
	if c.hold != nil {
		return c.writeHeld(p)
	}
	return c.Socket.Write(p)
}

// readHeld reads like net.TCPConn's Read, giving the hold's slot back only if
// the socket has nothing yet (a read that need not wait keeps it, so a
// login is not sent to the back of the gate's queue for nothing).
func (c *Conn) readHeld(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	st := c.heldState()
	st.rp, st.rn, st.rerr, st.rwait = p, 0, nil, false
	err := c.raw.Read(st.readFn)
	n, serr := st.rn, st.rerr
	st.rp, st.rerr = nil, nil
	if st.rwait {
		c.hold.Acquire()
	} else {
		c.hold.Yield()
	}
	switch {
	case err != nil:
		return 0, err
	case serr != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", serr)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// writeHeld writes all of p like net.TCPConn's Write, giving the hold's slot
// back only while the socket's buffer is full.
func (c *Conn) writeHeld(p []byte) (int, error) {
	st := c.heldState()
	st.wp, st.wn, st.werr, st.wwait = p, 0, nil, false
	err := c.raw.Write(st.writeFn)
	n, serr := st.wn, st.werr
	st.wp, st.werr = nil, nil
	if st.wwait {
		c.hold.Acquire()
	} else {
		c.hold.Yield()
	}
	switch {
	case err != nil:
		return n, err
	case serr != nil:
		return n, &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("write", serr)}
	}
	return n, nil
}

// QuickAckOnWait is QuickAck only when it is needed, for the replies to
// pipelined commands just written: the first read that would wait after
// some bytes arrived acknowledges them at once (TCP_QUICKACK, once). A
// peer that sends all its replies in one segment (Dovecot) then costs no
// setsockopt and no immediate ACK (the ACK leaves with the next bytes
// sent, or with the delayed-ACK timer); one that holds its second reply
// until the first is acknowledged (Nagle, Cyrus) gets that ACK just before
// the reader waits for it. It works through the held read path
// (SetHold), which a Conn on an event loop's socket takes too; a Go
// connection without a Hold gets QuickAck now.
func (c *Conn) QuickAckOnWait() error {
	if c.hold == nil && c.TCP() != nil {
		return c.QuickAck()
	}
	st := c.heldState()
	st.quickAck, st.gotData = true, false
	return nil
}

func (c *Conn) heldState() *heldIO {
	if c.held != nil {
		return c.held
	}
	st := &heldIO{}
	st.readFn = func(fd uintptr) bool {
		for {
			st.rn, st.rerr = sysRead(int(fd), st.rp)
			if st.rerr != syscall.EINTR {
				break
			}
		}
		if st.rerr == syscall.EAGAIN {
			if st.quickAck && st.gotData {
				// Before waiting, not after the read: the peer may be
				// holding what we wait for until this ACK (Nagle).
				st.quickAck = false
				_ = setQuickAck(int(fd))
			}
			if !st.rwait {
				st.rwait = true
				c.hold.Release()
			}
			return false // wait until readable
		}
		if st.rn < 0 {
			st.rn = 0
		}
		if st.rn > 0 && st.quickAck {
			st.gotData = true
		}
		return true
	}
	st.writeFn = func(fd uintptr) bool {
		for st.wn < len(st.wp) {
			m, e := sysWrite(int(fd), st.wp[st.wn:])
			switch {
			case e == syscall.EINTR:
				continue
			case e == syscall.EAGAIN:
				if !st.wwait {
					st.wwait = true
					c.hold.Release()
				}
				return false // wait until writable
			case e != nil:
				st.werr = e
				return true
			}
			st.wn += m
		}
		return true
	}
	c.held = st
	return st
}

// Read implements io.Reader.
func (c *Conn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		if len(c.prefix) == 0 {
			c.prefix = nil
		}
		return n, nil
	}
	if !c.nonblock {
		if c.hold != nil || c.held != nil && c.held.quickAck {
			return c.readHeld(p)
		}
		return c.Socket.Read(p)
	}
	return c.ReadNonblock(p)
}

// ReadNonblock reads what the socket has now. It returns ErrWouldBlock if
// there is nothing, and io.EOF at end of stream.
func (c *Conn) ReadNonblock(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var serr error
	err := c.raw.Read(func(fd uintptr) bool {
		for {
			n, serr = syscall.Read(int(fd), p)
			if serr != syscall.EINTR {
				return true
			}
		}
	})
	if err != nil {
		return 0, err
	}
	switch {
	case serr == syscall.EAGAIN:
		return 0, ErrWouldBlock
	case serr != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", serr)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// IsClosed reports whether err means the connection was closed locally.
func IsClosed(err error) bool { return errors.Is(err, net.ErrClosed) }

// SetLinger0 makes Close send a RST instead of FIN (used for hostile peers).
func (c *Conn) SetLinger0() {
	if tc := c.TCP(); tc != nil {
		_ = tc.SetLinger(0)
		return
	}
	_ = c.raw.Control(func(fd uintptr) {
		_ = syscall.SetsockoptLinger(int(fd), syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1})
	})
}

// deadline helper used by Stream.
func deadline(d time.Duration) time.Time {
	if d <= 0 {
		return time.Time{}
	}
	return time.Now().Add(d)
}

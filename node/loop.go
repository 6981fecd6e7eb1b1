package node

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portico-mail/portico/node/evloop"
	"github.com/portico-mail/portico/node/netx"
)

// Event loops (node/DESIGN.md, "What the goroutine costs"). A listener
// with EventLoop set is served by the node's event loops, one per CPU the
// Go runtime uses: each accepts on the listening socket (the kernel wakes
// one loop per connection) and runs every session it accepted as a task,
// from the greeting to the hand-off to the relay, on raw non-blocking
// sockets; the backend is connected on the loop too. What may wait on
// something else than the session's own sockets (the throttle, an
// auth_http request, a directory lookup, a failure delay) runs through
// netx.Block on a goroutine of its own. At the hand-off both sockets leave
// the loop as netx.FDs, the relay's raw descriptors; a TLS side keeps its
// tls.Conn, whose netx.Conn is moved onto the FD. The pre-login gate
// (netx.Gate) does not apply: a loop computes one login at a time by
// construction.

// loopSet is the node's event loops and the Waiter of the descriptors they
// hand to the relay, started on first use.
type loopSet struct {
	once   sync.Once
	err    error
	execs  []*loopExec
	waiter *netx.Waiter
}

// eventLoops returns the node's loops, starting them on first use.
func (s *Server) eventLoops() ([]*loopExec, error) {
	ls := &s.loops
	ls.once.Do(func() {
		w, err := netx.NewWaiter()
		if err != nil {
			ls.err = err
			return
		}
		var execs []*loopExec
		for range runtime.GOMAXPROCS(0) {
			l, err := evloop.New()
			if err != nil {
				for _, e := range execs {
					e.loop.Close()
				}
				w.Close()
				ls.err = err
				return
			}
			execs = append(execs, &loopExec{s: s, loop: l})
		}
		ls.execs, ls.waiter = execs, w
	})
	return ls.execs, ls.err
}

// closeLoops stops the loops (once no session runs on them) and, once
// the relay has ended every session, the Waiter.
func (s *Server) closeLoops() {
	for _, e := range s.loops.execs {
		e.loop.Close()
	}
}

func (s *Server) closeWaiter() {
	if w := s.loops.waiter; w != nil {
		w.Close()
	}
}

// loopExec is a loop, and the netx.Executor of the sessions it runs.
type loopExec struct {
	s    *Server
	loop *evloop.Loop
}

// Block implements netx.Executor.
func (e *loopExec) Block(f func()) {
	done := make(chan struct{})
	if err := e.loop.Blocking(func() { defer close(done); f() }); err != nil {
		<-done // the loop stopped meanwhile: f's results are not ready yet
	}
}

// DialTCP implements netx.Executor.
func (e *loopExec) DialTCP(addr netip.AddrPort, deadline time.Time) (*netx.Conn, error) {
	c, err := e.loop.DialTCP(addr, deadline)
	if err != nil {
		return nil, err
	}
	raw, _ := c.SyscallConn()
	return netx.NewSocketConn(c, raw, nil), nil
}

// unloop takes nc's socket out of its loop for the relay, if it is a
// loop's: nc carries on over an FD on the same descriptor.
func (s *Server) unloop(nc *netx.Conn) error {
	ec, ok := nc.Socket.(*evloop.Conn)
	if !ok {
		return nil
	}
	// A backend socket's local address is asked of the kernel only if
	// someone needs it (the FD does it then).
	laddr, raddr := ec.KnownLocalAddr(), ec.RemoteAddr()
	fd, err := ec.Detach()
	if err != nil {
		return err
	}
	f := netx.NewFD(fd, laddr, raddr, s.loops.waiter)
	nc.Rebase(f, f.Raw())
	return nil
}

// loopListener is a listening socket the event loops accept on. It is
// taken out of Go's netpoller (the Go listener it was bound as is closed),
// so that a connection wakes only the loop that accepts it.
type loopListener struct {
	fd   int
	addr net.Addr

	mu     sync.Mutex
	closed bool
	lns    []*evloop.Listener
}

// toLoopListener turns ln, a bound TCP listener, into a loopListener on
// the same socket.
func toLoopListener(ln net.Listener) (*loopListener, error) {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("event loop: not a TCP listener (%T)", ln)
	}
	raw, err := tl.SyscallConn()
	if err != nil {
		tl.Close()
		return nil, err
	}
	fd := -1
	var derr error
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		derr = err
	}
	addr := tl.Addr()
	tl.Close()
	if derr != nil {
		return nil, os.NewSyscallError("fcntl", derr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	return &loopListener{fd: fd, addr: addr}, nil
}

var errLoopAccept = errors.New("node: connections on this listener are accepted by the event loops")

// Accept implements net.Listener; the loops accept, never a caller.
func (ll *loopListener) Accept() (net.Conn, error) { return nil, errLoopAccept }

// Addr implements net.Listener.
func (ll *loopListener) Addr() net.Addr { return ll.addr }

// Close closes the socket: every loop's listener, and the descriptor.
func (ll *loopListener) Close() error {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	if ll.closed {
		return nil
	}
	ll.closed = true
	for _, l := range ll.lns {
		_ = l.Close()
	}
	return unix.Close(ll.fd)
}

// File returns a duplicate of the socket (an in-place upgrade passes it
// on), as net.TCPListener's File does.
func (ll *loopListener) File() (*os.File, error) {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	if ll.closed {
		return nil, net.ErrClosed
	}
	fd, err := unix.FcntlInt(uintptr(ll.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	return os.NewFile(uintptr(fd), "tcp:"+ll.addr.String()), nil
}

// startLoopAccepting starts an accepting task on every loop, each on a
// descriptor of its own for the socket.
func (s *Server) startLoopAccepting(l *listener, ll *loopListener) {
	execs, err := s.eventLoops()
	if err != nil {
		s.log.Error("event loops unavailable: listener not accepting", "listener", l.conf().Name, "error", err)
		return
	}
	ll.mu.Lock()
	defer ll.mu.Unlock()
	if ll.closed {
		return
	}
	for _, e := range execs {
		fd, err := unix.FcntlInt(uintptr(ll.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			s.log.Error("event loop listener", "listener", l.conf().Name, "error", os.NewSyscallError("fcntl", err))
			continue
		}
		eln := e.loop.NewSharedListener(fd, ll.addr)
		ll.lns = append(ll.lns, eln)
		s.wg.Add(1)
		if !e.loop.Go(func() { s.acceptLoop(l, e, eln) }) {
			s.wg.Done()
			_ = eln.Close()
		}
	}
}

// acceptLoop accepts connections on one loop, each served as a task of it.
func (s *Server) acceptLoop(l *listener, e *loopExec, eln *evloop.Listener) {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := eln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, evloop.ErrStopped) {
				return
			}
			// Out of file descriptors and the like: back off, keep serving.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			s.log.Error("accept failed", "listener", l.conf().Name, "error", err, "retry_in", backoff)
			if e.loop.Sleep(backoff) != nil {
				return
			}
			continue
		}
		backoff = 0
		s.preWG.Add(1)
		e.loop.Spawn(func() { s.serve(l, c, e) })
	}
}

// acceptedConn is a connection as a listener accepted it: a
// *net.TCPConn, or a loop's *evloop.Conn.
type acceptedConn interface {
	netx.Socket
	syscall.Conn
	SetLinger(sec int) error
}

var (
	_ acceptedConn = (*net.TCPConn)(nil)
	_ acceptedConn = (*evloop.Conn)(nil)
)

//go:build linux

// Command floorproxy is the leanest plaintext IMAP login proxy we could
// write in Go: a benchmark tool that measures the floor of a Go login (how
// little CPU a login through a Go program can cost), not a product.
//
//	floorproxy -listen ADDR -backend ADDR -mode goroutine|epoll|evloop [-raw=false] [-park [-coro] [-handoff]] [-loops N]
//
// The dialogue is exactly what loadimap's login phase needs: the proxy
// writes "* OK ready", reads one "TAG LOGIN user pass" line (no literals,
// no CAPABILITY, no TLS), dials the backend, reads its greeting, sends the
// client's LOGIN line in one write, reads up to the tagged reply and
// writes it (and any untagged lines before it) to the client, then relays
// bytes both ways until either side closes. Anything else than LOGIN gets
// "TAG BAD" and the connection is closed. There are no timeouts, no
// logging, no metrics and no limits.
//
// -mode goroutine: Go's net package (keepalive off on both sides, as in
// Portico), a goroutine per connection, and one
// more for the second relay direction; a read/write loop with a buffer per
// direction (not splice: a blocked splice holds a pipe per direction, two
// more descriptors per idle session).
//
// -mode epoll: one goroutine per loop, locked to its OS thread, running an
// epoll loop of its own over raw non-blocking sockets (level-triggered):
// accept4, a state machine per session, a non-blocking connect whose
// completion is the backend's greeting becoming readable, and the relay in
// the same loop. With -raw (the default) every call that cannot block
// (accept4, read, write, connect, epoll_ctl, close ...) is made with
// RawSyscall, which skips the runtime's entersyscall/exitsyscall (and so
// never wakes sysmon); only epoll_wait is an ordinary blocking syscall.
// -raw=false makes them ordinary syscalls. -park waits the Go way instead:
// the epoll descriptor, non-blocking, is registered in Go's netpoller and
// the loop's goroutine (not locked) parks on it like a network read, as
// node/relay's poller does; what a loop inside Portico, handing sessions
// to goroutines, would have to do. -coro (with -park) keeps the loop but
// writes the login as straight-line code, like goroutine mode's, run as a
// coroutine of the loop (iter.Pull): an I/O call that would block
// registers with the loop's epoll and yields, and the loop resumes the
// coroutine when the descriptor is ready (coro.go). -handoff (with -park)
// hands logged-in sessions to Portico's relay (node/relay) as
// *net.TCPConn instead of relaying in the loop. -mode evloop runs goroutine
// mode's code itself (login and relay, one function over net.Conn) as
// tasks of a node/evloop loop, Portico's own loop package. -loops N runs N
// epoll loops, each with
// its own SO_REUSEPORT listener. The backend must be an IPv4 address.
//
// bench/README.md and bench/RESULTS.md ("Third pass: the floor of a Go
// login") have the measurements.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/portico-mail/portico/bench/internal/rlimit"
	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/relay"
)

var greeting = []byte("* OK ready\r\n")

const lineMax = 512 // longest client LOGIN line and backend greeting accepted

func main() {
	listen := flag.String("listen", "127.0.0.1:10143", "listen address")
	backend := flag.String("backend", "127.0.0.1:14143", "IMAP backend address (IPv4 for -mode epoll)")
	mode := flag.String("mode", "goroutine", "goroutine, epoll or evloop")
	raw := flag.Bool("raw", true, "epoll mode: non-blocking calls with RawSyscall (no entersyscall)")
	park := flag.Bool("park", false, "epoll mode: wait for events in Go's netpoller (the epoll descriptor registered there) instead of a blocking epoll_wait on a locked thread")
	loops := flag.Int("loops", 1, "epoll mode: number of event loops (SO_REUSEPORT listeners)")
	coro := flag.Bool("coro", false, "epoll mode: run each login as a coroutine of the loop (iter.Pull), straight-line code instead of a state machine")
	handoff := flag.Bool("handoff", false, "epoll mode: after the login, hand both connections to Portico's relay (node/relay, as *net.TCPConn) instead of relaying in the loop")
	handoffFD := flag.Bool("handoff-fd", false, "with -handoff: hand the raw descriptors to the relay (*netx.FD) instead of *net.TCPConns")
	flag.Parse()
	if _, err := rlimit.RaiseNoFile(); err != nil {
		fmt.Fprintln(os.Stderr, "floorproxy: raising RLIMIT_NOFILE:", err)
	}
	baddr, err := net.ResolveTCPAddr("tcp", *backend)
	if err != nil {
		fatal(err)
	}
	switch *mode {
	case "goroutine":
		// Keepalive off (Go turns it on by default: four setsockopt per
		// connection), as Portico has it.
		ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", *listen)
		if err != nil {
			fatal(err)
		}
		go func() { fatal(serveGoroutine(ln.(*net.TCPListener), baddr)) }()
	case "epoll":
		if *loops < 1 {
			fatal(fmt.Errorf("-loops must be at least 1"))
		}
		var eng *relay.Engine
		var waiter *netx.Waiter
		for i := 0; i < *loops; i++ {
			l, err := newLoop(*listen, baddr, *raw, *park, *loops > 1)
			if err != nil {
				fatal(err)
			}
			l.coro = *coro
			if *handoff {
				if eng == nil {
					if eng, err = relay.NewEngine(); err != nil {
						fatal(err)
					}
				}
				l.handoff = eng
				if *handoffFD {
					if waiter == nil {
						if waiter, err = netx.NewWaiter(); err != nil {
							fatal(err)
						}
					}
					l.handoffFD, l.backendAddr = waiter, baddr
					l.local, _ = net.ResolveTCPAddr("tcp", l.addr())
				}
			}
			go func() { fatal(l.run()) }()
		}
	case "evloop":
		if _, _, err := serveEvloop(*listen, baddr); err != nil {
			fatal(err)
		}
	default:
		fatal(fmt.Errorf("-mode must be goroutine, epoll or evloop"))
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "floorproxy:", err)
	os.Exit(1)
}

// parseLogin checks that line (with its LF) is "TAG LOGIN ..." and returns
// the tag followed by a space, as the backend's tagged reply starts.
func parseLogin(line []byte) (tagSP []byte, ok bool) {
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return nil, false
	}
	rest := line[sp+1:]
	if len(rest) < 6 || !bytes.EqualFold(rest[:5], []byte("LOGIN")) || rest[5] != ' ' {
		return line[:sp+1], false
	}
	return line[:sp+1], true
}

// taggedEnd returns the end (after LF) of the first complete line of b that
// starts with tagSP, or -1.
func taggedEnd(b, tagSP []byte) int {
	for off := 0; off < len(b); {
		nl := bytes.IndexByte(b[off:], '\n')
		if nl < 0 {
			return -1
		}
		if bytes.HasPrefix(b[off:], tagSP) {
			return off + nl + 1
		}
		off += nl + 1
	}
	return -1
}

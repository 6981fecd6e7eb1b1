//go:build linux

// Command handoffcost measures what it costs to hand a session's two
// plaintext sockets to node/relay, by kind of side, with nothing else
// going on: the syscalls, context switches and CPU time of the hand-off
// itself, per session.
//
//	handoffcost -mode none|fd|fileconn [-n 1000] [-rate 500] [-ctl FIFO -ack FIFO]
//
// Before the measured window it makes n client and n backend connections
// over loopback, their proxy ends accepted with accept4(SOCK_NONBLOCK) as
// an event loop of our own would have them: raw non-blocking descriptors.
// In the window it starts one relayed session per tick at -rate sessions
// a second (a process idle between hand-offs, as at 500 logins/s), then
// waits 200 ms for what the hand-offs set off (wake-ups) to settle. Nobody
// sends a byte: each session parks at once.
//
//   - fd: each descriptor becomes a *netx.FD (its addresses given), the
//     way the relay takes a raw descriptor;
//   - fileconn: each becomes a *net.TCPConn with net.FileConn (a dup, the
//     loop's descriptor closed, Go's default keepalive, the runtime's
//     netpoller registration) and then a *netx.Conn, as
//     floorproxy -handoff does;
//   - none: nothing; the window's baseline (the ticker's own wake-ups).
//
// With -ctl and -ack (perf stat's --control fifo:CTL,ACK, started with -D
// -1) the program enables perf's counters for the window only, so that
//
//	perf stat -D -1 --control fifo:/tmp/ctl,/tmp/ack -e 'syscalls:sys_enter_*' -- handoffcost -mode fd -ctl /tmp/ctl -ack /tmp/ack
//
// counts the window's syscalls. The program itself prints the window's
// CPU time and context switches (getrusage) per session.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portico-mail/portico/bench/internal/rlimit"
	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/relay"
)

func main() {
	mode := flag.String("mode", "fd", "none, fd or fileconn")
	n := flag.Int("n", 1000, "sessions")
	rate := flag.Int("rate", 500, "hand-offs per second")
	ctl := flag.String("ctl", "", "perf's control fifo (enable/disable the counters around the window)")
	ack := flag.String("ack", "", "perf's acknowledgement fifo")
	flag.Parse()
	if *mode != "none" && *mode != "fd" && *mode != "fileconn" {
		fatal(fmt.Errorf("-mode must be none, fd or fileconn"))
	}
	if _, err := rlimit.RaiseNoFile(); err != nil {
		fatal(err)
	}
	var perf *perfControl
	if *ctl != "" {
		var err error
		if perf, err = openPerf(*ctl, *ack); err != nil {
			fatal(err)
		}
	}
	r, err := run(*mode, *n, *rate, perf, nil)
	if err != nil {
		fatal(err)
	}
	us := func(tv syscall.Timeval) float64 { return float64(tv.Sec)*1e6 + float64(tv.Usec) }
	per := float64(*n)
	fmt.Printf("mode=%s n=%d rate=%d window=%v live=%d\n", *mode, *n, *rate, r.window.Round(time.Millisecond), r.live)
	fmt.Printf("per session: user %.1f us, sys %.1f us, voluntary ctx switches %.2f, involuntary %.2f\n",
		(us(r.after.Utime)-us(r.before.Utime))/per, (us(r.after.Stime)-us(r.before.Stime))/per,
		float64(r.after.Nvcsw-r.before.Nvcsw)/per, float64(r.after.Nivcsw-r.before.Nivcsw)/per)
}

type result struct {
	window        time.Duration
	live          int // sessions the relay holds after the window
	before, after syscall.Rusage
}

// conn is one loopback connection: the proxy's end (raw, non-blocking)
// and the other one (a blocking raw socket, kept open, never read by the
// program).
type conn struct {
	fd   int
	peer *net.TCPAddr
	app  int
}

// run makes n sessions' connections, then hands them to a relay engine
// in the measured window (perf's counters enabled around it) as mode
// says, then calls check (if not nil) with the engine and the
// connections (session i: client conns[2i], backend conns[2i+1]) before
// it closes everything.
func run(mode string, n, rate int, perf *perfControl, check func(*relay.Engine, []conn) error) (result, error) {
	var r result
	e, err := relay.NewEngine()
	if err != nil {
		return r, err
	}
	defer e.Close()
	w, err := netx.NewWaiter()
	if err != nil {
		return r, err
	}
	defer w.Close()
	ln, laddr, err := listen()
	if err != nil {
		return r, err
	}
	defer unix.Close(ln)
	conns := make([]conn, 0, 2*n)
	defer func() {
		for _, c := range conns {
			if c.fd >= 0 {
				unix.Close(c.fd)
			}
			unix.Close(c.app)
		}
	}()
	for len(conns) < 2*n {
		app, err := dial(laddr)
		if err != nil {
			return r, err
		}
		fd, peer, err := accept(ln)
		if err != nil {
			unix.Close(app)
			return r, err
		}
		conns = append(conns, conn{fd, peer, app})
	}
	runtime.GC()
	time.Sleep(300 * time.Millisecond)

	// side hands c's descriptor over (the relay owns it from then on).
	side := func(c *conn) (relay.Side, error) {
		fd := c.fd
		c.fd = -1
		if mode == "fd" {
			return relay.Side{Conn: netx.NewFD(fd, laddr, c.peer, w)}, nil
		}
		nc, err := fileConn(fd)
		return relay.Side{Conn: nc}, err
	}
	perf.send("enable")
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r.before)
	t0 := time.Now()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	for i := 0; i < n; i++ {
		<-tick.C
		if mode == "none" {
			continue
		}
		cs, err1 := side(&conns[2*i])
		bs, err2 := side(&conns[2*i+1])
		if err := errors.Join(err1, err2); err != nil {
			tick.Stop()
			return r, err
		}
		e.Start(cs, bs, nil, nil, relay.Options{})
	}
	tick.Stop()
	time.Sleep(200 * time.Millisecond)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r.after)
	r.window = time.Since(t0)
	perf.send("disable")
	r.live = e.Len()
	if check != nil {
		if err := check(e, conns); err != nil {
			return r, err
		}
	}
	return r, nil
}

// listen opens a raw listening socket on 127.0.0.1 (an ephemeral port).
func listen() (int, *net.TCPAddr, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return -1, nil, err
	}
	if err := unix.Listen(fd, 4096); err != nil {
		return -1, nil, err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return -1, nil, err
	}
	in := sa.(*unix.SockaddrInet4)
	return fd, &net.TCPAddr{IP: net.IP(in.Addr[:]).To16(), Port: in.Port}, nil
}

// dial connects a blocking raw socket to a (the peer's end, never read).
func dial(a *net.TCPAddr) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	sa := &unix.SockaddrInet4{Port: a.Port}
	copy(sa.Addr[:], a.IP.To4())
	return fd, unix.Connect(fd, sa)
}

// accept takes the proxy's end as a loop would: non-blocking at once.
func accept(ln int) (int, *net.TCPAddr, error) {
	fd, sa, err := unix.Accept4(ln, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err != nil {
		return -1, nil, err
	}
	in := sa.(*unix.SockaddrInet4)
	return fd, &net.TCPAddr{IP: net.IP(in.Addr[:]).To16(), Port: in.Port}, nil
}

// fileConn turns fd into a *netx.Conn and closes fd (floorproxy -handoff).
func fileConn(fd int) (*netx.Conn, error) {
	f := os.NewFile(uintptr(fd), "")
	c, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		return nil, err
	}
	return netx.NewConn(c.(*net.TCPConn), nil)
}

// perfControl drives perf stat's --control fifos.
type perfControl struct {
	ctl *os.File
	ack *bufio.Reader
}

func openPerf(ctl, ack string) (*perfControl, error) {
	c, err := os.OpenFile(ctl, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	a, err := os.Open(ack)
	if err != nil {
		return nil, err
	}
	return &perfControl{ctl: c, ack: bufio.NewReader(a)}, nil
}

func (p *perfControl) send(cmd string) {
	if p == nil {
		return
	}
	if _, err := p.ctl.WriteString(cmd + "\n"); err != nil {
		fatal(err)
	}
	if _, err := p.ack.ReadString('\n'); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "handoffcost:", err)
	os.Exit(1)
}

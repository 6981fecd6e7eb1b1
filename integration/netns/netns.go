// Package netns builds small throw-away networks out of Linux network
// namespaces for tests: one namespace per host, each with an eth0 that is
// one end of a veth pair whose other end is a port of a bridge living in a
// namespace of its own. Nothing is created in, or changed on, the host's
// own network namespace: every link is created directly inside the bridge
// namespace (`ip -n BR link add ... peer ... netns HOST`).
//
// Addresses come from 198.18.0.0/24 (RFC 2544 benchmarking space) and
// fd00:198:18::/64 (unique local), and exist only inside the namespaces.
//
// # Running code in a namespace
//
// A network namespace belongs to an OS thread, not to a process or a
// goroutine. This package runs code in a namespace (Host.Do) on a fresh
// goroutine locked to its OS thread, switched with setns(2), and never
// unlocks it: when the goroutine ends, the Go runtime terminates the
// thread instead of returning it, still in the foreign namespace, to the
// scheduler. A socket keeps the namespace it was created in, so a
// connection dialled in Host.Do (Host.Dial, Host.HTTPClient) can then be
// used from any goroutine.
//
// Processes (Host.Start) are run with `ip netns exec NS ...` (which execs
// the program, so the pid is the program's). They get Pdeathsig SIGKILL so
// that they die with the test binary; because Pdeathsig fires when the
// thread that forked the child exits, and this package makes threads exit,
// every process is started from a goroutine locked to its own thread that
// stays alive until the process has been reaped.
//
// # Cleanup
//
// Namespaces are named "portico-<pid>-<random>-<host>". New registers a
// t.Cleanup that kills every process left in the namespaces and deletes
// them (it runs on failure and on panic too). New also removes leftovers
// of earlier runs whose creating process is gone (a test binary killed
// with SIGKILL cannot clean up after itself).
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Prefix starts the name of every namespace this package creates.
const Prefix = "portico-"

// EnvRequire, when "1", turns "cannot build namespaces here" from a skip
// into a failure (CI sets it; the same variable as the Dovecot harness).
const EnvRequire = "PORTICO_REQUIRE_DOVECOT"

// Network 198.18.0.0/24 and fd00:198:18::/64: host i (from 1) gets .i / ::i.
var (
	Net4 = netip.MustParsePrefix("198.18.0.0/24")
	Net6 = netip.MustParsePrefix("fd00:198:18::/64")
)

const runDir = "/run/netns"

// Available reports whether namespaces can be built here: root, the ip
// command, and a kernel with network namespaces, veth and bridges.
func Available() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("not running as root (euid %d): network namespaces, veth pairs and bridges need CAP_SYS_ADMIN and CAP_NET_ADMIN", os.Geteuid())
	}
	if _, err := ipBinary(); err != nil {
		return err
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		return fmt.Errorf("kernel without network namespaces: %v", err)
	}
	return nil
}

// Require skips the test when Available fails, or fails it when
// PORTICO_REQUIRE_DOVECOT=1.
func Require(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv(EnvRequire) == "1" {
			t.Fatalf("%s=1 but network namespaces are unavailable: %v", EnvRequire, err)
		}
		t.Skipf("skipping network-namespace test: %v (run as root; set %s=1 to fail instead)", err, EnvRequire)
	}
}

func ipBinary() (string, error) {
	for _, p := range []string{"ip", "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if q, err := exec.LookPath(p); err == nil {
			return q, nil
		}
	}
	return "", errors.New("the ip command (iproute2) is not installed")
}

// Net is a test network: a bridge namespace and host namespaces.
type Net struct {
	t      testing.TB
	ID     string // "<pid>-<random>"
	Bridge string // namespace holding the bridge br0
	hosts  []*Host

	mu    sync.Mutex
	procs []*Proc
}

// Host is one namespace attached to the bridge.
type Host struct {
	net   *Net
	Name  string // short name given to New, e.g. "n1"
	NS    string // namespace name
	Path  string // /run/netns/NS
	Index int    // 1-based: addresses .Index and ::Index
	IP4   netip.Addr
	IP6   netip.Addr
	MAC   net.HardwareAddr // of eth0
	port  string           // bridge-side veth in the bridge namespace
}

// Interface is the name of every host's interface on the bridge.
const Interface = "eth0"

// New builds a network with one host per name (host i gets 198.18.0.i and
// fd00:198:18::i), and removes it in t.Cleanup. It calls Require first.
func New(t testing.TB, names ...string) *Net {
	t.Helper()
	Require(t)
	CleanStale(t.Logf)
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	n := &Net{t: t, ID: fmt.Sprintf("%d-%s", os.Getpid(), hex.EncodeToString(rnd[:]))}
	n.Bridge = Prefix + n.ID + "-br"
	t.Cleanup(n.destroy)
	must := func(args ...string) {
		t.Helper()
		if out, err := ip(args...); err != nil {
			t.Fatalf("netns: ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	must("netns", "add", n.Bridge)
	must("-n", n.Bridge, "link", "set", "lo", "up")
	must("-n", n.Bridge, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
	must("-n", n.Bridge, "link", "set", "br0", "up")
	for i, name := range names {
		if name == "" || strings.ContainsAny(name, "/ ") || len(name) > 12 {
			t.Fatalf("netns: bad host name %q (1-12 characters)", name)
		}
		h := &Host{net: n, Name: name, NS: Prefix + n.ID + "-" + name, Index: i + 1, port: "p-" + name}
		h.Path = filepath.Join(runDir, h.NS)
		h.IP4 = addrAt(Net4, i+1)
		h.IP6 = addrAt(Net6, i+1)
		n.hosts = append(n.hosts, h)
		must("netns", "add", h.NS)
		must("-n", h.NS, "link", "set", "lo", "up")
		// Created inside the bridge namespace, one end moved straight into
		// the host's: the root namespace never sees either.
		must("-n", n.Bridge, "link", "add", h.port, "type", "veth", "peer", "name", Interface, "netns", h.NS)
		must("-n", n.Bridge, "link", "set", h.port, "master", "br0", "up")
		// No duplicate address detection: tests want addresses usable at once.
		must("netns", "exec", h.NS, "sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
		must("-n", h.NS, "addr", "add", netip.PrefixFrom(h.IP4, Net4.Bits()).String(), "dev", Interface)
		must("-n", h.NS, "addr", "add", netip.PrefixFrom(h.IP6, Net6.Bits()).String(), "dev", Interface, "nodad")
		must("-n", h.NS, "link", "set", Interface, "up")
		mac, err := h.linkMAC()
		if err != nil {
			t.Fatalf("netns: %s: %v", h.NS, err)
		}
		h.MAC = mac
	}
	return n
}

func addrAt(p netip.Prefix, i int) netip.Addr {
	b := p.Addr().AsSlice()
	b[len(b)-1] = byte(i)
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Host returns the host with the given short name (nil if none).
func (n *Net) Host(name string) *Host {
	for _, h := range n.hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// Hosts returns every host, in the order given to New.
func (n *Net) Hosts() []*Host { return append([]*Host(nil), n.hosts...) }

// destroy kills every process in the namespaces and deletes them.
func (n *Net) destroy() {
	n.mu.Lock()
	procs := append([]*Proc(nil), n.procs...)
	n.mu.Unlock()
	for _, p := range procs {
		p.Kill()
	}
	names := []string{}
	defer func() {
		for _, p := range procs {
			p.out.Close()
		}
	}()
	for _, h := range n.hosts {
		names = append(names, h.NS)
	}
	names = append(names, n.Bridge)
	for _, ns := range names {
		if err := removeNS(ns); err != nil {
			n.t.Logf("netns: removing %s: %v", ns, err)
		}
	}
}

// removeNS kills what runs in the namespace and deletes it.
func removeNS(ns string) error {
	if _, err := os.Stat(filepath.Join(runDir, ns)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	for attempt := 0; attempt < 50; attempt++ {
		out, _ := ip("netns", "pids", ns)
		pids := strings.Fields(out)
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if out, err := ip("netns", "del", ns); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// CleanStale removes namespaces left by earlier runs whose test process is
// gone ("portico-<pid>-..." with no process <pid>), and what runs in them.
func CleanStale(logf func(string, ...any)) {
	entries, err := os.ReadDir(runDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, Prefix) {
			continue
		}
		rest := strings.TrimPrefix(name, Prefix)
		pidS, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidS)
		if !ok || err != nil {
			continue
		}
		if pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue // ours, or a run still in progress
		}
		if err := removeNS(name); err != nil {
			logf("netns: removing stale namespace %s: %v", name, err)
		} else {
			logf("netns: removed stale namespace %s (process %d is gone)", name, pid)
		}
	}
}

func ip(args ...string) (string, error) {
	bin, err := ipBinary()
	if err != nil {
		return "", err
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	return string(out), err
}

// IP runs `ip -n NS args...` and returns its combined output.
func (h *Host) IP(args ...string) (string, error) {
	return ip(append([]string{"-n", h.NS}, args...)...)
}

// SetLink takes the host's bridge port down (false) or up (true): with it
// down the host is cut off from every other host (its eth0 loses carrier),
// as if its cable were pulled; its addresses stay.
func (h *Host) SetLink(up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	out, err := ip("-n", h.net.Bridge, "link", "set", h.port, state)
	if err != nil {
		return fmt.Errorf("ip link set %s %s: %v: %s", h.port, state, err, out)
	}
	return nil
}

// Enter switches the calling thread into the namespace at path. The caller
// must have called runtime.LockOSThread and must never unlock: the thread
// has to die with its goroutine.
func Enter(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns: open %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("netns: setns %s: %w", path, err)
	}
	return nil
}

// Run runs fn on a new OS thread inside the namespace at path, and waits
// for it. fn must not start goroutines that expect to be in the namespace
// (they run on other threads); sockets it creates stay in the namespace.
func Run(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: see the package documentation.
		if err := Enter(path); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Do runs fn inside the host's namespace (see Run).
func (h *Host) Do(fn func() error) error { return Run(h.Path, fn) }

// Dial connects from inside the host's namespace. addr must be an IP
// literal with a port (no name resolution happens in the namespace).
func (h *Host) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// DialTimeout is Dial with a timeout.
func (h *Host) DialTimeout(network, addr string, d time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return h.Dial(ctx, network, addr)
}

// HTTPClient returns a client whose connections are made from inside the
// host's namespace.
func (h *Host) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext:       h.Dial,
		DisableKeepAlives: true,
	}}
}

// handle returns a netlink handle bound to the host's namespace.
func (h *Host) handle() (*netlink.Handle, error) {
	ns, err := vnetns.GetFromPath(h.Path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns)
}

func (h *Host) linkMAC() (net.HardwareAddr, error) {
	nh, err := h.handle()
	if err != nil {
		return nil, err
	}
	defer nh.Close()
	l, err := nh.LinkByName(Interface)
	if err != nil {
		return nil, err
	}
	return l.Attrs().HardwareAddr, nil
}

// Watcher reads one host's addresses and neighbour table quickly (a
// netlink socket kept open in the namespace). Not safe for concurrent use.
type Watcher struct {
	h     *Host
	nh    *netlink.Handle
	link  netlink.Link
	close sync.Once
}

// Watch opens a Watcher on the host's eth0; Close it when done.
func (h *Host) Watch() (*Watcher, error) {
	nh, err := h.handle()
	if err != nil {
		return nil, err
	}
	l, err := nh.LinkByName(Interface)
	if err != nil {
		nh.Close()
		return nil, err
	}
	return &Watcher{h: h, nh: nh, link: l}, nil
}

// Close releases the netlink socket.
func (w *Watcher) Close() { w.close.Do(w.nh.Close) }

// HasAddr reports whether eth0 carries a.
func (w *Watcher) HasAddr(a netip.Addr) (bool, error) {
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	addrs, err := w.nh.AddrList(w.link, fam)
	if err != nil {
		return false, err
	}
	for _, x := range addrs {
		if x.IP.Equal(a.AsSlice()) {
			return true, nil
		}
	}
	return false, nil
}

// Neighbour returns the link-layer address eth0's neighbour table holds
// for a, and the entry's state (netlink.NUD_*); nil when there is none.
func (w *Watcher) Neighbour(a netip.Addr) (net.HardwareAddr, int, error) {
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	ns, err := w.nh.NeighList(w.link.Attrs().Index, fam)
	if err != nil {
		return nil, 0, err
	}
	for _, n := range ns {
		if n.IP.Equal(a.AsSlice()) {
			return n.HardwareAddr, n.State, nil
		}
	}
	return nil, 0, nil
}

// HasAddr is a one-shot Watcher.HasAddr.
func (h *Host) HasAddr(a netip.Addr) (bool, error) {
	w, err := h.Watch()
	if err != nil {
		return false, err
	}
	defer w.Close()
	return w.HasAddr(a)
}

// Neighbour is a one-shot Watcher.Neighbour.
func (h *Host) Neighbour(a netip.Addr) (net.HardwareAddr, int, error) {
	w, err := h.Watch()
	if err != nil {
		return nil, 0, err
	}
	defer w.Close()
	return w.Neighbour(a)
}

// Proc is a process running in a host's namespace.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	out  *os.File // stdout and stderr

	done    chan struct{}
	waitErr error
}

// Start runs `ip netns exec NS bin args...` with stdout and stderr
// captured (Output), killed in the network's cleanup if still running.
// Output goes to a file, not a pipe: a process that hands over to a child
// (an in-place upgrade) passes its output on, and waiting for a pipe would
// wait for that child too.
func (h *Host) Start(bin string, args ...string) (*Proc, error) {
	ipb, err := ipBinary()
	if err != nil {
		return nil, err
	}
	out, err := os.CreateTemp("", "netns-proc-*.log")
	if err != nil {
		return nil, err
	}
	_ = os.Remove(out.Name()) // open until the network is gone
	p := &Proc{Name: filepath.Base(bin) + "@" + h.Name, out: out, done: make(chan struct{})}
	p.Cmd = exec.Command(ipb, append([]string{"netns", "exec", h.NS, bin}, args...)...)
	p.Cmd.Stdout = p.out
	p.Cmd.Stderr = p.out
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the forking thread exits: keep this thread
		// until the process is reaped (see the package documentation).
		runtime.LockOSThread()
		if err := p.Cmd.Start(); err != nil {
			started <- err
			close(p.done)
			return
		}
		started <- nil
		p.waitErr = p.Cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		out.Close()
		return nil, fmt.Errorf("netns: start %s in %s: %w", bin, h.NS, err)
	}
	h.net.mu.Lock()
	h.net.procs = append(h.net.procs, p)
	h.net.mu.Unlock()
	return p, nil
}

// Output returns what the process wrote so far.
func (p *Proc) Output() string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/self/fd/%d", p.out.Fd()))
	return string(b)
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the process's exit status (valid after Done).
func (p *Proc) Err() error {
	<-p.done
	return p.waitErr
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	return p.Cmd.Process.Signal(sig)
}

// Kill sends SIGKILL and waits for the process to exit.
func (p *Proc) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM and waits up to d for an exit, then kills it; it
// returns the exit status, or an error if it had to be killed.
func (p *Proc) Stop(d time.Duration) error {
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.waitErr
	case <-time.After(d):
		p.Kill()
		return fmt.Errorf("%s did not exit within %v of SIGTERM", p.Name, d)
	}
}

// Exec runs a command in the host's namespace and returns its combined
// output (`ip netns exec NS name args...`).
func (h *Host) Exec(name string, args ...string) (string, error) {
	return ip(append([]string{"netns", "exec", h.NS, name}, args...)...)
}

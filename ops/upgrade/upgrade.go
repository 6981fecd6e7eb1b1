package upgrade

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/vip"
)

// Server is the proxy's side of the handover (node.Server implements it).
type Server interface {
	// ListenerFiles duplicates the listening sockets, by configured address.
	ListenerFiles() (map[string]*os.File, error)
	StopAccepting()
	EndSessions(ctx context.Context, match func(local netip.AddrPort) bool, text string, spread time.Duration) int
	EndSpread() time.Duration
}

// Admin is the admin listener (admin.Server implements it).
type Admin interface {
	File() (*os.File, error)
	StopListening()
}

// Cluster is the node's cluster membership (cluster.Agent implements it).
type Cluster interface {
	IsLeader() bool
	HoldPeerElections(ctx context.Context, d time.Duration) error
	ReleasePeerElections(ctx context.Context)
	Handoff(keepLeadership bool) error
}

// VIP is the floating address on this node (vip.Manager implements it).
type VIP interface {
	Owned() bool
	Release(timeout time.Duration) error
	Detach()
	Addresses() []vip.Address
}

// LeasedVIP is a VIP in the spread mode (vip.Spread): the node holds its
// addresses on a lease from the leader rather than as leader. A follower
// with a lease keeps its addresses through the upgrade, on the lease (the
// new process renews it under the same node name); a leader (or a node
// without a lease) has its addresses moved to other nodes first (Release),
// since holding the voters' elections would stop every node's lease
// renewals.
type LeasedVIP interface {
	VIP
	// LeaseUntil is when the node's lease runs out (zero: none).
	LeaseUntil() time.Time
}

// Config is what the old process's side works with. Admin, Cluster, VIP
// and TableIndex are nil when the node has none.
type Config struct {
	// Executable and Args start the new process (the program's path and
	// its arguments, e.g. serve --config FILE); upgrade.binary, when set,
	// replaces Executable.
	Executable string
	Args       []string
	// Settings returns the running configuration's upgrade section.
	Settings func() config.Upgrade
	Server   Server
	// Sessions counts the relayed sessions this process still has.
	Sessions func() int
	Admin    Admin
	Cluster  Cluster
	VIP      VIP
	// TableIndex returns the routing table's index when the table has
	// caught up with the cluster and its index is known.
	TableIndex func() (uint64, bool)
	// Secrets, if set, returns what the new process gets through a pipe
	// (Handover.Secrets), never through its environment or arguments: the
	// TLS session-ticket keys, so that clients resume their sessions
	// across the upgrade. At most maxSecrets bytes.
	Secrets func() []byte
	// Go runs f in a goroutine its owner joins at shutdown (the daemon's
	// group); f's context ends then.
	Go  func(f func(ctx context.Context)) bool
	Log *slog.Logger
}

// Upgrader is the old process's side.
type Upgrader struct {
	cfg     Config
	keptVIP atomic.Bool // the VIP was left on the interface for the new process
	running atomic.Bool
	retired chan struct{} // closed when this process should exit
	failed  atomic.Bool   // the new process failed after the handoff
}

// New returns the old process's side of an upgrade.
func New(cfg Config) *Upgrader {
	return &Upgrader{cfg: cfg, retired: make(chan struct{})}
}

// Result is POST /v1/upgrade.
type Result struct {
	PID      int   `json:"pid"`      // the new process
	Took     int64 `json:"took_ms"`  // from start to the new process serving
	Sessions int   `json:"sessions"` // relayed sessions the old process keeps until they end
}

// Retired is closed when, after an in-place upgrade, this process has
// finished its sessions and should exit (shut down, then exit with status
// 1 if Failed).
func (u *Upgrader) Retired() <-chan struct{} { return u.retired }

// Failed: the new process failed after taking the cluster identity.
func (u *Upgrader) Failed() bool { return u.failed.Load() }

// Upgrade starts the new process and hands over to it (see handover.go).
func (u *Upgrader) Upgrade(ctx context.Context) (Result, error) {
	if !u.running.CompareAndSwap(false, true) {
		return Result{}, errors.New("an upgrade is already in progress or done")
	}
	start := time.Now()
	c := u.cfg
	set := c.Settings()
	binary := set.Binary
	if binary == "" {
		binary = c.Executable
	}
	if binary == "" {
		u.running.Store(false)
		return Result{}, errors.New("no binary to upgrade to (upgrade.binary)")
	}
	files, err := c.Server.ListenerFiles()
	if err != nil {
		u.running.Store(false)
		return Result{}, err
	}
	closeFiles := func() {
		for _, f := range files {
			f.Close()
		}
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		closeFiles()
		u.running.Store(false)
		return Result{}, err
	}
	ctl, childCtl := os.NewFile(uintptr(pair[0]), "upgrade-ctl"), os.NewFile(uintptr(pair[1]), "upgrade-ctl-child")
	defer ctl.Close()

	fds := upgradeFDs{Ctl: 3, Listeners: map[string]int{}}
	extra := []*os.File{childCtl}
	for addr, f := range files {
		fds.Listeners[addr] = 3 + len(extra)
		extra = append(extra, f)
	}
	if c.Admin != nil {
		if af, err := c.Admin.File(); err == nil {
			fds.Admin = 3 + len(extra)
			extra = append(extra, af)
			files["admin"] = af
		}
	}
	// On the VIP owner (the raft leader), keep the VIP on this node: the
	// other voters hold their elections while this node's raft restarts
	// in the new process, which then wins the next election and keeps the
	// address it inherits. If a voter cannot be asked, leadership and the
	// VIP move instead (a planned handover).
	keepVIP := false
	leased, isLeased := c.VIP.(LeasedVIP)
	if isLeased && c.Cluster != nil && c.VIP.Owned() && !c.Cluster.IsLeader() {
		// Spread mode, a follower: its lease, renewed by the new
		// process, keeps its addresses; a lease about to run out would
		// leave the new process nothing to keep.
		if until := leased.LeaseUntil(); time.Until(until) > 100*time.Millisecond {
			keepVIP = true
			fds.VIPHoldUntil = until.UnixMilli()
		}
	}
	if !isLeased && c.VIP != nil && c.Cluster != nil && c.VIP.Owned() && c.Cluster.IsLeader() && set.LeaderHold.D() > 0 {
		hold := set.LeaderHold.D()
		if err := c.Cluster.HoldPeerElections(ctx, hold); err != nil {
			c.Log.Warn("in-place upgrade of the VIP owner: cannot hold the other voters' elections; leadership and the VIP will move", "error", err)
		} else {
			keepVIP = true
			// The new process gives the VIP up a second before the
			// voters' hold ends, if it does not lead by then.
			fds.VIPHoldUntil = time.Now().Add(hold - time.Second).UnixMilli()
		}
	}
	if c.TableIndex != nil {
		if idx, ok := c.TableIndex(); ok {
			fds.TableIndex = idx
		}
	}
	if c.Secrets != nil {
		if r, err := secretsPipe(c.Secrets()); err != nil {
			c.Log.Warn("in-place upgrade: the new process will not get the session-ticket keys", "error", err)
		} else if r != nil {
			fds.Secrets = 3 + len(extra)
			extra = append(extra, r)
			files["secrets"] = r
		}
	}
	env, _ := json.Marshal(fds)
	cmd := exec.Command(binary, c.Args...)
	cmd.Env = append(os.Environ(), upgradeEnv+"="+string(env))
	cmd.ExtraFiles = extra
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err = cmd.Start()
	childCtl.Close()
	closeFiles()
	if err != nil {
		if keepVIP && !isLeased {
			c.Cluster.ReleasePeerElections(context.Background())
		}
		u.running.Store(false)
		return Result{}, fmt.Errorf("starting %s: %w", binary, err)
	}
	c.Log.Info("in-place upgrade: new process started", "binary", binary, "pid", cmd.Process.Pid)

	timeout := set.Timeout.D()
	br := bufio.NewReader(ctl)
	expect := func(want string) error {
		_ = ctl.SetReadDeadline(time.Now().Add(timeout))
		line, err := br.ReadString('\n')
		switch {
		case err != nil:
			return fmt.Errorf("the new process (pid %d) went away: %w", cmd.Process.Pid, err)
		case strings.HasPrefix(line, "error "):
			return fmt.Errorf("the new process (pid %d) failed: %s", cmd.Process.Pid, strings.TrimSpace(line[6:]))
		case line != want+"\n":
			return fmt.Errorf("the new process (pid %d) said %q", cmd.Process.Pid, strings.TrimSpace(line))
		}
		return nil
	}
	if err := expect("hello"); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if keepVIP && !isLeased {
			c.Cluster.ReleasePeerElections(context.Background())
		}
		u.running.Store(false)
		c.Log.Error("in-place upgrade aborted; still serving", "error", err)
		return Result{}, err
	}

	// From here on the new process takes over. (It outlives this process,
	// which never waits for it.)
	c.Server.StopAccepting()
	if c.Admin != nil {
		c.Admin.StopListening()
	}
	if c.VIP != nil && c.VIP.Owned() && !keepVIP {
		// Leadership moves in the handoff (a planned handover), and so
		// does the VIP: release it first, so that the next leader, which
		// takes it as soon as it leads, never overlaps with this process.
		_ = c.VIP.Release(2 * time.Second)
	}
	if keepVIP {
		// The address stays on the interface for the new process.
		c.VIP.Detach()
		u.keptVIP.Store(true)
	}
	if c.Cluster != nil {
		if err := c.Cluster.Handoff(keepVIP && !isLeased); err != nil {
			c.Log.Warn("cluster handoff", "error", err)
		}
	}
	if c.VIP != nil {
		c.VIP.Detach()
	}
	if _, err := ctl.WriteString("go\n"); err != nil {
		return Result{}, u.fail(fmt.Errorf("the new process went away: %w", err))
	}
	if err := expect("ready"); err != nil {
		return Result{}, u.fail(err)
	}
	res := Result{PID: cmd.Process.Pid, Took: time.Since(start).Milliseconds(), Sessions: c.Sessions()}
	c.Log.Info("in-place upgrade: the new process serves; this one keeps its sessions until they end",
		"pid", res.PID, "took_ms", res.Took, "sessions", res.Sessions, "session_grace", set.SessionGrace.D())
	u.retire(set.SessionGrace.D())
	return res, nil
}

// secretsPipe returns the read end of a pipe holding b (nil for no
// bytes). b fits in the pipe's buffer, so the write never waits for the
// reader.
func secretsPipe(b []byte) (*os.File, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if len(b) > maxSecrets {
		return nil, fmt.Errorf("%d bytes of secrets, more than %d", len(b), maxSecrets)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	_, err = w.Write(b)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// fail: the new process failed after the handoff.
func (u *Upgrader) fail(err error) error {
	u.failed.Store(true)
	c := u.cfg
	if u.keptVIP.Load() && c.VIP != nil {
		// Nobody will lead from this node: give the VIP up now, so that
		// the leader the other voters elect when their hold ends is its
		// only owner.
		if removed, err := vip.RemoveAll(c.VIP.Addresses()); err != nil {
			c.Log.Error("removing the VIP after the failed upgrade", "error", err)
		} else if len(removed) > 0 {
			c.Log.Warn("released the VIP after the failed upgrade", "addresses", removed)
		}
	}
	c.Log.Error("in-place upgrade failed after the handoff; finishing this process's sessions, then exiting so that the supervisor restarts the node", "error", err)
	u.retire(0)
	return err
}

// retire waits (in the background) for this process's sessions to end,
// up to grace, ends the rest at a response boundary, and marks the
// process for exit (Retired). A shutdown meanwhile cuts it short.
func (u *Upgrader) retire(grace time.Duration) {
	c := u.cfg
	run := func(ctx context.Context) {
		defer close(u.retired)
		deadline := time.Now().Add(grace)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for c.Sessions() > 0 && time.Now().Before(deadline) {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		if n := c.Sessions(); n > 0 {
			c.Log.Info("ending the sessions left after the upgrade", "sessions", n)
			c.Server.EndSessions(ctx, nil, "Server restarting, please reconnect.", c.Server.EndSpread())
		}
	}
	if !c.Go(run) {
		close(u.retired) // shutting down already
	}
}

package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/vip"
)

// In-place upgrade: a new process (normally a new binary at the same path)
// takes over the listening sockets and the node's cluster identity while
// the old process keeps relaying the sessions it has until they end or
// upgrade.session_grace passes. No connection is refused meanwhile: the
// sockets stay open in both processes, and connections arriving while
// the new process starts wait in the kernel's accept queue.
//
// The processes talk over a socket pair, one line per step:
//
//	new -> old  "hello"   the new binary runs and accepts the configuration
//	old -> new  "go"      the old one stopped accepting and handed the
//	                      cluster identity off (data dir unlocked)
//	new -> old  "ready"   the new one serves (or "error <text>" at any step)
//
// Until "go" a failure changes nothing: the old process kills the new one
// and carries on. After it, the old process no longer has a cluster
// identity; if the new one then fails, the old one finishes its sessions
// and exits with an error so that the supervisor restarts the node.

// upgradeEnv carries the inherited descriptors to the new process.
const upgradeEnv = "PORTICO_UPGRADE"

type upgradeFDs struct {
	Ctl       int            `json:"ctl"`
	Listeners map[string]int `json:"listeners"` // configured address -> fd
	Admin     int            `json:"admin,omitempty"`
	// VIPHoldUntil (unix ms): the old process held the VIP and kept it on
	// the interface; the new one keeps it until it leads again or then.
	VIPHoldUntil int64 `json:"vip_hold_until,omitempty"`
	// TableIndex, when set, is the old process's routing table index
	// (routing.FSM.AppliedIndex) when it started the upgrade, its table
	// having caught up with the cluster. The snapshot it takes at the
	// handoff carries that table or a later one; a new process restored
	// from a snapshot at least as recent has caught up too.
	TableIndex uint64 `json:"table_index,omitempty"`
}

// Handover is the new process's side of an in-place upgrade.
type Handover struct {
	vipHold    time.Time
	tableIndex uint64
	ctl        *os.File
	br         *bufio.Reader
	listeners  map[string]*os.File
	admin      *os.File
}

// InheritedUpgrade returns the handover when this process was started by
// an in-place upgrade, else nil.
func InheritedUpgrade() (*Handover, error) {
	v := os.Getenv(upgradeEnv)
	if v == "" {
		return nil, nil
	}
	_ = os.Unsetenv(upgradeEnv) // not for a later upgrade started from here
	var fds upgradeFDs
	if err := json.Unmarshal([]byte(v), &fds); err != nil {
		return nil, fmt.Errorf("%s: %w", upgradeEnv, err)
	}
	h := &Handover{listeners: map[string]*os.File{}}
	if fds.VIPHoldUntil > 0 {
		h.vipHold = time.UnixMilli(fds.VIPHoldUntil)
	}
	h.tableIndex = fds.TableIndex
	h.ctl = os.NewFile(uintptr(fds.Ctl), "upgrade-ctl")
	h.br = bufio.NewReader(h.ctl)
	for addr, fd := range fds.Listeners {
		unix.CloseOnExec(fd)
		h.listeners[addr] = os.NewFile(uintptr(fd), "listener "+addr)
	}
	unix.CloseOnExec(fds.Ctl)
	if fds.Admin > 0 {
		unix.CloseOnExec(fds.Admin)
		h.admin = os.NewFile(uintptr(fds.Admin), "admin listener")
	}
	return h, nil
}

// VIPHoldUntil is when the VIP inherited from the old process must be
// released unless this node leads by then (zero: no VIP inherited).
func (h *Handover) VIPHoldUntil() time.Time {
	if h == nil {
		return time.Time{}
	}
	return h.vipHold
}

// TableIndex returns the index of the old process's caught-up routing
// table when it started the upgrade (false without a handover, or when
// its table had not caught up or its index was unknown).
func (h *Handover) TableIndex() (uint64, bool) {
	if h == nil || h.tableIndex == 0 {
		return 0, false
	}
	return h.tableIndex, true
}

// Listener returns the inherited socket for addr (nil, nil if none).
func (h *Handover) Listener(addr string) (net.Listener, error) {
	f := h.listeners[addr]
	if f == nil {
		return nil, nil
	}
	delete(h.listeners, addr)
	defer f.Close()
	return net.FileListener(f)
}

// Admin returns the inherited admin socket (nil, nil if none).
func (h *Handover) Admin(string) (net.Listener, error) {
	if h.admin == nil {
		return nil, nil
	}
	f := h.admin
	h.admin = nil
	defer f.Close()
	return net.FileListener(f)
}

// Hello tells the old process this one runs and accepted the configuration,
// then waits (up to timeout) for it to hand the cluster identity over.
func (h *Handover) Hello(timeout time.Duration) error {
	if _, err := h.ctl.WriteString("hello\n"); err != nil {
		return fmt.Errorf("upgrade: telling the old process: %w", err)
	}
	_ = h.ctl.SetReadDeadline(time.Now().Add(timeout))
	line, err := h.br.ReadString('\n')
	if err != nil {
		return fmt.Errorf("upgrade: waiting for the old process: %w", err)
	}
	if line != "go\n" {
		return fmt.Errorf("upgrade: the old process said %q", strings.TrimSpace(line))
	}
	return nil
}

// Ready tells the old process this one serves, and closes the handover
// (unused inherited sockets too: listeners removed from the configuration).
func (h *Handover) Ready() { h.finish("ready\n") }

// Fail tells the old process why this one gives up.
func (h *Handover) Fail(err error) {
	h.finish("error " + strings.ReplaceAll(err.Error(), "\n", " ") + "\n")
}

func (h *Handover) finish(msg string) {
	_, _ = h.ctl.WriteString(msg)
	_ = h.ctl.Close()
	for _, f := range h.listeners {
		f.Close()
	}
	if h.admin != nil {
		h.admin.Close()
	}
}

// upgradeState is the old process's side.
type upgradeState struct {
	keptVIP atomic.Bool // the VIP was left on the interface for the new process
	running atomic.Bool
	retired chan struct{} // closed when this process should exit
	failed  atomic.Bool   // the new process failed after the handoff
}

// UpgradeResult is POST /v1/upgrade.
type UpgradeResult struct {
	PID      int   `json:"pid"`      // the new process
	Took     int64 `json:"took_ms"`  // from start to the new process serving
	Sessions int   `json:"sessions"` // relayed sessions the old process keeps until they end
}

// Retired is closed when, after an in-place upgrade, this process has
// finished its sessions and should exit (Shutdown, then exit with status
// 1 if UpgradeFailed).
func (d *Daemon) Retired() <-chan struct{} { return d.upgrade.retired }

// UpgradeFailed: the new process failed after taking the cluster identity.
func (d *Daemon) UpgradeFailed() bool { return d.upgrade.failed.Load() }

// Upgrade starts the new process and hands over to it (see above).
func (d *Daemon) Upgrade(ctx context.Context) (UpgradeResult, error) {
	u := d.upgrade
	if !u.running.CompareAndSwap(false, true) {
		return UpgradeResult{}, errors.New("an upgrade is already in progress or done")
	}
	start := time.Now()
	cfg := d.conf()
	binary := cfg.Upgrade.Binary
	if binary == "" {
		binary = d.executable
	}
	if binary == "" {
		u.running.Store(false)
		return UpgradeResult{}, errors.New("no binary to upgrade to (upgrade.binary)")
	}
	files, err := d.srv.ListenerFiles()
	if err != nil {
		u.running.Store(false)
		return UpgradeResult{}, err
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
		return UpgradeResult{}, err
	}
	ctl, childCtl := os.NewFile(uintptr(pair[0]), "upgrade-ctl"), os.NewFile(uintptr(pair[1]), "upgrade-ctl-child")
	defer ctl.Close()

	fds := upgradeFDs{Ctl: 3, Listeners: map[string]int{}}
	extra := []*os.File{childCtl}
	for addr, f := range files {
		fds.Listeners[addr] = 3 + len(extra)
		extra = append(extra, f)
	}
	if d.admin != nil {
		if af, err := d.admin.File(); err == nil {
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
	if d.vip != nil && d.cluster != nil && d.vip.m.Owned() && d.cluster.IsLeader() && cfg.Upgrade.LeaderHold.D() > 0 {
		hold := cfg.Upgrade.LeaderHold.D()
		if err := d.cluster.HoldPeerElections(ctx, hold); err != nil {
			d.Log.Warn("in-place upgrade of the VIP owner: cannot hold the other voters' elections; leadership and the VIP will move", "error", err)
		} else {
			keepVIP = true
			// The new process gives the VIP up a second before the
			// voters' hold ends, if it does not lead by then.
			fds.VIPHoldUntil = time.Now().Add(hold - time.Second).UnixMilli()
		}
	}
	if d.fsm != nil && d.fsm.Loaded() && d.fsm.IndexKnown() {
		fds.TableIndex = d.fsm.AppliedIndex()
	}
	env, _ := json.Marshal(fds)
	cmd := exec.Command(binary, d.args...)
	cmd.Env = append(os.Environ(), upgradeEnv+"="+string(env))
	cmd.ExtraFiles = extra
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err = cmd.Start()
	childCtl.Close()
	closeFiles()
	if err != nil {
		if keepVIP {
			d.cluster.ReleasePeerElections(context.Background())
		}
		u.running.Store(false)
		return UpgradeResult{}, fmt.Errorf("starting %s: %w", binary, err)
	}
	d.Log.Info("in-place upgrade: new process started", "binary", binary, "pid", cmd.Process.Pid)

	timeout := cfg.Upgrade.Timeout.D()
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
		if keepVIP {
			d.cluster.ReleasePeerElections(context.Background())
		}
		u.running.Store(false)
		d.Log.Error("in-place upgrade aborted; still serving", "error", err)
		return UpgradeResult{}, err
	}

	// From here on the new process takes over.
	d.srv.StopAccepting()
	if d.admin != nil {
		d.admin.StopListening()
	}
	if d.vip != nil && d.vip.m.Owned() && !keepVIP {
		// Leadership moves in the handoff (a planned handover), and so
		// does the VIP: release it first, so that the next leader, which
		// takes it as soon as it leads, never overlaps with this process.
		_ = d.vip.m.Release(2 * time.Second)
	}
	if keepVIP {
		// The address stays on the interface for the new process.
		d.vip.m.Detach()
		d.upgrade.keptVIP.Store(true)
	}
	if d.cluster != nil {
		if err := d.cluster.Handoff(keepVIP); err != nil {
			d.Log.Warn("cluster handoff", "error", err)
		}
	}
	if d.vip != nil {
		d.vip.m.Detach()
	}
	if _, err := ctl.WriteString("go\n"); err != nil {
		return UpgradeResult{}, d.upgradeFailed(fmt.Errorf("the new process went away: %w", err))
	}
	if err := expect("ready"); err != nil {
		return UpgradeResult{}, d.upgradeFailed(err)
	}
	res := UpgradeResult{PID: cmd.Process.Pid, Took: time.Since(start).Milliseconds(), Sessions: d.engine.Len()}
	d.Log.Info("in-place upgrade: the new process serves; this one keeps its sessions until they end",
		"pid", res.PID, "took_ms", res.Took, "sessions", res.Sessions, "session_grace", cfg.Upgrade.SessionGrace.D())
	d.group.Go(func(ctx context.Context) { d.retire(ctx, cfg.Upgrade.SessionGrace.D()) })
	return res, nil
}

func (d *Daemon) upgradeFailed(err error) error {
	d.upgrade.failed.Store(true)
	if d.upgrade.keptVIP.Load() && d.vip != nil {
		// Nobody will lead from this node: give the VIP up now, so that
		// the leader the other voters elect when their hold ends is its
		// only owner.
		if removed, err := vip.RemoveAll(d.vip.m.Addresses()); err != nil {
			d.Log.Error("removing the VIP after the failed upgrade", "error", err)
		} else if len(removed) > 0 {
			d.Log.Warn("released the VIP after the failed upgrade", "addresses", removed)
		}
	}
	d.Log.Error("in-place upgrade failed after the handoff; finishing this process's sessions, then exiting so that the supervisor restarts the node", "error", err)
	d.group.Go(func(ctx context.Context) { d.retire(ctx, 0) })
	return err
}

// retire waits for this process's sessions to end (up to grace), ends
// the rest at a response boundary, and marks the process for exit.
func (d *Daemon) retire(ctx context.Context, grace time.Duration) {
	defer close(d.upgrade.retired)
	deadline := time.Now().Add(grace)
	for d.engine.Len() > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		sleepCtx(ctx, 100*time.Millisecond)
	}
	if n := d.engine.Len(); n > 0 && ctx.Err() == nil {
		d.Log.Info("ending the sessions left after the upgrade", "sessions", n)
		d.srv.EndSessions(ctx, nil, "Server restarting, please reconnect.", d.srv.EndSpread())
	}
}

func (d *Daemon) setupUpgrade(o Options) {
	d.upgrade = &upgradeState{retired: make(chan struct{})}
	d.executable, d.args = o.Executable, o.Args
	if d.admin == nil {
		return
	}
	d.admin.HandleFunc("POST /v1/upgrade", func(w http.ResponseWriter, r *http.Request) {
		res, err := d.Upgrade(r.Context())
		if err != nil {
			admin.Error(w, http.StatusServiceUnavailable, "upgrade: "+err.Error())
			return
		}
		admin.JSON(w, http.StatusOK, res)
	})
}

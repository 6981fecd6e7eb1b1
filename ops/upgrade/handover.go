// Package upgrade is the in-place upgrade protocol (below): Upgrader is
// the old process's side, Handover the new one's. It decides the
// handover; the daemon only wires it to the proxy, the admin listener,
// the cluster and the VIP.
package upgrade

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
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
	// Secrets, when set, is the read end of a pipe holding
	// Config.Secrets's bytes. A new process of a version without it
	// ignores it (the descriptor stays open, unread).
	Secrets int `json:"secrets,omitempty"`
}

// maxSecrets bounds Config.Secrets: it must fit in a pipe's buffer (64 KiB
// on Linux), so that the old process writes it before the new one reads.
const maxSecrets = 32 << 10

// Handover is the new process's side of an in-place upgrade.
type Handover struct {
	vipHold    time.Time
	tableIndex uint64
	ctl        *os.File
	br         *bufio.Reader
	listeners  map[string]*os.File
	admin      *os.File
	secrets    []byte
}

// Inherited returns the handover when this process was started by an
// in-place upgrade, else nil.
func Inherited() (*Handover, error) {
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
	if fds.Secrets > 0 {
		f := os.NewFile(uintptr(fds.Secrets), "upgrade secrets")
		b, err := io.ReadAll(io.LimitReader(f, maxSecrets+1))
		f.Close()
		if err != nil || len(b) > maxSecrets {
			return nil, fmt.Errorf("%s: reading the secrets handed over: %d bytes, %v", upgradeEnv, len(b), err)
		}
		h.secrets = b
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

// Secrets returns what the old process handed over through a pipe
// (Config.Secrets; nil without a handover or when it sent none).
func (h *Handover) Secrets() []byte {
	if h == nil {
		return nil
	}
	return h.secrets
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

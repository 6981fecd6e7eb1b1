package vip

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultNotifyTimeout bounds a run of the notify program.
const DefaultNotifyTimeout = 10 * time.Second

// Notify events, the second argument of the notify program.
const (
	EventAcquire = "acquire"
	EventRelease = "release"
)

// maxNotifyQueue bounds the events waiting per address behind a slow
// program; beyond it the oldest waiting ones are dropped (and logged).
const maxNotifyQueue = 64

// Notifier runs an operator's program when this node acquires or releases
// an address (keepalived's notify_master/notify_backup): the program, its
// fixed arguments, then the address, the event (acquire, release) and the
// node's name. Runs are asynchronous (Notify never blocks, so an
// ownership change never waits for the program), in order per address
// (one run at a time per address), each bounded by a timeout after which
// the program's process group is killed. What the program leaves running
// in its group when it exits is killed then.
type Notifier struct {
	argv    []string
	node    string
	timeout time.Duration
	log     *slog.Logger
	// OnResult is told each run's event and result ("ok", "failed",
	// "timeout", "dropped") for the metrics.
	OnResult func(event, result string)

	mu     sync.Mutex
	queues map[netip.Addr]*notifyQueue
	wg     sync.WaitGroup
}

type notifyQueue struct {
	events  []string
	running bool
}

// NewNotifier returns a Notifier running command (a program path and
// fixed arguments, separated by spaces; no shell) for node.
func NewNotifier(command, node string, timeout time.Duration, log *slog.Logger) *Notifier {
	if timeout <= 0 {
		timeout = DefaultNotifyTimeout
	}
	if log == nil {
		log = slog.Default()
	}
	return &Notifier{argv: strings.Fields(command), node: node, timeout: timeout, log: log, queues: map[netip.Addr]*notifyQueue{}}
}

// Notify queues a run for the address and event and returns at once.
func (n *Notifier) Notify(a netip.Addr, event string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	q := n.queues[a]
	if q == nil {
		q = &notifyQueue{}
		n.queues[a] = q
	}
	if len(q.events) >= maxNotifyQueue {
		n.log.Warn("notify program falling behind; dropping the oldest waiting event", "address", a, "event", q.events[0])
		n.result(q.events[0], "dropped")
		q.events = q.events[1:]
	}
	q.events = append(q.events, event)
	if !q.running {
		q.running = true
		n.wg.Add(1)
		go n.drain(a, q)
	}
}

// drain runs the address's queued events in order until none is left.
func (n *Notifier) drain(a netip.Addr, q *notifyQueue) {
	defer n.wg.Done()
	for {
		n.mu.Lock()
		if len(q.events) == 0 {
			q.running = false
			n.mu.Unlock()
			return
		}
		ev := q.events[0]
		q.events = q.events[1:]
		n.mu.Unlock()
		n.run(a, ev)
	}
}

// run runs the program once.
func (n *Notifier) run(a netip.Addr, event string) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
	defer cancel()
	args := append(append([]string{}, n.argv[1:]...), a.String(), event, n.node)
	cmd := exec.CommandContext(ctx, n.argv[0], args...)
	var out bytes.Buffer
	lw := &limitedWriter{w: &out, n: 2048}
	cmd.Stdout, cmd.Stderr = lw, lw
	// Its own process group, killed whole at the timeout: a shell script's
	// children must not outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err := cmd.Start()
	if err == nil {
		// Whatever the program left running in its group (a child sent to
		// the background) is killed once it exits, as at the timeout: a
		// run leaves nothing behind, however often addresses move. Killed
		// before the program is reaped, while it is a zombie holding its
		// group's id, so the signal cannot reach a later group that was
		// given the same number.
		var info unix.Siginfo
		for {
			werr := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
			if werr != unix.EINTR {
				break
			}
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		err = cmd.Wait()
	}
	took := time.Since(start).Round(time.Millisecond)
	switch {
	case err == nil:
		n.log.Info("notify program ran", "address", a, "event", event, "took", took)
		n.result(event, "ok")
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		n.log.Error("notify program timed out and was killed", "address", a, "event", event, "timeout", n.timeout, "output", strings.TrimSpace(out.String()))
		n.result(event, "timeout")
	default:
		n.log.Error("notify program failed", "address", a, "event", event, "error", err, "took", took, "output", strings.TrimSpace(out.String()))
		n.result(event, "failed")
	}
}

func (n *Notifier) result(event, result string) {
	if n.OnResult != nil {
		n.OnResult(event, result)
	}
}

// Wait waits for the runs queued so far, or until ctx ends.
func (n *Notifier) Wait(ctx context.Context) {
	done := make(chan struct{})
	go func() { n.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// limitedWriter keeps the first n bytes written to it and discards the
// rest (a chatty program cannot fill the log or the memory).
type limitedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
	n  int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := l.n - l.w.Len(); room > 0 {
		l.w.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

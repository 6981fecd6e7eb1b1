//go:build linux

// Package evloop runs many connections' sequential code on one goroutine:
// an event loop of its own (an epoll instance parked in Go's netpoller, as
// node/relay's poller is) whose tasks are coroutines (iter.Pull). A task is
// ordinary straight-line code, as a goroutine's would be, over Conns whose
// reads and writes never block a thread: when the socket would block, the
// Conn registers it with the loop's epoll and the task yields; the loop
// resumes it when the socket is ready or its deadline passes. Switching
// between the loop and a task is a direct hand-off on the loop's thread
// (runtime.coroswitch): no run queue, no idle thread woken, no netpoller
// registration of the sockets, and every non-blocking call is a raw
// syscall (no entersyscall, so sysmon is not woken either). That is what
// makes a login cheaper than with a goroutine per connection
// (bench/RESULTS.md, "Third pass" to "Fifth pass"; node/DESIGN.md has the
// plan this package is the first step of).
//
// The rule a task must keep: never block the goroutine way (a channel, a
// timer, a mutex held for long, a net.Conn of Go's, a sleep), which would
// stall every task of the loop. Blocking runs such a call on a goroutine of
// its own and yields until it returns; Sleep waits on the loop's timers.
//
// A Conn's Read and Write, and the Task methods, may only be called from a
// task of the Conn's loop. Close and the deadline setters may be called from
// any goroutine (a shutdown interrupting a session): they take effect in the
// loop, waking a task that waits on the connection.
package evloop

import (
	"container/heap"
	"errors"
	"iter"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrStopped is returned to a task whose loop was closed while it waited.
var ErrStopped = errors.New("evloop: loop closed")

// Loop is one event loop and its tasks. Its methods are safe from any
// goroutine unless documented otherwise.
type Loop struct {
	epfd int
	ep   *os.File        // the epoll descriptor, watched by Go's netpoller
	raw  syscall.RawConn // to wait on it
	evfd int             // eventfd: wakes the loop for posted work

	mu      sync.Mutex
	posted  []func() // run on the loop, in order
	parking bool     // the loop is parking or parked: a post must kick it
	kicked  bool     // an eventfd write is pending
	closed  bool

	// Owned by the loop's goroutine (and the task it is running, which
	// runs only while the loop waits for it).
	fds      map[int32]*fdState
	gen      uint32 // the last fdState generation
	timers   timerHeap
	runnable []*Task // spawned or woken from within the loop, to run next
	yielded  []*Task // gave way after their quantum: run after the next poll
	cur      *Task   // the task running now
	parkedAt int64   // the epoll descriptor's read deadline (unix nanos, 0: none)
	live     map[*Task]struct{}
	now      func() time.Time
	done     chan struct{}
	events   []unix.EpollEvent
}

// New starts a loop on a goroutine of its own.
func New() (*Loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, err
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	f := os.NewFile(uintptr(epfd), "evloop-epoll")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		unix.Close(evfd)
		return nil, err
	}
	l := &Loop{
		epfd: epfd, ep: f, raw: raw, evfd: evfd,
		fds: make(map[int32]*fdState), live: make(map[*Task]struct{}), now: time.Now,
		done: make(chan struct{}), events: make([]unix.EpollEvent, 128),
	}
	go l.run()
	return l, nil
}

// Go starts fn as a task of the loop. Safe from any goroutine; from a task
// of the same loop Spawn is cheaper.
func (l *Loop) Go(fn func()) bool {
	return l.post(func() { l.start(fn) })
}

// Spawn starts fn as a task of the loop after the calling task yields. It
// must be called from a task of l.
func (l *Loop) Spawn(fn func()) {
	t := l.newTask(fn)
	l.runnable = append(l.runnable, t)
}

// Tasks returns the number of live tasks. Only meaningful from a task of
// the loop or after Close.
func (l *Loop) Tasks() int { return len(l.live) }

// Close stops the loop: tasks waiting on a connection or a timer are
// resumed with ErrStopped (they should return), and the loop's
// descriptors are closed once the loop has stopped. Connections stay open
// (their owners close them). It waits for the loop to stop; it must not
// be called from a task of the loop.
func (l *Loop) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		<-l.done
		return
	}
	l.closed = true
	l.kicked = true
	l.mu.Unlock()
	l.kick()
	<-l.done
}

// post queues fn to run on the loop. false: the loop is closed.
func (l *Loop) post(fn func()) bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	l.posted = append(l.posted, fn)
	kick := l.parking && !l.kicked
	if kick {
		l.kicked = true
	}
	l.mu.Unlock()
	if kick {
		l.kick()
	}
	return true
}

func (l *Loop) kick() {
	one := uint64(1)
	p := unsafe.Pointer(&one)
	_, _, _ = unix.RawSyscall(unix.SYS_WRITE, uintptr(l.evfd), uintptr(p), 8)
}

// run is the loop: posted work, expired deadlines and runnable tasks,
// then a park in Go's netpoller until an event, a post or the nearest
// deadline (without parking while there is work left).
func (l *Loop) run() {
	defer close(l.done)
	var work []func()
	for {
		l.mu.Lock()
		work, l.posted = l.posted, work[:0]
		closed := l.closed
		l.mu.Unlock()
		for i, fn := range work {
			fn()
			work[i] = nil
		}
		if closed {
			l.shutdown()
			return
		}
		l.expire()
		// Tasks that gave way run after those the last poll made ready.
		l.runnable = append(l.runnable, l.yielded...)
		clear(l.yielded)
		l.yielded = l.yielded[:0]
		l.runRunnable()

		l.mu.Lock()
		idle := len(l.posted) == 0 && !l.closed && len(l.yielded) == 0
		l.parking = idle
		l.mu.Unlock()
		n, err := l.wait(idle)
		l.mu.Lock()
		l.parking, l.kicked = false, false
		l.mu.Unlock()
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			l.shutdown()
			return
		}
		for i := range l.events[:n] {
			ev := &l.events[i]
			if ev.Fd == int32(l.evfd) && ev.Pad == 0 {
				var buf [8]byte
				p := unsafe.Pointer(&buf[0])
				_, _, _ = unix.RawSyscall(unix.SYS_READ, uintptr(l.evfd), uintptr(p), 8)
				continue
			}
			l.ready(ev)
		}
	}
}

// wait reads ready events into l.events: parked in Go's netpoller until
// one comes, a post kicks the eventfd or the nearest deadline passes if
// park, else without waiting.
func (l *Loop) wait(park bool) (int, error) {
	poll := func(fd uintptr) (int, unix.Errno) {
		p := unsafe.Pointer(&l.events[0])
		r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, fd, uintptr(p), uintptr(len(l.events)), 0, 0, 0)
		if e != 0 {
			return 0, e
		}
		return int(r), 0
	}
	if !park {
		n, _ := poll(uintptr(l.epfd))
		return n, nil
	}
	var when int64
	if len(l.timers) > 0 {
		when = l.timers[0].when
	}
	// The park's deadline is moved only to wake earlier (or when there was
	// none): a deadline that went away or moved later (a session handed
	// over or re-armed) costs at most one early wake-up, after which it is
	// set anew, rather than a runtime timer change at every park.
	if when != l.parkedAt && (l.parkedAt == 0 || when != 0 && when < l.parkedAt || l.parkedAt <= l.now().UnixNano()) {
		var d time.Time
		if when != 0 {
			d = time.Unix(0, when)
		}
		if err := l.ep.SetReadDeadline(d); err != nil {
			return 0, err
		}
		l.parkedAt = when
	}
	var n int
	err := l.raw.Read(func(fd uintptr) bool {
		var e unix.Errno
		n, e = poll(fd)
		// Nothing yet (or interrupted): park until the descriptor is
		// readable. Any other error ends the loop.
		return n > 0 || (e != 0 && e != unix.EINTR && e != unix.EAGAIN)
	})
	return n, err
}

// shutdown ends every task: each is resumed with its wait failing
// (ErrStopped; through a Conn, net.ErrClosed), and any later wait fails at
// once, so a task that returns on errors ends here. Then the loop's
// descriptors are closed.
func (l *Loop) shutdown() {
	for len(l.live) > 0 {
		for t := range l.live {
			delete(l.live, t)
			l.stopTimer(t)
			l.forget(t)
			t.done = true
			t.stop()
		}
	}
	l.runnable = nil
	l.yielded = nil
	l.timers = nil
	unix.Close(l.evfd)
	l.ep.Close()
}

// runRunnable runs the tasks made runnable, including those they make
// runnable in turn.
func (l *Loop) runRunnable() {
	for len(l.runnable) > 0 {
		t := l.runnable[0]
		l.runnable[0] = nil
		l.runnable = l.runnable[1:]
		l.resume(t)
	}
	l.runnable = l.runnable[:0]
}

// Task is a coroutine of the loop.
type Task struct {
	l            *Loop
	next         func() (struct{}, bool)
	stop         func()
	yield        func(struct{}) bool
	err          error    // why it was resumed: nil (ready) or an error
	tm           *timer   // its pending deadline, if any
	wfd          *fdState // the descriptor it waits on, if any
	queued, done bool
	since        int64 // when it was last resumed (unix nanos)
}

// quantum is how long a task runs before a read or a write of its gives
// way to the other tasks (giveWay): a client that keeps its session busy
// without its socket ever running dry (pipelined commands, answers read at
// once) must not hold the loop.
const quantum = 2 * time.Millisecond

// giveWay yields the current task until the loop has polled and run the
// tasks that are ready, if it has run for its quantum.
func (l *Loop) giveWay() error {
	t := l.cur
	if t == nil || l.now().UnixNano()-t.since < int64(quantum) {
		return nil
	}
	t.queued = true // runnable, not waiting: no wake applies
	l.yielded = append(l.yielded, t)
	return l.park()
}

func (l *Loop) newTask(fn func()) *Task {
	t := &Task{l: l}
	t.next, t.stop = iter.Pull(func(yield func(struct{}) bool) {
		t.yield = yield
		fn()
	})
	l.live[t] = struct{}{}
	return t
}

// start creates and runs a task (on the loop).
func (l *Loop) start(fn func()) { l.resume(l.newTask(fn)) }

// resume runs t until it yields or returns.
func (l *Loop) resume(t *Task) {
	if t.done {
		return
	}
	t.queued = false
	t.since = l.now().UnixNano()
	prev := l.cur
	l.cur = t
	_, ok := t.next()
	l.cur = prev
	if !ok && !t.done {
		t.done = true
		delete(l.live, t)
		l.stopTimer(t)
		l.forget(t)
	}
}

// wake makes a waiting task runnable with err as the outcome of its wait.
func (l *Loop) wake(t *Task, err error) {
	if t.queued || t.done {
		return
	}
	l.stopTimer(t)
	l.forget(t)
	t.err = err
	t.queued = true
	l.runnable = append(l.runnable, t)
}

// forget drops t's registration as a descriptor's waiter.
func (l *Loop) forget(t *Task) {
	st := t.wfd
	if st == nil {
		return
	}
	t.wfd = nil
	if st.rw == t {
		st.rw = nil
	}
	if st.ww == t {
		st.ww = nil
	}
}

// park yields the current task until it is woken; it returns why.
func (l *Loop) park() error {
	t := l.cur
	if t == nil {
		panic("evloop: blocking call outside a task of the loop")
	}
	t.err = nil
	if !t.yield(struct{}{}) {
		return ErrStopped
	}
	return t.err
}

// Sleep waits d on the loop's timers. It must be called from a task.
func (l *Loop) Sleep(d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := l.cur
	l.startTimer(t, l.now().Add(d).UnixNano())
	err := l.park()
	if err == os.ErrDeadlineExceeded {
		return nil
	}
	return err
}

// Blocking runs fn on a goroutine of its own and waits (yielding to the
// loop) until it returns: the way for a task to call what may block a
// goroutine (a lock, a channel, an HTTP request). It must be called from
// a task. If the loop is closed meanwhile it returns ErrStopped at once
// (fn still runs to its end, on its goroutine).
func (l *Loop) Blocking(fn func()) error {
	t := l.cur
	if t == nil {
		panic("evloop: Blocking outside a task of the loop")
	}
	go func() {
		fn()
		l.post(func() { l.wake(t, nil) })
	}()
	return l.park()
}

// Timers.

type timer struct {
	when int64
	t    *Task
	idx  int
}

type timerHeap []*timer

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].when < h[j].when }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *timerHeap) Push(x any) { tm := x.(*timer); tm.idx = len(*h); *h = append(*h, tm) }
func (h *timerHeap) Pop() any {
	old := *h
	tm := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	tm.idx = -1
	return tm
}

func (l *Loop) startTimer(t *Task, when int64) {
	if t.tm != nil {
		t.tm.when = when
		heap.Fix(&l.timers, t.tm.idx)
		return
	}
	t.tm = &timer{when: when, t: t}
	heap.Push(&l.timers, t.tm)
}

func (l *Loop) stopTimer(t *Task) {
	if t.tm == nil {
		return
	}
	if t.tm.idx >= 0 {
		heap.Remove(&l.timers, t.tm.idx)
	}
	t.tm = nil
}

// expire wakes the tasks whose deadline has passed.
func (l *Loop) expire() {
	if len(l.timers) == 0 {
		return
	}
	now := l.now().UnixNano()
	for len(l.timers) > 0 && l.timers[0].when <= now {
		l.wake(l.timers[0].t, os.ErrDeadlineExceeded)
	}
}

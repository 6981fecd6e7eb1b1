package routing

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// FSM is the replicated routing table: a raft state machine whose state is
// an immutable *Table behind an atomic pointer. It is also the proxy's
// Router: lookups read the latest applied table without locks (stale reads
// are what the proxy wants; the API offers consistent reads separately).
type FSM struct {
	table   atomic.Pointer[Table]
	applied atomic.Uint64 // index of the last applied log entry
	// indexUnknown: the table came from a snapshot that does not record
	// its index (written before snapshots did) and no command has been
	// applied since, so applied is 0 although the table has entries.
	indexUnknown atomic.Bool
	loaded       atomic.Bool // SetLoaded: caught up with the cluster once
	down         atomic.Pointer[HealthFunc]
	aff          atomic.Pointer[Affinity]
	// OnApply, if set, is called after each applied entry (metrics).
	OnApply func(index uint64, c Command, err error)
	// tickets: the TLS session-ticket keys (TicketRing), FSM state
	// beside the table; nil until the first CmdTicketKeys.
	tickets atomic.Pointer[TicketRing]
	// OnTickets, if set, is called (on raft's FSM goroutine: it must not
	// block) with the ring each time a command or a restored snapshot
	// changes it. Set it before raft uses the FSM.
	OnTickets func(*TicketRing)

	// A command this binary cannot decode (an unknown type or version: a
	// newer binary wrote it) halts the FSM: applying nothing more is the
	// only way not to diverge. The process is expected to stop (Halted)
	// with the error; on restart the entry is replayed and halts it again,
	// until the binary is upgraded. No panic: the node says why and stays
	// down.
	halt     atomic.Pointer[error]
	haltCh   chan struct{}
	haltOnce sync.Once
}

// NewFSM returns a state machine holding an empty table.
func NewFSM() *FSM {
	f := &FSM{haltCh: make(chan struct{})}
	f.table.Store(EmptyTable())
	return f
}

// Halted is closed when the FSM met a command it cannot apply.
func (f *FSM) Halted() <-chan struct{} { return f.haltCh }

// HaltError says why the FSM halted (nil if it has not).
func (f *FSM) HaltError() error {
	if e := f.halt.Load(); e != nil {
		return *e
	}
	return nil
}

func (f *FSM) halted(err error) {
	f.haltOnce.Do(func() {
		err = fmt.Errorf("routing: cannot apply a replicated command: %w. This binary is older than the node that wrote it: stopping rather than diverging. Upgrade this node's binary to the version the other nodes run (portico cluster members shows them), then start it again; the entry is replayed", err)
		f.halt.Store(&err)
		close(f.haltCh)
	})
}

// Table returns the current snapshot.
func (f *FSM) Table() *Table { return f.table.Load() }

// AppliedIndex returns the raft index of the last command the table
// reflects: the last one applied, or the one recorded in the snapshot it
// was restored from. Every node applies the same commands at the same
// indexes, so a node whose AppliedIndex is at least another's holds every
// change the other holds.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// IndexKnown is false while the table comes from a snapshot that did not
// record its index (written by an older version) and no command has been
// applied since: AppliedIndex then says 0 whatever the table holds.
func (f *FSM) IndexKnown() bool { return !f.indexUnknown.Load() }

// SetLoaded marks the table as caught up with the cluster (a latch: once
// caught up, a node keeps routing from its copy, stale reads being what the
// proxy wants). Until then Route answers ErrNotReady for every user: a
// restarted node holds only its last snapshot until raft replays the log,
// and a joining node nothing, so a lookup could send a user whose route
// changed to the wrong server, or refuse one who was added as if the
// password were wrong. The cluster calls it once it has applied
// everything the leader had committed (cluster.Agent.CatchUp).
func (f *FSM) SetLoaded() { f.loaded.Store(true) }

// Loaded reports whether SetLoaded was called.
func (f *FSM) Loaded() bool { return f.loaded.Load() }

// SetHealth installs the function that reports down backends.
func (f *FSM) SetHealth(h HealthFunc) { f.down.Store(&h) }

// SetAffinity installs the users' affinity (nil: none).
func (f *FSM) SetAffinity(a Affinity) { f.aff.Store(&a) }

// Affinity returns the installed affinity, or nil.
func (f *FSM) Affinity() Affinity { return loadAffinity(&f.aff) }

// Route implements Router: ErrNotReady until SetLoaded, then a lookup in
// the latest applied table.
func (f *FSM) Route(req Request) (Route, error) {
	if !f.loaded.Load() {
		return Route{}, ErrNotReady
	}
	var down HealthFunc
	if h := f.down.Load(); h != nil {
		down = *h
	}
	return f.table.Load().LookupWith(req, down, loadAffinity(&f.aff))
}

// Apply implements raft.FSM. The response is nil or the error that
// refused the command (the table is then unchanged, on every node alike).
func (f *FSM) Apply(l *raft.Log) interface{} {
	if err := f.HaltError(); err != nil {
		return err
	}
	if l.Type != raft.LogCommand {
		f.applied.Store(l.Index)
		return nil
	}
	c, err := DecodeCommand(l.Data)
	if err != nil {
		if errors.Is(err, ErrUnknownCommand) {
			f.halted(fmt.Errorf("log index %d: %w", l.Index, err))
			return f.HaltError()
		}
		// A malformed entry is refused deterministically on every node.
		f.applied.Store(l.Index)
		return err
	}
	if c.Type == CmdTicketKeys {
		err = f.applyTickets(c)
	} else {
		var n *Table
		if n, err = f.table.Load().Apply(c); err == nil {
			f.table.Store(n)
		}
	}
	f.applied.Store(l.Index)
	f.indexUnknown.Store(false)
	if f.OnApply != nil {
		f.OnApply(l.Index, c, err)
	}
	if err != nil {
		return err
	}
	return nil
}

// applyTickets rotates the session-ticket keys.
func (f *FSM) applyTickets(c Command) error {
	if c.Tickets == nil {
		return invalid("ticket-keys without keys")
	}
	r, err := f.tickets.Load().Rotate(*c.Tickets)
	if err != nil {
		return err
	}
	f.setTickets(r)
	return nil
}

func (f *FSM) setTickets(r *TicketRing) {
	f.tickets.Store(r)
	if f.OnTickets != nil && r != nil {
		f.OnTickets(r.Clone())
	}
}

// Tickets returns a copy of the session-ticket key ring (nil while no
// rotation has been applied). The keys are secrets: see TicketKey.
func (f *FSM) Tickets() *TicketRing { return f.tickets.Load().Clone() }

// Snapshot implements raft.FSM: it captures the immutable table pointer
// and the index it reflects (raft calls it between applies); Persist does
// the I/O while applies continue.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	s := &fsmSnapshot{t: f.table.Load(), tickets: f.tickets.Load()}
	if !f.indexUnknown.Load() {
		idx := f.applied.Load()
		s.index = &idx
	}
	return s, nil
}

// Restore implements raft.FSM: it builds a new table and swaps it in,
// with the index recorded in the snapshot.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	snap, err := readSnapshot(rc)
	if err != nil {
		return err
	}
	t, idx := snap.table, snap.index
	f.table.Store(t)
	// A snapshot without keys (written before any rotation, or by an
	// older version) leaves none: the next rotation writes them.
	f.setTickets(snap.tickets)
	if idx != nil {
		f.applied.Store(*idx)
		f.indexUnknown.Store(false)
	} else {
		f.applied.Store(0)
		f.indexUnknown.Store(true)
	}
	return nil
}

type fsmSnapshot struct {
	t       *Table
	index   *uint64     // nil when unknown
	tickets *TicketRing // immutable once stored in the FSM
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := writeSnapshot(sink, s.t, s.index, s.tickets); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

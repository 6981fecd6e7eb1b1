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
	down    atomic.Pointer[HealthFunc]
	// OnApply, if set, is called after each applied entry (metrics).
	OnApply func(index uint64, c Command, err error)

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

// AppliedIndex returns the raft index of the last applied entry.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// SetHealth installs the function that reports down backends.
func (f *FSM) SetHealth(h HealthFunc) { f.down.Store(&h) }

// Route implements Router.
func (f *FSM) Route(req Request) (Route, error) {
	var down HealthFunc
	if h := f.down.Load(); h != nil {
		down = *h
	}
	return f.table.Load().Lookup(req, down)
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
	n, err := f.table.Load().Apply(c)
	if err == nil {
		f.table.Store(n)
	}
	f.applied.Store(l.Index)
	if f.OnApply != nil {
		f.OnApply(l.Index, c, err)
	}
	if err != nil {
		return err
	}
	return nil
}

// Snapshot implements raft.FSM: it captures the immutable table pointer;
// Persist does the I/O while applies continue.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{t: f.table.Load()}, nil
}

// Restore implements raft.FSM: it builds a new table and swaps it in.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	t, err := ReadSnapshot(rc)
	if err != nil {
		return err
	}
	f.table.Store(t)
	return nil
}

type fsmSnapshot struct{ t *Table }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := WriteSnapshot(sink, s.t); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

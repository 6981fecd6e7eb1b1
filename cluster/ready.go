package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// When is a node's routing table "caught up"?
//
// A node that restarts holds its last snapshot only: raft replays the log
// after it only once a leader has told it what is committed, and a leader
// that has not heard from it for a while retries with a backoff of up to
// about ten seconds. A node that joins fresh holds nothing until the
// leader has added it and sent it the log or a snapshot. Neither the
// node's own commit index (raft caps it at the end of the node's own log,
// which may itself be behind) nor "the FSM has nothing queued" (raft
// hands a batch to the FSM before applying it) says that it has
// everything.
//
// So a node asks the leader: "how far must I apply?" The leader runs a
// barrier (everything committed, by it or its predecessors, is then
// applied) and answers with its table's index (routing.FSM.AppliedIndex,
// the raft index of the last command the table reflects). Every node
// applies the same commands at the same indexes, so once this node's
// table index reaches the answer, it holds every change the cluster had
// committed when it asked. On the leader itself the barrier is enough.
// This is raft's read index, applied to start-up.

// ReadIndex is the leader's answer to the read-index RPC (rpc.go).
type ReadIndex struct {
	// Index is the leader's routing.FSM.AppliedIndex after a barrier.
	Index uint64 `json:"index"`
	// RaftIndex is the leader's raft applied index after the barrier.
	RaftIndex uint64 `json:"raft_index"`
	// Exact is false when the leader's table index is unknown (its table
	// came from a snapshot written by an older version, see
	// routing.FSM.IndexKnown): the node then waits for raft to have applied
	// RaftIndex and for the FSM's queue to stay empty instead.
	Exact bool `json:"exact"`
}

// LeaderReadIndex answers the read-index RPC on the leader: a barrier (which
// only a leader still holding a quorum can commit), then the indexes. It
// fails on a follower, or when the barrier does not commit within timeout.
func (n *Agent) LeaderReadIndex(timeout time.Duration) (ReadIndex, error) {
	if !n.IsLeader() {
		return ReadIndex{}, fmt.Errorf("%w: this node is not the leader", ErrNoLeader)
	}
	if err := n.Barrier(timeout); err != nil {
		return ReadIndex{}, fmt.Errorf("%w: barrier: %v", ErrNoLeader, err)
	}
	return ReadIndex{Index: n.fsm.AppliedIndex(), RaftIndex: n.raft.AppliedIndex(), Exact: n.fsm.IndexKnown()}, nil
}

// CatchUp returns once this node's routing table holds every change the
// cluster had committed when CatchUp was called (see above), or with an
// error when ctx ends or the node shuts down first. Until a leader is
// known and answers, it keeps asking.
func (n *Agent) CatchUp(ctx context.Context) error {
	const poll = 20 * time.Millisecond
	var (
		target  *ReadIndex
		lastErr error
		nextAsk time.Time
		settled int
		legacy  bool // the leader is an older version without the read-index RPC
	)
	for {
		if legacy {
			// What older versions did: the commit index this node has
			// been told, applied, with the FSM's queue empty.
			target = nil
			if commit := n.raft.CommitIndex(); commit > 0 && n.raft.Leader() != "" {
				target = &ReadIndex{RaftIndex: commit}
			}
		} else if target == nil && !time.Now().Before(nextAsk) {
			ri, err := n.readIndex(ctx, 5*time.Second)
			switch {
			case err == nil:
				target = &ri
			case errors.Is(err, errReadIndexUnsupported):
				legacy = true
				n.log.Warn("the leader does not answer read-index requests (an older version during a rolling upgrade): catching up by the commit index instead", "error", err)
				continue
			default:
				lastErr = err
				// No leader is a local check, cheap to repeat; an answer
				// that failed is not hammered.
				if !errors.Is(err, ErrNoLeader) {
					nextAsk = time.Now().Add(250 * time.Millisecond)
				}
			}
		}
		if target != nil && n.reached(*target, &settled) {
			return nil
		}
		select {
		case <-ctx.Done():
			if target == nil && lastErr != nil {
				return fmt.Errorf("%w (asking the leader how far to apply: %v)", ctx.Err(), lastErr)
			}
			return fmt.Errorf("%w (applied %d of %d)", ctx.Err(), n.fsm.AppliedIndex(), targetIndex(target))
		case <-n.stop:
			return errors.New("cluster: shutting down")
		case <-time.After(poll):
		}
	}
}

func targetIndex(t *ReadIndex) uint64 {
	if t == nil {
		return 0
	}
	return t.Index
}

// reached reports whether this node has applied up to t. With exact
// indexes on both sides it compares table indexes. Otherwise (a table
// restored from a snapshot of an older version, here or on the leader) it
// falls back to raft's applied index and the FSM's queue staying empty
// over two polls.
func (n *Agent) reached(t ReadIndex, settled *int) bool {
	if t.Exact && n.fsm.IndexKnown() {
		return n.fsm.AppliedIndex() >= t.Index
	}
	if n.raft.AppliedIndex() < t.RaftIndex || n.raft.Stats()["fsm_pending"] != "0" {
		*settled = 0
		return false
	}
	*settled++
	return *settled >= 2
}

// readIndex asks the leader (or, on the leader, runs the barrier).
func (n *Agent) readIndex(ctx context.Context, timeout time.Duration) (ReadIndex, error) {
	if n.IsLeader() {
		return n.LeaderReadIndex(timeout)
	}
	addr, id := n.raft.LeaderWithID()
	if addr == "" {
		return ReadIndex{}, ErrNoLeader
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+2*time.Second)
	defer cancel()
	var ri ReadIndex
	status, err := n.call(ctx, string(id), string(addr), rpcReadIndex, nil, &ri)
	switch {
	case err != nil:
		return ReadIndex{}, fmt.Errorf("leader %s: %w", id, err)
	case status == http.StatusNotFound || status == http.StatusMethodNotAllowed:
		return ReadIndex{}, fmt.Errorf("leader %s: HTTP %d: %w", id, status, errReadIndexUnsupported)
	case status != http.StatusOK:
		return ReadIndex{}, fmt.Errorf("%w: leader %s answered HTTP %d", ErrNoLeader, id, status)
	}
	return ri, nil
}

// errReadIndexUnsupported: the leader has no read-index RPC (an older
// version).
var errReadIndexUnsupported = errors.New("no read-index endpoint")

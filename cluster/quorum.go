package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// electionWait is how long a cluster may go without a leader before it is
// more than an election (the same bound ApplyRaw waits for a leader).
func (n *Agent) electionWait() time.Duration {
	return max(3*time.Second, 4*(n.cfg.Timing.HeartbeatTimeout+n.cfg.Timing.ElectionTimeout))
}

// whileNoLeader runs attempt, and again while it fails with ErrNoLeader
// (leadership is moving), waiting 50 ms more before each retry, for up to
// an election wait: longer than that without a leader means there is no
// quorum, and the caller should hear so now rather than at its own
// deadline. It returns attempt's first other result, or ErrNoLeader
// saying how long it waited or why it stopped (ctx). attempt must be
// safe to repeat after an unknown outcome.
func (n *Agent) whileNoLeader(ctx context.Context, attempt func() error) error {
	wait := n.electionWait()
	start := time.Now()
	for i := 0; ; i++ {
		err := attempt()
		if !errors.Is(err, ErrNoLeader) {
			return err
		}
		if time.Since(start) > wait {
			return fmt.Errorf("%w (none for %v)", ErrNoLeader, wait)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%v)", ErrNoLeader, ctx.Err())
		case <-time.After(time.Duration(50*(i+1)) * time.Millisecond):
		}
	}
}

// QuorumError says, for readiness, whether this node is cut off from the
// cluster: nil in a cluster of one server (nothing to lose), on the leader
// (a leader that cannot reach a majority steps down within its lease), and
// on a node that has a leader or heard from one within electionWait (so
// that an ordinary election does not make every node unready at once);
// otherwise why not.
func (n *Agent) QuorumError() error {
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil || len(cf.Configuration().Servers) <= 1 {
		return nil
	}
	if n.raft.State() == raft.Leader {
		return nil
	}
	if addr, _ := n.raft.LeaderWithID(); addr != "" {
		return nil
	}
	last := n.raft.LastContact()
	if last.IsZero() {
		return errors.New("no raft leader heard from since this node started")
	}
	d := time.Since(last)
	if d < n.electionWait() {
		return nil
	}
	return fmt.Errorf("no raft leader for %v: this node cannot reach a quorum of the cluster", d.Round(100*time.Millisecond))
}

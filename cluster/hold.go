package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Holding elections: during the in-place upgrade of the leader, the
// leader's process restarts under the same raft identity and wins the next
// election itself, so that leadership (and the VIP that follows it) stays
// on the node. For that, the other voters must not campaign while the
// leader is briefly absent: each raises its raft heartbeat and election
// timeouts to the hold duration, and restores them when the leader is
// back (ReleaseElections) or when the hold ends, whichever comes first.
// A voter that still knows the old leader also refuses to vote for anyone
// else (raft's leader stickiness), but the restarted leader's own address
// is the old leader's, so it collects the votes.

type electionHold struct {
	mu    sync.Mutex
	timer *time.Timer
}

// HoldElections makes this node wait d for a leader before campaigning,
// for d at most.
func (n *Agent) HoldElections(d time.Duration) error {
	if d <= 0 {
		return n.ReleaseElections()
	}
	n.hold.mu.Lock()
	defer n.hold.mu.Unlock()
	rc := n.raft.ReloadableConfig()
	rc.HeartbeatTimeout, rc.ElectionTimeout = d, d
	if err := n.raft.ReloadConfig(rc); err != nil {
		return err
	}
	if n.hold.timer != nil {
		n.hold.timer.Stop()
	}
	n.hold.timer = time.AfterFunc(d, func() { _ = n.ReleaseElections() })
	n.log.Info("holding raft elections (the leader is restarting in place)", "for", d)
	return nil
}

// ReleaseElections restores the configured timeouts.
func (n *Agent) ReleaseElections() error {
	n.hold.mu.Lock()
	defer n.hold.mu.Unlock()
	if n.hold.timer == nil {
		return nil
	}
	n.hold.timer.Stop()
	n.hold.timer = nil
	rc := n.raft.ReloadableConfig()
	rc.HeartbeatTimeout, rc.ElectionTimeout = n.cfg.Timing.HeartbeatTimeout, n.cfg.Timing.ElectionTimeout
	n.log.Info("raft elections no longer held")
	return n.raft.ReloadConfig(rc)
}

// peerVoters returns the cluster address of every other voter (from
// raft's configuration).
func (n *Agent) peerVoters() (map[string]string, error) {
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, s := range cf.Configuration().Servers {
		if s.Suffrage != raft.Voter || s.ID == raft.ServerID(n.cfg.NodeName) {
			continue
		}
		out[string(s.ID)] = string(s.Address)
	}
	return out, nil
}

// HoldPeerElections asks every other voter to hold elections for d. It
// succeeds only if all of them did; otherwise it releases those that did
// and returns the error (then leadership must move instead).
func (n *Agent) HoldPeerElections(ctx context.Context, d time.Duration) error {
	peers, err := n.peerVoters()
	if err != nil {
		return err
	}
	var held []string
	for name, addr := range peers {
		if err := n.postHold(ctx, name, addr, d); err != nil {
			for _, h := range held {
				_ = n.postHold(ctx, h, peers[h], 0)
			}
			return fmt.Errorf("voter %s: %w", name, err)
		}
		held = append(held, name)
	}
	return nil
}

// ReleasePeerElections asks every other voter to end a hold (best effort:
// a hold also ends by itself).
func (n *Agent) ReleasePeerElections(ctx context.Context) {
	peers, err := n.peerVoters()
	if err != nil {
		n.log.Warn("releasing held elections", "error", err)
		return
	}
	for name, addr := range peers {
		if err := n.postHold(ctx, name, addr, 0); err != nil {
			n.log.Warn("releasing held elections", "voter", name, "error", err)
		}
	}
}

func (n *Agent) postHold(ctx context.Context, name, addr string, d time.Duration) error {
	body, _ := json.Marshal(map[string]int64{"ms": d.Milliseconds()})
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var res ApplyResult
	status, err := n.call(ctx, name, addr, rpcHold, body, &res)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("HTTP %d: %s", status, res.Error)
	}
	return nil
}

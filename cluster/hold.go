package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
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

// HoldPath is the admin API endpoint that holds (ms > 0) or releases
// (ms = 0) this node's elections; body {"ms": N}.
const HoldPath = "/v1/internal/hold-elections"

type electionHold struct {
	mu    sync.Mutex
	timer *time.Timer
}

// HoldElections makes this node wait d for a leader before campaigning,
// for d at most.
func (n *Node) HoldElections(d time.Duration) error {
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
func (n *Node) ReleaseElections() error {
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

// peerVoterAPIs returns the admin API address of every other voter, or an
// error if one is unknown (not a live member with an API address).
func (n *Node) peerVoterAPIs() (map[string]string, error) {
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, err
	}
	apis := map[string]string{}
	for _, m := range n.Members() {
		if m.State == "alive" && m.API != "" {
			apis[m.Name] = m.API
		}
	}
	out := map[string]string{}
	for _, s := range cf.Configuration().Servers {
		if s.Suffrage != raft.Voter || s.ID == raft.ServerID(n.cfg.NodeName) {
			continue
		}
		api := apis[string(s.ID)]
		if api == "" {
			return nil, fmt.Errorf("voter %s is not a live member with an admin API", s.ID)
		}
		out[string(s.ID)] = api
	}
	return out, nil
}

// HoldPeerElections asks every other voter to hold elections for d. It
// succeeds only if all of them did; otherwise it releases those that did
// and returns the error (then leadership must move instead).
func (n *Node) HoldPeerElections(ctx context.Context, d time.Duration) error {
	apis, err := n.peerVoterAPIs()
	if err != nil {
		return err
	}
	var held []string
	for name, api := range apis {
		if err := n.postHold(ctx, api, d); err != nil {
			for _, h := range held {
				_ = n.postHold(ctx, apis[h], 0)
			}
			return fmt.Errorf("voter %s: %w", name, err)
		}
		held = append(held, name)
	}
	return nil
}

// ReleasePeerElections asks every other voter to end a hold (best effort:
// a hold also ends by itself).
func (n *Node) ReleasePeerElections(ctx context.Context) {
	apis, err := n.peerVoterAPIs()
	if err != nil {
		n.log.Warn("releasing held elections", "error", err)
		return
	}
	for name, api := range apis {
		if err := n.postHold(ctx, api, 0); err != nil {
			n.log.Warn("releasing held elections", "voter", name, "error", err)
		}
	}
}

func (n *Node) postHold(ctx context.Context, api string, d time.Duration) error {
	url := api
	if !strings.Contains(url, "://") {
		url = "http://" + url
	}
	body, _ := json.Marshal(map[string]int64{"ms": d.Milliseconds()})
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+HoldPath, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if n.cfg.APIToken != "" {
		req.Header.Set("Authorization", "Bearer "+n.cfg.APIToken)
	}
	resp, err := n.client.http.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return nil
}

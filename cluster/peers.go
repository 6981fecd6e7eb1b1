package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/raft"

	"github.com/portico-mail/portico/routing"
)

// rpcRemovePeer asks the leader to remove a raft peer: body {"name": N}.
const rpcRemovePeer = "/v1/remove-peer"

// RemovePeer removes a dead node from raft's configuration at once,
// rather than after cluster.dead_node_reap (Consul's `operator raft
// remove-peer`): for a node that is gone for good, so that it stops
// counting toward the quorum. A node that the cluster sees alive is
// refused (stop it first; a live node would be added back as a voter).
// On a follower the call is passed to the leader, which decides by its
// own view of the members.
func (n *Agent) RemovePeer(ctx context.Context, name string) error {
	if name == "" {
		return fmt.Errorf("%w: no node named", routing.ErrInvalid)
	}
	// Retried while leadership moves, as writes are (removing a server
	// that is already gone is refused as "not a raft peer", so a retry
	// after an unknown outcome says so rather than doing it twice).
	return n.whileNoLeader(ctx, func() error { return n.removePeerOnce(ctx, name) })
}

func (n *Agent) removePeerOnce(ctx context.Context, name string) error {
	if name == n.Name() || n.Alive(name) {
		return fmt.Errorf("%w: %s is an alive member of the cluster: stop it, or let it leave, before removing it", routing.ErrConflict, name)
	}
	if !n.IsLeader() {
		addr, id := n.raft.LeaderWithID()
		if addr == "" {
			return ErrNoLeader
		}
		body, _ := json.Marshal(map[string]string{"name": name})
		var res ApplyResult
		status, err := n.call(ctx, string(id), string(addr), rpcRemovePeer, body, &res)
		if err != nil {
			return fmt.Errorf("%w: calling the leader %s: %v", ErrNoLeader, id, err)
		}
		if status != http.StatusOK {
			return ResultError(res, status)
		}
		return nil
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	found := false
	for _, s := range cf.Configuration().Servers {
		found = found || s.ID == raft.ServerID(name)
	}
	if !found {
		return fmt.Errorf("%w: %s is not a raft peer", routing.ErrInvalid, name)
	}
	timeout := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	if err := n.raft.RemoveServer(raft.ServerID(name), 0, timeout).Error(); err != nil {
		if err == raft.ErrNotLeader || err == raft.ErrLeadershipLost {
			return fmt.Errorf("%w: %v", ErrNoLeader, err)
		}
		return err
	}
	n.mu.Lock()
	delete(n.deadSince, name)
	n.mu.Unlock()
	n.log.Info("removed member from raft on request", "member", name)
	return nil
}

// handleRemovePeer serves rpcRemovePeer on the leader.
func (n *Agent) handleRemovePeer(w http.ResponseWriter, r *http.Request) {
	b, ok := readBody(w, r)
	if !ok {
		return
	}
	var body struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		writeJSON(w, http.StatusBadRequest, ApplyResult{Error: "body must be {\"name\": NODE}", Kind: "invalid"})
		return
	}
	if !n.IsLeader() {
		writeJSON(w, http.StatusServiceUnavailable, ApplyResult{Error: "not the leader", Kind: "no_leader"})
		return
	}
	if err := n.removePeerOnce(r.Context(), body.Name); err != nil {
		writeJSON(w, StatusOf(err), ApplyResult{Error: err.Error(), Kind: ErrorKind(err)})
		return
	}
	writeJSON(w, http.StatusOK, ApplyResult{})
}

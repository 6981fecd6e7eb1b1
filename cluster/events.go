package cluster

import "github.com/hashicorp/raft"

// OnMemberJoin registers f to be called with the name of another member
// each time it comes back: it joins the gossip, or rejoins it after having
// been declared dead; or, while this node leads, it answers raft
// heartbeats again after failing to (a partition shorter than gossip's
// failure detection, which never declared it dead). f must not block and
// must not call into the cluster (it may run inside memberlist's
// callback).
func (n *Agent) OnMemberJoin(f func(name string)) {
	n.del.joinMu.Lock()
	first := len(n.del.onJoin) == 0
	n.del.onJoin = append(n.del.onJoin, f)
	n.del.joinMu.Unlock()
	if first {
		n.watchHeartbeats()
	}
}

// peerBack runs the OnMemberJoin hooks.
func (d *delegate) peerBack(name string) {
	if name == d.n.cfg.NodeName {
		return
	}
	d.joinMu.Lock()
	hooks := append([]func(string){}, d.onJoin...)
	d.joinMu.Unlock()
	for _, f := range hooks {
		f(name)
	}
}

// watchHeartbeats reports raft's "heartbeats to a follower resumed"
// (emitted on the leader only) as a peer coming back.
func (n *Agent) watchHeartbeats() {
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.ResumedHeartbeatObservation)
		return ok
	})
	n.raft.RegisterObserver(obs)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer n.raft.DeregisterObserver(obs)
		for {
			select {
			case <-n.stop:
				return
			case o := <-ch:
				if r, ok := o.Data.(raft.ResumedHeartbeatObservation); ok {
					n.log.Info("raft heartbeats to a member resumed", "member", r.PeerID)
					n.del.peerBack(string(r.PeerID))
				}
			}
		}
	}()
}

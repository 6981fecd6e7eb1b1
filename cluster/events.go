package cluster

import (
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
)

// OnMemberJoin registers f to be called with the name of another member
// each time it comes back: it joins the gossip, or rejoins it after having
// been declared dead; it answers this node's gossip probes again after
// leaving them unanswered for a while; or, while this node leads, it
// answers raft heartbeats again after failing to. The last two cover a
// partition shorter than gossip's failure detection, which never declared
// the member dead: a partition that drops packets makes a heartbeat wait
// (the raft transport's I/O timeout is 10 s) rather than fail, so raft
// sees no failure to recover from either. f must not block and must not
// call into the cluster (it may run inside memberlist's callback).
func (n *Agent) OnMemberJoin(f func(name string)) {
	n.del.joinMu.Lock()
	first := len(n.del.onJoin) == 0
	n.del.onJoin = append(n.del.onJoin, f)
	n.del.joinMu.Unlock()
	if first {
		n.watchHeartbeats()
	}
}

// silentProbes is how many of its turns to be probed a member may leave
// unanswered before an answer counts as its return.
const silentProbes = 4

// AckPayload implements memberlist.PingDelegate: nothing is sent with an
// ack.
func (d *delegate) AckPayload() []byte { return nil }

// NotifyPingComplete implements memberlist.PingDelegate; it is called when
// a direct probe of other is answered.
func (d *delegate) NotifyPingComplete(other *memberlist.Node, _ time.Duration, _ []byte) {
	d.probeAnswered(other.Name, time.Now())
}

// probeAnswered records an answered probe of name at now and reports the
// member back when its previous answer is older than silentProbes of its
// turns: memberlist probes one member per probe interval, each in turn.
func (d *delegate) probeAnswered(name string, now time.Time) {
	peers := max(d.n.numMembers()-1, 1)
	silent := time.Duration(silentProbes*peers) * d.n.cfg.Timing.ProbeInterval
	d.ackMu.Lock()
	last, seen := d.lastAck[name]
	d.lastAck[name] = now
	if len(d.lastAck) > 4096 { // names of members: bounded like the member table
		for k, t := range d.lastAck {
			if now.Sub(t) > time.Hour {
				delete(d.lastAck, k)
			}
		}
	}
	d.ackMu.Unlock()
	if seen && now.Sub(last) > silent {
		d.n.log.Info("member answers gossip probes again", "member", name, "silent", now.Sub(last).Round(time.Millisecond))
		d.peerBack(name)
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

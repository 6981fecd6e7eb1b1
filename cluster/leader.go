package cluster

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
)

// OnLeadership registers f to be called (from one goroutine, in order)
// with true after this node became leader and applied everything committed
// before (a barrier), and with false when it stops being leader. The VIP
// follows leadership through this hook. f must not block.
func (n *Agent) OnLeadership(f func(leader bool)) {
	n.hooksMu.Lock()
	n.onLeader = append(n.onLeader, f)
	n.hooksMu.Unlock()
}

// RunWhileLeader registers f to run for each term this node leads (Consul's
// leaderLoop): f starts in its own goroutine once the node leads and has
// applied everything committed before (after the OnLeadership hooks), and
// its context ends when the node stops leading or the agent stops; the
// next term starts only after f returned. Register before Start.
func (n *Agent) RunWhileLeader(f func(ctx context.Context)) {
	n.hooksMu.Lock()
	n.termFns = append(n.termFns, f)
	n.hooksMu.Unlock()
}

func (n *Agent) notifyLeadership(leader bool) {
	n.hooksMu.Lock()
	hooks := append([]func(bool){}, n.onLeader...)
	n.hooksMu.Unlock()
	for _, f := range hooks {
		f(leader)
	}
}

// term is the work of one term as leader: the RunWhileLeader functions.
type term struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (n *Agent) startTerm() *term {
	ctx, cancel := context.WithCancel(context.Background())
	t := &term{cancel: cancel}
	n.hooksMu.Lock()
	fns := append([]func(context.Context){n.reconcileLoop}, n.termFns...)
	n.hooksMu.Unlock()
	for _, f := range fns {
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			f(ctx)
		}()
	}
	return t
}

// poke asks the leader's reconcile loop to reconcile membership soon
// (non-blocking).
func (n *Agent) poke() {
	select {
	case n.pokeCh <- struct{}{}:
	default:
	}
}

// leaderLoop follows raft's reliable leadership notifications: on gaining
// leadership it runs a barrier, tells the OnLeadership hooks and starts the
// term's work (reconciling raft's configuration with memberlist, and the
// RunWhileLeader functions); on losing it, it tells the hooks first (the
// VIP is released at once), then ends the term's work and waits for it.
func (n *Agent) leaderLoop() {
	defer n.wg.Done()
	var cur *term
	end := func() {
		cur.cancel()
		n.notifyLeadership(false)
		cur.wg.Wait()
		cur = nil
	}
	for {
		select {
		case <-n.stop:
			if cur != nil {
				end()
			}
			return
		case isLeader := <-n.leaderCh:
			switch {
			case isLeader && cur == nil:
				// Apply everything the previous leader committed before
				// acting as leader.
				if err := n.raft.Barrier(10 * time.Second).Error(); err != nil {
					n.log.Warn("barrier after election failed; not acting as leader yet", "error", err)
					continue
				}
				n.log.Info("became raft leader", "term", n.raft.CurrentTerm())
				n.notifyLeadership(true)
				cur = n.startTerm()
			case !isLeader && cur != nil:
				n.log.Info("lost raft leadership")
				end()
			}
		}
	}
}

// reconcileLoop reconciles membership while this node leads: at once,
// every second, and when membership changes (poke).
func (n *Agent) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		n.reconcile()
		select {
		case <-ctx.Done():
			return
		case <-n.pokeCh:
		case <-t.C:
		}
	}
}

// reconcile makes raft's configuration follow memberlist: alive members
// join as voters up to MaxVoters (the rest as non-voters), members gone
// (dead or left) for longer than DeadNodeReap are removed.
func (n *Agent) reconcile() {
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	servers := cf.Configuration().Servers
	inRaft := map[raft.ServerID]raft.Server{}
	voters := 0
	for _, s := range servers {
		inRaft[s.ID] = s
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	self := raft.ServerID(n.cfg.NodeName)
	alive := map[raft.ServerID]bool{}
	for _, m := range n.del.snapshot() {
		if m.state != memberlist.StateAlive {
			continue
		}
		id := raft.ServerID(m.name)
		alive[id] = true
		meta, verified := n.memberMeta(m.name, m.meta)
		if !verified || meta.Raft == "" {
			continue
		}
		addr := raft.ServerAddress(meta.Raft)
		s, ok := inRaft[id]
		// A server joins raft's configuration only once its certificate
		// was verified at the address it claims: a member that holds the
		// gossip key but no node certificate is never made a voter.
		if !(ok && s.Address == addr) && m.name != n.cfg.NodeName && !n.peers.verifiedAt(m.name, meta.Raft) {
			continue
		}
		switch {
		case ok && s.Address == addr:
			// Promote a non-voter when there is room.
			if s.Suffrage == raft.Nonvoter && voters < n.cfg.MaxVoters {
				if err := n.raft.AddVoter(id, addr, 0, 5*time.Second).Error(); err == nil {
					voters++
					n.log.Info("promoted member to voter", "member", m.name)
				}
			}
		case voters < n.cfg.MaxVoters:
			if err := n.raft.AddVoter(id, addr, 0, 5*time.Second).Error(); err != nil {
				n.log.Warn("adding voter failed", "member", m.name, "error", err)
			} else {
				voters++
				n.log.Info("added member as voter", "member", m.name, "raft", addr)
			}
		default:
			if err := n.raft.AddNonvoter(id, addr, 0, 5*time.Second).Error(); err != nil {
				n.log.Warn("adding non-voter failed", "member", m.name, "error", err)
			} else {
				n.log.Info("added member as non-voter", "member", m.name)
			}
		}
	}
	n.mu.Lock()
	var remove []raft.ServerID
	for id := range inRaft {
		if id == self || alive[id] {
			continue
		}
		name := string(id)
		if since, ok := n.deadSince[name]; ok && time.Since(since) > n.cfg.DeadNodeReap {
			remove = append(remove, id)
		}
	}
	n.mu.Unlock()
	for _, id := range remove {
		if err := n.raft.RemoveServer(id, 0, 5*time.Second).Error(); err != nil {
			n.log.Warn("removing server failed", "member", id, "error", err)
			continue
		}
		n.mu.Lock()
		delete(n.deadSince, string(id))
		n.mu.Unlock()
		n.log.Info("removed member from raft", "member", id)
		n.poke() // a voter slot may have freed: promote a non-voter now, not at the next tick
	}
}

// Peer is a raft server in the current configuration.
type Peer struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	Suffrage string `json:"suffrage"` // voter, nonvoter
	Leader   bool   `json:"leader"`
}

// Peers returns raft's configuration.
func (n *Agent) Peers() ([]Peer, error) {
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, err
	}
	_, leaderID := n.raft.LeaderWithID()
	var out []Peer
	for _, s := range cf.Configuration().Servers {
		sf := "voter"
		if s.Suffrage == raft.Nonvoter {
			sf = "nonvoter"
		}
		out = append(out, Peer{ID: string(s.ID), Address: string(s.Address), Suffrage: sf, Leader: s.ID == leaderID})
	}
	return out, nil
}

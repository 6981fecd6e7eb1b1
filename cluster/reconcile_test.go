package cluster

import (
	"fmt"
	"testing"
	"time"
)

// A member that joins with a certificate of the cluster CA is made a
// voter by the leader; one that holds the gossip key but a certificate of
// another CA is seen by memberlist and never made a raft server.
func TestReconcileAddsVerifiedMembers(t *testing.T) {
	c := newTestCluster(t)
	n1 := c.add("n1")
	c.leader()
	c.add("n2")
	l := c.waitVoters([]string{"n1", "n2"}, nil)
	if l != n1 {
		t.Fatalf("leader %s", l.Name())
	}

	rogue := newTestCA(t)
	n3 := c.add("n3", func(cfg *Config) { cfg.TLS = rogue.material(t, "n3") })
	waitFor(t, unitWait, "the leader to see n3 alive in memberlist", func() bool {
		for _, m := range n1.Members() {
			if m.Name == "n3" && m.State == "alive" {
				return true
			}
		}
		return false
	})
	// A reconcile with n3 alive in memberlist, run here rather than
	// waited for: n3 is not added.
	n1.reconcile()
	if v, nv, err := suffrages(n1.Agent); err != nil || fmt.Sprint(v, nv) != "[n1 n2] []" {
		t.Fatalf("configuration %v %v, %v", v, nv, err)
	}
	if n1.peers.verifiedAddr("n3") != "" {
		t.Fatal("a certificate of another CA verified")
	}
	if n3.raft.LastIndex() != 0 {
		t.Fatal("n3 received raft's log")
	}
}

// Voters up to max_voters, the rest non-voters; a voter that leaves is
// removed once gone for dead_node_reap, and a non-voter is promoted into
// its slot.
func TestReconcileMaxVotersAndPromotion(t *testing.T) {
	c := newTestCluster(t)
	opts := func(cfg *Config) { cfg.MaxVoters = 3; cfg.DeadNodeReap = time.Nanosecond }
	c.add("n1", opts)
	c.leader()
	for _, name := range []string{"n2", "n3"} {
		c.add(name, opts)
	}
	c.waitVoters([]string{"n1", "n2", "n3"}, nil)
	c.add("n4", opts)
	l := c.waitVoters([]string{"n1", "n2", "n3"}, []string{"n4"})

	// A voter other than the leader leaves gracefully.
	var gone *unitNode
	for _, n := range c.running() {
		if n != l && n.Name() != "n4" {
			gone = n
			break
		}
	}
	if err := gone.Shutdown(); err != nil {
		t.Fatal(err)
	}
	c.forget(gone)
	var voters []string
	for _, name := range []string{"n1", "n2", "n3", "n4"} {
		if name != gone.Name() {
			voters = append(voters, name)
		}
	}
	c.waitVoters(voters, nil)
}

// A member that fails (no goodbye: memberlist declares it dead) or leaves
// stays a voter until it has been gone for dead_node_reap, so a node
// restarted for an upgrade comes back as the same voter; then the leader
// removes it.
func TestReapAfterDeadNodeReap(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reap  time.Duration
		crash bool
	}{
		{"crash-reaped", time.Nanosecond, true},
		{"leave-reaped", time.Nanosecond, false},
		{"crash-kept", time.Hour, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // most of the time is memberlist's failure detection
			c := newTestCluster(t)
			opts := func(cfg *Config) { cfg.DeadNodeReap = tc.reap }
			c.add("n1", opts)
			c.leader()
			c.add("n2", opts)
			c.add("n3", opts)
			l := c.waitVoters(nodeNames(3), nil)
			var gone *unitNode
			for _, n := range c.running() {
				if n != l {
					gone = n
					break
				}
			}
			var rest []string
			for _, n := range c.running() {
				if n != gone {
					rest = append(rest, n.Name())
				}
			}
			if tc.crash {
				c.crash(gone)
			} else {
				if err := gone.Shutdown(); err != nil {
					t.Fatal(err)
				}
				c.forget(gone)
			}
			if tc.reap < time.Minute {
				c.waitVoters(rest, nil)
				return
			}
			// Gone for less than dead_node_reap: memberlist has declared
			// it dead, a reconcile runs, and it is still a voter.
			waitFor(t, unitWait, "the leader to see "+gone.Name()+" gone", func() bool {
				l = c.leader()
				l.mu.Lock()
				defer l.mu.Unlock()
				_, ok := l.deadSince[gone.Name()]
				return ok
			})
			l.reconcile()
			if v, nv, err := suffrages(l.Agent); err != nil || fmt.Sprint(v, nv) != "[n1 n2 n3] []" {
				t.Fatalf("configuration %v %v, %v: a member gone for less than dead_node_reap was removed", v, nv, err)
			}
		})
	}
}

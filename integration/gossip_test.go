package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/loopback"
)

// gossipBound is how long a broadcast may take to reach every node here:
// well under memberlist's push/pull (15 s, with one random member), the
// only other way a node's throttle counters reach a peer, so a node
// reached in time was reached by the broadcast (sent directly, or one of
// its three queued copies), on a loaded two-core machine too.
const gossipBound = 5 * time.Second

// Six real portico processes share the throttle's failure counters, which
// ride on cluster.Agent.Broadcast (sent directly to every alive member as
// well as queued for gossip). memberlist's queue alone spends a message
// in three packets (3 x ceil(log10(7))) to whichever peers its next
// packets go to: with five peers some always went without until a
// push/pull. Each node in turn sees a failed login; every node counts it
// within gossipBound, and no direct send failed. Then a node is killed:
// the failures the survivors see still reach every survivor in time,
// while the dead node is still alive to them; the packets they send it
// directly are written and lost, so the counter (which counts only
// packets a node could not write) stays 0. With the direct sends taken out of Broadcast (queue
// only), the first failure had reached 4 of the 6 nodes after 5 s.
func TestGossipBroadcastSixNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	awayFromWindowEdge(t, 24*time.Hour, 2*time.Minute)
	dc := dovecot.Start(t, dovecot.Options{Addr: loopback.Addr(t).String(), Users: throttleUsers})
	// n1 bootstraps, the others join it (three voters); no limit is
	// reached: the counters only have to travel.
	nodes := newClusterWith(t, 6, 1, "1h", 3, dc, `routes: {default_pool: main}
throttle:
  window: 24h
  trusted_networks: []
  delay: 10ms
  max_delay: 20ms
  ip_limit: 1000
  user_ip_limit: 1000
`)
	for _, nd := range nodes {
		nd.start()
	}
	waitSeeded(t, nodes)
	waitFor(t, "every node alive and verified on every node", 20*time.Second, func() bool {
		for _, nd := range nodes {
			if len(membersOf(nd)) != len(nodes) {
				return false
			}
		}
		return true
	})
	attacker := loopback.Addr(t).String()
	failures := 0
	// fail makes a login through nd fail (a user of its own), and waits
	// until every node in among counts every failure so far.
	fail := func(nd *procNode, among []*procNode) time.Duration {
		t.Helper()
		failures++
		user := fmt.Sprintf("ghost%d-%s", failures, nd.name)
		if r := imapLogin(t, attacker, nd.imap, user, "guess"); !strings.Contains(r, "NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("%s: failed login of %s: %q", nd.name, user, r)
		}
		at := time.Now()
		for {
			var counts []string
			behind := false
			for _, o := range among {
				n := int(metricValue(t, o, `portico_throttle_entries{scope="user"}`))
				counts = append(counts, fmt.Sprintf("%s %d", o.name, n))
				behind = behind || n != failures
			}
			if !behind {
				return time.Since(at)
			}
			if time.Since(at) > gossipBound {
				t.Fatalf("failure %d (on %s) not counted by every node within %v (want %d each): %s", failures, nd.name, gossipBound, failures, strings.Join(counts, ", "))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	directFailed := func(among []*procNode) (total int, each []string) {
		for _, o := range among {
			v := int(metricValue(t, o, "portico_cluster_gossip_direct_failed_total"))
			if v < 0 {
				t.Fatalf("%s: no portico_cluster_gossip_direct_failed_total", o.name)
			}
			total += v
			each = append(each, fmt.Sprintf("%s %d", o.name, v))
		}
		return total, each
	}

	var took []string
	for _, nd := range nodes {
		took = append(took, fmt.Sprintf("%s %v", nd.name, fail(nd, nodes).Round(time.Millisecond)))
	}
	t.Logf("all %d up: each node's failure counted by every node after %s", len(nodes), strings.Join(took, ", "))
	if n, each := directFailed(nodes); n != 0 {
		t.Errorf("direct gossip sends failed with every node up: %s", strings.Join(each, ", "))
	}

	// A node that is not the leader dies (the others keep their quorum
	// and answer logins).
	leader := leaderOf(nodes)
	var dead *procNode
	var live []*procNode
	for _, nd := range nodes {
		if dead == nil && nd.name != leader {
			dead = nd
			continue
		}
		live = append(live, nd)
	}
	dead.kill()
	killed := time.Now()
	took = took[:0]
	// Whether each survivor still had the dead node alive when it
	// broadcast its failure, i.e. sent it a packet too: /v1/status shows
	// the member table Broadcast sends by, which memberlist's events keep
	// (alive until the node is declared dead; suspicion is not an event).
	var sentToDead []string
	for _, nd := range live {
		if memberStates(nd)[dead.name] == "alive" {
			sentToDead = append(sentToDead, nd.name)
		}
		took = append(took, fmt.Sprintf("%s %v", nd.name, fail(nd, live).Round(time.Millisecond)))
	}
	t.Logf("%s killed: each survivor's failure counted by every survivor after %s (%v after the kill); sent to %s directly as well by %v",
		dead.name, strings.Join(took, ", "), time.Since(killed).Round(time.Millisecond), dead.name, sentToDead)
	if len(sentToDead) == 0 {
		t.Fatalf("no survivor broadcast while %s was still a member: the direct sends to a dead node were not exercised", dead.name)
	}
	// Those packets were written: UDP has nobody to refuse them (the
	// kernel's port-unreachable answer does not reach memberlist's
	// unconnected socket), so the counter, which counts writes that
	// failed here (a local firewall, no route), stays 0; what went to the
	// dead node is lost, as it must be.
	if n, each := directFailed(live); n != 0 {
		t.Errorf("direct gossip sends failed with one node dead (want none: a packet to a dead node is written and lost): %s", strings.Join(each, ", "))
	}
}

// membersOf lists the members nd sees alive and verified (itself
// included).
func membersOf(nd *procNode) (alive []string) {
	for name, st := range memberStates(nd) {
		if st == "alive" {
			alive = append(alive, name)
		}
	}
	return alive
}

// memberStates maps each member nd knows to its state (alive, suspect,
// dead, left); a member other than nd whose metadata is not verified yet
// is "unverified".
func memberStates(nd *procNode) map[string]string {
	code, b, err := nd.api("GET", "/v1/status", nil)
	if err != nil || code != 200 {
		return nil
	}
	var st struct {
		Node    string `json:"node"`
		Cluster *struct {
			Members []struct {
				Name     string `json:"name"`
				State    string `json:"state"`
				Verified bool   `json:"verified"`
			} `json:"members"`
		} `json:"cluster"`
	}
	if json.Unmarshal(b, &st) != nil || st.Cluster == nil {
		return nil
	}
	out := map[string]string{}
	for _, m := range st.Cluster.Members {
		out[m.Name] = m.State
		if !m.Verified && m.Name != st.Node {
			out[m.Name] = "unverified"
		}
	}
	return out
}

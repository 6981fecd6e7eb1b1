package daemon

import "github.com/prometheus/client_golang/prometheus"

// clusterCollector exposes raft, membership and backend health, read at
// scrape time (no per-event bookkeeping on the hot path).
type clusterCollector struct {
	d *Daemon

	state, term, commit, applied, lastApply, members, score, backendUp, changes, tlsRefused, gossipDropped, directFailed *prometheus.Desc
}

func (d *Daemon) registerClusterMetrics() {
	c := &clusterCollector{d: d,
		state:     prometheus.NewDesc("portico_raft_state", "1 for this node's current raft state.", []string{"state"}, nil),
		term:      prometheus.NewDesc("portico_raft_term", "Current raft term.", nil, nil),
		commit:    prometheus.NewDesc("portico_raft_commit_index", "Highest raft log index known to be committed.", nil, nil),
		applied:   prometheus.NewDesc("portico_raft_applied_index", "Highest raft log index applied to the routing table on this node.", nil, nil),
		lastApply: prometheus.NewDesc("portico_routing_last_apply_index", "Raft index of the last change applied to the routing table.", nil, nil),
		members:   prometheus.NewDesc("portico_cluster_members", "Cluster members by gossip state, as seen by this node.", []string{"state"}, nil),
		score:     prometheus.NewDesc("portico_cluster_health_score", "memberlist awareness score of this node (0 is healthy).", nil, nil),
		backendUp: prometheus.NewDesc("portico_backend_up", "1 if the cluster considers the backend up, 0 if down.", []string{"backend"}, nil),
		changes:   prometheus.NewDesc("portico_raft_leader_changes_total", "Leader changes observed by this node.", nil, nil),
		tlsRefused: prometheus.NewDesc("portico_cluster_tls_refused_total",
			"Connections to the cluster port (raft_address) refused in the TLS handshake: no certificate of the cluster CA, no cluster protocol, or too many handshakes at once.", nil, nil),
		gossipDropped: prometheus.NewDesc("portico_cluster_gossip_dropped_total",
			"Gossip messages dropped: malformed, or not signed by the node they name with a key verified for it (forged).", nil, nil),
		directFailed: prometheus.NewDesc("portico_cluster_gossip_direct_failed_total",
			"Gossip messages whose packet sent directly to a member could not be written on this node (a local firewall, no route to it); a member that is down is not counted, its packets are written and lost until it is declared dead. They still travel by gossip and push/pull.", nil, nil),
	}
	d.Metrics.MustRegister(c)
}

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.state, c.term, c.commit, c.applied, c.lastApply, c.members, c.score, c.backendUp, c.changes, c.tlsRefused, c.gossipDropped, c.directFailed} {
		ch <- d
	}
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	rs := c.d.cluster.RaftStats()
	for _, s := range []string{"follower", "candidate", "leader", "shutdown"} {
		v := 0.0
		if s == rs.State {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, s)
	}
	ch <- prometheus.MustNewConstMetric(c.term, prometheus.GaugeValue, float64(rs.Term))
	ch <- prometheus.MustNewConstMetric(c.commit, prometheus.GaugeValue, float64(rs.CommitIndex))
	ch <- prometheus.MustNewConstMetric(c.applied, prometheus.GaugeValue, float64(rs.AppliedIndex))
	ch <- prometheus.MustNewConstMetric(c.lastApply, prometheus.GaugeValue, float64(c.d.fsm.AppliedIndex()))
	ch <- prometheus.MustNewConstMetric(c.changes, prometheus.CounterValue, float64(rs.LeaderChanges))
	refused, dropped := c.d.cluster.TrustStats()
	ch <- prometheus.MustNewConstMetric(c.tlsRefused, prometheus.CounterValue, float64(refused))
	ch <- prometheus.MustNewConstMetric(c.gossipDropped, prometheus.CounterValue, float64(dropped))
	ch <- prometheus.MustNewConstMetric(c.directFailed, prometheus.CounterValue, float64(c.d.cluster.DirectGossipFailures()))
	counts := map[string]float64{"alive": 0, "suspect": 0, "dead": 0, "left": 0}
	for _, m := range c.d.cluster.Members() {
		counts[m.State]++
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.members, prometheus.GaugeValue, n, st)
	}
	ch <- prometheus.MustNewConstMetric(c.score, prometheus.GaugeValue, float64(c.d.cluster.HealthScore()))
	if h := c.d.health.Load(); h != nil {
		down := h.Down()
		for _, b := range c.d.fsm.Table().Backends() {
			v := 1.0
			if down[b.ID] {
				v = 0
			}
			ch <- prometheus.MustNewConstMetric(c.backendUp, prometheus.GaugeValue, v, b.ID)
		}
	}
}

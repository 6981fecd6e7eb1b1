package affinity

import "github.com/prometheus/client_golang/prometheus"

// Collector exports a Table's figures (read at scrape time). No label
// carries a user.
type Collector struct {
	t                         *Table
	entries, steered, invalid *prometheus.Desc
}

// NewCollector returns the metrics of t, to register on a node's registry.
func NewCollector(t *Table) *Collector {
	return &Collector{
		t: t,
		entries: prometheus.NewDesc("portico_affinity_entries",
			"Bindings of users to the backend their sessions use (shared_storage pools), live or within affinity.expire of their last session; source local (this node's sessions) or remote (gossiped by other nodes).", []string{"source"}, nil),
		steered: prometheus.NewDesc("portico_affinity_steered_total",
			"Logins sent to the backend a user's other sessions use instead of the hash's choice (the pool changed while they were open).", nil, nil),
		invalid: prometheus.NewDesc("portico_affinity_gossip_invalid_total",
			"Affinity gossip dropped: malformed messages, bindings dated in the future, bindings or tombstones beyond the table's bounds, and messages made before a state already merged from their sender (late, or replayed).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.entries
	ch <- c.steered
	ch <- c.invalid
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	local, remote := c.t.Counts()
	ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(local), "local")
	ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(remote), "remote")
	ch <- prometheus.MustNewConstMetric(c.steered, prometheus.CounterValue, float64(c.t.Steered()))
	ch <- prometheus.MustNewConstMetric(c.invalid, prometheus.CounterValue, float64(c.t.stats.invalid.Load()))
}

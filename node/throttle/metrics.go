package throttle

import "github.com/prometheus/client_golang/prometheus"

// Collector exports a Limiter's figures (read at scrape time). Label
// values are fixed sets; never a user or an address.
type Collector struct {
	l                                      *Limiter
	delayed, blocked, blocks, entries, bad *prometheus.Desc
	inFlight, held                         *prometheus.Desc
}

// NewCollector returns the metrics of l, to register on a node's registry.
func NewCollector(l *Limiter) *Collector {
	return &Collector{
		l: l,
		delayed: prometheus.NewDesc("portico_throttle_delayed_total",
			"Failed logins whose reply the throttle delayed (progressively, per user and client network).", nil, nil),
		blocked: prometheus.NewDesc("portico_throttle_blocked_total",
			"Login attempts refused by the throttle without contacting the backend or auth server, by scope (ip, user_ip, user).", []string{"scope"}, nil),
		blocks: prometheus.NewDesc("portico_throttle_blocks_total",
			"Blocks started by failures on this node, by scope (ip: a client network, user_ip: a user from a network, user: a user under attack).", []string{"scope"}, nil),
		entries: prometheus.NewDesc("portico_throttle_entries",
			"Failure counters and blocks the throttle tracks (this node's and gossiped), by scope (ip, user_ip, user).", []string{"scope"}, nil),
		bad: prometheus.NewDesc("portico_throttle_gossip_invalid_total",
			"Throttle gossip dropped: messages malformed or from a node with another window setting, and counters sent by a node they do not belong to.", nil, nil),
		inFlight: prometheus.NewDesc("portico_throttle_in_flight",
			"Login attempts counted as in flight (asked of the backend or auth server, outcome not yet known) on this node.", nil, nil),
		held: prometheus.NewDesc("portico_throttle_held_total",
			"Login attempts made to wait because the attempts in flight for their network or user could, by failing, reach a limit.", nil, nil),
	}
}

var scopes = [numKinds]string{ScopeIP, ScopeUserIP, ScopeUser}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.delayed
	ch <- c.blocked
	ch <- c.blocks
	ch <- c.entries
	ch <- c.bad
	ch <- c.inFlight
	ch <- c.held
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := &c.l.stats
	ch <- prometheus.MustNewConstMetric(c.delayed, prometheus.CounterValue, float64(s.delayed.Load()))
	ch <- prometheus.MustNewConstMetric(c.bad, prometheus.CounterValue, float64(s.gossipInvalid.Load()+s.gossipForeign.Load()))
	ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(max(s.inFlight.Load(), 0)))
	ch <- prometheus.MustNewConstMetric(c.held, prometheus.CounterValue, float64(s.held.Load()))
	for i, sc := range scopes {
		ch <- prometheus.MustNewConstMetric(c.blocked, prometheus.CounterValue, float64(s.blocked[i].Load()), sc)
		ch <- prometheus.MustNewConstMetric(c.blocks, prometheus.CounterValue, float64(s.blocks[i].Load()), sc)
		ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(max(s.entries[i].Load(), 0)), sc)
	}
}

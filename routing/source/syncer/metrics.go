package syncer

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-mail/portico/routing/source"
)

// Metrics are the portico_source_* collectors (ops/metrics catalogues
// them). The sync metrics move on the leader only; the lookup counter on
// every node whose logins ask a source. Labels: the source's name (from
// the configuration) and fixed kinds, never a user.
type Metrics struct {
	lastSuccess *prometheus.GaugeVec
	duration    *prometheus.HistogramVec
	entries     *prometheus.GaugeVec
	changes     *prometheus.CounterVec
	errors      *prometheus.CounterVec
	refused     *prometheus.CounterVec
	intervalG   *prometheus.GaugeVec
	lookups     *prometheus.CounterVec
	batches     *prometheus.CounterVec
	pause       *prometheus.CounterVec
	skipped     *skipCollector
}

// Help texts (ops/metrics.Catalog says the same).
const (
	HelpLastSuccess = "Unix time of the source's last successful sync (on the leader, which syncs; a new leader starts from the table's record of it)."
	HelpDuration    = "Time a sync of the source took, by kind (full, incremental), failed and refused ones included."
	HelpEntries     = "Entries the source held at its last successful sync (on the leader)."
	HelpChanges     = "User rules a source's syncs wrote, by kind (added, changed, removed)."
	HelpErrors      = "Syncs of the source that failed (the source could not be read, or the table not written)."
	HelpRefused     = "Syncs of the source refused by the safety valve (they would have removed more than max_delete_share of its rules)."
	HelpInterval    = "The source's configured incremental sync interval, for alerts on a source that has not synced for too long."
	HelpSkipped     = "Entries a source held but could not use (a missing or multi-valued attribute, a NULL column), by reason, since this node opened it; they are left out of the table and logged."
	HelpBatches     = "Raft commands the source's syncs wrote (batches of users, new backends, the sync state), one at a time, on the leader."
	HelpPause       = "Time the source's syncs paused (while reading and diffing the source, and between their commands) so that they work at most work_share of their time (on the leader)."
	HelpLookups     = "On-miss lookups of logins the table had no rule for, by result (found, not_found, error, cached_found, cached_not_found)."
)

// NewMetrics registers the collectors on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "portico_source_last_success_timestamp_seconds", Help: HelpLastSuccess}, []string{"source"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "portico_source_sync_duration_seconds", Help: HelpDuration,
			Buckets: []float64{.01, .05, .1, .5, 1, 5, 10, 30, 60, 300}}, []string{"source", "kind"}),
		entries:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "portico_source_entries", Help: HelpEntries}, []string{"source"}),
		changes:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "portico_source_changes_total", Help: HelpChanges}, []string{"source", "kind"}),
		errors:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "portico_source_errors_total", Help: HelpErrors}, []string{"source"}),
		refused:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "portico_source_refused_total", Help: HelpRefused}, []string{"source"}),
		intervalG: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "portico_source_interval_seconds", Help: HelpInterval}, []string{"source"}),
		lookups:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "portico_source_lookups_total", Help: HelpLookups}, []string{"source", "result"}),
		batches:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "portico_source_sync_batches_total", Help: HelpBatches}, []string{"source"}),
		pause:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "portico_source_sync_pause_seconds_total", Help: HelpPause}, []string{"source"}),
	}
	m.skipped = &skipCollector{desc: prometheus.NewDesc("portico_source_skipped_entries_total", HelpSkipped, []string{"source", "reason"}, nil)}
	reg.MustRegister(m.lastSuccess, m.duration, m.entries, m.changes, m.errors, m.refused, m.intervalG, m.lookups, m.batches, m.pause, m.skipped)
	return m
}

// Skips reports the skipped entries of a source whose fetcher counts them
// (source.SkipCounter), read at each scrape.
func (m *Metrics) Skips(name string, f source.Fetcher) {
	if m == nil {
		return
	}
	if sc, ok := f.(source.SkipCounter); ok {
		m.skipped.mu.Lock()
		m.skipped.sources = append(m.skipped.sources, namedSkips{name, sc})
		m.skipped.mu.Unlock()
	}
}

type namedSkips struct {
	name string
	sc   source.SkipCounter
}

// skipCollector reads the fetchers' counters when scraped.
type skipCollector struct {
	desc    *prometheus.Desc
	mu      sync.Mutex
	sources []namedSkips
}

func (c *skipCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *skipCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	srcs := append([]namedSkips(nil), c.sources...)
	c.mu.Unlock()
	for _, s := range srcs {
		for reason, n := range s.sc.SkippedByReason() {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), s.name, reason)
		}
	}
}

// Init makes every series of source exist (at zero) on every node, so that
// rates and alerts see it before its first event.
func (m *Metrics) Init(source string, interval time.Duration) {
	if m == nil {
		return
	}
	m.interval(source, interval)
	for _, k := range []string{"added", "changed", "removed"} {
		m.changes.WithLabelValues(source, k)
	}
	m.errors.WithLabelValues(source)
	m.refused.WithLabelValues(source)
	m.batches.WithLabelValues(source)
	m.pause.WithLabelValues(source)
}

func (m *Metrics) interval(source string, d time.Duration) {
	if m != nil {
		m.intervalG.WithLabelValues(source).Set(d.Seconds())
	}
}

func (m *Metrics) success(source string, at time.Time) {
	if m != nil {
		m.lastSuccess.WithLabelValues(source).Set(float64(at.UnixMilli()) / 1000)
	}
}

func (m *Metrics) synced(source string, r Result, at time.Time) {
	if m == nil {
		return
	}
	m.success(source, at)
	if r.Kind == "full" {
		m.entries.WithLabelValues(source).Set(float64(r.Entries))
	}
	m.changes.WithLabelValues(source, "added").Add(float64(r.Added))
	m.changes.WithLabelValues(source, "changed").Add(float64(r.Changed))
	m.changes.WithLabelValues(source, "removed").Add(float64(r.Removed))
}

func (m *Metrics) took(source, kind string, seconds float64) {
	if m != nil && kind != "" {
		m.duration.WithLabelValues(source, kind).Observe(seconds)
	}
}

func (m *Metrics) failed(source string) {
	if m != nil {
		m.errors.WithLabelValues(source).Inc()
	}
}

func (m *Metrics) refusedSync(source string) {
	if m != nil {
		m.refused.WithLabelValues(source).Inc()
	}
}

func (m *Metrics) lookup(source, result string) {
	if m != nil {
		m.lookups.WithLabelValues(source, result).Inc()
	}
}

func (m *Metrics) wrote(source string) {
	if m != nil {
		m.batches.WithLabelValues(source).Inc()
	}
}

func (m *Metrics) paused(source string, d time.Duration) {
	if m != nil {
		m.pause.WithLabelValues(source).Add(d.Seconds())
	}
}

package auth

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of auth_http directors (all of a node's share one set). Label
// values are fixed sets, never user names, addresses or server texts.
type Metrics struct {
	requests    *prometheus.CounterVec // result: ok, refused, wait, error
	duration    prometheus.Histogram
	errors      *prometheus.CounterVec // kind: the Err* kinds
	cacheHits   *prometheus.CounterVec // answer: ok, refused
	cacheMisses prometheus.Counter
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "portico", Subsystem: "auth_http", Name: "requests_total",
			Help: "Requests to auth_http servers, by answer (ok, refused, wait, error).",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "portico", Subsystem: "auth_http", Name: "request_duration_seconds",
			Help:    "Time from connecting to an auth_http server to its complete answer (or failure).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "portico", Subsystem: "auth_http", Name: "errors_total",
			Help: "Failed auth_http exchanges (the client got the internal-error reply), by kind (connect, timeout, io, malformed, too_large, invalid).",
		}, []string{"kind"}),
		cacheHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "portico", Subsystem: "auth_http", Name: "cache_hits_total",
			Help: "Logins answered from the auth_http cache, by cached answer (ok, refused).",
		}, []string{"answer"}),
		cacheMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "portico", Subsystem: "auth_http", Name: "cache_misses_total",
			Help: "Logins looked up in the auth_http cache and not found.",
		}),
	}
	for _, r := range []string{"ok", "refused", "wait", "error"} {
		m.requests.WithLabelValues(r)
	}
	for _, k := range []string{ErrKindConnect, ErrKindTimeout, ErrKindIO, ErrKindMalformed, ErrKindTooLarge, ErrKindInvalid} {
		m.errors.WithLabelValues(k)
	}
	m.cacheHits.WithLabelValues("ok")
	m.cacheHits.WithLabelValues("refused")
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.errors, m.cacheHits, m.cacheMisses)
	}
	return m
}

func (m *Metrics) request(result string, d time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(result).Inc()
	m.duration.Observe(d.Seconds())
}

func (m *Metrics) failed(kind string) {
	if m != nil {
		m.errors.WithLabelValues(kind).Inc()
	}
}

func (m *Metrics) cache(hit *Response) {
	switch {
	case m == nil:
	case hit == nil:
		m.cacheMisses.Inc()
	case hit.HasErr:
		m.cacheHits.WithLabelValues("refused").Inc()
	default:
		m.cacheHits.WithLabelValues("ok").Inc()
	}
}

package metrics

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/portico-mail/portico/node"
	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// Options for NewProxy.
type Options struct {
	Version, Commit string
	// Listeners returns the live per-listener figures (node.Server.ListenerStats).
	Listeners func() []*node.ListenerStats
	// Table returns the routing table in use (nil: no table metrics).
	Table func() *routing.Table
	// Ready reports readiness (nil: portico_ready is not exported).
	Ready func() bool
	// Certificates returns the loaded server certificates
	// (node.CertStore.Certificates; nil: no expiry gauge).
	Certificates func() []node.CertInfo
	// Prelogin returns the pre-login gate's sessions waiting now and
	// waits so far (node.Server.Gate; nil: not exported).
	Prelogin func() (waiting int, waits uint64)
}

// Login results, pre-set to zero for every listener so that rates and
// ratios exist before the first failure.
var loginResults = []session.Result{
	session.ResultOK, session.ResultBadCreds, session.ResultUnavailable,
	session.ResultLimit, session.ResultTimeout, session.ResultError,
}

// Proxy is the metrics of one node's proxy (its listeners, sessions and
// logins). It implements node.Observer and observes logins (Login, for
// session.Env.OnLogin).
type Proxy struct {
	o        Options
	draining atomic.Bool

	refused       *prometheus.CounterVec
	ended         *prometheus.CounterVec
	preauthErrors *prometheus.CounterVec
	tlsFailures   *prometheus.CounterVec
	logins        *prometheus.CounterVec
	loginDur      *prometheus.HistogramVec
	connectDur    *prometheus.HistogramVec
	sessionDur    *prometheus.HistogramVec

	mu       sync.Mutex
	backends map[string]int64 // relayed sessions by backend id

	// Read at scrape time.
	connections, open, bytes, handshakes, backendSessions, tableEntries, drainingD, readyD, buildInfo, certExpiry *prometheus.Desc
	preloginWaiting, preloginWaits                                                                                *prometheus.Desc

	// now is the clock of the certificate expiry gauge (tests set it).
	now func() time.Time
}

var _ node.Observer = (*Proxy)(nil)

func counterVec(name string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help(name)}, labels)
}

func histogramVec(name string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help(name), Buckets: buckets}, labels)
}

// NewProxy creates a node's metrics and registers them on reg, with the Go
// runtime and process collectors (process_open_fds, process_max_fds).
func NewProxy(reg prometheus.Registerer, o Options) (*Proxy, error) {
	if o.Listeners == nil {
		return nil, fmt.Errorf("metrics: Options.Listeners is required")
	}
	m := &Proxy{
		o:             o,
		refused:       counterVec("portico_connections_refused_total", "protocol", "listener", "reason"),
		ended:         counterVec("portico_sessions_ended_total", "protocol", "listener", "phase", "reason"),
		preauthErrors: counterVec("portico_preauth_errors_total", "protocol", "listener"),
		tlsFailures:   counterVec("portico_tls_handshake_failures_total", "protocol", "listener", "reason"),
		logins:        counterVec("portico_logins_total", "protocol", "listener", "result"),
		// A login through a LAN takes milliseconds; a wrong password waits
		// for the backend's own delay (Dovecot: up to 0.5 s, others 2 s);
		// backend_timeout defaults to 15 s.
		loginDur: histogramVec("portico_login_duration_seconds",
			[]float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15, 30}, "protocol", "result"),
		connectDur: histogramVec("portico_backend_connect_duration_seconds",
			[]float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}, "protocol"),
		// Sessions last from a POP3 download (seconds) to an IMAP client
		// left open all day.
		sessionDur: histogramVec("portico_session_duration_seconds",
			[]float64{1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400}, "protocol"),
		backends:        make(map[string]int64),
		connections:     newDesc("portico_connections_total", "protocol", "listener"),
		open:            newDesc("portico_sessions_open", "protocol", "listener", "state"),
		bytes:           newDesc("portico_relay_bytes_total", "protocol", "listener", "direction"),
		handshakes:      newDesc("portico_tls_handshakes_total", "protocol", "listener", "handshake"),
		backendSessions: newDesc("portico_backend_sessions", "backend"),
		tableEntries:    newDesc("portico_routing_table_entries", "kind"),
		drainingD:       newDesc("portico_draining"),
		readyD:          newDesc("portico_ready"),
		buildInfo:       newDesc("portico_build_info", "version", "commit", "goversion"),
		certExpiry:      newDesc("portico_tls_certificate_expiry_seconds", "file", "name"),
		preloginWaiting: newDesc("portico_prelogin_waiting"),
		preloginWaits:   newDesc("portico_prelogin_waits_total"),
		now:             time.Now,
	}
	for _, c := range []prometheus.Collector{
		m.refused, m.ended, m.preauthErrors, m.tlsFailures, m.logins, m.loginDur, m.connectDur, m.sessionDur,
		(*scrape)(m),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return m, nil
}

// SetDraining sets the drain state (portico_draining).
func (m *Proxy) SetDraining(on bool) { m.draining.Store(on) }

// Draining reports the drain state.
func (m *Proxy) Draining() bool { return m.draining.Load() }

// BackendSessions returns the relayed sessions per backend id (those with
// at least one).
func (m *Proxy) BackendSessions() map[string]int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]int64, len(m.backends))
	for id, n := range m.backends {
		out[id] = n
	}
	return out
}

// Listener implements node.Observer: the listener's counters that
// dashboards divide by each other start at zero.
func (m *Proxy) Listener(st *node.ListenerStats) {
	p := string(st.Protocol)
	for _, r := range loginResults {
		m.logins.WithLabelValues(p, st.Name, string(r))
	}
	for _, r := range session.TLSFailures {
		m.tlsFailures.WithLabelValues(p, st.Name, r)
	}
	m.preauthErrors.WithLabelValues(p, st.Name)
	for _, r := range []string{node.RefusedMaxConnections, node.RefusedMaxConnectionsPerIP, node.RefusedProxyHeader, node.RefusedLocalAddress} {
		m.refused.WithLabelValues(p, st.Name, r)
	}
}

// Refused implements node.Observer.
func (m *Proxy) Refused(st *node.ListenerStats, reason string) {
	m.refused.WithLabelValues(string(st.Protocol), st.Name, reason).Inc()
}

// PreauthEnded implements node.Observer.
func (m *Proxy) PreauthEnded(st *node.ListenerStats, _ *session.Client, end session.End) {
	p := string(st.Protocol)
	m.ended.WithLabelValues(p, st.Name, "preauth", end.Reason).Inc()
	if end.ProtocolErrors > 0 {
		m.preauthErrors.WithLabelValues(p, st.Name).Add(float64(end.ProtocolErrors))
	}
	if end.TLSFailure != "" {
		m.tlsFailures.WithLabelValues(p, st.Name, end.TLSFailure).Inc()
	}
}

// SessionStarted implements node.Observer.
func (m *Proxy) SessionStarted(st *node.ListenerStats, h *session.Handoff) {
	if h.ProtocolErrors > 0 {
		m.preauthErrors.WithLabelValues(string(st.Protocol), st.Name).Add(float64(h.ProtocolErrors))
	}
	m.mu.Lock()
	m.backends[h.BackendID]++
	m.mu.Unlock()
}

// SessionEnded implements node.Observer.
func (m *Proxy) SessionEnded(st *node.ListenerStats, h *session.Handoff, rs relay.Stats) {
	p := string(st.Protocol)
	m.ended.WithLabelValues(p, st.Name, "relayed", RelayReason(rs.Reason)).Inc()
	if h.Client != nil {
		m.sessionDur.WithLabelValues(p).Observe(time.Since(h.Client.Started).Seconds())
	}
	m.mu.Lock()
	if m.backends[h.BackendID]--; m.backends[h.BackendID] <= 0 {
		delete(m.backends, h.BackendID)
	}
	m.mu.Unlock()
}

// Login observes a login attempt (session.Env.OnLogin).
func (m *Proxy) Login(c *session.Client, ev session.LoginEvent) {
	p := string(c.Listener.Protocol)
	m.logins.WithLabelValues(p, c.Listener.Name, string(ev.Result)).Inc()
	m.loginDur.WithLabelValues(p, string(ev.Result)).Observe(ev.Latency.Seconds())
	if ev.Connect > 0 {
		m.connectDur.WithLabelValues(p).Observe(ev.Connect.Seconds())
	}
}

// RelayReason turns a relay end reason ("idle timeout") into a label
// value ("idle_timeout"). Reasons come from the code, never from clients;
// anything that does not look like one is reported as "other" so that a
// future free-text reason cannot grow the label set.
func RelayReason(r string) string {
	if r == "" || len(r) > 32 {
		return "other"
	}
	b := []byte(strings.ToLower(r))
	for i, c := range b {
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case c == ' ' || c == '-' || c == '_':
			b[i] = '_'
		default:
			return "other"
		}
	}
	return string(b)
}

// scrape is the part of Proxy read at scrape time from live state.
type scrape Proxy

func (s *scrape) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{s.connections, s.open, s.bytes, s.handshakes, s.backendSessions, s.tableEntries, s.drainingD, s.readyD, s.buildInfo, s.certExpiry, s.preloginWaiting, s.preloginWaits} {
		ch <- d
	}
}

func (s *scrape) Collect(ch chan<- prometheus.Metric) {
	m := (*Proxy)(s)
	for _, st := range m.o.Listeners() {
		p := string(st.Protocol)
		ch <- prometheus.MustNewConstMetric(s.connections, prometheus.CounterValue, float64(st.Accepted.Load()), p, st.Name)
		ch <- prometheus.MustNewConstMetric(s.open, prometheus.GaugeValue, float64(st.Preauth.Load()), p, st.Name, "preauth")
		ch <- prometheus.MustNewConstMetric(s.open, prometheus.GaugeValue, float64(st.Relayed.Load()), p, st.Name, "relayed")
		ch <- prometheus.MustNewConstMetric(s.bytes, prometheus.CounterValue, float64(st.Bytes.ClientToBackend.Load()), p, st.Name, "client_to_backend")
		ch <- prometheus.MustNewConstMetric(s.bytes, prometheus.CounterValue, float64(st.Bytes.BackendToClient.Load()), p, st.Name, "backend_to_client")
		ch <- prometheus.MustNewConstMetric(s.handshakes, prometheus.CounterValue, float64(st.TLSFull.Load()), p, st.Name, "full")
		ch <- prometheus.MustNewConstMetric(s.handshakes, prometheus.CounterValue, float64(st.TLSResumed.Load()), p, st.Name, "resumed")
	}
	// Every backend of the table (0 when idle), and any other backend
	// that still has sessions (removed from the table meanwhile).
	perBackend := m.BackendSessions()
	if m.o.Table != nil {
		if t := m.o.Table(); t != nil {
			for _, b := range t.Backends() {
				if _, ok := perBackend[b.ID]; !ok {
					perBackend[b.ID] = 0
				}
			}
			bs, ps, us, ds := t.Len()
			for kind, n := range map[string]int{"backends": bs, "pools": ps, "users": us, "domains": ds} {
				ch <- prometheus.MustNewConstMetric(s.tableEntries, prometheus.GaugeValue, float64(n), kind)
			}
		}
	}
	for id, n := range perBackend {
		ch <- prometheus.MustNewConstMetric(s.backendSessions, prometheus.GaugeValue, float64(n), id)
	}
	ch <- prometheus.MustNewConstMetric(s.drainingD, prometheus.GaugeValue, b2f(m.draining.Load()))
	if m.o.Ready != nil {
		ch <- prometheus.MustNewConstMetric(s.readyD, prometheus.GaugeValue, b2f(m.o.Ready()))
	}
	ch <- prometheus.MustNewConstMetric(s.buildInfo, prometheus.GaugeValue, 1, m.o.Version, m.o.Commit, runtime.Version())
	if m.o.Prelogin != nil {
		waiting, waits := m.o.Prelogin()
		ch <- prometheus.MustNewConstMetric(s.preloginWaiting, prometheus.GaugeValue, float64(waiting))
		ch <- prometheus.MustNewConstMetric(s.preloginWaits, prometheus.CounterValue, float64(waits))
	}
	if m.o.Certificates != nil {
		// Read from the store at each scrape, so a reload (renewed
		// certificates) shows at once. The same file listed twice is one
		// series.
		now := m.now()
		seen := map[string]bool{}
		for _, c := range m.o.Certificates() {
			if seen[c.File] {
				continue
			}
			seen[c.File] = true
			ch <- prometheus.MustNewConstMetric(s.certExpiry, prometheus.GaugeValue, c.NotAfter.Sub(now).Seconds(), c.File, c.Name)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

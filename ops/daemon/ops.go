package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/node"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/ops/metrics"
	"github.com/portico-mail/portico/routing"
)

// opsState is the operations stage's state: node metrics, readiness checks,
// status contributors, drain flag. Created on first use, so that stages set
// up before setupOps may already add checks and contributors.
type opsState struct {
	metrics *metrics.Proxy
	started time.Time

	draining atomic.Bool

	mu     sync.Mutex
	checks []readyCheck
	status []func(*Status)
}

type readyCheck struct {
	name string
	f    func() error
}

func (d *Daemon) opsState() *opsState {
	if d.ops == nil {
		d.ops = &opsState{started: time.Now()}
	}
	return d.ops
}

// addReadyCheck adds a readiness condition: while f returns an error,
// /readyz answers 503 with "name: error" among the reasons, and
// portico_ready is 0. f must be quick and must not block.
func (d *Daemon) addReadyCheck(name string, f func() error) {
	o := d.opsState()
	o.mu.Lock()
	o.checks = append(o.checks, readyCheck{name, f})
	o.mu.Unlock()
}

// addStatus adds a contributor to GET /v1/status (and `portico status`):
// f fills its section of the status (cluster, VIP, ...) from its stage's
// state. Contributors run in the order they were added.
func (d *Daemon) addStatus(f func(*Status)) {
	o := d.opsState()
	o.mu.Lock()
	o.status = append(o.status, f)
	o.mu.Unlock()
}

// setDraining marks the node as draining (or not): /readyz answers 503 so
// that load balancers stop sending new clients, portico_draining is 1, and
// the cluster gossips it (`portico cluster members`, `portico status`).
// The drain stage calls it; what draining does to sessions is its own.
func (d *Daemon) setDraining(on bool) {
	o := d.opsState()
	o.draining.Store(on)
	if o.metrics != nil {
		o.metrics.SetDraining(on)
	}
	if d.cluster != nil {
		d.cluster.SetLocal(func(m *cluster.Meta) { m.Draining = on })
	}
}

// Draining reports whether the node is draining.
func (d *Daemon) Draining() bool { return d.opsState().draining.Load() }

// NotReady returns why the node is not ready (nil when it is): shutting
// down, draining, then every failing check in the order they were added.
func (d *Daemon) NotReady() []string {
	o := d.opsState()
	var reasons []string
	select {
	case <-d.group.Done():
		reasons = append(reasons, "shutting down")
	default:
	}
	if o.draining.Load() {
		reasons = append(reasons, "draining")
	}
	o.mu.Lock()
	checks := append([]readyCheck(nil), o.checks...)
	o.mu.Unlock()
	for _, c := range checks {
		if err := c.f(); err != nil {
			reasons = append(reasons, c.name+": "+err.Error())
		}
	}
	return reasons
}

// setupOps installs the operations features: node metrics on d.Metrics
// (served at /metrics), readiness (/readyz), GET /v1/status, and the node
// name in the per-login access log line.
func (d *Daemon) setupOps(cfg *config.Config) error {
	o := d.opsState()
	d.env.Node = cfg.NodeName
	m, err := metrics.NewProxy(d.Metrics, metrics.Options{
		Version: Version, Commit: Commit,
		Listeners: d.srv.ListenerStats,
		Table:     d.table,
		Ready:     func() bool { return len(d.NotReady()) == 0 },
		// Read at each scrape: follows certificate reloads.
		Certificates: d.certificates,
		Prelogin: func() (int, uint64) {
			g := d.srv.Gate()
			return g.Waiting(), g.Waited()
		},
	})
	if err != nil {
		return err
	}
	o.metrics = m
	m.SetDraining(o.draining.Load())
	d.srv.SetObserver(m)
	prev := d.env.OnLogin
	d.env.OnLogin = func(c *session.Client, ev session.LoginEvent) {
		if prev != nil {
			prev(c, ev)
		}
		m.Login(c, ev)
	}

	d.addReadyCheck("listeners", d.checkListeners)
	d.addReadyCheck("routing", d.checkRouting)
	if d.cluster != nil {
		// In a multi-node cluster: a node that cannot reach a quorum (no
		// leader for longer than an election takes) is not ready, so that
		// load balancers prefer the nodes that can.
		d.addReadyCheck("cluster", d.cluster.QuorumError)
		d.addStatus(d.clusterStatus)
	}

	if d.admin != nil {
		d.admin.HandlePublic("GET /metrics", promhttp.HandlerFor(d.Metrics, promhttp.HandlerOpts{
			ErrorLog:      promErrorLog{d},
			ErrorHandling: promhttp.ContinueOnError,
		}))
		d.admin.HandlePublic("GET /readyz", http.HandlerFunc(d.readyz))
		d.admin.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
			admin.JSON(w, http.StatusOK, d.Status())
		})
	}
	return nil
}

// certificates lists the certificates whose expiry the node reports: the
// listeners' and, in a cluster with configured certificates, the node's
// cluster certificate (raft and gossip stop trusting it once it expires).
func (d *Daemon) certificates() []node.CertInfo {
	out := d.certs.Certificates()
	if d.cluster == nil {
		return out
	}
	file := d.conf().Cluster.TLS.CertFile
	if file == "" {
		return out // a throwaway identity
	}
	id := d.cluster.TLSIdentity()
	return append(out, node.CertInfo{File: file, Name: id.Name, NotAfter: id.NotAfter})
}

// promErrorLog passes the metric handler's errors (a collector failing)
// to the node's log.
type promErrorLog struct{ d *Daemon }

func (l promErrorLog) Println(v ...any) { l.d.Log.Warn("metrics", "error", fmt.Sprint(v...)) }

// readyz is GET /readyz: 200 {"status":"ready"}, or 503 with the reasons.
func (d *Daemon) readyz(w http.ResponseWriter, r *http.Request) {
	if reasons := d.NotReady(); len(reasons) > 0 {
		admin.JSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "reasons": reasons})
		return
	}
	admin.JSON(w, http.StatusOK, map[string]any{"status": "ready"})
}

// table returns the routing table the node serves from.
func (d *Daemon) table() *routing.Table {
	switch {
	case d.static != nil:
		return d.static.Table()
	case d.fsm != nil:
		return d.fsm.Table()
	}
	return nil
}

// checkListeners: every listener of the running configuration is bound.
func (d *Daemon) checkListeners() error {
	cfg := d.conf()
	bound := d.srv.Addrs()
	var missing []string
	for _, l := range cfg.Listeners {
		if bound[l.Name] == nil {
			missing = append(missing, l.Name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("not listening on %s", strings.Join(missing, ", "))
	}
	return nil
}

// checkRouting: the routing table is loaded (in a cluster: this node has
// caught up with the cluster once since it started, routing.FSM.Loaded;
// losing the leader later does not unload it, the node keeps routing from
// its copy, and the "cluster" check speaks for the quorum) and names at
// least one backend.
func (d *Daemon) checkRouting() error {
	if d.fsm != nil && !d.fsm.Loaded() {
		return routing.ErrNotReady
	}
	t := d.table()
	if t == nil {
		return errors.New("no routing table")
	}
	if b, _, _, _ := t.Len(); b == 0 {
		return errors.New("the routing table has no backends")
	}
	return nil
}

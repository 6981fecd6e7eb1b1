package daemon

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"sync"
	"time"

	"github.com/portico-mail/portico/node"
	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/ops/config"
)

// drainState is the drain started by `portico drain` (POST /v1/drain).
type drainState struct {
	mu      sync.Mutex
	phase   string // "", handing over the VIP, waiting for sessions, ending sessions, drained
	started time.Time
	ended   int
	cancel  context.CancelFunc
	done    chan struct{}
}

// DrainStatus is GET /v1/drain.
type DrainStatus struct {
	Draining bool    `json:"draining"`
	Phase    string  `json:"phase,omitempty"`
	Seconds  float64 `json:"seconds,omitempty"` // since the drain started
	Sessions int     `json:"sessions"`          // relayed sessions still open
	Ended    int     `json:"sessions_ended"`    // ended by the drain at a response boundary
}

// setupLifecycle installs drain (API), reload (API and the listener
// stage of Reload) and in-place upgrade.
func (d *Daemon) setupLifecycle(o Options) {
	d.drain = &drainState{}
	d.configPath = o.ConfigPath
	// Listeners and connection limits change last: binding a new address
	// may fail, and then no other stage has committed anything.
	d.onReload(func(cfg *config.Config) (func(), error) {
		nc := d.nodeConfig(cfg)
		if err := d.srv.Reconfigure(nc); err != nil {
			return nil, err
		}
		return nil, nil
	})
	if d.admin == nil {
		return
	}
	d.admin.HandleFunc("GET /v1/drain", func(w http.ResponseWriter, r *http.Request) {
		admin.JSON(w, http.StatusOK, d.DrainStatus())
	})
	d.admin.HandleFunc("POST /v1/drain", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("cancel") != "" {
			if err := d.Undrain(); err != nil {
				admin.Error(w, http.StatusConflict, err.Error())
				return
			}
			admin.JSON(w, http.StatusOK, d.DrainStatus())
			return
		}
		done := d.Drain()
		if r.URL.Query().Get("wait") != "" {
			select {
			case <-done:
			case <-r.Context().Done():
				return
			}
		}
		admin.JSON(w, http.StatusAccepted, d.DrainStatus())
	})
	d.admin.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		res, err := d.ReloadFile()
		if err != nil {
			admin.Error(w, http.StatusUnprocessableEntity, err.Error())
			return
		}
		admin.JSON(w, http.StatusOK, res)
	})
}

// nodeConfig is cfg's serving configuration. (Per-listener
// authentication dispatches inside the node's Director, see auth.go, so
// nothing here depends on the stages.)
func (d *Daemon) nodeConfig(cfg *config.Config) node.Config { return cfg.NodeConfig() }

// Drain starts draining the node (once; later calls return the same
// channel, closed when the drain has finished): it stops being ready
// (/readyz 503, gossiped to the cluster), hands the VIP away if it holds
// it, stops accepting and ends sessions that have not logged in, lets
// relayed sessions finish for shutdown_grace, then ends the rest at a
// response boundary spread over drain.spread. The process keeps running
// (drained) until it is stopped or Undrain is called.
func (d *Daemon) Drain() <-chan struct{} {
	st := d.drain
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done != nil {
		return st.done
	}
	// The drain ends when cancelled (Undrain), or once the proxy has
	// stopped at shutdown (until then it keeps ending sessions at response
	// boundaries).
	ctx, cancel := context.WithCancel(d.group.late)
	st.cancel, st.done, st.started, st.ended = cancel, make(chan struct{}), time.Now(), 0
	st.phase = "starting"
	done := st.done
	d.setDraining(true)
	d.Log.Info("draining")
	started := d.group.GoLate(func(context.Context) {
		defer close(done)
		defer cancel()
		phase := func(p string) {
			st.mu.Lock()
			st.phase = p
			st.mu.Unlock()
			d.Log.Info("drain", "phase", p, "sessions", d.engine.Len())
		}
		phase("handing over the VIP")
		for _, f := range d.beforeShutdown {
			f(ctx)
		}
		d.srv.Pause()
		phase("waiting for sessions")
		cfg := d.conf()
		deadline := time.Now().Add(cfg.ShutdownGrace.D())
		for d.engine.Len() > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
			sleepCtx(ctx, 50*time.Millisecond)
		}
		if ctx.Err() != nil {
			return
		}
		phase("ending sessions")
		n := d.srv.EndSessions(ctx, nil, "Server draining, please reconnect.", cfg.NodeConfig().EndSpread)
		st.mu.Lock()
		st.ended = n
		st.mu.Unlock()
		if ctx.Err() == nil {
			phase("drained")
		}
	})
	if !started {
		cancel()
		close(done) // shutting down: the shutdown drains
	}
	return done
}

// Undrain stops a drain and serves again: listeners are bound, the node is
// ready again (sessions already ended stay ended).
func (d *Daemon) Undrain() error {
	st := d.drain
	st.mu.Lock()
	if st.done == nil {
		st.mu.Unlock()
		return errors.New("the node is not draining")
	}
	st.cancel()
	done := st.done
	st.mu.Unlock()
	<-done
	select {
	case <-d.group.Done():
		return errors.New("the node is shutting down")
	default:
	}
	if err := d.srv.Resume(); err != nil {
		return err
	}
	st.mu.Lock()
	st.done, st.phase = nil, ""
	st.mu.Unlock()
	d.setDraining(false)
	d.Log.Info("drain cancelled: serving again")
	return nil
}

// DrainStatus reports the drain's progress.
func (d *Daemon) DrainStatus() DrainStatus {
	st := d.drain
	st.mu.Lock()
	defer st.mu.Unlock()
	s := DrainStatus{Draining: d.Draining(), Phase: st.phase, Sessions: d.engine.Len(), Ended: st.ended}
	if st.done != nil {
		s.Seconds = time.Since(st.started).Round(time.Millisecond).Seconds()
	}
	return s
}

// ReloadResult is POST /v1/reload.
type ReloadResult struct {
	File string `json:"file"`
	// RestartRequired lists changed settings that only take effect when
	// the process restarts (they keep their running values).
	RestartRequired []string `json:"restart_required,omitempty"`
}

// ReloadFile re-reads the configuration file and applies it (Reload). A
// file that does not load or validate changes nothing; the error says why.
func (d *Daemon) ReloadFile() (ReloadResult, error) {
	if d.configPath == "" {
		return ReloadResult{}, errors.New("there is no configuration file to re-read (portico proxy)")
	}
	next, err := config.Load(d.configPath)
	if err != nil {
		d.Log.Error("reload failed, keeping the running configuration", "error", err)
		return ReloadResult{}, err
	}
	prev := d.conf()
	if err := d.Reload(next); err != nil {
		d.Log.Error("reload failed, keeping the running configuration", "error", err)
		return ReloadResult{}, err
	}
	res := ReloadResult{File: d.configPath, RestartRequired: restartRequired(prev, next)}
	if len(res.RestartRequired) > 0 {
		d.Log.Warn("configuration reloaded; some changes need a restart", "settings", res.RestartRequired)
	} else {
		d.Log.Info("configuration reloaded", "file", d.configPath)
	}
	return res, nil
}

// restartRequired lists the top-level settings that differ between a and b
// and that Reload cannot change in a running process.
func restartRequired(a, b *config.Config) []string {
	var out []string
	check := func(name string, x, y any) {
		if !reflect.DeepEqual(x, y) {
			out = append(out, name)
		}
	}
	check("node_name", a.NodeName, b.NodeName)
	check("standalone", a.Standalone, b.Standalone)
	check("data_dir", a.DataDir, b.DataDir)
	check("cluster", clusterRestartView(a.Cluster), clusterRestartView(b.Cluster))
	check("admin", adminRestartView(a.Admin), adminRestartView(b.Admin))
	check("vip", a.VIP, b.VIP)
	check("sources", a.Sources, b.Sources)
	check("log.format", a.Log.Format, b.Log.Format)
	return out
}

// clusterRestartView is the part of the cluster section that only a
// restart changes: all but the node certificate, which a reload replaces
// (a rotation).
func clusterRestartView(c config.Cluster) config.Cluster {
	c.TLS, c.Material = config.ClusterTLS{}, nil
	return c
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

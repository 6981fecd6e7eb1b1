package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/routing/source"
	"github.com/portico-mail/portico/routing/source/syncer"
)

// Cluster RPCs a node passes source calls to the leader on (the leader
// syncs, and knows how its syncs went).
const (
	sourcesStatusRPC = "/v1/ext/sources-status"
	sourcesSyncRPC   = "/v1/ext/sources-sync"
)

// syncWait bounds how long a sync request waits for its sync: a
// forwarded one within the cluster RPC's 30 s, one made on the leader
// longer. A sync still running then goes on; its outcome shows in
// `portico source status`.
const (
	syncWaitForwarded = 25 * time.Second
	syncWaitLocal     = 5 * time.Minute
)

// setupSources opens the configured directory sources: their syncs run
// on the raft leader (RunWhileLeader), the on-miss lookup of those that
// enable it on every node's login path, and the admin API's /v1/sources.
func (d *Daemon) setupSources(cfg *config.Config) error {
	if len(cfg.Sources) == 0 || d.cluster == nil {
		return nil
	}
	met := syncer.NewMetrics(d.Metrics)
	var syncers []*syncer.Syncer
	var opened []source.Fetcher
	onMiss := map[string]bool{}
	var miss []syncer.MissSource
	for i := range cfg.Sources {
		s := &cfg.Sources[i]
		f, err := s.Open(d.Log.With("source", s.Name))
		if err != nil {
			for _, o := range opened {
				_ = o.Close()
			}
			return err
		}
		opened = append(opened, f)
		syncers = append(syncers, syncer.New(s.SyncConfig(), f, d.fsm.Table, d.cluster, d.Log, met))
		met.Init(s.Name, s.Interval.D())
		met.Skips(s.Name, f)
		if s.OnMiss.Enabled {
			onMiss[s.Name] = true
			miss = append(miss, s.MissSource(f))
		}
	}
	m := syncer.NewManager(syncers, onMiss)
	d.sources = m
	d.onClose(func(context.Context) { m.Close() })
	d.cluster.RunWhileLeader(func(ctx context.Context) {
		select {
		case <-d.seeded:
		case <-ctx.Done():
			return
		}
		m.Run(ctx)
	})
	if len(miss) > 0 {
		d.miss = syncer.NewOnMiss(d.fsm, miss, d.cluster, d.Log, met)
	}
	d.addStatus(func(st *Status) {
		sts, _ := m.Status("", d.fsm.Table())
		for _, s := range sts {
			l := SourceLine{Name: s.Name, Type: s.Type, Rules: s.Rules, LastSync: s.LastSync, State: "ok"}
			switch {
			case s.Refused != "":
				l.State = "refused"
			case s.LastError != "":
				l.State = "failing"
			case s.LastSync == nil:
				l.State = "never synced"
			}
			st.Sources = append(st.Sources, l)
		}
	})
	d.cluster.HandleRPC(sourcesStatusRPC, func(ctx context.Context, body []byte) (int, any) {
		var req struct {
			Name string `json:"name"`
		}
		_ = json.Unmarshal(body, &req)
		return d.sourcesStatus(req.Name)
	})
	d.cluster.HandleRPC(sourcesSyncRPC, func(ctx context.Context, body []byte) (int, any) {
		var req SourceSyncRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return http.StatusBadRequest, admin.ErrorBody{Error: "invalid JSON: " + err.Error()}
		}
		return d.sourceSync(ctx, req, true)
	})
	if d.admin != nil {
		d.admin.HandleFunc("GET /v1/sources", func(w http.ResponseWriter, r *http.Request) {
			st, v := d.sourcesStatusAnywhere(r.Context(), "")
			d.answer(w, st, v)
		})
		d.admin.HandleFunc("GET /v1/sources/{name}", func(w http.ResponseWriter, r *http.Request) {
			st, v := d.sourcesStatusAnywhere(r.Context(), r.PathValue("name"))
			d.answer(w, st, v)
		})
		d.admin.HandleFunc("POST /v1/sources/{name}/sync", func(w http.ResponseWriter, r *http.Request) {
			var req SourceSyncRequest
			if r.ContentLength != 0 && !admin.Decode(w, r, admin.MaxBody, &req) {
				return
			}
			req.Name = r.PathValue("name")
			st, v := d.sourceSyncLocalOrLeader(r.Context(), req)
			d.answer(w, st, v)
		})
	}
	return nil
}

// answer writes a status and a JSON answer (raw JSON passed on as is).
func (d *Daemon) answer(w http.ResponseWriter, status int, v any) {
	if raw, ok := v.(json.RawMessage); ok {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(raw)
		return
	}
	admin.JSON(w, status, v)
}

// SourcesAnswer is GET /v1/sources: the sources as the node that answers
// (the leader, when it can be reached) knows them.
type SourcesAnswer struct {
	Node    string          `json:"node"`
	Leader  bool            `json:"leader"`
	Error   string          `json:"error,omitempty"` // why the leader did not answer
	Sources []syncer.Status `json:"sources"`
}

func (d *Daemon) sourcesStatus(name string) (int, any) {
	sts, err := d.sources.Status(name, d.fsm.Table())
	if err != nil {
		return http.StatusNotFound, admin.ErrorBody{Error: err.Error()}
	}
	self := d.cluster.Name()
	for i := range sts {
		if sts[i].LastAttempt != nil {
			sts[i].Node = self
		}
	}
	return http.StatusOK, SourcesAnswer{Node: self, Leader: d.sources.Leading(), Sources: sts}
}

// sourcesStatusAnywhere answers from the leader (which knows how its
// syncs went), or from this node's table when the leader cannot be
// reached.
func (d *Daemon) sourcesStatusAnywhere(ctx context.Context, name string) (int, any) {
	if d.sources.Leading() {
		return d.sourcesStatus(name)
	}
	body, _ := json.Marshal(map[string]string{"name": name})
	status, raw, err := d.cluster.CallLeader(ctx, sourcesStatusRPC, body)
	if err == nil {
		return status, json.RawMessage(raw)
	}
	st, v := d.sourcesStatus(name)
	if a, ok := v.(SourcesAnswer); ok {
		a.Error = "the leader did not answer (" + err.Error() + "): this node's view of the replicated state"
		return st, a
	}
	return st, v
}

// SourceSyncRequest is POST /v1/sources/{name}/sync.
type SourceSyncRequest struct {
	Name   string `json:"name,omitempty"`
	DryRun bool   `json:"dry_run,omitempty"`
	Force  bool   `json:"force,omitempty"`
}

// SourceSyncAnswer is its answer.
type SourceSyncAnswer struct {
	OK    bool   `json:"ok"`
	Node  string `json:"node"` // the leader that synced
	Error string `json:"error,omitempty"`
	// Running: the sync was still running when the answer was due; its
	// outcome shows in the source's status.
	Running bool           `json:"running,omitempty"`
	Result  *syncer.Result `json:"result,omitempty"`
}

func (d *Daemon) sourceSyncLocalOrLeader(ctx context.Context, req SourceSyncRequest) (int, any) {
	if !d.sources.Has(req.Name) {
		return http.StatusNotFound, admin.ErrorBody{Error: "no directory source " + req.Name}
	}
	if d.sources.Leading() {
		return d.sourceSync(ctx, req, false)
	}
	body, _ := json.Marshal(req)
	status, raw, err := d.cluster.CallLeader(ctx, sourcesSyncRPC, body)
	if err != nil {
		return http.StatusServiceUnavailable, admin.ErrorBody{Error: err.Error()}
	}
	return status, json.RawMessage(raw)
}

// sourceSync runs a sync on this node, the leader. The sync runs for the
// term (not for the request): a client that stops waiting does not cut
// it off; the answer waits for it at most syncWait.
func (d *Daemon) sourceSync(ctx context.Context, req SourceSyncRequest, forwarded bool) (int, any) {
	wait := syncWaitLocal
	if forwarded {
		wait = syncWaitForwarded
	}
	type outcome struct {
		res syncer.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := d.sources.Sync(context.WithoutCancel(ctx), req.Name, syncer.Options{DryRun: req.DryRun, Force: req.Force})
		done <- outcome{res, err}
	}()
	t := time.NewTimer(wait)
	defer t.Stop()
	self := d.cluster.Name()
	select {
	case o := <-done:
		a := SourceSyncAnswer{OK: o.err == nil, Node: self, Result: &o.res}
		switch {
		case o.err == nil:
			return http.StatusOK, a
		case errors.Is(o.err, syncer.ErrUnknownSource):
			return http.StatusNotFound, admin.ErrorBody{Error: o.err.Error()}
		case errors.Is(o.err, syncer.ErrNotLeader):
			return http.StatusServiceUnavailable, admin.ErrorBody{Error: o.err.Error()}
		case errors.Is(o.err, syncer.ErrRefused):
			a.Error = o.err.Error()
			return http.StatusConflict, a
		}
		a.Error = o.err.Error()
		return http.StatusBadGateway, a
	case <-t.C:
		return http.StatusAccepted, SourceSyncAnswer{OK: true, Node: self, Running: true,
			Error: "still running after " + wait.String() + "; `portico source status " + req.Name + "` shows its outcome"}
	}
}

package routesapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/routing"
)

// Node is what a backend drain needs of this node's proxy.
type Node interface {
	// BackendSessions returns how many relayed sessions this node has on
	// backend id.
	BackendSessions(id string) int
	// EndBackendSessions starts ending this node's relayed sessions on
	// backend id, each at a response boundary, spread over spread (the
	// node's drain.spread when negative), and returns at once. Sessions
	// that log in to it meanwhile (their login was routed before the
	// drain reached this node) are ended too, for as long as draining()
	// holds.
	EndBackendSessions(id string, spread time.Duration, draining func() bool)
}

// backendSessionsRPC is the cluster RPC each node answers for a backend
// drain: how many sessions it has on the backend, and (End) start ending
// them.
const backendSessionsRPC = "/v1/ext/backend-sessions"

// maxDrainSpread bounds a drain's spread.
const maxDrainSpread = time.Hour

type backendSessionsRequest struct {
	Backend string `json:"backend"`
	End     bool   `json:"end,omitempty"`
	// SpreadMS: the spread of End in milliseconds; absent: the node's
	// drain.spread.
	SpreadMS *int64 `json:"spread_ms,omitempty"`
	// Index is the raft index of the drain's state change: a node applies
	// it before it ends sessions, so that the clients it ends are not
	// routed back to the backend.
	Index uint64 `json:"index,omitempty"`
}

type backendSessionsAnswer struct {
	Sessions int    `json:"sessions"`
	Error    string `json:"error,omitempty"`
}

// BackendSessions answers GET /v1/backends/{id}/sessions and
// POST /v1/backends/{id}/drain: the backend's relayed sessions on every
// node of the cluster.
type BackendSessions struct {
	Backend string               `json:"backend"`
	State   routing.BackendState `json:"state"`
	// Sessions is the sum over the nodes that answered.
	Sessions int `json:"sessions"`
	// Complete: every member that may hold sessions answered (otherwise
	// Sessions may be short of the truth).
	Complete bool           `json:"complete"`
	Nodes    []NodeSessions `json:"nodes"`
}

// NodeSessions is one node's part of BackendSessions.
type NodeSessions struct {
	Node     string `json:"node"`
	Sessions int    `json:"sessions"`
	Error    string `json:"error,omitempty"`
	// Skipped: the member is dead or has left the cluster, so it was not
	// asked; it serves no sessions the cluster can end (its process is
	// gone, or cut off until it comes back and learns the state).
	Skipped bool `json:"skipped,omitempty"`
}

// DrainRequest is the (optional) body of POST /v1/backends/{id}/drain.
type DrainRequest struct {
	// Spread is a duration ("30s"); empty: each node's drain.spread.
	Spread string `json:"spread,omitempty"`
}

// registerBackendOps adds PATCH /v1/backends/{id}, the backend drain and
// the sessions count, and the cluster RPC behind the last two.
func (d *api) registerBackendOps(a *admin.Server) {
	a.HandleFunc("PATCH /v1/backends/{id}", d.patchBackend)
	if d.Node == nil {
		return
	}
	d.Cluster.HandleRPC(backendSessionsRPC, d.serveBackendSessions)
	a.HandleFunc("POST /v1/backends/{id}/drain", d.drainBackend)
	a.HandleFunc("GET /v1/backends/{id}/sessions", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		b := d.FSM.Table().Backend(id)
		if b == nil {
			admin.Error(w, http.StatusNotFound, "no backend "+strconv.Quote(id))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
		defer cancel()
		admin.JSON(w, http.StatusOK, d.gather(ctx, b, backendSessionsRequest{Backend: id}))
	})
}

// patchBackend changes the fields the body names (a JSON merge patch,
// sent as application/json like every change, see ops/admin), applied by
// the leader to the backend as the table holds it then.
func (d *api) patchBackend(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, admin.MaxBody))
	if err != nil {
		admin.Error(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", admin.MaxBody))
		return
	}
	p, err := routing.ParseBackendPatch(r.PathValue("id"), body)
	if err != nil {
		admin.Error(w, statusOf(err), err.Error())
		return
	}
	d.write(w, r, routing.Command{Type: routing.CmdPatchBackend, Patch: &p})
}

// drainBackend sets the backend's state to draining (no new logins go
// there), then has every node of the cluster end its sessions on it at a
// response boundary, spread over the spread. It answers once every node
// has started (202); GET .../sessions follows the progress.
func (d *api) drainBackend(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var req DrainRequest
	if r.ContentLength != 0 && !admin.Decode(w, r, admin.MaxBody, &req) {
		return
	}
	var spreadMS *int64
	if req.Spread != "" {
		s, err := time.ParseDuration(req.Spread)
		if err != nil || s < 0 || s > maxDrainSpread {
			admin.Error(w, http.StatusBadRequest, fmt.Sprintf("spread %q: want a duration from 0s to %v", req.Spread, maxDrainSpread))
			return
		}
		ms := s.Milliseconds()
		spreadMS = &ms
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	st := routing.StateDraining
	if err := d.Cluster.Apply(ctx, routing.Command{Type: routing.CmdPatchBackend, Patch: &routing.BackendPatch{ID: id, State: &st}}); err != nil {
		admin.Error(w, statusOf(err), err.Error())
		return
	}
	// This node's table now holds the change (and so its index, which
	// the other nodes wait for before they end sessions).
	if err := d.Cluster.ConsistentRead(ctx); err != nil {
		admin.Error(w, http.StatusServiceUnavailable, "the backend is draining, but its sessions were not ended: "+err.Error())
		return
	}
	b := d.FSM.Table().Backend(id)
	if b == nil {
		admin.Error(w, http.StatusConflict, "backend "+strconv.Quote(id)+" was deleted meanwhile")
		return
	}
	res := d.gather(ctx, b, backendSessionsRequest{Backend: id, End: true, SpreadMS: spreadMS, Index: d.FSM.AppliedIndex()})
	admin.JSON(w, http.StatusAccepted, res)
}

// gather sends req to every node and sums the answers.
func (d *api) gather(ctx context.Context, b *routing.Backend, req backendSessionsRequest) BackendSessions {
	body, _ := json.Marshal(req)
	res := BackendSessions{Backend: b.ID, State: b.State, Complete: true, Nodes: []NodeSessions{}}
	var gone map[string]bool
	for _, rep := range d.Cluster.CallEach(ctx, backendSessionsRPC, body) {
		ns := NodeSessions{Node: rep.Node}
		var a backendSessionsAnswer
		switch {
		case rep.Err != nil && rep.Status == 0:
			if gone == nil {
				gone = map[string]bool{}
				for _, m := range d.Cluster.Members() {
					gone[m.Name] = m.State == "dead" || m.State == "left"
				}
			}
			ns.Error, ns.Skipped = rep.Err.Error(), gone[rep.Node]
		case rep.Err != nil:
			ns.Error = rep.Err.Error()
		case json.Unmarshal(rep.Body, &a) != nil:
			ns.Error = fmt.Sprintf("bad answer (HTTP %d): %.200s", rep.Status, rep.Body)
		case rep.Status != http.StatusOK:
			ns.Sessions, ns.Error = a.Sessions, fmt.Sprintf("HTTP %d: %s", rep.Status, a.Error)
		default:
			ns.Sessions = a.Sessions
		}
		if ns.Error != "" && !ns.Skipped {
			res.Complete = false
		}
		res.Sessions += ns.Sessions
		res.Nodes = append(res.Nodes, ns)
	}
	return res
}

// serveBackendSessions is the cluster RPC: count this node's sessions on
// the backend and, for a drain, start ending them once this node has
// applied the drain's state change.
func (d *api) serveBackendSessions(ctx context.Context, body []byte) (int, any) {
	var req backendSessionsRequest
	if err := json.Unmarshal(body, &req); err != nil || req.Backend == "" {
		return http.StatusBadRequest, backendSessionsAnswer{Error: "body must be {\"backend\": ID, ...}"}
	}
	if !req.End {
		return http.StatusOK, backendSessionsAnswer{Sessions: d.Node.BackendSessions(req.Backend)}
	}
	wait, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for d.FSM.AppliedIndex() < req.Index {
		select {
		case <-wait.Done():
			return http.StatusServiceUnavailable, backendSessionsAnswer{
				Sessions: d.Node.BackendSessions(req.Backend),
				Error: fmt.Sprintf("this node has not applied the drain (index %d; applied %d): its sessions were not ended",
					req.Index, d.FSM.AppliedIndex()),
			}
		case <-time.After(10 * time.Millisecond):
		}
	}
	id := req.Backend
	draining := func() bool {
		b := d.FSM.Table().Backend(id)
		return b == nil || b.State != routing.StateActive
	}
	n := d.Node.BackendSessions(id)
	spread := time.Duration(-1)
	if req.SpreadMS != nil && *req.SpreadMS >= 0 {
		spread = time.Duration(*req.SpreadMS) * time.Millisecond
	}
	d.Node.EndBackendSessions(id, spread, draining)
	return http.StatusOK, backendSessionsAnswer{Sessions: n}
}

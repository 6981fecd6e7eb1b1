package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/vip"
)

// vipState is the floating address: the mechanism (vip.Manager) and the
// ownership policy (vip.Controller), both in package vip. This file wires
// them to the cluster, the proxy, the metrics and the admin API.
type vipState struct {
	m    *vip.Manager
	ctrl *vip.Controller
}

// setupVIP makes the virtual addresses follow raft leadership (see
// vip/DESIGN.md). It runs after the proxy server exists (a move refuses
// and ends its connections) and before the cluster starts.
func (d *Daemon) setupVIP(cfg *config.Config) error {
	vc := cfg.VIP
	if len(vc.Addresses) == 0 {
		return nil
	}
	var ips []netip.Addr
	for _, a := range vc.Addresses {
		ips = append(ips, a.Prefix.Addr())
	}
	ownerG := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "portico", Subsystem: "vip", Name: "owner",
		Help: "1 while this node holds the virtual address."}, []string{"vip"})
	changes := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "portico", Subsystem: "vip", Name: "ownership_changes_total",
		Help: "Times this node acquired or released a virtual address (each address counts)."})
	anns := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "portico", Subsystem: "vip", Name: "announcements_total",
		Help: "Gratuitous ARP / unsolicited neighbour advertisement rounds sent."})
	d.Metrics.MustRegister(ownerG, changes, anns)
	for _, a := range ips {
		ownerG.WithLabelValues(a.String()).Set(0)
	}
	agent := d.cluster
	mc := cfg.VIPConfig()
	mc.Verify = agent.VerifyLeader
	mc.OnChange = func(a vip.Address, owned bool) {
		changes.Inc()
		v := 0.0
		if owned {
			v = 1
		}
		ownerG.WithLabelValues(a.Prefix.Addr().String()).Set(v)
	}
	mc.OnAnnounce = func(vip.Address) { anns.Inc() }
	mc.Log = d.Log
	m, err := vip.New(mc)
	if err != nil {
		return err
	}
	ctrl := vip.NewController(vip.ControllerConfig{
		Holder: m, Leadership: agent, Sessions: d.srv, Addresses: ips,
		Draining:  d.Draining,
		Go:        d.group.GoLate, // its sweeps end sessions while the proxy drains
		HoldUntil: d.inherit.VIPHoldUntil(),
		EndHold:   agent.ReleasePeerElections,
		Reconcile: vc.Reconcile.D(), Preferred: vc.Preferred, PreemptDelay: vc.PreemptDelay.D(),
		MoveDrain: vc.MoveDrain.D(),
		Log:       d.Log.With("component", "vip"),
	})
	d.vip = &vipState{m: m, ctrl: ctrl}
	agent.OnLeadership(ctrl.SetLeading)
	agent.RunWhileLeader(ctrl.Preempt)
	// A member back after a partition or a restart: announce again now
	// (after the refresh's leadership check) rather than at the next
	// refresh, for the hosts that were on its side of the split.
	agent.OnMemberJoin(func(string) { m.Reannounce() })
	// Both run until the proxy has stopped at shutdown: the guard ends
	// the sessions left on the address this node handed away.
	d.onStart(func() error {
		d.group.GoLate(m.Run)
		d.group.GoLate(ctrl.Run)
		return nil
	})
	// Hand the VIP away first at shutdown (before sessions are drained),
	// so clients reconnect to the new owner while this node winds down.
	d.beforeShutdown = append(d.beforeShutdown, func(context.Context) { ctrl.Leave() })
	agent.HandleRPC(vipMoveRPC, func(ctx context.Context, body []byte) (int, any) {
		return d.vipMove(ctx, body, true)
	})
	d.addStatus(d.vipStatusSection)
	if d.admin != nil {
		d.admin.HandleFunc("GET /v1/vip", func(w http.ResponseWriter, r *http.Request) {
			admin.JSON(w, http.StatusOK, d.vipStatus())
		})
		d.admin.HandleFunc("POST /v1/vip/move", func(w http.ResponseWriter, r *http.Request) {
			raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4096))
			if err != nil {
				admin.Error(w, http.StatusRequestEntityTooLarge, "body too large")
				return
			}
			status, answer := d.vipMove(r.Context(), raw, false)
			if raw, ok := answer.(json.RawMessage); ok {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				_, _ = w.Write(raw)
				return
			}
			admin.JSON(w, status, answer)
		})
	}
	return nil
}

// vipMoveRPC is the cluster RPC a node passes `vip move` to the leader
// on (over the cluster's mutual TLS, not the leader's admin API: no admin
// token between nodes).
const vipMoveRPC = "/v1/ext/vip-move"

// vipMove is POST /v1/vip/move {"to": "node"} (vip.Controller.Move): on
// the leader it moves the VIP; a follower passes the call to the leader
// over the cluster RPC, and a call so passed on is never passed again
// (leadership is moving). It returns the status and the JSON answer.
func (d *Daemon) vipMove(ctx context.Context, raw []byte, forwarded bool) (int, any) {
	var body struct {
		To string `json:"to"`
	}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &body); err != nil {
			return http.StatusBadRequest, admin.ErrorBody{Error: "invalid JSON: " + err.Error()}
		}
	}
	res, err := d.vip.ctrl.Move(ctx, body.To)
	switch {
	case err == nil:
		return http.StatusOK, res
	case errors.Is(err, vip.ErrNotLeader) && forwarded:
		// Passed on by a node that took this one for the leader:
		// leadership is moving; do not pass it on again.
		return http.StatusServiceUnavailable, admin.ErrorBody{Error: "not the raft leader (leadership is moving); retry"}
	case errors.Is(err, vip.ErrNotLeader):
		status, b, err := d.cluster.CallLeader(ctx, vipMoveRPC, raw)
		if err != nil {
			return http.StatusServiceUnavailable, admin.ErrorBody{Error: err.Error()}
		}
		return status, json.RawMessage(b)
	case errors.Is(err, vip.ErrBadTarget):
		return http.StatusBadRequest, admin.ErrorBody{Error: err.Error()}
	case errors.Is(err, vip.ErrMoving):
		return http.StatusConflict, admin.ErrorBody{Error: err.Error()}
	}
	return http.StatusServiceUnavailable, admin.ErrorBody{Error: err.Error()}
}

// VIPStatus is GET /v1/vip.
type VIPStatus struct {
	Addresses     []string `json:"addresses"`
	Owner         string   `json:"owner"` // the raft leader, who holds the VIP
	Self          string   `json:"self"`
	SelfOwns      bool     `json:"self_owns"`
	Moving        bool     `json:"moving"`
	Changes       uint64   `json:"ownership_changes"`
	Announcements uint64   `json:"announcements"`
}

func (d *Daemon) vipStatus() VIPStatus {
	leader, _ := d.cluster.Leader()
	m := d.vip.m
	c, a := m.Counters()
	st := VIPStatus{Owner: leader, Self: d.cluster.Name(), SelfOwns: m.Owned(), Moving: d.vip.ctrl.Moving(), Changes: c, Announcements: a}
	for _, x := range m.Addresses() {
		st.Addresses = append(st.Addresses, x.String())
	}
	return st
}

// vipStatusSection contributes the VIP section of GET /v1/status (the
// raft leader holds the addresses).
func (d *Daemon) vipStatusSection(st *Status) {
	leader, _ := d.cluster.Leader()
	v := &VIPSection{Owner: leader, SelfOwns: d.vip.m.Owned()}
	for _, a := range d.vip.m.Addresses() {
		v.Addresses = append(v.Addresses, a.String())
	}
	sort.Strings(v.Addresses)
	st.VIP = v
}

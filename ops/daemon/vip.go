package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/vip"
)

// vipState is the floating addresses: the mechanism (vip.Manager) and the
// ownership policy, both in package vip: vip.Controller in the leader
// mode (every address on the raft leader), vip.Spread in the spread mode
// (each address on one node). This file wires them to the cluster, the
// proxy, the metrics and the admin API.
type vipState struct {
	mode   string
	m      *vip.Manager
	ctrl   *vip.Controller // leader mode
	spread *vip.Spread     // spread mode
	notify *vip.Notifier   // nil: no vip.notify
}

// setupVIP makes the virtual addresses follow the ownership policy (see
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
	notifyRuns := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "portico", Subsystem: "vip", Name: "notify_runs_total",
		Help: "Runs of the vip.notify program, by event (acquire, release) and result (ok, failed, timeout, dropped)."}, []string{"event", "result"})
	// Spread mode only; exported at zero in the leader mode too (every
	// catalogued vip metric is there whenever addresses are configured).
	rpcRefused := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "portico", Subsystem: "vip", Name: "rpc_refused_total",
		Help: vipRPCRefusedHelp}, []string{"rpc"})
	d.Metrics.MustRegister(ownerG, changes, anns, notifyRuns, rpcRefused)
	for _, rpc := range []string{"lease", "release"} {
		rpcRefused.WithLabelValues(rpc)
	}
	for _, a := range ips {
		ownerG.WithLabelValues(a.String()).Set(0)
	}
	agent := d.cluster
	st := &vipState{mode: vc.Mode}
	if vc.Notify != "" {
		st.notify = vip.NewNotifier(vc.Notify, agent.Name(), vc.NotifyTimeout.D(), d.Log.With("component", "vip"))
		st.notify.OnResult = func(ev, res string) { notifyRuns.WithLabelValues(ev, res).Inc() }
	}
	// Exported at zero without a notify program too: the alerts and the
	// dashboard find the series.
	for _, ev := range []string{vip.EventAcquire, vip.EventRelease} {
		for _, res := range []string{"ok", "failed", "timeout"} {
			notifyRuns.WithLabelValues(ev, res)
		}
	}
	mc := cfg.VIPConfig()
	mc.Verify = agent.VerifyLeader
	mc.OnChange = func(a vip.Address, owned bool) {
		changes.Inc()
		v, ev := 0.0, vip.EventRelease
		if owned {
			v, ev = 1, vip.EventAcquire
		}
		ownerG.WithLabelValues(a.Prefix.Addr().String()).Set(v)
		if st.notify != nil {
			st.notify.Notify(a.Prefix.Addr(), ev)
		}
	}
	mc.OnAnnounce = func(vip.Address) { anns.Inc() }
	mc.Log = d.Log
	m, err := vip.New(mc)
	if err != nil {
		return err
	}
	st.m = m
	d.vip = st
	// A member back after a partition or a restart: announce again now
	// (after the refresh's ownership check) rather than at the next
	// refresh, for the hosts that were on its side of the split.
	agent.OnMemberJoin(func(string) { m.Reannounce() })
	if vc.Mode == config.VIPModeSpread {
		d.setupSpread(cfg, m, rpcRefused)
	} else {
		d.setupLeaderVIP(cfg, m, ips)
	}
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

// vipRPCRefusedHelp is portico_vip_rpc_refused_total's HELP text (the
// catalog in ops/metrics says the same).
const vipRPCRefusedHelp = "Spread-mode lease and release calls this node refused because of their caller, by rpc (lease, release): a node that is not a server in raft's configuration (removed from the cluster, or not added yet; its certificate alone is not enough), or a release not asked by the leader. 0 in the leader mode."

// setupLeaderVIP: every address follows raft leadership.
func (d *Daemon) setupLeaderVIP(cfg *config.Config, m *vip.Manager, ips []netip.Addr) {
	vc := cfg.VIP
	agent := d.cluster
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
	d.vip.ctrl = ctrl
	// Announcements are checked by the policy: a quorum confirms this
	// node leads, or it keeps an address inherited through an in-place
	// upgrade before its election.
	m.SetVerify(ctrl.Verify)
	agent.OnLeadership(ctrl.SetLeading)
	agent.RunWhileLeader(ctrl.Preempt)
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
}

// setupSpread: each address on one node, placed by the leader.
func (d *Daemon) setupSpread(cfg *config.Config, m *vip.Manager, rpcRefused *prometheus.CounterVec) {
	vc := cfg.VIP
	agent := d.cluster
	var addrs []vip.SpreadAddress
	for _, a := range vc.Addresses {
		addrs = append(addrs, vip.SpreadAddress{Addr: a.Prefix.Addr(), Prefer: a.Prefer})
	}

	sp := vip.NewSpread(vip.SpreadConfig{
		Holder: m, Cluster: spreadCluster{agent}, Table: placementTable{fsm: d.fsm, agent: agent},
		Sessions: d.srv, Addresses: addrs,
		Lease: vc.Lease.D(), Rebalance: vc.Rebalance, RebalanceDelay: vc.RebalanceDelay.D(),
		MoveDrain: vc.MoveDrain.D(), Draining: d.Draining,
		Go:        d.group.GoLate,
		HoldUntil: d.inherit.VIPHoldUntil(),
		OnRefused: func(rpc string) { rpcRefused.WithLabelValues(rpc).Inc() },
		Log:       d.Log.With("component", "vip"),
	})
	d.vip.spread = sp
	m.SetVerify(sp.Verify)
	agent.OnLeadership(sp.SetLeading)
	agent.RunWhileLeader(sp.Lead)
	// The caller is the node named by the certificate verified in the
	// cluster port's handshake; vip.Spread serves it only if it is a
	// server in raft's configuration (spreadCluster.IsServer).
	agent.HandleRPC(vip.LeaseRPC, func(ctx context.Context, body []byte) (int, any) {
		return sp.HandleLease(ctx, cluster.Caller(ctx), body)
	})
	agent.HandleRPC(vip.ReleaseRPC, func(ctx context.Context, body []byte) (int, any) {
		return sp.HandleRelease(ctx, cluster.Caller(ctx), body)
	})
	d.onStart(func() error {
		sp.Prime()
		d.group.GoLate(m.Run)
		d.group.GoLate(sp.Run)
		return nil
	})
	// At shutdown and drain, the leader moves this node's addresses to
	// other nodes (planned moves) before the sessions are drained.
	d.beforeShutdown = append(d.beforeShutdown, func(context.Context) { sp.Leave(vc.MoveDrain.D() + 3*time.Second) })
}

// spreadCluster adapts cluster.Agent to vip.SpreadCluster.
type spreadCluster struct{ *cluster.Agent }

func (c spreadCluster) Members() []vip.MemberLoad {
	var out []vip.MemberLoad
	for _, m := range c.Agent.Members() {
		out = append(out, vip.MemberLoad{Name: m.Name, Alive: m.State == "alive", Sessions: m.Sessions})
	}
	return out
}

// placementTable adapts the replicated routing table to vip.PlacementTable.
type placementTable struct {
	fsm   *routing.FSM
	agent *cluster.Agent
}

func (p placementTable) Placements() (map[netip.Addr]vip.Placement, string) {
	t := p.fsm.Table()
	out := map[netip.Addr]vip.Placement{}
	for _, v := range t.VIPs() {
		if a, err := netip.ParseAddr(v.Address); err == nil {
			out[a] = vip.Placement{Node: v.Node, Epoch: v.Epoch}
		}
	}
	return out, t.VIPLeader()
}

func (p placementTable) AppliedIndex() uint64 { return p.fsm.AppliedIndex() }

func (p placementTable) Place(ctx context.Context, ps map[netip.Addr]vip.Placement) error {
	c := routing.Command{Type: routing.CmdSetVIPs}
	for a, pl := range ps {
		c.VIPs = append(c.VIPs, routing.VIPAssignment{Address: a.String(), Node: pl.Node, Epoch: pl.Epoch})
	}
	sort.Slice(c.VIPs, func(i, j int) bool { return c.VIPs[i].Address < c.VIPs[j].Address })
	return p.apply(ctx, c)
}

func (p placementTable) Mark(ctx context.Context, leader string) error {
	return p.apply(ctx, routing.Command{Type: routing.CmdSetVIPs, Target: leader})
}

func (p placementTable) apply(ctx context.Context, c routing.Command) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := p.agent.Apply(ctx, c)
	if errors.Is(err, cluster.ErrUnsupported) {
		return errors.Join(vip.ErrPlacementUnsupported, err)
	}
	return err
}

// vipMoveRPC is the cluster RPC a node passes `vip move` to the leader
// on (over the cluster's mutual TLS, not the leader's admin API: no admin
// token between nodes).
const vipMoveRPC = "/v1/ext/vip-move"

// vipMove is POST /v1/vip/move {"to": "node", "address": "ip"}
// (vip.Controller.Move, vip.Spread.Move): on the leader it moves the VIP
// (in the spread mode, the one address); a follower passes the call to
// the leader over the cluster RPC, and a call so passed on is never
// passed again (leadership is moving). It returns the status and the
// JSON answer.
func (d *Daemon) vipMove(ctx context.Context, raw []byte, forwarded bool) (int, any) {
	var body struct {
		To      string `json:"to"`
		Address string `json:"address"`
	}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &body); err != nil {
			return http.StatusBadRequest, admin.ErrorBody{Error: "invalid JSON: " + err.Error()}
		}
	}
	var res any
	var err error
	if sp := d.vip.spread; sp != nil {
		var a netip.Addr
		switch {
		case body.Address != "":
			if a, err = netip.ParseAddr(body.Address); err != nil {
				return http.StatusBadRequest, admin.ErrorBody{Error: "address: " + err.Error()}
			}
		case len(d.vip.m.Addresses()) == 1:
			a = d.vip.m.Addresses()[0].Prefix.Addr()
		default:
			return http.StatusBadRequest, admin.ErrorBody{Error: "the spread mode moves one address at a time: name it (portico vip move ADDRESS)"}
		}
		res, err = sp.Move(ctx, a, body.To)
	} else {
		if body.Address != "" && !slicesContainsAddr(d.vip.m.Addresses(), body.Address) {
			return http.StatusBadRequest, admin.ErrorBody{Error: body.Address + " is not a virtual address of this cluster"}
		}
		res, err = d.vip.ctrl.Move(ctx, body.To)
	}
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

func slicesContainsAddr(as []vip.Address, s string) bool {
	for _, a := range as {
		if a.Prefix.Addr().String() == s {
			return true
		}
	}
	return false
}

// VIPStatus is GET /v1/vip.
type VIPStatus struct {
	Mode          string              `json:"mode"`
	Addresses     []string            `json:"addresses"`
	Owner         string              `json:"owner"` // leader mode: the raft leader, who holds every address
	Placements    []vip.AddressStatus `json:"placements"`
	Self          string              `json:"self"`
	SelfOwns      bool                `json:"self_owns"` // this node holds an address
	Moving        bool                `json:"moving"`
	Changes       uint64              `json:"ownership_changes"`
	Announcements uint64              `json:"announcements"`
}

func (d *Daemon) vipStatus() VIPStatus {
	leader, _ := d.cluster.Leader()
	m := d.vip.m
	c, a := m.Counters()
	st := VIPStatus{Mode: d.vip.mode, Self: d.cluster.Name(), SelfOwns: m.Owned(), Changes: c, Announcements: a}
	for _, x := range m.Addresses() {
		st.Addresses = append(st.Addresses, x.String())
	}
	if sp := d.vip.spread; sp != nil {
		st.Placements = sp.Status()
		for _, p := range st.Placements {
			st.Moving = st.Moving || p.Moving
		}
		return st
	}
	st.Owner, st.Moving = leader, d.vip.ctrl.Moving()
	for _, x := range m.Addresses() {
		ip := x.Prefix.Addr()
		st.Placements = append(st.Placements, vip.AddressStatus{Address: ip.String(), Owner: leader, Held: m.Holds(ip), Moving: st.Moving})
	}
	return st
}

// vipStatusSection contributes the VIP section of GET /v1/status.
func (d *Daemon) vipStatusSection(st *Status) {
	vs := d.vipStatus()
	v := &VIPSection{Mode: vs.Mode, Owner: vs.Owner, SelfOwns: vs.SelfOwns, Owners: map[string]string{}}
	for _, a := range d.vip.m.Addresses() {
		v.Addresses = append(v.Addresses, a.String())
	}
	for _, p := range vs.Placements {
		v.Owners[p.Address] = p.Owner
	}
	sort.Strings(v.Addresses)
	st.VIP = v
}

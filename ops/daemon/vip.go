package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/vip"
)

// vipState is the daemon's floating-address machinery.
type vipState struct {
	m       *vip.Manager
	addrs   map[netip.Addr]bool
	moving  atomic.Bool
	leading atomic.Bool // as last notified by OnLeadership (after the barrier)
	handing atomic.Bool // a handover is in progress (vipHandover)
	// holdUntil (unix ns): after an in-place upgrade of the owner, this
	// process keeps the VIP it inherited, without being leader yet, until
	// it wins the next election or this passes (upgrade.go).
	holdUntil atomic.Int64
	ownerG    *prometheus.GaugeVec
	changes   prometheus.Counter
	anns      prometheus.Counter
}

// setupVIP makes the virtual addresses follow raft leadership: the leader
// acquires them after its barrier, and releases them when it stops being
// leader (including when it cannot reach a quorum: raft steps down after
// its lease). See vip/DESIGN.md.
func (d *Daemon) setupVIP(cfg *config.Config) error {
	vc := cfg.VIP
	if len(vc.Addresses) == 0 {
		return nil
	}
	st := &vipState{addrs: map[netip.Addr]bool{}}
	for _, a := range vc.Addresses {
		st.addrs[a.Prefix.Addr()] = true
	}
	st.ownerG = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "portico", Subsystem: "vip", Name: "owner",
		Help: "1 while this node holds the virtual address."}, []string{"vip"})
	st.changes = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "portico", Subsystem: "vip", Name: "ownership_changes_total",
		Help: "Times this node acquired or released the virtual addresses."})
	st.anns = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "portico", Subsystem: "vip", Name: "announcements_total",
		Help: "Gratuitous ARP / unsolicited neighbour advertisement rounds sent."})
	d.Metrics.MustRegister(st.ownerG, st.changes, st.anns)
	for a := range st.addrs {
		st.ownerG.WithLabelValues(a.String()).Set(0)
	}
	mc := cfg.VIPConfig()
	mc.Verify = d.cluster.VerifyLeader
	mc.OnChange = func(owned bool) {
		st.changes.Inc()
		v := 0.0
		if owned {
			v = 1
		}
		for a := range st.addrs {
			st.ownerG.WithLabelValues(a.String()).Set(v)
		}
	}
	mc.OnAnnounce = func(vip.Address) { st.anns.Inc() }
	mc.Log = d.Log
	m, err := vip.New(mc)
	if err != nil {
		return err
	}
	st.m = m
	d.vip = st
	if h := d.inherit; h != nil && h.VIPHoldUntil().After(time.Now()) {
		// Inherited from the previous process of an in-place upgrade:
		// keep the address (Run would otherwise remove it as stale) until
		// this node leads again or the hold ends.
		st.holdUntil.Store(h.VIPHoldUntil().UnixNano())
		m.SetOwner(true)
		d.Log.Info("keeping the VIP through the in-place upgrade until this node leads again", "until", h.VIPHoldUntil())
	}
	d.cluster.OnLeadership(func(leader bool) {
		st.leading.Store(leader)
		if leader && st.holdUntil.Swap(0) != 0 {
			go d.cluster.ReleasePeerElections(context.Background())
		}
		if !leader {
			st.moving.Store(false)
			if d.srv != nil {
				d.srv.SetRefuse(nil)
			}
		}
		m.SetOwner(leader)
		if leader && d.Draining() {
			// Elected while draining (the new leader failed): serve the
			// VIP rather than leave it unowned, but pass leadership on.
			go func() {
				if err := d.vipHandover(nil, false); err != nil {
					d.Log.Warn("draining node became leader and could not hand leadership on", "error", err)
				}
			}()
		}
	})
	// A member back after a partition or a restart: announce again now
	// (after the refresh's leadership check) rather than at the next
	// refresh, for the hosts that were on its side of the split.
	d.cluster.OnMemberJoin(func(string) { m.Reannounce() })
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	d.onStart(func() error {
		go func() { m.Run(ctx); close(stopped) }()
		go d.vipGuard(ctx, vc.Reconcile.D())
		if len(vc.Preferred) > 0 {
			go d.vipPreempt(ctx, vc.Preferred, vc.PreemptDelay.D())
		}
		return nil
	})
	// Hand the VIP away first at shutdown (before sessions are drained),
	// so clients reconnect to the new owner while this node winds down.
	d.beforeShutdown = append(d.beforeShutdown, func(context.Context) {
		if d.cluster.IsLeader() {
			if err := d.vipHandover(nil, true); err != nil {
				d.Log.Warn("handing leadership (and the VIP) away at shutdown failed", "error", err)
			}
		}
		m.SetOwner(false)
	})
	d.onShutdown(func(context.Context) {
		cancel()
		<-stopped
	})
	d.cluster.HandleRPC("POST "+vipMoveRPC, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Set(vipMoveForwarded, "1")
		d.vipMove(w, r)
	}))
	if d.admin != nil {
		d.admin.HandleFunc("GET /v1/vip", d.vipStatus)
		d.admin.HandleFunc("POST /v1/vip/move", d.vipMove)
	}
	return nil
}

// vipHandover hands raft leadership, and with it the VIP, to target (any
// other voter when nil). The VIP is released first: the next leader
// acquires it as soon as it leads, so releasing after the transfer (when
// this node learns it lost leadership) would let both hold it for a moment.
// If the transfer fails and this node still leads, it takes the VIP back
// (unless it is shutting down).
func (d *Daemon) vipHandover(target *raft.Server, shuttingDown bool) error {
	d.vip.handing.Store(true)
	defer d.vip.handing.Store(false)
	if err := d.vip.m.Release(time.Second); err != nil {
		d.Log.Warn("releasing the VIP before handing leadership over", "error", err)
	}
	to := ""
	if target != nil {
		to = string(target.ID)
	}
	err := d.cluster.TransferLeadership(to)
	if err != nil && !shuttingDown && d.cluster.VerifyLeader() == nil {
		d.vip.m.SetOwner(true)
	}
	return err
}

// vipHeld: this process keeps a VIP inherited through an in-place upgrade
// while no other node is known to lead and the hold has not ended.
func (d *Daemon) vipHeld() bool {
	until := d.vip.holdUntil.Load()
	if until == 0 || time.Now().UnixNano() >= until {
		return false
	}
	leader, _ := d.cluster.Leader()
	return leader == "" || leader == d.cluster.Name()
}

// vipGuard releases the addresses whenever raft says this node is not the
// leader, independently of the leadership notifications (belt and braces:
// a missed or delayed notification cannot leave the VIP on a follower),
// and takes them back when this node leads and serves but does not hold
// them (a drain cancelled after a failed handover).
// While it does not hold the VIP, it also ends relayed sessions on the VIP
// addresses: their clients' packets now go to the new owner (which resets
// them), so they could only linger until the idle timeout, holding backend
// connections. That covers sessions of an owner cut off from the cluster,
// and a login that completed just after a planned move ended the others.
func (d *Daemon) vipGuard(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = vip.DefaultConfig().Reconcile
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var sweeping atomic.Bool
	isVIP := func(local netip.AddrPort) bool { return d.vip.addrs[local.Addr()] }
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			owned, leader := d.vip.m.Owned(), d.cluster.IsLeader()
			switch {
			case owned && !leader && d.vipHeld():
				// Inherited through an in-place upgrade; leading soon.
			case owned && !leader:
				d.Log.Warn("holding the VIP while not raft leader; releasing")
				d.vip.m.SetOwner(false)
			case !owned && leader && d.vip.leading.Load() && !d.vip.handing.Load() && !d.vip.moving.Load() && !d.Draining():
				// raft's state can still say Leader for a lease period
				// after this node lost leadership (woken from a freeze):
				// confirm with a quorum first.
				if err := d.cluster.VerifyLeader(); err == nil && !d.vip.handing.Load() && !d.vip.moving.Load() {
					d.Log.Info("leading and serving without the VIP; taking it")
					d.vip.m.SetOwner(true)
				}
			}
			if !d.vip.m.Owned() && sweeping.CompareAndSwap(false, true) {
				go func() {
					defer sweeping.Store(false)
					sctx, cancel := context.WithTimeout(ctx, time.Second)
					defer cancel()
					if n := d.srv.EndSessions(sctx, isVIP, "Server moving, please reconnect.", 0); n > 0 {
						d.Log.Info("ended sessions on the VIP, which this node no longer holds", "sessions", n)
					}
				}()
			}
		}
	}
}

// vipPreempt moves leadership (and so the VIP) to a preferred node once
// it has been a live member for the hold-down (keepalived's preempt_delay).
func (d *Daemon) vipPreempt(ctx context.Context, preferred []string, hold time.Duration) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	since := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !d.cluster.IsLeader() || slices.Contains(preferred, d.cluster.Name()) {
			clear(since)
			continue
		}
		peers, err := d.cluster.Peers()
		if err != nil {
			continue
		}
		alive := map[string]bool{}
		for _, m := range d.cluster.Members() {
			alive[m.Name] = m.State == "alive"
		}
		for _, name := range preferred {
			var target *raft.Server
			for _, p := range peers {
				if p.ID == name && p.Suffrage == "voter" {
					target = &raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Address)}
				}
			}
			if target == nil || !alive[name] {
				delete(since, name)
				continue
			}
			if _, ok := since[name]; !ok {
				since[name] = time.Now()
			}
			if time.Since(since[name]) >= hold {
				d.Log.Info("preferred node healthy for the hold-down; moving leadership and the VIP to it", "to", name, "hold", hold)
				if err := d.vipHandover(target, false); err != nil {
					d.Log.Warn("preemptive move failed", "to", name, "error", err)
				}
				clear(since)
				break
			}
		}
	}
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

func (d *Daemon) vipStatus(w http.ResponseWriter, r *http.Request) {
	leader, _ := d.cluster.Leader()
	c, a := d.vip.m.Counters()
	st := VIPStatus{Owner: leader, Self: d.cluster.Name(), SelfOwns: d.vip.m.Owned(), Moving: d.vip.moving.Load(), Changes: c, Announcements: a}
	for _, x := range d.vip.m.Addresses() {
		st.Addresses = append(st.Addresses, x.String())
	}
	admin.JSON(w, 200, st)
}

// vipMove is POST /v1/vip/move {"to": "node"}: a planned handover. The
// owner stops accepting on the VIP (new connections are reset, so clients
// retry and find the new owner), ends its sessions on the VIP at response
// boundaries, then transfers raft leadership; the new leader acquires and
// announces the address, this node releases it.
func (d *Daemon) vipMove(w http.ResponseWriter, r *http.Request) {
	var body struct {
		To string `json:"to"`
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4096))
	if err != nil {
		admin.Error(w, 413, "body too large")
		return
	}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &body); err != nil {
			admin.Error(w, 400, "invalid JSON: "+err.Error())
			return
		}
	}
	if !d.cluster.IsLeader() {
		if r.Header.Get(vipMoveForwarded) != "" {
			// Passed on by a node that took this one for the leader:
			// leadership is moving; do not pass it on again.
			admin.Error(w, 503, "not the raft leader (leadership is moving); retry")
			return
		}
		status, b, err := d.cluster.CallLeader(r.Context(), vipMoveRPC, raw)
		if err != nil {
			admin.Error(w, 503, err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(b)
		return
	}
	var target *raft.Server
	if body.To != "" {
		if body.To == d.cluster.Name() {
			admin.Error(w, 400, body.To+" already holds the VIP")
			return
		}
		peers, err := d.cluster.Peers()
		if err != nil {
			admin.Error(w, 503, err.Error())
			return
		}
		for _, p := range peers {
			if p.ID == body.To && p.Suffrage == "voter" {
				target = &raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Address)}
			}
		}
		if target == nil {
			admin.Error(w, 400, fmt.Sprintf("%s is not a raft voter (only voters can lead and hold the VIP)", body.To))
			return
		}
	}
	if !d.vip.moving.CompareAndSwap(false, true) {
		admin.Error(w, 409, "a move is already in progress")
		return
	}
	start := time.Now()
	isVIP := func(local netip.AddrPort) bool { return d.vip.addrs[local.Addr()] }
	d.srv.SetRefuse(isVIP)
	// All at once (no spread): new connections are refused until the new
	// owner has the address, so this is the gap clients see; their own
	// reconnect back-off spreads the load on the new owner.
	ctx, cancel := context.WithTimeout(r.Context(), d.cfg.VIP.MoveDrain.D())
	ended := d.srv.EndSessions(ctx, isVIP, "Server moving, please reconnect.", 0)
	cancel()
	if terr := d.vipHandover(target, false); terr != nil {
		d.srv.SetRefuse(nil)
		d.vip.moving.Store(false)
		admin.Error(w, 503, "leadership transfer failed: "+terr.Error())
		return
	}
	// The new leader is known here once its first heartbeat arrives.
	leader := ""
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if l, _ := d.cluster.Leader(); l != "" && l != d.cluster.Name() {
			leader = l
			break
		}
	}
	admin.JSON(w, 200, map[string]any{"from": d.cluster.Name(), "to": leader, "sessions_ended": ended,
		"took_ms": time.Since(start).Milliseconds()})
}

// vipMoveRPC is the cluster RPC a node passes `vip move` to the leader
// on (over the cluster's mutual TLS, not the leader's admin API: no admin
// token between nodes). vipMoveForwarded marks such a call.
const (
	vipMoveRPC       = "/v1/ext/vip-move"
	vipMoveForwarded = "X-Portico-Forwarded"
)

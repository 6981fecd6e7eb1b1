package cluster

import (
	"encoding/binary"
	"encoding/json"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/portico-mail/portico/routing"
)

// HealthConfig configures backend probes; a zero takes its default
// (DefaultHealthConfig).
type HealthConfig struct {
	Interval time.Duration // between probes of one backend
	Timeout  time.Duration // one probe, from connect to LOGOUT
	Fall     int           // consecutive failures before a backend is down for this node
	Rise     int           // consecutive successes before it is up again
	// Probe checks one backend (probe.go); nil: ConnectProbe.
	Probe ProbeFunc
}

// DefaultHealthConfig returns the defaults documented in the README: a
// probe of each backend every 2 s, failed after 2 s, two failures in a row
// to call it down and two successes to call it up again.
func DefaultHealthConfig() HealthConfig {
	return HealthConfig{Interval: 2 * time.Second, Timeout: 2 * time.Second, Fall: 2, Rise: 2}
}

func (h *HealthConfig) defaults() {
	d := DefaultHealthConfig()
	if h.Interval <= 0 {
		h.Interval = d.Interval
	}
	if h.Timeout <= 0 {
		h.Timeout = d.Timeout
	}
	if h.Fall <= 0 {
		h.Fall = d.Fall
	}
	if h.Rise <= 0 {
		h.Rise = d.Rise
	}
}

// channelHealth is the gossip channel id of backend health views;
// sealHealthView seals each view on its own (see LocalState).
const (
	channelHealth  = 1
	sealHealthView = 0x81
)

// maxHealthMsg bounds a health message from the network.
const maxHealthMsg = 256 << 10

// healthView is one node's opinion of the backends.
type healthView struct {
	Node string   `json:"n"`
	Inc  int64    `json:"i"` // incarnation: the node's start time
	Seq  uint64   `json:"s"`
	Down []string `json:"d,omitempty"`

	sealed []byte // the view as its node sealed it (relayed as is)
}

func (v *healthView) newer(o *healthView) bool {
	return v.Inc > o.Inc || v.Inc == o.Inc && v.Seq > o.Seq
}

// Health probes backends from this node, gossips its view, and decides
// from all views which backends are down: a backend is down when a majority
// of the live members say so (one node's bad link cannot take a backend out
// of service for everyone).
type Health struct {
	n    *Agent
	fsm  *routing.FSM
	cfg  HealthConfig
	log  interface{ Warn(string, ...any) }
	inc  int64
	seq  atomic.Uint64
	down atomic.Pointer[map[string]bool] // cluster decision

	mu      sync.Mutex
	views   map[string]*healthView // by node name, including ours
	streak  map[string]int         // >0: consecutive successes, <0: failures
	localDn map[string]bool
	stop    chan struct{}
	done    chan struct{}
}

// StartHealth starts probing; the FSM's lookups then skip down backends.
func (n *Agent) StartHealth(fsm *routing.FSM, cfg HealthConfig) *Health {
	cfg.defaults()
	h := &Health{n: n, fsm: fsm, cfg: cfg, log: n.log, inc: time.Now().UnixNano(),
		views: map[string]*healthView{}, streak: map[string]int{}, localDn: map[string]bool{},
		stop: make(chan struct{}), done: make(chan struct{})}
	empty := map[string]bool{}
	h.down.Store(&empty)
	n.Register(channelHealth, h)
	fsm.SetHealth(h.IsDown)
	go h.loop()
	return h
}

// IsDown is the routing.HealthFunc (lock-free).
func (h *Health) IsDown(id string) bool { return (*h.down.Load())[id] }

// Down returns the backends the cluster considers down.
func (h *Health) Down() map[string]bool {
	m := *h.down.Load()
	out := make(map[string]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// LocalDown returns this node's own opinion.
func (h *Health) LocalDown() map[string]bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]bool{}
	for k, v := range h.localDn {
		out[k] = v
	}
	return out
}

// Stop ends probing.
func (h *Health) Stop() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
}

func (h *Health) loop() {
	defer close(h.done)
	t := time.NewTicker(h.cfg.Interval)
	defer t.Stop()
	h.probeAll()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			h.probeAll()
		}
	}
}

func (h *Health) probeAll() {
	backends := h.fsm.Table().Backends()
	var wg sync.WaitGroup
	results := make([]error, len(backends))
	for i, b := range backends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = h.probe(b)
		}()
	}
	wg.Wait()
	h.mu.Lock()
	changed := false
	present := map[string]bool{}
	for i, b := range backends {
		present[b.ID] = true
		s := h.streak[b.ID]
		if results[i] == nil {
			if s < 0 {
				s = 0
			}
			s++
		} else {
			if s > 0 {
				s = 0
			}
			s--
		}
		h.streak[b.ID] = s
		switch {
		case !h.localDn[b.ID] && s <= -h.cfg.Fall:
			h.localDn[b.ID] = true
			changed = true
			h.log.Warn("backend failed health checks from this node", "backend", b.ID, "address", probeAddr(b), "error", results[i])
		case h.localDn[b.ID] && s >= h.cfg.Rise:
			delete(h.localDn, b.ID)
			changed = true
			h.log.Warn("backend healthy again from this node", "backend", b.ID)
		}
	}
	for id := range h.localDn {
		if !present[id] {
			delete(h.localDn, id)
			changed = true
		}
	}
	for id := range h.streak {
		if !present[id] {
			delete(h.streak, id)
		}
	}
	var view *healthView
	if changed || h.views[h.n.cfg.NodeName] == nil || h.seq.Load()%15 == 0 {
		view = &healthView{Node: h.n.cfg.NodeName, Inc: h.inc, Seq: h.seq.Add(1)}
		for id := range h.localDn {
			view.Down = append(view.Down, id)
		}
		sort.Strings(view.Down)
		if b, err := json.Marshal(view); err == nil {
			view.sealed = h.n.seal(sealHealthView, b)
		}
		h.views[view.Node] = view
	} else {
		h.seq.Add(1)
	}
	h.mu.Unlock()
	if view != nil && view.sealed != nil {
		h.n.Broadcast(channelHealth, appendSealedList(nil, view.sealed))
	}
	h.decide()
}

// decide recomputes the cluster's decision from the views of live members.
func (h *Health) decide() {
	alive := map[string]bool{}
	for _, m := range h.n.del.snapshot() {
		if m.state == memberlist.StateAlive {
			alive[m.name] = true
		}
	}
	h.mu.Lock()
	votes := map[string]int{}
	for node, v := range h.views {
		if !alive[node] {
			continue
		}
		for _, id := range v.Down {
			votes[id]++
		}
	}
	h.mu.Unlock()
	down := map[string]bool{}
	for id, n := range votes {
		if n*2 > len(alive) {
			down[id] = true
		}
	}
	old := *h.down.Load()
	if !sameSet(old, down) {
		h.log.Warn("backend health changed (cluster decision)", "down", keys(down), "live_members", len(alive))
	}
	h.down.Store(&down)
}

func sameSet(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// LocalState implements Channel: every view this node knows, each as its
// own node sealed it, so that a receiver checks each view against the
// node it is about, whoever relays it.
//
//	state = view_count:uvarint (len:uvarint sealed_view)*
func (h *Health) LocalState() []byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b []byte
	for _, v := range h.views {
		if v.sealed != nil {
			b = appendSealedList(b, v.sealed)
		}
	}
	return b
}

func appendSealedList(b, sealed []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(sealed)))
	return append(b, sealed...)
}

// MergeRemote implements Channel: a list of sealed views (one in a
// broadcast, all in a push/pull). A view is taken only with its own
// node's signature: nobody can speak for another node's health opinion,
// whoever relays it. Input from the network is bounded and validated.
func (h *Health) MergeRemote(from string, b []byte) {
	if len(b) > maxHealthMsg {
		return
	}
	var accepted []*healthView
	for len(b) > 0 {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return
		}
		sealed := b[k : k+int(l)]
		b = b[k+int(l):]
		origin, payload, err := h.n.open(sealHealthView, sealed)
		if err != nil {
			continue
		}
		var v healthView
		if json.Unmarshal(payload, &v) != nil || v.Node != origin || v.Node == h.n.cfg.NodeName || len(v.Down) > 10000 {
			continue
		}
		v.sealed = append([]byte(nil), sealed...)
		accepted = append(accepted, &v)
	}
	if len(accepted) == 0 {
		return
	}
	h.mu.Lock()
	for _, v := range accepted {
		if old := h.views[v.Node]; old == nil || v.newer(old) {
			h.views[v.Node] = v
		}
	}
	h.mu.Unlock()
	go h.decide() // never block a memberlist callback
}

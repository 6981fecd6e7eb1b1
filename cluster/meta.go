package cluster

import (
	"encoding/json"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/portico-mail/portico/cluster/pki"
)

// Meta is the node metadata gossiped by memberlist, sealed (seal.go): at
// most 512 bytes with the signature.
type Meta struct {
	Version      string `json:"v,omitempty"`
	Role         string `json:"r,omitempty"` // "leader", "follower", "candidate", ...
	API          string `json:"a,omitempty"` // admin API host:port
	Raft         string `json:"t,omitempty"` // raft host:port
	Sessions     int    `json:"s,omitempty"` // open client connections
	Draining     bool   `json:"d,omitempty"`
	Bootstrapped bool   `json:"b,omitempty"` // has raft state (part of a formed cluster)
	// Level is the newest replicated command type this binary applies
	// (routing.CommandLevel): a leader writes a command type only when
	// every server's level reaches it.
	Level int `json:"l,omitempty"`
	// Seq orders this node's metadata (a replayed older copy is ignored).
	Seq uint64 `json:"q,omitempty"`
}

// unverifiedMeta parses sealed metadata without checking the signature:
// for display and for finding where to verify a node, never for a
// decision.
func unverifiedMeta(b []byte) *Meta {
	p, err := parseSeal(b)
	if err != nil {
		return nil
	}
	var m Meta
	if json.Unmarshal(p.payload, &m) != nil {
		return nil
	}
	return &m
}

// memberMeta returns name's metadata if it carries name's valid
// signature (or the newest such copy seen before, when the current one
// cannot be verified yet), and whether it is verified. Our own comes from
// memory.
func (n *Agent) memberMeta(name string, raw []byte) (*Meta, bool) {
	if name == n.cfg.NodeName {
		return n.meta.Load(), true
	}
	b := n.peers
	b.mu.Lock()
	tm := b.metas[name]
	b.mu.Unlock()
	if tm != nil && tm.raw == string(raw) {
		return tm.meta, true
	}
	from, payload, err := n.open(chanMeta, raw)
	var m Meta
	if err != nil || from != name || json.Unmarshal(payload, &m) != nil {
		if tm != nil {
			return tm.meta, true // the last verified copy
		}
		return nil, false
	}
	if tm != nil && m.Seq < tm.meta.Seq {
		return tm.meta, true // a replay of an older copy
	}
	b.mu.Lock()
	b.metas[name] = &trustedMeta{raw: string(raw), meta: &m}
	b.mu.Unlock()
	return &m, true
}

// Member is a cluster member as seen by this node.
type Member struct {
	Name     string `json:"name"`
	Address  string `json:"gossip_address"`
	State    string `json:"state"` // alive, suspect, dead, left
	Version  string `json:"version,omitempty"`
	Role     string `json:"role,omitempty"`
	API      string `json:"api,omitempty"`
	Raft     string `json:"raft,omitempty"`
	Sessions int    `json:"sessions"`
	Draining bool   `json:"draining"`
	// Verified: the metadata above carries the member's own valid
	// signature (a member not verified yet shows what it claims).
	Verified bool `json:"verified"`
	Level    int  `json:"level,omitempty"`
}

// SetLocal updates what this node gossips about itself; f edits a copy.
// The change is pushed by the meta loop (never from a memberlist callback).
func (n *Agent) SetLocal(f func(*Meta)) {
	for {
		old := n.meta.Load()
		cp := *old
		f(&cp)
		if cp == *old {
			return
		}
		cp.Seq = n.metaSeq.Add(1)
		if n.meta.CompareAndSwap(old, &cp) {
			return
		}
	}
}

// sealedMeta returns this node's metadata, sealed; the seal is made once
// per change (receivers cache what they verified by its bytes).
func (n *Agent) sealedMeta() []byte {
	m := n.meta.Load()
	if c := n.metaSealed.Load(); c != nil && c.m == m && c.key == n.trust.material().Self.KeyID {
		return c.b
	}
	b, _ := json.Marshal(m)
	s := n.seal(chanMeta, b)
	n.metaSealed.Store(&sealedMeta{m: m, key: n.trust.material().Self.KeyID, b: s})
	return s
}

type sealedMeta struct {
	m   *Meta
	key pki.KeyID
	b   []byte
}

// metaLoop keeps the gossiped metadata current (role, bootstrapped) and
// pushes it when it changed, once at start (a node that bootstrapped in
// Start says so at once: a node joining it then waits to be added
// instead of forming a cluster of its own) and then every tick.
func (n *Agent) metaLoop() {
	defer n.wg.Done()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	var last []byte
	for first := true; ; first = false {
		if !first {
			select {
			case <-n.stop:
				return
			case <-t.C:
			}
		}
		n.SetLocal(func(m *Meta) {
			m.Role = stateName(n.raft.State().String())
			if n.raft.LastIndex() > 0 {
				m.Bootstrapped = true
			}
		})
		b := n.sealedMeta() // changes with the metadata and with the key
		if string(b) != string(last) {
			last = b
			_ = n.ml.UpdateNode(2 * time.Second)
		}
	}
}

func stateName(s string) string {
	switch s {
	case "Leader":
		return "leader"
	case "Follower":
		return "follower"
	case "Candidate":
		return "candidate"
	case "Shutdown":
		return "shutdown"
	}
	return s
}

// Members returns memberlist's view, sorted by name.
func (n *Agent) Members() []Member {
	var out []Member
	for _, m := range n.del.snapshot() {
		mm := Member{Name: m.name, Address: m.addr, State: memberState(int(m.state))}
		meta, ok := n.memberMeta(m.name, m.meta)
		if !ok {
			meta = unverifiedMeta(m.meta)
		}
		mm.Verified = ok
		if meta != nil {
			mm.Version, mm.Role, mm.API, mm.Raft, mm.Sessions, mm.Draining, mm.Level = meta.Version, meta.Role, meta.API, meta.Raft, meta.Sessions, meta.Draining, meta.Level
		}
		out = append(out, mm)
	}
	sortMembers(out)
	return out
}

// Alive reports whether the named member is alive in the gossip.
func (n *Agent) Alive(name string) bool {
	for _, m := range n.del.snapshot() {
		if m.name == name {
			return m.state == memberlist.StateAlive
		}
	}
	return false
}

// HealthScore returns memberlist's awareness score (0 is healthy; higher
// means this node has trouble meeting probe deadlines).
func (n *Agent) HealthScore() int { return n.ml.GetHealthScore() }

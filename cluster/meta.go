package cluster

import (
	"encoding/json"
	"time"
)

// Meta is the node metadata gossiped by memberlist (at most 512 bytes).
type Meta struct {
	Version      string `json:"v,omitempty"`
	Role         string `json:"r,omitempty"` // "leader", "follower", "candidate", ...
	API          string `json:"a,omitempty"` // admin API host:port
	Raft         string `json:"t,omitempty"` // raft host:port
	Sessions     int    `json:"s,omitempty"` // open client connections
	Draining     bool   `json:"d,omitempty"`
	Bootstrapped bool   `json:"b,omitempty"` // has raft state (part of a formed cluster)
}

func decodeMeta(b []byte) *Meta {
	if len(b) == 0 {
		return nil
	}
	var m Meta
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	return &m
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
}

// SetLocal updates what this node gossips about itself; f edits a copy.
// The change is pushed by the meta loop (never from a memberlist callback).
func (n *Node) SetLocal(f func(*Meta)) {
	for {
		old := n.meta.Load()
		cp := *old
		f(&cp)
		if n.meta.CompareAndSwap(old, &cp) {
			return
		}
	}
}

// metaLoop keeps the gossiped metadata current (role, bootstrapped) and
// pushes it when it changed.
func (n *Node) metaLoop() {
	defer n.wg.Done()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	var last []byte
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		n.SetLocal(func(m *Meta) {
			m.Role = stateName(n.raft.State().String())
			if n.raft.LastIndex() > 0 {
				m.Bootstrapped = true
			}
		})
		b, _ := json.Marshal(n.meta.Load())
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
func (n *Node) Members() []Member {
	var out []Member
	for _, m := range n.del.snapshot() {
		mm := Member{Name: m.name, Address: m.addr, State: memberState(int(m.state))}
		meta := decodeMeta(m.meta)
		if m.name == n.cfg.NodeName {
			meta = n.meta.Load()
		}
		if meta != nil {
			mm.Version, mm.Role, mm.API, mm.Raft, mm.Sessions, mm.Draining = meta.Version, meta.Role, meta.API, meta.Raft, meta.Sessions, meta.Draining
		}
		out = append(out, mm)
	}
	sortMembers(out)
	return out
}

// HealthScore returns memberlist's awareness score (0 is healthy; higher
// means this node has trouble meeting probe deadlines).
func (n *Node) HealthScore() int { return n.ml.GetHealthScore() }

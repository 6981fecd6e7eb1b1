package daemon

import (
	"fmt"
	"strings"
	"time"

	"github.com/portico-mail/portico/cluster"
)

// Status is GET /v1/status, shown by `portico status`. The node fills the
// sections it owns; stages fill theirs through addStatus (the cluster
// section, the VIP section, ...). A section that is absent (nil) is shown
// as "standalone" or "-".
type Status struct {
	Node          string   `json:"node"`
	Version       string   `json:"version"`
	Commit        string   `json:"commit"`
	UptimeSeconds float64  `json:"uptime_seconds"`
	Role          string   `json:"role"` // raft state in a cluster, else "standalone"
	Ready         bool     `json:"ready"`
	NotReady      []string `json:"not_ready,omitempty"`
	Draining      bool     `json:"draining"`

	// Sessions by protocol.
	Sessions  map[string]SessionCount `json:"sessions"`
	Listeners []ListenerStatus        `json:"listeners"`
	Backends  []BackendStatus         `json:"backends"`
	Routing   RoutingStatus           `json:"routing"`

	// TLSTickets: the session-ticket keys, by fingerprint only.
	TLSTickets TicketStatus `json:"tls_session_tickets"`

	Cluster *ClusterStatus `json:"cluster,omitempty"` // nil: standalone (portico proxy)
	VIP     *VIPSection    `json:"vip,omitempty"`     // nil: no virtual IP configured
	// Sources: the directory sources, as this node knows them (the
	// leader also knows how its syncs went); none without sources.
	Sources []SourceLine `json:"sources,omitempty"`
}

// SourceLine is one directory source in the status.
type SourceLine struct {
	Name     string     `json:"name"`
	Type     string     `json:"type"`
	Rules    int        `json:"rules"`
	LastSync *time.Time `json:"last_sync,omitempty"`
	// State: ok, never synced, or (on the leader) failing or refused.
	State string `json:"state"`
}

// TicketStatus describes the TLS session-ticket keys without revealing
// them (routing.TicketKey.ID: a fingerprint).
type TicketStatus struct {
	Enabled bool `json:"enabled"` // tls.session_tickets
	// Source: "cluster" (the replicated ring), "node" (a standalone
	// node's own ring) or "process" (keys of this process only: no ring
	// yet, e.g. while a rolling upgrade keeps the leader from writing it).
	Source  string `json:"source"`
	Sealing string `json:"sealing"` // fingerprint of the key that seals new tickets
	Keys    int    `json:"keys"`    // keys accepted
	// Rotated: when the ring was last rotated ("" without a ring).
	Rotated string `json:"rotated,omitempty"`
}

// SessionCount counts open sessions.
type SessionCount struct {
	Preauth int64 `json:"preauth"` // not logged in yet
	Relayed int64 `json:"relayed"` // logged in
}

// ListenerStatus is one listener.
type ListenerStatus struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"`
	Address  string `json:"address,omitempty"` // "" when not bound
	SessionCount
}

// BackendStatus is one backend of the routing table.
type BackendStatus struct {
	ID             string `json:"id"`
	Host           string `json:"host"`
	IMAPPort       int    `json:"imap_port,omitempty"`
	POP3Port       int    `json:"pop3_port,omitempty"`
	SievePort      int    `json:"sieve_port,omitempty"`
	SubmissionPort int    `json:"submission_port,omitempty"`
	State          string `json:"state"`  // active, draining, disabled (the routing table's)
	Health         string `json:"health"` // up, down; "-" without health checks
	Sessions       int64  `json:"sessions"`
}

// RoutingStatus sizes the routing table.
type RoutingStatus struct {
	Backends     int    `json:"backends"`
	Pools        int    `json:"pools"`
	Users        int    `json:"users"`
	Domains      int    `json:"domains"`
	AppliedIndex uint64 `json:"applied_index,omitempty"` // raft index of the last applied change
}

// ClusterStatus is the cluster section.
type ClusterStatus struct {
	Leader      string           `json:"leader"` // "" when none is known
	Term        uint64           `json:"term"`
	CommitIndex uint64           `json:"commit_index"`
	Members     []cluster.Member `json:"members"`
}

// VIPSection is the virtual-IP section.
type VIPSection struct {
	Mode      string   `json:"mode"` // leader, spread
	Addresses []string `json:"addresses"`
	// Owner is, in the leader mode, the node holding them all ("" when
	// none); Owners maps each address (IP) to its owner in both modes.
	Owner    string            `json:"owner,omitempty"`
	Owners   map[string]string `json:"owners"`
	SelfOwns bool              `json:"self_owns"`
}

// Status gathers the node's status.
func (d *Daemon) Status() *Status {
	o := d.opsState()
	name := d.conf().NodeName
	notReady := d.NotReady()
	st := &Status{
		Node: name, Version: Version, Commit: Commit,
		UptimeSeconds: time.Since(o.started).Truncate(time.Second).Seconds(),
		Role:          "standalone",
		Ready:         len(notReady) == 0, NotReady: notReady,
		Draining: o.draining.Load(),
		Sessions: map[string]SessionCount{},
	}
	st.TLSTickets = d.ticketStatus()
	addrs := d.srv.Addrs()
	for _, ls := range d.srv.ListenerStats() {
		l := ListenerStatus{Name: ls.Name, Protocol: string(ls.Protocol),
			SessionCount: SessionCount{Preauth: ls.Preauth.Load(), Relayed: ls.Relayed.Load()}}
		if a := addrs[ls.Name]; a != nil {
			l.Address = a.String()
		}
		st.Listeners = append(st.Listeners, l)
		sc := st.Sessions[l.Protocol]
		sc.Preauth += l.Preauth
		sc.Relayed += l.Relayed
		st.Sessions[l.Protocol] = sc
	}
	var perBackend map[string]int64
	if o.metrics != nil {
		perBackend = o.metrics.BackendSessions()
	}
	if t := d.table(); t != nil {
		for _, b := range t.Backends() {
			st.Backends = append(st.Backends, BackendStatus{ID: b.ID, Host: b.Host, IMAPPort: b.IMAPPort, POP3Port: b.POP3Port, SievePort: b.SievePort, SubmissionPort: b.SubmissionPort,
				State: string(b.State), Health: "-", Sessions: perBackend[b.ID]})
		}
		st.Routing.Backends, st.Routing.Pools, st.Routing.Users, st.Routing.Domains = t.Len()
	}
	if st.Backends == nil {
		st.Backends = []BackendStatus{}
	}
	o.mu.Lock()
	contrib := append([]func(*Status){}, o.status...)
	o.mu.Unlock()
	for _, f := range contrib {
		f(st)
	}
	return st
}

// clusterStatus contributes the cluster section, the role and backend health.
func (d *Daemon) clusterStatus(st *Status) {
	rs := d.cluster.RaftStats()
	leader, _ := d.cluster.Leader()
	st.Role = rs.State
	st.Routing.AppliedIndex = d.fsm.AppliedIndex()
	st.Cluster = &ClusterStatus{Leader: leader, Term: rs.Term, CommitIndex: rs.CommitIndex, Members: d.cluster.Members()}
	if st.Cluster.Members == nil {
		st.Cluster.Members = []cluster.Member{}
	}
	if h := d.health.Load(); h != nil {
		down := h.Down()
		for i := range st.Backends {
			st.Backends[i].Health = "up"
			if down[st.Backends[i].ID] {
				st.Backends[i].Health = "down"
			}
		}
	}
}

// String renders a backend's address and ports for tables.
func (b BackendStatus) String() string {
	var p []string
	if b.IMAPPort != 0 {
		p = append(p, fmt.Sprintf("imap %d", b.IMAPPort))
	}
	if b.POP3Port != 0 {
		p = append(p, fmt.Sprintf("pop3 %d", b.POP3Port))
	}
	if b.SievePort != 0 {
		p = append(p, fmt.Sprintf("sieve %d", b.SievePort))
	}
	if b.SubmissionPort != 0 {
		p = append(p, fmt.Sprintf("submission %d", b.SubmissionPort))
	}
	return b.Host + " (" + strings.Join(p, ", ") + ")"
}

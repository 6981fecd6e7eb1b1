package node

import (
	"sort"
	"sync/atomic"
	"time"

	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// ListenerStats are one listener's live figures. The server updates them
// with atomic operations on the connection path; metrics and status read
// them when asked. They are kept by listener name for the server's life,
// so a listener removed and added again (reload) continues its counters,
// and sessions still open on a removed listener stay counted.
type ListenerStats struct {
	Name     string
	Protocol routing.Protocol

	Accepted atomic.Uint64 // TCP connections accepted (refused ones included)
	Preauth  atomic.Int64  // open connections that have not logged in
	Relayed  atomic.Int64  // logged-in sessions being relayed
	// Client TLS handshakes completed (implicit TLS, STARTTLS, STLS):
	// full ones, and those that resumed a session from a ticket.
	TLSFull, TLSResumed atomic.Uint64
	Bytes               relay.Counters
}

// Reasons a connection is refused before its session starts (label values).
const (
	RefusedMaxConnections      = "max_connections"
	RefusedMaxConnectionsPerIP = "max_connections_per_ip"
	RefusedProxyHeader         = "proxy_header"  // missing or malformed PROXY header from a trusted proxy
	RefusedLocalAddress        = "local_address" // address being handed over (SetRefuse)
)

// Observer is told about a node's connection events, for metrics. node
// has no metrics dependency: ops/metrics implements this. Methods are
// called on the connection path and must not block.
type Observer interface {
	// Listener announces a listener's stats, once, when the server first
	// serves a listener of that name.
	Listener(st *ListenerStats)
	// Refused: a connection was refused (Refused* reason).
	Refused(st *ListenerStats, reason string)
	// PreauthEnded: a session ended without logging in, as end says.
	PreauthEnded(st *ListenerStats, c *session.Client, end session.End)
	// SessionStarted: a logged-in session was handed to the relay.
	SessionStarted(st *ListenerStats, h *session.Handoff)
	// SessionEnded: a relayed session ended.
	SessionEnded(st *ListenerStats, h *session.Handoff, rs relay.Stats)
}

type nopObserver struct{}

func (nopObserver) Listener(*ListenerStats)                                    {}
func (nopObserver) Refused(*ListenerStats, string)                             {}
func (nopObserver) PreauthEnded(*ListenerStats, *session.Client, session.End)  {}
func (nopObserver) SessionStarted(*ListenerStats, *session.Handoff)            {}
func (nopObserver) SessionEnded(*ListenerStats, *session.Handoff, relay.Stats) {}

// SetObserver installs o (nil: none). Call it before Start.
func (s *Server) SetObserver(o Observer) {
	if o == nil {
		o = nopObserver{}
	}
	s.obs = o
}

// statsFor returns the stats of the listener called name, creating them
// (and announcing them to the observer) on first use.
func (s *Server) statsFor(name string, p routing.Protocol) *ListenerStats {
	s.statsMu.Lock()
	st := s.stats[name]
	created := st == nil
	if created {
		st = &ListenerStats{Name: name, Protocol: p}
		if s.stats == nil {
			s.stats = make(map[string]*ListenerStats)
		}
		s.stats[name] = st
	}
	s.statsMu.Unlock()
	if created {
		s.obs.Listener(st)
	}
	return st
}

// ListenerStats returns the stats of every listener served so far, by name.
func (s *Server) ListenerStats() []*ListenerStats {
	s.statsMu.Lock()
	out := make([]*ListenerStats, 0, len(s.stats))
	for _, st := range s.stats {
		out = append(out, st)
	}
	s.statsMu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// preauthEnded accounts for a session that ended before login, and logs
// its end.
func (s *Server) preauthEnded(l *listener, c *session.Client, end session.End) {
	l.stats.Preauth.Add(-1)
	s.obs.PreauthEnded(l.stats, c, end)
	attrs := []any{"reason", end.Reason, "state", end.State.String(), "duration", time.Since(c.Started).Round(time.Millisecond)}
	if end.Err != nil {
		attrs = append(attrs, "error", end.Err.Error())
	}
	c.Log.Info("session end", attrs...)
}

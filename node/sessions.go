package node

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// relayed is what the node knows about a relayed session: the relay keeps
// it as the session's tag.
type relayed struct {
	client  *session.Client
	handoff *session.Handoff
}

// SessionInfo describes one logged-in (relayed) session.
type SessionInfo struct {
	ID       string         `json:"id"` // the session id in the node's log lines
	User     string         `json:"user"`
	Backend  string         `json:"backend"`
	Listener string         `json:"listener"`
	Protocol string         `json:"protocol"`
	Client   netip.AddrPort `json:"client"`
	Local    netip.AddrPort `json:"local"` // the address the client connected to
	Started  time.Time      `json:"started"`
	// BytesIn and BytesOut are the bytes relayed so far from the client to
	// the backend and back.
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
}

// SessionFilter selects relayed sessions: each field set must match (a
// zero filter matches every session).
type SessionFilter struct {
	User    string // compared as routing.NormalizeUser does
	Backend string
	ID      string
}

// IsZero reports whether f selects every session.
func (f SessionFilter) IsZero() bool { return f == SessionFilter{} }

func (f SessionFilter) match(r *relayed) bool {
	if f.User != "" && routing.NormalizeUser(r.handoff.User) != routing.NormalizeUser(f.User) {
		return false
	}
	if f.Backend != "" && r.handoff.BackendID != f.Backend {
		return false
	}
	return f.ID == "" || r.client.ID == f.ID
}

func tagOf(rs *relay.Session) *relayed {
	r, _ := rs.Tag().(*relayed)
	return r
}

// Sessions returns the relayed sessions f selects, oldest first.
func (s *Server) Sessions(f SessionFilter) []SessionInfo {
	var out []SessionInfo
	for _, rs := range s.engine.Sessions() {
		r := tagOf(rs)
		if r == nil || rs.Closed() || !f.match(r) {
			continue
		}
		in, outB := rs.Bytes()
		out = append(out, SessionInfo{
			ID: r.client.ID, User: r.handoff.User, Backend: r.handoff.BackendID,
			Listener: r.client.Listener.Name, Protocol: string(r.client.Listener.Protocol),
			Client: r.client.Remote, Local: r.client.Local, Started: r.client.Started,
			BytesIn: in, BytesOut: outB,
		})
	}
	slices.SortFunc(out, func(a, b SessionInfo) int {
		if c := a.Started.Compare(b.Started); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// Kick ends the relayed sessions f selects (a zero filter selects none:
// ending every session is EndSessions' job) at a response boundary, as
// EndSessions does, spread over spread, and returns how many it ended
// once they are closed. text is what an IMAP client is told in its BYE.
func (s *Server) Kick(ctx context.Context, f SessionFilter, text string, spread time.Duration) int {
	if f.IsZero() {
		return 0
	}
	ctx, cancel := context.WithTimeout(ctx, spread+s.conf().EndTimeout)
	defer cancel()
	return s.engine.EndAll(ctx, func(rs *relay.Session) bool {
		r := tagOf(rs)
		return r != nil && f.match(r)
	}, text, spread)
}

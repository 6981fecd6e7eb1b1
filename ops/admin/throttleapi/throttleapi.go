// Package throttleapi is the admin API of the failed-login throttle:
// what it tracks and blocks (GET /v1/throttle) and lifting a block for a
// user or a network a help desk has verified (POST /v1/throttle/unblock).
//
// The throttle's state is shared by gossip: a node lists the counts it
// has merged from every node, and an unblock is a reset that every node
// adopts, whichever node was asked.
package throttleapi

import (
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/portico-mail/portico/node/throttle"
	"github.com/portico-mail/portico/ops/admin"
)

// Throttle is what the API needs (throttle.Limiter).
type Throttle interface {
	List(f throttle.Filter) []throttle.Entry
	Unblock(f throttle.Filter) int
}

// Entry is one entry of GET /v1/throttle: throttle.Entry, with the user's
// name when the request named one, and whether it blocks now.
type Entry struct {
	throttle.Entry
	User    string `json:"user,omitempty"`
	Blocked bool   `json:"blocked"`
}

// UnblockRequest is POST /v1/throttle/unblock's body; one of User and IP
// at least.
type UnblockRequest struct {
	User string `json:"user,omitempty"`
	IP   string `json:"ip,omitempty"`
}

// Register adds the endpoints to a.
// log, if not nil, gets an audit line for every unblock.
func Register(a *admin.Server, t Throttle, log *slog.Logger) {
	a.HandleFunc("GET /v1/throttle", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f, ok := filter(w, q.Get("user"), q.Get("ip"))
		if !ok {
			return
		}
		now := time.Now()
		out := []Entry{}
		for _, e := range t.List(f) {
			en := Entry{Entry: e, Blocked: e.Blocked(now)}
			if f.User != "" && e.UserHash != "" {
				en.User = f.User
			}
			out = append(out, en)
		}
		admin.JSON(w, http.StatusOK, out)
	})
	a.HandleFunc("POST /v1/throttle/unblock", func(w http.ResponseWriter, r *http.Request) {
		var req UnblockRequest
		if !admin.Decode(w, r, admin.MaxBody, &req) {
			return
		}
		f, ok := filter(w, req.User, req.IP)
		if !ok {
			return
		}
		if f == (throttle.Filter{}) {
			admin.Error(w, http.StatusBadRequest, "name a user, an IP address, or both")
			return
		}
		n := t.Unblock(f)
		if log != nil {
			// An audit line: who was let in again (the user as the
			// operator named them).
			log.Info("throttle unblock", "user", f.User, "ip", req.IP, "entries_reset", n)
		}
		admin.JSON(w, http.StatusOK, map[string]int{"reset": n})
	})
}

func filter(w http.ResponseWriter, user, ip string) (throttle.Filter, bool) {
	var f throttle.Filter
	f.User = strings.TrimSpace(user)
	if len(f.User) > 1024 {
		admin.Error(w, http.StatusBadRequest, "user: too long")
		return f, false
	}
	if ip = strings.TrimSpace(ip); ip != "" {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			admin.Error(w, http.StatusBadRequest, "ip: not an IP address: "+err.Error())
			return f, false
		}
		f.IP = a
	}
	return f, true
}

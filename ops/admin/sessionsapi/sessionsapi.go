// Package sessionsapi is the admin API of the logged-in sessions, cluster
// wide: who is connected (GET /v1/sessions), ending some of them at a
// response boundary (POST /v1/sessions/kick), and a user's move to
// another backend or pool (POST /v1/users/{user}/move: the route changed,
// then the user's sessions ended so that their clients reconnect to the
// new server).
//
// In a cluster, the node that is asked asks every member over the
// cluster RPC (cluster.Agent.CallEach) and answers with the union, naming
// the members it could not reach; without one it answers for itself.
package sessionsapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/node"
	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/routing"
)

// The cluster RPCs every node serves.
const (
	rpcList = "/v1/ext/sessions/list"
	rpcKick = "/v1/ext/sessions/kick"
)

// Limits of a kick. A kick answers once the sessions have ended (each
// node within its spread plus its boundary timeout, 10 s by default), and
// every node's answer must come within the cluster RPC's 30 s: longer
// windows are a backend drain's.
const (
	maxSpread     = 15 * time.Second
	maxReasonLen  = 200
	defaultReason = "Your session has been ended by the administrator, please reconnect."
	movedReason   = "Your mailbox has moved, please reconnect."
)

// Proxy is what the API needs of the node's proxy (node.Server).
type Proxy interface {
	Sessions(f node.SessionFilter) []node.SessionInfo
	Kick(ctx context.Context, f node.SessionFilter, text string, spread time.Duration) int
}

// Cluster is what the API needs of the cluster (cluster.Agent); nil on a
// node without one.
type Cluster interface {
	Name() string
	CallEach(ctx context.Context, path string, body []byte) []cluster.MemberAnswer
	HandleRPC(path string, f cluster.RPCFunc)
	Apply(ctx context.Context, c routing.Command) error
	ConsistentRead(ctx context.Context) error
}

// Config is what Register serves.
type Config struct {
	Proxy    Proxy
	NodeName string
	// Cluster and FSM are nil without a cluster (user moves are then
	// refused: the routes come from the configuration file).
	Cluster Cluster
	FSM     *routing.FSM
	// Forget, if set, is called on each node, before its sessions are
	// kicked, when a user moves (shared-storage affinity).
	Forget func(user string)
}

// Session is one session in an answer: SessionInfo and its node.
type Session struct {
	Node string `json:"node"`
	node.SessionInfo
}

// Unreached names a member whose sessions an answer lacks.
type Unreached struct {
	Node  string `json:"node"`
	Error string `json:"error"`
}

// ListAnswer is GET /v1/sessions's answer.
type ListAnswer struct {
	Sessions  []Session   `json:"sessions"`
	Unreached []Unreached `json:"unreached,omitempty"`
}

// KickRequest is POST /v1/sessions/kick's body. At least one of User,
// Backend and ID is required.
type KickRequest struct {
	User    string `json:"user,omitempty"`
	Backend string `json:"backend,omitempty"`
	ID      string `json:"id,omitempty"`
	Node    string `json:"node,omitempty"`   // only on this node
	Reason  string `json:"reason,omitempty"` // the BYE's text (IMAP)
	// Spread ends the sessions evenly over this window ("30s").
	Spread string `json:"spread,omitempty"`
	// forget: a user's move (internal: set by the move endpoint).
	Forget bool `json:"forget,omitempty"`
}

// KickAnswer is the answer to a kick or a move.
type KickAnswer struct {
	Kicked    int            `json:"kicked"`
	ByNode    map[string]int `json:"by_node"`
	Unreached []Unreached    `json:"unreached,omitempty"`
}

type api struct {
	Config
}

// Register adds the endpoints to a, and the RPCs to the cluster.
func Register(a *admin.Server, c Config) {
	d := &api{c}
	a.HandleFunc("GET /v1/sessions", d.list)
	a.HandleFunc("POST /v1/sessions/kick", d.kick)
	a.HandleFunc("POST /v1/users/{user}/move", d.move)
	if c.Cluster != nil {
		c.Cluster.HandleRPC(rpcList, d.rpcList)
		c.Cluster.HandleRPC(rpcKick, d.rpcKick)
	}
}

func filterOf(user, backend, id string) node.SessionFilter {
	return node.SessionFilter{User: strings.TrimSpace(user), Backend: strings.TrimSpace(backend), ID: strings.TrimSpace(id)}
}

func (d *api) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := filterOf(q.Get("user"), q.Get("backend"), q.Get("id"))
	onNode := q.Get("node")
	var ans ListAnswer
	if d.Cluster == nil {
		if onNode == "" || onNode == d.NodeName {
			for _, s := range d.Proxy.Sessions(f) {
				ans.Sessions = append(ans.Sessions, Session{d.NodeName, s})
			}
		}
	} else {
		body, _ := json.Marshal(f)
		for _, m := range d.Cluster.CallEach(r.Context(), rpcList, body) {
			if onNode != "" && m.Node != onNode {
				continue
			}
			var ss []node.SessionInfo
			if err := answerOf(m, &ss); err != nil {
				ans.Unreached = append(ans.Unreached, Unreached{m.Node, err.Error()})
				continue
			}
			for _, s := range ss {
				ans.Sessions = append(ans.Sessions, Session{m.Node, s})
			}
		}
	}
	slices.SortStableFunc(ans.Sessions, func(a, b Session) int { return a.Started.Compare(b.Started) })
	if ans.Sessions == nil {
		ans.Sessions = []Session{}
	}
	admin.JSON(w, http.StatusOK, ans)
}

// answerOf decodes a member's answer, or says why there is none.
func answerOf(m cluster.MemberAnswer, v any) error {
	switch {
	case m.Err != nil:
		return m.Err
	case m.Status != http.StatusOK:
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(m.Body, &e)
		return fmt.Errorf("HTTP %d: %s", m.Status, e.Error)
	}
	return json.Unmarshal(m.Body, v)
}

func (d *api) rpcList(_ context.Context, body []byte) (int, any) {
	var f node.SessionFilter
	if err := json.Unmarshal(body, &f); err != nil {
		return http.StatusBadRequest, map[string]string{"error": "bad filter"}
	}
	ss := d.Proxy.Sessions(f)
	if ss == nil {
		ss = []node.SessionInfo{}
	}
	return http.StatusOK, ss
}

// check validates a kick request and returns its spread.
func (k *KickRequest) check() (time.Duration, error) {
	k.User, k.Backend, k.ID = strings.TrimSpace(k.User), strings.TrimSpace(k.Backend), strings.TrimSpace(k.ID)
	if k.User == "" && k.Backend == "" && k.ID == "" {
		return 0, errors.New("name the sessions to end: user, backend or id (ending every session is a drain)")
	}
	if len(k.Reason) > maxReasonLen || strings.ContainsAny(k.Reason, "\r\n\x00") {
		return 0, fmt.Errorf("reason: at most %d characters on one line", maxReasonLen)
	}
	var spread time.Duration
	if k.Spread != "" {
		s, err := time.ParseDuration(k.Spread)
		if err != nil || s < 0 || s > maxSpread {
			return 0, fmt.Errorf("spread: a duration from 0 to %v, like \"30s\"", maxSpread)
		}
		spread = s
	}
	if k.Reason == "" {
		k.Reason = defaultReason
	}
	return spread, nil
}

func (d *api) kick(w http.ResponseWriter, r *http.Request) {
	var k KickRequest
	if !admin.Decode(w, r, admin.MaxBody, &k) {
		return
	}
	k.Forget = false // only a move forgets
	if _, err := k.check(); err != nil {
		admin.Error(w, http.StatusBadRequest, err.Error())
		return
	}
	admin.JSON(w, http.StatusOK, d.kickEach(r.Context(), k))
}

// kickEach kicks on every node (or k.Node only) and sums the answers.
func (d *api) kickEach(ctx context.Context, k KickRequest) KickAnswer {
	ans := KickAnswer{ByNode: map[string]int{}}
	if d.Cluster == nil {
		if k.Node == "" || k.Node == d.NodeName {
			_, n := d.kickHere(ctx, k)
			ans.ByNode[d.NodeName], ans.Kicked = n, n
		}
		return ans
	}
	body, _ := json.Marshal(k)
	for _, m := range d.Cluster.CallEach(ctx, rpcKick, body) {
		if k.Node != "" && m.Node != k.Node {
			continue
		}
		var res struct {
			Kicked int `json:"kicked"`
		}
		if err := answerOf(m, &res); err != nil {
			ans.Unreached = append(ans.Unreached, Unreached{m.Node, err.Error()})
			continue
		}
		ans.ByNode[m.Node] = res.Kicked
		ans.Kicked += res.Kicked
	}
	return ans
}

func (d *api) rpcKick(ctx context.Context, body []byte) (int, any) {
	var k KickRequest
	if err := json.Unmarshal(body, &k); err != nil {
		return http.StatusBadRequest, map[string]string{"error": "bad request"}
	}
	if k.Node != "" && k.Node != d.NodeName {
		return http.StatusOK, map[string]int{"kicked": 0}
	}
	status, n := d.kickHere(ctx, k)
	if status != http.StatusOK {
		return status, map[string]string{"error": "this node could not catch up with the routing table"}
	}
	return http.StatusOK, map[string]int{"kicked": n}
}

// kickHere ends this node's sessions k selects. For a move it first
// catches up with the leader's routing table, so that a client that
// reconnects to this node meets the new route, and forgets the user's
// affinity.
func (d *api) kickHere(ctx context.Context, k KickRequest) (int, int) {
	spread, err := k.check()
	if err != nil {
		return http.StatusBadRequest, 0
	}
	if k.Forget {
		if d.Cluster != nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := d.Cluster.ConsistentRead(cctx)
			cancel()
			if err != nil {
				return http.StatusServiceUnavailable, 0
			}
		}
		if d.Forget != nil && k.User != "" {
			d.Forget(k.User)
		}
	}
	return http.StatusOK, d.Proxy.Kick(context.WithoutCancel(ctx), filterOf(k.User, k.Backend, k.ID), k.Reason, spread)
}

// MoveRequest is POST /v1/users/{user}/move's body: To names a backend or
// a pool.
type MoveRequest struct {
	To     string `json:"to"`
	Reason string `json:"reason,omitempty"`
	Spread string `json:"spread,omitempty"`
}

// MoveAnswer is the move's answer.
type MoveAnswer struct {
	User   string         `json:"user"`
	Target routing.Target `json:"target"`
	KickAnswer
}

func (d *api) move(w http.ResponseWriter, r *http.Request) {
	user := routing.NormalizeUser(strings.TrimSpace(r.PathValue("user")))
	var m MoveRequest
	if !admin.Decode(w, r, admin.MaxBody, &m) {
		return
	}
	if d.Cluster == nil || d.FSM == nil {
		admin.Error(w, http.StatusConflict, "routes come from the configuration file on this node: change the file and reload, then kick the user's sessions")
		return
	}
	if user == "" {
		admin.Error(w, http.StatusBadRequest, "no user")
		return
	}
	t := d.FSM.Table()
	var tg routing.Target
	switch {
	case m.To == "":
		admin.Error(w, http.StatusBadRequest, `"to" must name a backend or a pool`)
		return
	case t.Backend(m.To) != nil:
		tg.Backend = m.To
	case slices.ContainsFunc(t.Pools(), func(p *routing.Pool) bool { return p.Name == m.To }):
		tg.Pool = m.To
	default:
		admin.Error(w, http.StatusNotFound, "no backend or pool "+m.To)
		return
	}
	k := KickRequest{User: user, Reason: m.Reason, Spread: m.Spread, Forget: true}
	if k.Reason == "" {
		k.Reason = movedReason
	}
	if _, err := k.check(); err != nil {
		admin.Error(w, http.StatusBadRequest, err.Error())
		return
	}
	// First the route (acknowledged by a quorum), then every node catches
	// up and ends the user's sessions: a client that reconnects at once
	// meets the new route wherever it lands.
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	err := d.Cluster.Apply(ctx, routing.Command{Type: routing.CmdPutUsers, Users: []routing.UserRoute{{User: user, Target: tg}}})
	cancel()
	if err != nil {
		admin.Error(w, cluster.StatusOf(err), "the route was not changed: "+err.Error())
		return
	}
	admin.JSON(w, http.StatusOK, MoveAnswer{User: user, Target: tg, KickAnswer: d.kickEach(r.Context(), k)})
}

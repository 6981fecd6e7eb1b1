// Package routesapi is the admin API of the replicated routing table and
// of the cluster: /v1/backends (with PATCH of some fields, and a drain
// that ends the backend's sessions on every node), /v1/pools,
// /v1/routes/..., /v1/import and /v1/export (bulk user routes) and /v1/cluster/...
// (members, peers, leader). Reads
// are served from this node's copy of the table (or after a consistent
// read); writes go through the cluster, which passes them to the leader.
package routesapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/routing"
)

// Bulk imports are split into commands of at most this many users, so that
// no raft entry is huge.
const importBatch = 5000

// maxImportBody caps a bulk import request.
const maxImportBody = 128 << 20

// Cluster is what the API needs of the cluster (cluster.Agent implements
// it).
type Cluster interface {
	Apply(ctx context.Context, c routing.Command) error
	ConsistentRead(ctx context.Context) error
	Members() []cluster.Member
	Peers() ([]cluster.Peer, error)
	RemovePeer(ctx context.Context, name string) error
	Leader() (name, api string)
	Name() string
	// HandleRPC and CallEach: a cluster RPC this API serves to the other
	// nodes, and a call of it on every node (backend drains).
	HandleRPC(path string, f cluster.RPCFunc)
	CallEach(ctx context.Context, path string, body []byte) []cluster.MemberAnswer
}

// Config is what Register serves.
type Config struct {
	Cluster Cluster
	// FSM is the node's copy of the replicated table.
	FSM *routing.FSM
	// Down reports the backends the cluster considers down (route
	// lookups skip them); nil: none.
	Down routing.HealthFunc
	// Node is this node's proxy, for backend drains; nil: no drain
	// endpoints.
	Node Node
}

type api struct {
	Config
}

// Register adds the routing and cluster endpoints to a.
func Register(a *admin.Server, c Config) {
	d := &api{c}
	a.HandleFunc("GET /v1/backends", d.read(func(w http.ResponseWriter, r *http.Request, t *routing.Table) {
		admin.JSON(w, 200, t.Backends())
	}))
	a.HandleFunc("GET /v1/backends/{id}", d.read(func(w http.ResponseWriter, r *http.Request, t *routing.Table) {
		found(w, t.Backend(r.PathValue("id")), "backend", r.PathValue("id"))
	}))
	a.HandleFunc("PUT /v1/backends/{id}", func(w http.ResponseWriter, r *http.Request) {
		var b routing.Backend
		if admin.Decode(w, r, admin.MaxBody, &b) && named(w, r, "id", &b.ID) {
			d.write(w, r, routing.Command{Type: routing.CmdPutBackend, Backend: &b})
		}
	})
	a.HandleFunc("DELETE /v1/backends/{id}", func(w http.ResponseWriter, r *http.Request) {
		d.write(w, r, routing.Command{Type: routing.CmdDeleteBackend, Names: []string{r.PathValue("id")}})
	})
	d.registerBackendOps(a)
	a.HandleFunc("GET /v1/pools", d.read(func(w http.ResponseWriter, r *http.Request, t *routing.Table) {
		admin.JSON(w, 200, t.Pools())
	}))
	a.HandleFunc("GET /v1/pools/{name}", d.read(func(w http.ResponseWriter, r *http.Request, t *routing.Table) {
		found(w, t.Pool(r.PathValue("name")), "pool", r.PathValue("name"))
	}))
	a.HandleFunc("PUT /v1/pools/{name}", func(w http.ResponseWriter, r *http.Request) {
		var p routing.Pool
		if admin.Decode(w, r, admin.MaxBody, &p) && named(w, r, "name", &p.Name) {
			d.write(w, r, routing.Command{Type: routing.CmdPutPool, Pool: &p})
		}
	})
	a.HandleFunc("DELETE /v1/pools/{name}", func(w http.ResponseWriter, r *http.Request) {
		d.write(w, r, routing.Command{Type: routing.CmdDeletePool, Names: []string{r.PathValue("name")}})
	})
	a.HandleFunc("GET /v1/routes/users", d.read(func(w http.ResponseWriter, r *http.Request, t *routing.Table) {
		q := r.URL.Query()
		limit := 1000
		if s := q.Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 100000 {
				admin.Error(w, 400, "limit must be 1..100000")
				return
			}
			limit = n
		}
		admin.JSON(w, 200, t.UserRoutes(q.Get("prefix"), q.Get("after"), limit))
	}))
	a.HandleFunc("GET /v1/routes/users/{user}", d.read(func(w http.ResponseWriter, r *http.Request, t *routing.Table) {
		if tg, ok := t.UserRoute(r.PathValue("user")); ok {
			admin.JSON(w, 200, routing.UserRoute{User: routing.NormalizeUser(r.PathValue("user")), Target: tg})
			return
		}
		admin.Error(w, 404, "no route for user "+strconv.Quote(r.PathValue("user")))
	}))
	a.HandleFunc("PUT /v1/routes/users/{user}", func(w http.ResponseWriter, r *http.Request) {
		var tg routing.Target
		if !admin.Decode(w, r, admin.MaxBody, &tg) {
			return
		}
		if tg.Source != "" {
			admin.Error(w, 400, "source is set by an import (POST /v1/import), not here")
			return
		}
		c := routing.Command{Type: routing.CmdPutUsers, Users: []routing.UserRoute{{User: r.PathValue("user"), Target: tg}}}
		if tg.Login != "" {
			// A rename needs the import command (an untagged one): a
			// put-users carries none.
			c.Type = routing.CmdImport
		}
		d.write(w, r, c)
	})
	a.HandleFunc("DELETE /v1/routes/users/{user}", func(w http.ResponseWriter, r *http.Request) {
		d.write(w, r, routing.Command{Type: routing.CmdDeleteUsers, Names: []string{r.PathValue("user")}})
	})
	a.HandleFunc("GET /v1/routes/domains", d.read(func(w http.ResponseWriter, r *http.Request, t *routing.Table) {
		admin.JSON(w, 200, t.Domains())
	}))
	a.HandleFunc("PUT /v1/routes/domains/{domain}", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Pool string `json:"pool"`
		}
		if !admin.Decode(w, r, admin.MaxBody, &body) {
			return
		}
		d.write(w, r, routing.Command{Type: routing.CmdPutDomain, Domain: r.PathValue("domain"), Target: body.Pool})
	})
	a.HandleFunc("DELETE /v1/routes/domains/{domain}", func(w http.ResponseWriter, r *http.Request) {
		d.write(w, r, routing.Command{Type: routing.CmdDeleteDomain, Names: []string{r.PathValue("domain")}})
	})
	a.HandleFunc("GET /v1/routes/default", d.read(func(w http.ResponseWriter, r *http.Request, t *routing.Table) {
		admin.JSON(w, 200, map[string]string{"pool": t.DefaultPool()})
	}))
	a.HandleFunc("PUT /v1/routes/default", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Pool string `json:"pool"`
		}
		if !admin.Decode(w, r, admin.MaxBody, &body) {
			return
		}
		d.write(w, r, routing.Command{Type: routing.CmdSetDefaultPool, Target: body.Pool})
	})
	a.HandleFunc("GET /v1/routes/lookup", d.read(func(w http.ResponseWriter, r *http.Request, t *routing.Table) {
		q := r.URL.Query()
		proto := routing.Protocol(q.Get("protocol"))
		if proto == "" {
			proto = routing.IMAP
		}
		if proto != routing.IMAP && proto != routing.POP3 && proto != routing.Sieve && proto != routing.Submission {
			admin.Error(w, 400, "protocol must be imap, pop3, sieve or submission")
			return
		}
		// Where a login would go now: health and the users' affinity
		// (shared_storage pools) included.
		rt, err := t.LookupWith(routing.Request{User: q.Get("user"), Protocol: proto}, d.Down, d.FSM.Affinity())
		if err != nil {
			admin.Error(w, 404, err.Error())
			return
		}
		admin.JSON(w, 200, map[string]any{"user": routing.NormalizeUser(q.Get("user")), "backend": rt.Backend.ID,
			"address": rt.Backend.Addr(proto), "pool": rt.Pool, "rule": rt.Rule, "steered": rt.Steered, "hash_key": t.HashKey(), "login": rt.Login})
	}))
	a.HandleFunc("POST /v1/import", d.importRoutes)
	a.HandleFunc("GET /v1/export", d.read(d.exportRoutes))
	a.HandleFunc("GET /v1/cluster/members", func(w http.ResponseWriter, r *http.Request) {
		admin.JSON(w, 200, d.Cluster.Members())
	})
	a.HandleFunc("GET /v1/cluster/peers", func(w http.ResponseWriter, r *http.Request) {
		p, err := d.Cluster.Peers()
		if err != nil {
			admin.Error(w, 503, err.Error())
			return
		}
		admin.JSON(w, 200, p)
	})
	a.HandleFunc("DELETE /v1/cluster/peers/{name}", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
		defer cancel()
		if err := d.Cluster.RemovePeer(ctx, r.PathValue("name")); err != nil {
			admin.Error(w, cluster.StatusOf(err), err.Error())
			return
		}
		admin.JSON(w, 200, map[string]any{"ok": true, "removed": r.PathValue("name")})
	})
	a.HandleFunc("GET /v1/cluster/leader", func(w http.ResponseWriter, r *http.Request) {
		name, api := d.Cluster.Leader()
		if name == "" {
			admin.Error(w, 503, cluster.ErrNoLeader.Error())
			return
		}
		admin.JSON(w, 200, map[string]any{"name": name, "api": api, "self": name == d.Cluster.Name(),
			"applied_index": d.FSM.AppliedIndex()})
	})
}

// found answers a GET of one backend or pool: v, or 404 "no <what>
// <name>" when it is nil.
func found[T any](w http.ResponseWriter, v *T, what, name string) {
	if v == nil {
		admin.Error(w, 404, "no "+what+" "+strconv.Quote(name))
		return
	}
	admin.JSON(w, 200, v)
}

// named settles the name of a backend or pool that a PUT body sets, held
// in *field, against the path's {key} (whose JSON field has the same
// name): a body that leaves it out gets the path's, and one that names
// another is refused (400). It reports whether to go on.
func named(w http.ResponseWriter, r *http.Request, key string, field *string) bool {
	if *field == "" {
		*field = r.PathValue(key)
	}
	if *field != r.PathValue(key) {
		admin.Error(w, 400, key+" in the body differs from the path")
		return false
	}
	return true
}

func statusOf(err error) int {
	if st := cluster.StatusOf(err); st != http.StatusInternalServerError {
		return st
	}
	if errors.Is(err, routing.ErrInvalid) {
		return http.StatusBadRequest
	}

	return http.StatusInternalServerError
}

// write replicates a change and answers with the outcome.
func (d *api) write(w http.ResponseWriter, r *http.Request, c routing.Command) {
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	if err := d.Cluster.Apply(ctx, c); err != nil {
		admin.Error(w, statusOf(err), err.Error())
		return
	}
	admin.JSON(w, 200, map[string]any{"ok": true, "applied_index": d.FSM.AppliedIndex()})
}

// read serves from the local table (stale-tolerant, like the proxy), or
// with ?consistent=true after catching up with everything the leader had
// committed when asked (cluster.ConsistentRead).
func (d *api) read(f func(http.ResponseWriter, *http.Request, *routing.Table)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if c := r.URL.Query().Get("consistent"); c == "true" || c == "1" {
			ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			err := d.Cluster.ConsistentRead(ctx)
			cancel()
			if err != nil {
				admin.Error(w, 503, err.Error())
				return
			}
		}
		f(w, r, d.FSM.Table())
	}
}

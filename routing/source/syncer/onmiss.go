package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source"
)

// Table is what the on-miss lookup needs of the node's replicated table
// (routing.FSM implements it).
type Table interface {
	Loaded() bool
	Table() *routing.Table
	Route(routing.Request) (routing.Route, error)
	RouteTarget(routing.Request, routing.Target) (routing.Route, error)
}

// MissSource is one source whose on-miss lookup is on.
type MissSource struct {
	Name    string
	Fetcher source.Fetcher
	// Timeout bounds one lookup (the login waits for it).
	Timeout time.Duration
	// PositiveTTL and NegativeTTL: how long an answer (found, not
	// found) is reused without asking again.
	PositiveTTL, NegativeTTL time.Duration
	NewBackends              NewBackends
}

// Bounds of the on-miss lookup.
const (
	// DefaultMissCache is the number of answers kept.
	DefaultMissCache = 10000
	// maxMissInFlight bounds the lookups in flight on a node, so that a
	// flood of logins of unknown names cannot flood the directory.
	maxMissInFlight = 32
)

// OnMiss routes logins, asking the sources about users the table has no
// rule for (the session's RouteDirector.Lookup): logins of users with a
// rule never wait on a source. A source's answer is cached (found:
// PositiveTTL, not found: NegativeTTL); a fresh positive answer is
// written through to the table (through the leader, tagged with the
// source, like a sync would), so that every node routes the user from
// then on. A source that cannot answer makes the login "unavailable",
// never a failed password.
type OnMiss struct {
	fsm  Table
	srcs []MissSource
	cl   Cluster
	log  *slog.Logger
	met  *Metrics
	now  func() time.Time
	max  int
	sem  chan struct{}

	mu    sync.Mutex
	cache map[string]missAnswer
}

type missAnswer struct {
	exp   time.Time
	found bool
	e     source.Entry
	src   int
}

// NewOnMiss returns the lookup over srcs (in order: the first that holds
// the user answers). cl writes positive answers through; nil writes
// nothing. met may be nil.
func NewOnMiss(fsm Table, srcs []MissSource, cl Cluster, log *slog.Logger, met *Metrics) *OnMiss {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &OnMiss{fsm: fsm, srcs: srcs, cl: cl, log: log, met: met, now: time.Now, max: DefaultMissCache,
		sem: make(chan struct{}, maxMissInFlight), cache: map[string]missAnswer{}}
}

// Answers reports whether RouteContext would answer req without asking a
// source (from the table, or from an answer it keeps), so that a caller on
// an event loop can call it in line rather than on a goroutine of its own.
func (m *OnMiss) Answers(req routing.Request) bool {
	if len(m.srcs) == 0 || !m.fsm.Loaded() || !routing.ValidUser(req.User) {
		return true
	}
	if _, ok := m.fsm.Table().UserRoute(req.User); ok {
		return true
	}
	_, ok := m.get(routing.NormalizeUser(req.User))
	return ok
}

// RouteContext routes req: from the table when it holds a rule for the
// user (or is not caught up yet), else from a source's answer (cached or
// asked now, waiting at most the source's timeout), else by the table's
// other rules (regex, domain, default). It fails with
// routing.ErrUnavailable when no source could answer.
func (m *OnMiss) RouteContext(ctx context.Context, req routing.Request) (routing.Route, error) {
	if len(m.srcs) == 0 || !m.fsm.Loaded() || !routing.ValidUser(req.User) {
		return m.fsm.Route(req)
	}
	if _, ok := m.fsm.Table().UserRoute(req.User); ok {
		return m.fsm.Route(req)
	}
	key := routing.NormalizeUser(req.User)
	if a, ok := m.get(key); ok {
		if a.found {
			m.met.lookup(m.srcs[a.src].Name, "cached_found")
			return m.routeEntry(ctx, req, key, a.src, a.e, false)
		}
		for _, s := range m.srcs {
			m.met.lookup(s.Name, "cached_not_found")
		}
		return m.fsm.Route(req)
	}
	var failed error
	negTTL := time.Duration(-1)
	for i, s := range m.srcs {
		e, err := m.ask(ctx, s, req.User)
		switch {
		case err == nil:
			m.met.lookup(s.Name, "found")
			m.put(key, missAnswer{exp: m.now().Add(s.PositiveTTL), found: true, e: e, src: i})
			return m.routeEntry(ctx, req, key, i, e, true)
		case errors.Is(err, source.ErrNotFound):
			m.met.lookup(s.Name, "not_found")
			if negTTL < 0 || s.NegativeTTL < negTTL {
				negTTL = s.NegativeTTL
			}
		default:
			m.met.lookup(s.Name, "error")
			m.log.Warn("on-miss lookup failed: the login is answered 'unavailable'", "source", s.Name, "user", req.User, "error", err)
			if failed == nil {
				failed = fmt.Errorf("directory source %s: %w", s.Name, err)
			}
		}
	}
	if failed != nil {
		return routing.Route{}, fmt.Errorf("%w: on-miss lookup: %v", routing.ErrUnavailable, failed)
	}
	m.put(key, missAnswer{exp: m.now().Add(negTTL)})
	return m.fsm.Route(req)
}

// ask asks one source, within its timeout and the node's bound on
// lookups in flight.
func (m *OnMiss) ask(ctx context.Context, s MissSource, user string) (source.Entry, error) {
	ctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	select {
	case m.sem <- struct{}{}:
		defer func() { <-m.sem }()
	case <-ctx.Done():
		return source.Entry{}, fmt.Errorf("too many lookups in flight: %w", ctx.Err())
	}
	return s.Fetcher.Lookup(ctx, user)
}

// routeEntry routes req by a source's entry; a fresh answer is written
// through first.
func (m *OnMiss) routeEntry(ctx context.Context, req routing.Request, key string, src int, e source.Entry, fresh bool) (routing.Route, error) {
	s := m.srcs[src]
	if e.Login != "" && !routing.ValidUser(e.Login) {
		return routing.Route{}, fmt.Errorf("%w: directory source %s renames %s to a bad name", routing.ErrUnavailable, s.Name, key)
	}
	r := newResolver(m.fsm.Table(), s.NewBackends)
	tg, err := r.resolve(e)
	if err != nil {
		return routing.Route{}, fmt.Errorf("%w: directory source %s routes %s to %q: %v", routing.ErrUnavailable, s.Name, key, e.Target, err)
	}
	if fresh && m.cl != nil {
		if err := m.writeThrough(ctx, s, key, tg, r.order); err != nil {
			m.log.Warn("on-miss answer not written to the table (the login goes on from the answer)", "source", s.Name, "user", key, "error", err)
			if len(r.order) > 0 {
				return routing.Route{}, fmt.Errorf("%w: directory source %s routes %s to a new server, and the backend could not be added: %v", routing.ErrUnavailable, s.Name, key, err)
			}
		}
	}
	return m.fsm.RouteTarget(req, tg)
}

// writeThrough writes a source's answer to the replicated table, as a
// sync would (the backends it needs, then the user's rule tagged with
// the source). It waits at most a few seconds: the login is waiting.
func (m *OnMiss) writeThrough(ctx context.Context, s MissSource, key string, tg routing.Target, backends []*routing.Backend) error {
	ctx, cancel := context.WithTimeout(ctx, max(s.Timeout, 3*time.Second))
	defer cancel()
	for _, b := range backends {
		if err := m.cl.Apply(ctx, routing.Command{Type: routing.CmdPutBackend, Backend: b}); err != nil {
			return fmt.Errorf("backend %s: %w", b.ID, err)
		}
	}
	return m.cl.Apply(ctx, routing.Command{Type: routing.CmdImport, Source: Tag(s.Name), Users: []routing.UserRoute{{User: key, Target: tg}}})
}

func (m *OnMiss) get(key string) (missAnswer, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.cache[key]
	if !ok {
		return a, false
	}
	if !m.now().Before(a.exp) {
		delete(m.cache, key)
		return a, false
	}
	return a, true
}

func (m *OnMiss) put(key string, a missAnswer) {
	if !m.now().Before(a.exp) {
		return // a TTL of 0: not cached
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.cache) >= m.max {
		now := m.now()
		for k, v := range m.cache {
			if !now.Before(v.exp) {
				delete(m.cache, k)
			}
		}
		for k := range m.cache {
			if len(m.cache) < m.max {
				break
			}
			delete(m.cache, k)
		}
	}
	m.cache[key] = a
}

package syncer

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/portico-mail/portico/routing"
)

// Manager runs the syncers of every configured source while this node
// leads, and answers the admin API's sync requests and status.
type Manager struct {
	syncers []*Syncer
	byName  map[string]*Syncer
	onMiss  map[string]bool

	mu   sync.Mutex
	term context.Context // the current term's context while leading; nil otherwise
}

// NewManager returns a manager of the syncers (in configuration order);
// onMiss names the sources whose on-miss lookup is on (for the status).
func NewManager(syncers []*Syncer, onMiss map[string]bool) *Manager {
	m := &Manager{syncers: syncers, byName: map[string]*Syncer{}, onMiss: onMiss}
	for _, s := range syncers {
		m.byName[s.cfg.Name] = s
	}
	return m
}

// Run syncs every source until ctx ends: register it with the cluster's
// RunWhileLeader, so that it runs on the leader only, for one term at a
// time.
func (m *Manager) Run(ctx context.Context) {
	m.mu.Lock()
	m.term = ctx
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range m.syncers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Run(ctx)
		}()
	}
	wg.Wait()
	m.mu.Lock()
	m.term = nil
	m.mu.Unlock()
}

// Leading reports whether a term's syncs are running here.
func (m *Manager) Leading() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.term != nil && m.term.Err() == nil
}

// Has reports whether a source of that name is configured.
func (m *Manager) Has(name string) bool { return m.byName[name] != nil }

// Sync runs a full sync of source name now (portico source sync): on the
// leader only (ErrNotLeader elsewhere), ended early if leadership is lost.
// It waits for a sync of the source in progress.
func (m *Manager) Sync(ctx context.Context, name string, opt Options) (Result, error) {
	s := m.byName[name]
	if s == nil {
		return Result{}, fmt.Errorf("%w: %q", ErrUnknownSource, name)
	}
	m.mu.Lock()
	term := m.term
	m.mu.Unlock()
	if term == nil || term.Err() != nil {
		return Result{}, ErrNotLeader
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(term, cancel)
	defer stop()
	opt.Full = true
	return s.Sync(ctx, opt)
}

// ErrUnknownSource: no source of that name is configured.
var ErrUnknownSource = fmt.Errorf("no such directory source")

// Status is one source's state, as GET /v1/sources shows it.
type Status struct {
	Name         string  `json:"name"`
	Type         string  `json:"type"`
	Tag          string  `json:"tag"` // the tag of its rules (route list's source)
	Interval     float64 `json:"interval_seconds"`
	FullInterval float64 `json:"full_interval_seconds"`
	OnMiss       bool    `json:"on_miss"`
	// Rules: the source's rules in this node's table now.
	Rules int `json:"rules"`
	// From the replicated table: what every node knows.
	Watermark string     `json:"watermark,omitempty"`
	LastFull  *time.Time `json:"last_full,omitempty"`
	LastSync  *time.Time `json:"last_sync,omitempty"`
	Entries   int        `json:"entries"`
	// From the leader's syncer (Node names it): empty on a node that
	// has not synced since it started.
	Node        string     `json:"node,omitempty"`
	LastAttempt *time.Time `json:"last_attempt,omitempty"`
	LastSuccess *time.Time `json:"last_success,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	// Refused: the last sync was refused by the safety valve, and why.
	Refused  string  `json:"refused,omitempty"`
	Last     *Result `json:"last,omitempty"`
	Syncs    uint64  `json:"syncs"`
	Errors   uint64  `json:"errors"`
	Refusals uint64  `json:"refusals"`
}

// Status returns every source's status (name "" ) or one's, as this node
// knows it (the leader knows the syncs' outcomes).
func (m *Manager) Status(name string, t *routing.Table) ([]Status, error) {
	if name != "" && m.byName[name] == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownSource, name)
	}
	rules := map[string]int{}
	t.EachUser(func(_ string, tg routing.Target) bool {
		if len(tg.Source) > len(TagPrefix) && tg.Source[:len(TagPrefix)] == TagPrefix {
			rules[tg.Source[len(TagPrefix):]]++
		}
		return true
	})
	var out []Status
	for _, s := range m.syncers {
		if name != "" && s.cfg.Name != name {
			continue
		}
		st := Status{Name: s.cfg.Name, Type: s.cfg.Type, Tag: Tag(s.cfg.Name), Interval: s.cfg.Interval.Seconds(),
			FullInterval: s.cfg.FullInterval.Seconds(), OnMiss: m.onMiss[s.cfg.Name], Rules: rules[s.cfg.Name]}
		if rs, ok := t.SourceState(s.cfg.Name); ok {
			st.Watermark, st.Entries = rs.Watermark, rs.Entries
			st.LastFull, st.LastSync = ms(rs.LastFull), ms(rs.LastSync)
		}
		s.smu.Lock()
		r := s.status
		s.smu.Unlock()
		st.LastAttempt, st.LastSuccess = tp(r.lastAttempt), tp(r.lastSuccess)
		st.LastError, st.Refused, st.Last = r.lastErr, r.refused, r.last
		st.Syncs, st.Errors, st.Refusals = r.syncs, r.errors, r.refusals
		out = append(out, st)
	}
	return out, nil
}

func ms(v int64) *time.Time {
	if v == 0 {
		return nil
	}
	t := time.UnixMilli(v).UTC()
	return &t
}

func tp(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// Close closes every source.
func (m *Manager) Close() {
	for _, s := range m.syncers {
		_ = s.f.Close()
	}
}

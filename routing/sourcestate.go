package routing

import "maps"

// SourceState is what the replicated table records of one directory
// source's sync (CmdSourceState), so that a new leader carries on where
// the old one stopped: it resumes incremental syncs from Watermark and
// runs the next full sync when LastFull is older than the source's
// full_interval, instead of every new leader reading the whole directory
// again. The times are the leader's clock when it wrote the state, carried
// in the command: Apply stays deterministic.
type SourceState struct {
	// Watermark is the point the next incremental sync starts from (a
	// driver's own notation: an LDAP modifyTimestamp, a SQL change id, a
	// file's hash); "" for none.
	Watermark string `json:"watermark,omitempty"`
	// LastFull is when the last full sync that was applied began (Unix
	// milliseconds); 0: never.
	LastFull int64 `json:"last_full,omitempty"`
	// LastSync is when the last sync that changed the table or the
	// watermark ended (Unix milliseconds).
	LastSync int64 `json:"last_sync,omitempty"`
	// Entries is how many entries the source held at its last sync.
	Entries int `json:"entries,omitempty"`
}

// WithSourceState returns the table with the sync state of source set, or
// removed when st is nil (CmdSourceState).
func (t *Table) WithSourceState(source string, st *SourceState) (*Table, error) {
	if !ValidSource(source) {
		return nil, invalid("source state: bad source name %q", source)
	}
	if st != nil && (st.LastFull < 0 || st.LastSync < 0 || st.Entries < 0 || len(st.Watermark) > maxSnapString) {
		return nil, invalid("source state of %s: negative time or count, or a watermark over %d bytes", source, maxSnapString)
	}
	if _, ok := t.sources[source]; !ok && st == nil {
		return t, nil
	}
	n := *t
	n.sources = maps.Clone(t.sources)
	if n.sources == nil {
		n.sources = map[string]SourceState{}
	}
	if st == nil {
		delete(n.sources, source)
	} else {
		n.sources[source] = *st
	}
	return &n, nil
}

// SourceState returns the recorded sync state of source.
func (t *Table) SourceState(source string) (SourceState, bool) {
	st, ok := t.sources[source]
	return st, ok
}

// SourceStates returns every recorded source's sync state.
func (t *Table) SourceStates() map[string]SourceState { return maps.Clone(t.sources) }

// LookupTarget routes req by tg as if it were req's user rule (a route a
// directory source answered on a miss, before it is in the table): tg's
// backend, or the pick of its pool, with health and affinity. The rule is
// "source".
func (t *Table) LookupTarget(req Request, tg Target, down HealthFunc, aff Affinity) (Route, error) {
	if err := t.checkTarget(tg); err != nil {
		return Route{}, err
	}
	return t.routeTo(tg, NormalizeUser(req.User), req.Protocol, down, aff, "source")
}

// RouteTarget is LookupTarget on the latest applied table, with the
// installed health and affinity (ErrNotReady until SetLoaded).
func (f *FSM) RouteTarget(req Request, tg Target) (Route, error) {
	if !f.loaded.Load() {
		return Route{}, ErrNotReady
	}
	var down HealthFunc
	if h := f.down.Load(); h != nil {
		down = *h
	}
	return f.table.Load().LookupTarget(req, tg, down, loadAffinity(&f.aff))
}

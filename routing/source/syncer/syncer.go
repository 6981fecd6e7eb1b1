// Package syncer mirrors directory sources (routing/source) into the
// replicated routing table: on the raft leader only, a full sync at the
// start of a term when the last one is older than the source's
// full_interval, and then every full_interval, an incremental sync every
// interval; each writes only the difference, in idempotent batches of
// the import command tagged with the source (Tag), one at a time with a
// pause in proportion to each one's apply time (pace.go), then the source's
// sync state (routing.SourceState: watermark, last full sync), so that
// the next leader carries on from the watermark. A sync that would
// remove more than the source's max_delete_share of its entries is
// refused unless forced (the safety valve). OnMiss (onmiss.go) is the
// login path's lookup of a user the table does not hold yet.
//
// See routing/source/DESIGN.md.
package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source"
)

// TagPrefix starts the tag of every user rule a directory source writes
// (routing.Target.Source), so that imports (tagged with a file's name)
// and sources never own each other's rules.
const TagPrefix = "source:"

// Tag returns the tag of the user rules source name writes.
func Tag(name string) string { return TagPrefix + name }

// Cluster is what a sync writes through: cluster.Agent's Apply (on the
// leader it applies, elsewhere it passes the command to the leader), and
// returns once this node's table holds the change.
type Cluster interface {
	Apply(ctx context.Context, c routing.Command) error
}

// Config is one source's sync settings.
type Config struct {
	Name         string
	Type         string
	Interval     time.Duration // incremental syncs
	FullInterval time.Duration // full syncs
	// MaxDeleteShare: a sync that would remove more than this share of
	// the source's rules (and more than one) is refused unless forced.
	MaxDeleteShare float64
	// Overwrite: the source's entries replace user rules that the API,
	// the configuration file, an import or another source wrote; by
	// default those stay (counted as shadowed).
	Overwrite   bool
	NewBackends NewBackends
	// Batch is the number of users per command (0: DefaultBatch).
	Batch int
	// WorkShare is the most of a sync's wall time that the leader
	// spends working on it: reading the source, diffing it, applying
	// the commands (0: DefaultWorkShare; 1: flat out). After work that
	// took d it pauses d*(1-WorkShare)/WorkShare (at most MaxPause).
	// See pace.go.
	WorkShare float64
}

// DefaultMaxDeleteShare is max_delete_share's default.
const DefaultMaxDeleteShare = 0.1

// DefaultBatch is the number of users per command of a sync.
const DefaultBatch = 5000

// Options of one sync.
type Options struct {
	Full   bool // a full sync even if an incremental one could do
	DryRun bool // compute the difference, write nothing
	Force  bool // past the safety valve
}

// Change is one changed rule of a sync.
type Change struct {
	User string         `json:"user"`
	From routing.Target `json:"from"`
	To   routing.Target `json:"to"`
}

// Result is what one sync did (or, dry, would do).
type Result struct {
	Source   string    `json:"source"`
	Kind     string    `json:"kind"` // full or incremental
	DryRun   bool      `json:"dry_run,omitempty"`
	Forced   bool      `json:"forced,omitempty"`
	Started  time.Time `json:"started"`
	Duration float64   `json:"duration_seconds"`
	// Entries: what the source holds (full), or the changes it reported
	// (incremental).
	Entries   int `json:"entries"`
	Added     int `json:"added"`
	Changed   int `json:"changed"`
	Removed   int `json:"removed"`
	Unchanged int `json:"unchanged"`
	// Shadowed: entries for users whose rule something else wrote (kept,
	// see Config.Overwrite). Invalid: entries skipped (a target that
	// resolves to nothing, a bad name); a user's old rule stays.
	Shadowed int `json:"shadowed"`
	Invalid  int `json:"invalid"`
	// Owned: the source's rules in the table before the sync.
	Owned       int      `json:"owned"`
	NewBackends []string `json:"new_backends,omitempty"`
	// Refused says why the safety valve stopped the sync (nothing was
	// written).
	Refused   string `json:"refused,omitempty"`
	Watermark string `json:"watermark,omitempty"`
	// Lists (a dry run, and the invalid entries always), at most
	// maxList each.
	AddedList   []routing.UserRoute `json:"added_list,omitempty"`
	ChangedList []Change            `json:"changed_list,omitempty"`
	RemovedList []routing.UserRoute `json:"removed_list,omitempty"`
	InvalidList []string            `json:"invalid_list,omitempty"`
	// Commands: the raft commands the sync wrote (new backends, batches
	// of users, the sync state); Writing: the time they took to apply
	// on the leader; Paused: the time it waited between them (pace.go).
	Commands int     `json:"commands,omitempty"`
	Writing  float64 `json:"writing_seconds,omitempty"`
	Paused   float64 `json:"paused_seconds,omitempty"`
}

// maxList bounds the lists of a Result.
const maxList = 1000

// ErrRefused: the safety valve refused a sync (Result.Refused says why).
var ErrRefused = errors.New("sync refused by the safety valve")

// ErrNotLeader: syncs run on the raft leader only.
var ErrNotLeader = errors.New("not the raft leader: directory sources are synced by the leader")

// Syncer syncs one source.
type Syncer struct {
	cfg   Config
	f     source.Fetcher
	table func() *routing.Table
	cl    Cluster
	log   *slog.Logger
	met   *Metrics
	now   func() time.Time
	// sleep waits d or until ctx ends (the pause between commands;
	// tests replace it).
	sleep func(ctx context.Context, d time.Duration) error

	mu sync.Mutex // one sync at a time

	smu    sync.Mutex
	status runStatus
}

// runStatus is what the leader knows of its syncs beyond the table's
// state.
type runStatus struct {
	lastAttempt, lastSuccess time.Time
	last                     *Result
	lastErr                  string
	refused                  string
	syncs, errors, refusals  uint64
}

// New returns the syncer of one source. table returns the node's current
// replicated table; met may be nil.
func New(cfg Config, f source.Fetcher, table func() *routing.Table, cl Cluster, log *slog.Logger, met *Metrics) *Syncer {
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	if cfg.WorkShare <= 0 || cfg.WorkShare > 1 {
		cfg.WorkShare = DefaultWorkShare
	}
	if cfg.MaxDeleteShare <= 0 {
		cfg.MaxDeleteShare = DefaultMaxDeleteShare
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Syncer{cfg: cfg, f: f, table: table, cl: cl, log: log.With("source", cfg.Name), met: met, now: time.Now, sleep: sleepCtx}
}

// Name returns the source's name.
func (s *Syncer) Name() string { return s.cfg.Name }

// Run syncs the source until ctx ends (the end of the node's term as
// leader): at once, then every interval; a sync is full when the table's
// state says the last full sync is older than full_interval (or there
// is none), else incremental.
func (s *Syncer) Run(ctx context.Context) {
	s.met.interval(s.cfg.Name, s.cfg.Interval)
	if st, ok := s.table().SourceState(s.cfg.Name); ok && st.LastSync > 0 {
		// A new leader: the last success is the old leader's.
		s.met.success(s.cfg.Name, time.UnixMilli(st.LastSync))
		if s.met != nil {
			s.met.entries.WithLabelValues(s.cfg.Name).Set(float64(st.Entries))
		}
	}
	for {
		_, _ = s.Sync(ctx, Options{Full: s.fullDue()})
		t := time.NewTimer(s.cfg.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// fullDue: the table records no full sync of the source, or one older
// than full_interval.
func (s *Syncer) fullDue() bool {
	st, ok := s.table().SourceState(s.cfg.Name)
	return !ok || st.LastFull == 0 || s.now().Sub(time.UnixMilli(st.LastFull)) >= s.cfg.FullInterval
}

// Sync runs one sync: incremental from the table's watermark unless
// opt.Full, or when the source cannot tell what changed
// (source.ErrNoChanges), full.
func (s *Syncer) Sync(ctx context.Context, opt Options) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := s.now()
	st, _ := s.table().SourceState(s.cfg.Name)
	var res Result
	var err error
	p := s.newPacer()
	if !opt.Full && st.Watermark != "" {
		res, err = s.incremental(ctx, st, opt, start, p)
		if errors.Is(err, source.ErrNoChanges) {
			s.log.Debug("the source cannot tell what changed since the watermark: full sync", "watermark", st.Watermark)
			res, err = s.full(ctx, opt, start, p)
		}
	} else {
		res, err = s.full(ctx, opt, start, p)
	}
	res.Commands, res.Paused, res.Writing = p.cmds, p.paused.Seconds(), p.writing.Seconds()
	res.Source, res.Started, res.DryRun, res.Forced = s.cfg.Name, start, opt.DryRun, opt.Force
	res.Duration = s.now().Sub(start).Seconds()
	s.record(res, err, opt)
	return res, err
}

// record keeps the outcome for the status and the metrics, and logs it.
func (s *Syncer) record(res Result, err error, opt Options) {
	now := s.now()
	s.smu.Lock()
	s.status.lastAttempt = now
	switch {
	case errors.Is(err, ErrRefused):
		s.status.refusals++
		s.status.refused = res.Refused
		s.status.lastErr = ""
	case err != nil:
		s.status.errors++
		s.status.lastErr = err.Error()
	case !opt.DryRun:
		s.status.syncs++
		s.status.lastSuccess = now
		s.status.lastErr, s.status.refused = "", ""
	}
	if !opt.DryRun {
		r := res
		s.status.last = &r
	}
	s.smu.Unlock()

	name := s.cfg.Name
	if !opt.DryRun {
		s.met.took(name, res.Kind, res.Duration)
	}
	switch {
	case errors.Is(err, ErrRefused):
		s.met.refusedSync(name)
		s.log.Error("directory source sync refused by the safety valve: nothing written; check the source, then `portico source sync "+name+" --force` if the removals are meant",
			"kind", res.Kind, "would_remove", res.Removed, "owned", res.Owned, "max_delete_share", s.cfg.MaxDeleteShare)
	case err != nil:
		s.met.failed(name)
		s.log.Error("directory source sync failed; the table keeps what it had", "kind", res.Kind, "error", err)
	case opt.DryRun:
	default:
		s.met.synced(name, res, now)
		lvl := slog.LevelDebug
		if res.Added+res.Changed+res.Removed > 0 || res.Kind == "full" || len(res.NewBackends) > 0 {
			lvl = slog.LevelInfo
		}
		s.log.Log(context.Background(), lvl, "directory source synced", "kind", res.Kind, "entries", res.Entries,
			"added", res.Added, "changed", res.Changed, "removed", res.Removed, "shadowed", res.Shadowed, "invalid", res.Invalid,
			"new_backends", len(res.NewBackends), "commands", res.Commands, "paused", secs(res.Paused),
			"duration", secs(res.Duration))
		if res.Invalid > 0 {
			s.log.Warn("directory source entries skipped (the users' rules stay as they were)", "invalid", res.Invalid, "first", strings.Join(res.InvalidList[:min(5, len(res.InvalidList))], "; "))
		}
	}
}

// secs rounds seconds to a Duration in milliseconds, for the log.
func secs(v float64) time.Duration {
	return time.Duration(v * float64(time.Second)).Round(time.Millisecond)
}

// diff is what a sync writes.
type diff struct {
	res      Result
	backends []*routing.Backend
	puts     []routing.UserRoute // without the tag (the command carries it)
	prunes   []string
}

// classify adds the entry of user key to d: added, changed, unchanged or
// shadowed, against table t.
func (s *Syncer) classify(d *diff, r *resolver, t *routing.Table, key string, e source.Entry, dry bool) {
	tag := Tag(s.cfg.Name)
	invalid := func(why string) {
		d.res.Invalid++
		if len(d.res.InvalidList) < maxList {
			d.res.InvalidList = append(d.res.InvalidList, fmt.Sprintf("%s: %s", e.User, why))
		}
	}
	if !routing.ValidUser(e.User) {
		invalid("bad user name")
		return
	}
	if e.Login != "" && !routing.ValidUser(e.Login) {
		invalid(fmt.Sprintf("bad login name %q", e.Login))
		return
	}
	tg, err := r.resolve(e)
	if err != nil {
		invalid(err.Error())
		return
	}
	want := tg
	want.Source = tag
	cur, ok := t.UserRoute(key)
	switch {
	case ok && cur == want:
		d.res.Unchanged++
		return
	case ok && cur.Source != tag && !s.cfg.Overwrite:
		d.res.Shadowed++
		return
	case !ok:
		d.res.Added++
		if dry && len(d.res.AddedList) < maxList {
			d.res.AddedList = append(d.res.AddedList, routing.UserRoute{User: key, Target: want})
		}
	default:
		d.res.Changed++
		if dry && len(d.res.ChangedList) < maxList {
			d.res.ChangedList = append(d.res.ChangedList, Change{User: key, From: cur, To: want})
		}
	}
	d.puts = append(d.puts, routing.UserRoute{User: key, Target: tg})
}

func (d *diff) remove(key string, tg routing.Target, dry bool) {
	d.res.Removed++
	d.prunes = append(d.prunes, key)
	if dry && len(d.res.RemovedList) < maxList {
		d.res.RemovedList = append(d.res.RemovedList, routing.UserRoute{User: key, Target: tg})
	}
}

// full reads the whole source and writes the difference with the table:
// its entries added or changed, the source's rules it no longer names
// removed.
func (s *Syncer) full(ctx context.Context, opt Options, start time.Time, p *pacer) (Result, error) {
	entries := map[string]source.Entry{}
	wm, err := s.f.Full(ctx, func(e source.Entry) error {
		entries[routing.NormalizeUser(e.User)] = e // a user named twice: the last wins
		return p.step(ctx)
	})
	if err != nil {
		return Result{Kind: "full"}, fmt.Errorf("reading the source: %w", err)
	}
	t := s.table()
	d := &diff{res: Result{Kind: "full", Entries: len(entries), Watermark: wm}}
	r := newResolver(t, s.cfg.NewBackends)
	keys := make([]string, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s.classify(d, r, t, k, entries[k], opt.DryRun)
		if err := p.step(ctx); err != nil {
			return d.res, err
		}
	}
	tag := Tag(s.cfg.Name)
	var gone []routing.UserRoute
	t.EachUser(func(u string, tg routing.Target) bool {
		if tg.Source == tag {
			d.res.Owned++
			if _, named := entries[u]; !named {
				gone = append(gone, routing.UserRoute{User: u, Target: tg})
			}
		}
		err = p.step(ctx)
		return err == nil
	})
	if err != nil {
		return d.res, err
	}
	sort.Slice(gone, func(i, j int) bool { return gone[i].User < gone[j].User })
	for _, g := range gone {
		d.remove(g.User, g.Target, opt.DryRun)
	}
	d.backends = r.order
	st := routing.SourceState{Watermark: wm, LastFull: start.UnixMilli(), Entries: len(entries)}
	return s.write(ctx, d, opt, st, true, p)
}

// incremental reads what changed since the table's watermark and writes
// it; source.ErrNoChanges when the source cannot tell.
func (s *Syncer) incremental(ctx context.Context, st routing.SourceState, opt Options, start time.Time, p *pacer) (Result, error) {
	changes := map[string]source.Change{}
	var order []string
	next, err := s.f.Changes(ctx, st.Watermark, func(c source.Change) error {
		k := routing.NormalizeUser(c.User)
		if _, seen := changes[k]; !seen {
			order = append(order, k)
		}
		changes[k] = c // the last change of a user wins
		return p.step(ctx)
	})
	if errors.Is(err, source.ErrNoChanges) {
		return Result{Kind: "incremental"}, err
	}
	if err != nil {
		return Result{Kind: "incremental"}, fmt.Errorf("reading the source's changes: %w", err)
	}
	t := s.table()
	tag := Tag(s.cfg.Name)
	d := &diff{res: Result{Kind: "incremental", Entries: len(changes), Watermark: next}}
	r := newResolver(t, s.cfg.NewBackends)
	for _, k := range order {
		c := changes[k]
		if c.Deleted {
			if cur, ok := t.UserRoute(k); ok && cur.Source == tag {
				d.remove(k, cur, opt.DryRun)
			}
			continue
		}
		s.classify(d, r, t, k, c.Entry, opt.DryRun)
		if err := p.step(ctx); err != nil {
			return d.res, err
		}
	}
	if d.res.Removed > 0 {
		t.EachUser(func(_ string, tg routing.Target) bool {
			if tg.Source == tag {
				d.res.Owned++
			}
			return true
		})
	}
	d.backends = r.order
	nst := routing.SourceState{Watermark: next, LastFull: st.LastFull, Entries: max(0, st.Entries+d.res.Added-d.res.Removed)}
	wrote := len(d.puts) > 0 || len(d.prunes) > 0 || len(d.backends) > 0 || next != st.Watermark
	return s.write(ctx, d, opt, nst, wrote, p)
}

// write applies a diff (unless dry, or refused by the safety valve):
// new backends, then the puts and the prunes in batches, then the
// source's state. Every command is idempotent, so a sync cut off part
// way (a leader change) is made good by the next one, from the old
// watermark: the state is written last.
func (s *Syncer) write(ctx context.Context, d *diff, opt Options, st routing.SourceState, writeState bool, p *pacer) (Result, error) {
	for _, b := range d.backends {
		d.res.NewBackends = append(d.res.NewBackends, b.ID)
	}
	if d.res.Removed > 1 && float64(d.res.Removed) > s.cfg.MaxDeleteShare*float64(d.res.Owned) {
		if !opt.Force {
			d.res.Refused = fmt.Sprintf("would remove %d of the source's %d rules (more than max_delete_share %g)", d.res.Removed, d.res.Owned, s.cfg.MaxDeleteShare)
			if !opt.DryRun {
				return d.res, fmt.Errorf("%w: %s", ErrRefused, d.res.Refused)
			}
		}
	}
	if opt.DryRun {
		return d.res, nil
	}
	// One command at a time, paced (pace.go).
	apply := func(c routing.Command, what string) error {
		if err := p.write(ctx, c); err != nil {
			return fmt.Errorf("writing %s: %w", what, err)
		}
		return nil
	}
	for _, b := range d.backends {
		s.log.Info("directory source names a server no backend has: adding a backend for it", "backend", b.ID, "host", b.Host,
			"imap_port", b.IMAPPort, "pop3_port", b.POP3Port, "sieve_port", b.SievePort)
		if err := apply(routing.Command{Type: routing.CmdPutBackend, Backend: b}, "backend "+b.ID); err != nil {
			return d.res, err
		}
	}
	tag := Tag(s.cfg.Name)
	// Batches grouped by the table's shards: a command then copies the
	// one or two shards its users fall in, where a batch in name order
	// touches every shard and copies the whole table, on every node
	// (routing.GroupByShard). Same commands, same table, any order.
	puts := routing.GroupByShard(d.puts, func(r routing.UserRoute) string { return r.User })
	prunes := routing.GroupByShard(d.prunes, func(u string) string { return u })
	d.puts, d.prunes = nil, nil
	for i := 0; i < len(puts); i += s.cfg.Batch {
		end := min(i+s.cfg.Batch, len(puts))
		if err := apply(routing.Command{Type: routing.CmdImport, Source: tag, Users: puts[i:end]}, fmt.Sprintf("users %d-%d of %d", i+1, end, len(puts))); err != nil {
			return d.res, err
		}
	}
	for i := 0; i < len(prunes); i += s.cfg.Batch {
		end := min(i+s.cfg.Batch, len(prunes))
		if err := apply(routing.Command{Type: routing.CmdImport, Source: tag, Names: prunes[i:end]}, fmt.Sprintf("removals %d-%d of %d", i+1, end, len(prunes))); err != nil {
			return d.res, err
		}
	}
	if writeState {
		st.LastSync = s.now().UnixMilli()
		if err := apply(routing.Command{Type: routing.CmdSourceState, Source: s.cfg.Name, State: &st}, "the sync state"); err != nil {
			return d.res, err
		}
	}
	return d.res, nil
}

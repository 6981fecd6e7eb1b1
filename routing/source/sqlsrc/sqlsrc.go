package sqlsrc

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"

	"github.com/portico-mail/portico/routing/source"
)

// ErrNoLookup is returned by Lookup when the source has no lookup_query.
var ErrNoLookup = errors.New("sql source: no lookup_query configured")

// maxLoggedSkips is how many invalid rows of one read are logged one by
// one; the rest are counted in the read's summary line.
const maxLoggedSkips = 5

// Source reads one SQL database. Its methods may be called concurrently.
type Source struct {
	cfg     Config
	db      *sql.DB
	addr    string
	secrets []string
	log     *slog.Logger
	skipped atomic.Uint64
}

// Open returns the source of cfg. It does not connect: a database that is
// down fails the reads (and the syncer retries them), not the start.
func Open(cfg Config, log *slog.Logger) (source.Fetcher, error) {
	return open(cfg, log)
}

func open(cfg Config, log *slog.Logger) (*Source, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	dsn := cfg.DSN
	if cfg.DSNFile != "" {
		b, err := os.ReadFile(cfg.DSNFile)
		if err != nil {
			return nil, fmt.Errorf("dsn_file: %w", err)
		}
		dsn = strings.TrimSpace(string(b))
		if dsn == "" {
			return nil, fmt.Errorf("dsn_file: %s is empty", cfg.DSNFile)
		}
		if fi, err := os.Stat(cfg.DSNFile); err == nil && fi.Mode().Perm()&0o004 != 0 {
			log.Warn("sql source: dsn_file is readable by every user of this machine, and it holds a password", "file", cfg.DSNFile, "mode", fi.Mode().Perm().String())
		}
	}
	c, err := parseDSN(cfg.Driver, dsn, cfg.Timeout, log)
	if err != nil {
		if cfg.DSNFile != "" {
			return nil, fmt.Errorf("dsn_file %s: %w", cfg.DSNFile, err)
		}
		return nil, err
	}
	db := c.open()
	db.SetMaxOpenConns(cfg.MaxOpenConns)
	db.SetMaxIdleConns(cfg.MaxIdleConns)
	db.SetConnMaxLifetime(cfg.ConnMaxLifetime)
	s := &Source{cfg: cfg, db: db, addr: c.addr, secrets: c.secrets, log: log.With("sql", c.addr)}
	return s, nil
}

// Addr is where the source connects, without the password.
func (s *Source) Addr() string { return s.addr }

// Skipped counts the rows read since Open that could not be used (a NULL
// or empty user or target, a column of a wrong type): each is logged and
// left out, never fatal unless every row of a full read is.
func (s *Source) Skipped() uint64 { return s.skipped.Load() }

// SkippedByReason implements source.SkipCounter: the rows skipped, under
// one reason (the log says which column was unusable).
func (s *Source) SkippedByReason() map[string]uint64 {
	return map[string]uint64{"unusable_row": s.skipped.Load()}
}

// Close implements source.Fetcher.
func (s *Source) Close() error { return s.db.Close() }

// queryer is a *sql.DB or a *sql.Tx.
type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// Full implements source.Fetcher. With a changes_query, the watermark and
// the entries are read in one read-only REPEATABLE READ transaction, so
// that the watermark is exactly where this snapshot ends: a change
// committed after it is after the watermark too.
func (s *Source) Full(ctx context.Context, put func(source.Entry) error) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.SyncTimeout)
	defer cancel()
	var q queryer = s.db
	var wm string
	var tx *sql.Tx
	if s.cfg.WatermarkQuery != "" {
		var err error
		tx, err = s.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
		if err != nil {
			return "", s.err(ctx, "full read: begin", err)
		}
		// Read-only: nothing to commit. Ended before the context is
		// cancelled, the transaction keeps its connection for the pool;
		// after, database/sql discards it.
		defer tx.Rollback() //nolint:errcheck
		if wm, err = s.watermark(ctx, tx); err != nil {
			return "", err
		}
		q = tx
	}
	rows, err := q.QueryContext(ctx, s.cfg.Query)
	if err != nil {
		return "", s.err(ctx, "query", err)
	}
	// Closing rows drains what the server still sends: cancel first, so
	// that a walk ended early (by put) does not read the rest.
	defer func() { cancel(); rows.Close() }()
	vals, err := s.scanTarget(rows, "query", 2, 3)
	if err != nil {
		return "", err
	}
	w := walk{s: s, what: "query"}
	for rows.Next() {
		w.rows++
		if err := rows.Scan(vals...); err != nil {
			w.skip(err.Error())
			continue
		}
		e, problem := entryOf(deref(vals))
		if problem != "" {
			w.skip(problem)
			continue
		}
		if err := put(e); err != nil {
			return "", err
		}
		w.used++
	}
	if err := rows.Err(); err != nil {
		return "", s.err(ctx, "query", err)
	}
	w.done()
	if w.rows > 0 && w.used == 0 {
		return "", s.errf("query: all %d rows unusable; the first: %s", w.rows, w.first)
	}
	if tx != nil {
		_ = tx.Rollback()
	}
	return wm, nil
}

// watermark reads watermark_query's one value.
func (s *Source) watermark(ctx context.Context, q queryer) (string, error) {
	rows, err := q.QueryContext(ctx, s.cfg.WatermarkQuery)
	if err != nil {
		return "", s.err(ctx, "watermark_query", err)
	}
	defer rows.Close()
	vals, err := s.scanTarget(rows, "watermark_query", 1, 1)
	if err != nil {
		return "", err
	}
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return "", s.err(ctx, "watermark_query", err)
		}
		return "", s.errf("watermark_query: returned no row")
	}
	if err := rows.Scan(vals...); err != nil {
		return "", s.err(ctx, "watermark_query", err)
	}
	m, err := markerOf(*vals[0].(*any))
	if err != nil {
		return "", s.errf("watermark_query: %v", err)
	}
	if rows.Next() {
		return "", s.errf("watermark_query: returned more than one row")
	}
	if err := rows.Err(); err != nil {
		return "", s.err(ctx, "watermark_query", err)
	}
	return m.String(), nil
}

// Changes implements source.Fetcher: changes_query from watermark, its
// rows in the order of their markers (a marker going back is an error:
// the query lacks its ORDER BY, and two changes of one user would be
// applied in the wrong order). A row that cannot be used is skipped, and
// its marker still moves the watermark past it. Without a changes_query,
// or given a watermark this source did not make (an empty one, or one
// from another query's kind), it returns source.ErrNoChanges.
func (s *Source) Changes(ctx context.Context, watermark string, put func(source.Change) error) (string, error) {
	if s.cfg.ChangesQuery == "" {
		return "", source.ErrNoChanges
	}
	from, ok := parseWatermark(watermark)
	if !ok {
		return "", source.ErrNoChanges
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.SyncTimeout)
	defer cancel()
	rows, err := s.db.QueryContext(ctx, s.cfg.ChangesQuery, from.param())
	if err != nil {
		return "", s.err(ctx, "changes_query", err)
	}
	defer func() { cancel(); rows.Close() }()
	vals, err := s.scanTarget(rows, "changes_query", 5, 5)
	if err != nil {
		return "", err
	}
	w := walk{s: s, what: "changes_query"}
	next := watermark
	var prev marker
	for rows.Next() {
		w.rows++
		if err := rows.Scan(vals...); err != nil {
			return "", s.err(ctx, "changes_query", err)
		}
		v := deref(vals)
		m, err := markerOf(v[4])
		if err != nil {
			return "", s.errf("changes_query: row %d: %v", w.rows, err)
		}
		if w.rows > 1 && m.before(prev) {
			return "", s.errf("changes_query: row %d: marker %s comes after %s: order the rows by the marker (ORDER BY)", w.rows, m, prev)
		}
		prev, next = m, m.String()
		c, problem := changeOf(v[:4])
		if problem != "" {
			w.skip(problem)
			continue
		}
		if err := put(c); err != nil {
			return "", err
		}
		w.used++
	}
	if err := rows.Err(); err != nil {
		return "", s.err(ctx, "changes_query", err)
	}
	w.done()
	return next, nil
}

// Lookup implements source.Fetcher: lookup_query for user, sent as a
// parameter (never written into the query). No row is
// source.ErrNotFound; more than one is an error (the query does not name
// one user), as is a row that cannot be used.
func (s *Source) Lookup(ctx context.Context, user string) (source.Entry, error) {
	if s.cfg.LookupQuery == "" {
		return source.Entry{}, ErrNoLookup
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	rows, err := s.db.QueryContext(ctx, s.cfg.LookupQuery, user)
	if err != nil {
		return source.Entry{}, s.err(ctx, "lookup_query", err)
	}
	defer func() { cancel(); rows.Close() }()
	vals, err := s.scanTarget(rows, "lookup_query", 2, 3)
	if err != nil {
		return source.Entry{}, err
	}
	if !rows.Next() {
		// No row because the query ended, or because it failed: only the
		// first is a negative answer.
		if err := rows.Err(); err != nil {
			return source.Entry{}, s.err(ctx, "lookup_query", err)
		}
		return source.Entry{}, source.ErrNotFound
	}
	if err := rows.Scan(vals...); err != nil {
		return source.Entry{}, s.err(ctx, "lookup_query", err)
	}
	e, problem := entryOf(deref(vals))
	if problem != "" {
		return source.Entry{}, s.errf("lookup_query: %s", problem)
	}
	if rows.Next() {
		return source.Entry{}, s.errf("lookup_query: more than one row for one user")
	}
	if err := rows.Err(); err != nil {
		return source.Entry{}, s.err(ctx, "lookup_query", err)
	}
	return e, nil
}

// scanTarget checks the number of columns a query returns and makes the
// []any its rows are scanned into.
func (s *Source) scanTarget(rows *sql.Rows, what string, lo, hi int) ([]any, error) {
	cols, err := rows.Columns()
	if err != nil {
		return nil, s.err(context.Background(), what, err)
	}
	if len(cols) < lo || len(cols) > hi {
		want := fmt.Sprintf("%d", lo)
		switch {
		case what == "query" || what == "lookup_query":
			want = "2 or 3 (user, target[, login])"
		case what == "changes_query":
			want = "5 (user, target, login, deleted, marker)"
		}
		return nil, s.errf("%s: returns %d columns (%s), want %s", what, len(cols), strings.Join(cols, ", "), want)
	}
	vals := make([]any, len(cols))
	for i := range vals {
		vals[i] = new(any)
	}
	return vals, nil
}

func deref(vals []any) []any {
	out := make([]any, len(vals))
	for i, v := range vals {
		out[i] = *v.(*any)
	}
	return out
}

// walk counts a read's rows and logs the unusable ones.
type walk struct {
	s          *Source
	what       string
	rows, used int
	skipped    int
	first      string
}

func (w *walk) skip(problem string) {
	w.skipped++
	w.s.skipped.Add(1)
	if w.first == "" {
		w.first = fmt.Sprintf("row %d: %s", w.rows, problem)
	}
	if w.skipped <= maxLoggedSkips {
		w.s.log.Warn("sql source: row skipped", "query", w.what, "row", w.rows, "problem", problem)
	}
}

func (w *walk) done() {
	if w.skipped > 0 {
		w.s.log.Warn("sql source: rows skipped", "query", w.what, "skipped", w.skipped, "rows", w.rows, "first", w.first)
	}
}

// Error is an error of the source: it names the source's address and
// never its password. errors.Is sees through it (context.Canceled, a
// driver's sentinel) but errors.As and Unwrap do not, as the driver's
// error may carry the connection string.
type Error struct {
	msg   string
	cause error
	ctx   error // the context's error when it ended before the query did
}

func (e *Error) Error() string { return e.msg }

// Is reports whether the cause, or the context's end, is target.
func (e *Error) Is(target error) bool {
	return (e.cause != nil && errors.Is(e.cause, target)) || (e.ctx != nil && errors.Is(e.ctx, target))
}

func (s *Source) err(ctx context.Context, op string, err error) error {
	msg := scrub(fmt.Sprintf("sql %s: %s: %v", s.addr, op, err), s.secrets)
	e := &Error{msg: msg, cause: err, ctx: ctx.Err()}
	if e.ctx != nil && !errors.Is(err, e.ctx) {
		e.msg += " (" + e.ctx.Error() + ")"
	}
	return e
}

func (s *Source) errf(format string, args ...any) error {
	return &Error{msg: scrub("sql "+s.addr+": "+fmt.Sprintf(format, args...), s.secrets)}
}

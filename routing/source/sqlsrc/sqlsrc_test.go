package sqlsrc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/sqltest"
	"github.com/portico-mail/portico/routing/source"
)

// One PostgreSQL and one MariaDB server for the whole test binary, each
// test in databases of its own.
var (
	pgServer, myServer *sqltest.Server
	pgErr, myErr       error
)

func TestMain(m *testing.M) {
	pgServer, myServer, pgErr, myErr = sqltest.StartBoth()
	code := m.Run()
	for _, s := range []*sqltest.Server{pgServer, myServer} {
		if s != nil {
			if err := s.Close(); err != nil {
				fmt.Fprintln(os.Stderr, "sqltest close:", err)
			}
		}
	}
	os.Exit(code)
}

// each runs f against PostgreSQL and MariaDB, as subtests.
func each(t *testing.T, f func(t *testing.T, srv *sqltest.Server)) {
	for _, sv := range []struct {
		name string
		srv  *sqltest.Server
		err  error
	}{{"postgres", pgServer, pgErr}, {"mariadb", myServer, myErr}} {
		t.Run(sv.name, func(t *testing.T) {
			sqltest.Require(t, sv.err)
			f(t, sv.srv)
		})
	}
}

// dialect picks the PostgreSQL or the MySQL spelling of a statement.
func dialect(srv *sqltest.Server, pg, my string) string {
	if srv.Driver == sqltest.Postgres {
		return pg
	}
	return my
}

// newDB makes a database of the test's own, named after the test.
func newDB(t *testing.T, srv *sqltest.Server, stmts ...string) *sqltest.Database {
	t.Helper()
	name := strings.ToLower(strings.NewReplacer("/", "_", "-", "_").Replace(t.Name()))
	name = strings.TrimPrefix(strings.TrimSuffix(strings.TrimSuffix(name, "_postgres"), "_mariadb"), "test")
	if len(name) > 30 {
		name = name[:30]
	}
	d, err := srv.NewDatabase(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.DB.Close() })
	exec(t, d, stmts...)
	return d
}

func exec(t *testing.T, d *sqltest.Database, stmts ...string) {
	t.Helper()
	for _, q := range stmts {
		if _, err := d.DB.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// testLog is a logger that writes into the test's log.
func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func openSource(t *testing.T, cfg Config) *Source {
	t.Helper()
	s, err := open(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// simpleSchema is one table of users with a login column.
func simpleSchema(srv *sqltest.Server) []string {
	return []string{dialect(srv,
		"CREATE TABLE mailbox (username text PRIMARY KEY, server text, login text)",
		"CREATE TABLE mailbox (username VARCHAR(255) PRIMARY KEY, server VARCHAR(255), login VARCHAR(255))")}
}

func collect(t *testing.T, s *Source) (map[string]source.Entry, string) {
	t.Helper()
	got := map[string]source.Entry{}
	wm, err := s.Full(context.Background(), func(e source.Entry) error {
		if _, dup := got[e.User]; dup {
			t.Errorf("user %q put twice", e.User)
		}
		got[e.User] = e
		return nil
	})
	if err != nil {
		t.Fatalf("Full: %v", err)
	}
	return got, wm
}

// TestFull reads more rows than a driver reads at once (its buffers hold
// a few kilobytes) and gets each exactly once, with NULL logins empty.
func TestFull(t *testing.T) {
	const n = 30000
	each(t, func(t *testing.T, srv *sqltest.Server) {
		d := newDB(t, srv, simpleSchema(srv)...)
		exec(t, d, dialect(srv,
			`INSERT INTO mailbox SELECT 'user' || i || '@example.org', 'backend' || (i % 7),
			   CASE WHEN i % 3 = 0 THEN 'login' || i END FROM generate_series(1, 30000) i`,
			`INSERT INTO mailbox SELECT concat('user', seq, '@example.org'), concat('backend', seq % 7),
			   IF(seq % 3 = 0, concat('login', seq), NULL) FROM seq_1_to_30000`))
		s := openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: "SELECT username, server, login FROM mailbox"})
		got, wm := collect(t, s)
		if wm != "" {
			t.Errorf("watermark %q without a changes_query", wm)
		}
		if len(got) != n {
			t.Fatalf("got %d entries, want %d", len(got), n)
		}
		for i := 1; i <= n; i++ {
			u := fmt.Sprintf("user%d@example.org", i)
			want := source.Entry{User: u, Target: fmt.Sprintf("backend%d", i%7)}
			if i%3 == 0 {
				want.Login = fmt.Sprintf("login%d", i)
			}
			if got[u] != want {
				t.Fatalf("%s: got %+v, want %+v", u, got[u], want)
			}
		}
		// Two columns only: no login.
		s2 := openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: "SELECT username, server FROM mailbox WHERE login IS NOT NULL"})
		got, _ = collect(t, s2)
		if len(got) != n/3 || got["user3@example.org"] != (source.Entry{User: "user3@example.org", Target: "backend3"}) {
			t.Fatalf("two-column query: %d entries, user3: %+v", len(got), got["user3@example.org"])
		}
	})
}

// TestFullStreams reads 40 MB of rows while the live heap stays far below
// that: rows go to put as they arrive, none is held.
func TestFullStreams(t *testing.T) {
	const n, width = 40000, 1000
	each(t, func(t *testing.T, srv *sqltest.Server) {
		d := newDB(t, srv)
		s := openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: dialect(srv,
			fmt.Sprintf("SELECT 'user' || i, 'backend', repeat('x', %d) FROM generate_series(1, %d) i", width, n),
			fmt.Sprintf("SELECT concat('user', seq), 'backend', repeat('x', %d) FROM seq_1_to_%d", width, n))})
		var rows int
		var peak uint64
		var ms runtime.MemStats
		_, err := s.Full(context.Background(), func(e source.Entry) error {
			rows++
			if len(e.Login) != width {
				return fmt.Errorf("row %d: login of %d bytes", rows, len(e.Login))
			}
			if rows%4000 == 0 {
				runtime.GC()
				runtime.ReadMemStats(&ms)
				peak = max(peak, ms.HeapAlloc)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if rows != n {
			t.Fatalf("%d rows, want %d", rows, n)
		}
		t.Logf("%d rows of %d bytes: live heap at most %.1f MB", n, width, float64(peak)/1e6)
		if peak > 16<<20 {
			t.Fatalf("live heap reached %.1f MB while reading %d MB: rows are held, not streamed", float64(peak)/1e6, n*width>>20)
		}
	})
}

// endless ... endlessFrom is a PostgreSQL query that streams a billion
// rows as fast as they are read (a set-returning function in the select
// list runs value per call; in FROM it would be materialised first).
const endless, endlessFrom = "SELECT ", " FROM (SELECT generate_series(1, 1000000000) AS i) s"

// TestFullPutErrorStopsEarly: an error from put ends the walk at once and
// is returned as is, without reading the rest of a large result.
func TestFullPutErrorStopsEarly(t *testing.T) {
	each(t, func(t *testing.T, srv *sqltest.Server) {
		d := newDB(t, srv)
		s := openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: dialect(srv,
			endless+"'user' || i, 'backend'"+endlessFrom,
			"SELECT concat('user', seq), 'backend' FROM seq_1_to_1000000000")})
		stop := errors.New("enough")
		rows := 0
		start := time.Now()
		_, err := s.Full(context.Background(), func(source.Entry) error {
			if rows++; rows == 100 {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) || rows != 100 {
			t.Fatalf("err %v after %d rows, want put's error after 100", err, rows)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Fatalf("returned after %v: the rest of a billion rows was read", el)
		}
		// The pool is usable afterwards.
		if _, err := s.Full(context.Background(), func(source.Entry) error { return stop }); !errors.Is(err, stop) {
			t.Fatalf("second walk: %v", err)
		}
	})
}

// TestInvalidRows: NULLs, empty values and wrong types are skipped and
// counted, never fatal; a wrong column count is an error that says so,
// and so is a full read of which no row can be used.
func TestInvalidRows(t *testing.T) {
	each(t, func(t *testing.T, srv *sqltest.Server) {
		d := newDB(t, srv, simpleSchema(srv)...)
		exec(t, d, `INSERT INTO mailbox VALUES ('good@example.org', 'b1', NULL), ('renamed@example.org', 'b2', 'other'),
			('nulltarget@example.org', NULL, NULL), ('emptytarget@example.org', '', NULL), ('   ', 'b1', NULL),
			('padded@example.org ', ' b3 ', '')`)
		q := "SELECT username, server, login FROM mailbox UNION ALL SELECT NULL, 'b9', NULL"
		s := openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: q})
		got, _ := collect(t, s)
		want := map[string]source.Entry{
			"good@example.org":    {User: "good@example.org", Target: "b1"},
			"renamed@example.org": {User: "renamed@example.org", Target: "b2", Login: "other"},
			"padded@example.org":  {User: "padded@example.org", Target: "b3"},
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("got %v\nwant %v", got, want)
		}
		if s.Skipped() != 4 {
			t.Fatalf("Skipped() = %d, want 4 (NULL target, empty target, blank user, NULL user)", s.Skipped())
		}
		// An integer user is a numeric user id.
		s = openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: "SELECT 42, 'b1'"})
		if got, _ = collect(t, s); got["42"].Target != "b1" {
			t.Fatalf("numeric user: %v", got)
		}
		// A target of a type that is not text (a PostgreSQL boolean; MySQL
		// has none) is skipped; when no row is usable, the read fails.
		if srv.Driver == sqltest.Postgres {
			s = openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: "SELECT 'a', true UNION ALL SELECT 'b', false"})
			_, err := s.Full(context.Background(), func(source.Entry) error { return nil })
			if err == nil || !strings.Contains(err.Error(), "all 2 rows unusable") || !strings.Contains(err.Error(), "target is a bool") {
				t.Fatalf("boolean target column: %v", err)
			}
		}
		for _, q := range []string{"SELECT username FROM mailbox", "SELECT username, server, login, login FROM mailbox"} {
			s := openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: q})
			_, err := s.Full(context.Background(), func(source.Entry) error { return nil })
			if err == nil || !strings.Contains(err.Error(), "want 2 or 3 (user, target[, login])") {
				t.Fatalf("%s: %v", q, err)
			}
		}
		// No row at all is not an error (the syncer's safety valve judges).
		s = openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: "SELECT username, server FROM mailbox WHERE 1 = 0"})
		if got, _ := collect(t, s); len(got) != 0 {
			t.Fatal(got)
		}
	})
}

// A pattern is one way to track changes (package documentation).
type pattern struct {
	schema                    []string
	query, watermark, changes string
	insert, update, del       []string
	wmKind                    string // the watermark's kind
	margin                    bool   // the changes query re-reads a margin
	lookup                    string
}

func patterns(srv *sqltest.Server) map[string]pattern {
	if srv.Driver == sqltest.Postgres {
		return map[string]pattern{
			"updated_at": {
				schema: []string{
					`CREATE TABLE mailbox (
					    username   text PRIMARY KEY,
					    server     text NOT NULL,
					    login      text,
					    deleted    boolean NOT NULL DEFAULT false,
					    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
					)`,
					`CREATE INDEX mailbox_updated_at ON mailbox (updated_at)`,
					`CREATE FUNCTION mailbox_touch() RETURNS trigger LANGUAGE plpgsql AS
					    $$ BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$`,
					`CREATE TRIGGER mailbox_touch BEFORE UPDATE ON mailbox
					    FOR EACH ROW EXECUTE FUNCTION mailbox_touch()`,
				},
				query:     "SELECT username, server, login FROM mailbox WHERE NOT deleted",
				watermark: "SELECT coalesce(max(updated_at), 'epoch') FROM mailbox",
				changes: `SELECT username, server, login, deleted, updated_at FROM mailbox
				    WHERE updated_at > $1::timestamptz - interval '5 minutes' ORDER BY updated_at`,
				lookup: "SELECT username, server, login FROM mailbox WHERE username = $1 AND NOT deleted",
				insert: []string{"INSERT INTO mailbox (username, server) VALUES ('new@example.org', 'b1')"},
				update: []string{"UPDATE mailbox SET server = 'b9' WHERE username = 'moved@example.org'",
					"UPDATE mailbox SET login = 'renamed' WHERE username = 'renamed@example.org'"},
				del:    []string{"UPDATE mailbox SET deleted = true WHERE username = 'gone@example.org'"},
				wmKind: "time:", margin: true,
			},
			"change_table": {
				schema: []string{
					`CREATE TABLE mailbox (username text PRIMARY KEY, server text NOT NULL, login text)`,
					`CREATE TABLE mailbox_change (id bigserial PRIMARY KEY, username text NOT NULL)`,
					`CREATE FUNCTION mailbox_changed() RETURNS trigger LANGUAGE plpgsql AS $$
					BEGIN
					    IF TG_OP <> 'INSERT' THEN INSERT INTO mailbox_change (username) VALUES (OLD.username); END IF;
					    IF TG_OP <> 'DELETE' THEN INSERT INTO mailbox_change (username) VALUES (NEW.username); END IF;
					    RETURN NULL;
					END $$`,
					`CREATE TRIGGER mailbox_changed AFTER INSERT OR UPDATE OR DELETE ON mailbox
					    FOR EACH ROW EXECUTE FUNCTION mailbox_changed()`,
				},
				query:     "SELECT username, server, login FROM mailbox",
				watermark: "SELECT coalesce(max(id), 0) FROM mailbox_change",
				// No margin here, to see exactly what changed.
				changes: `SELECT c.username, m.server, m.login, m.username IS NULL, c.id
				    FROM mailbox_change c LEFT JOIN mailbox m ON m.username = c.username
				    WHERE c.id > $1::bigint ORDER BY c.id`,
				lookup: "SELECT username, server, login FROM mailbox WHERE username = $1",
				insert: []string{"INSERT INTO mailbox (username, server) VALUES ('new@example.org', 'b1')"},
				update: []string{"UPDATE mailbox SET server = 'b9' WHERE username = 'moved@example.org'",
					"UPDATE mailbox SET login = 'renamed' WHERE username = 'renamed@example.org'"},
				del:    []string{"DELETE FROM mailbox WHERE username = 'gone@example.org'"},
				wmKind: "int:",
			},
		}
	}
	return map[string]pattern{
		"updated_at": {
			schema: []string{`CREATE TABLE mailbox (
			    username   VARCHAR(255) PRIMARY KEY,
			    server     VARCHAR(255) NOT NULL,
			    login      VARCHAR(255),
			    deleted    BOOLEAN NOT NULL DEFAULT FALSE,
			    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
			    INDEX (updated_at)
			)`},
			query:     "SELECT username, server, login FROM mailbox WHERE NOT deleted",
			watermark: "SELECT coalesce(max(updated_at), '1970-01-01') FROM mailbox",
			changes: `SELECT username, server, login, deleted, updated_at FROM mailbox
			    WHERE updated_at > ? - INTERVAL 5 MINUTE ORDER BY updated_at`,
			lookup: "SELECT username, server, login FROM mailbox WHERE username = ? AND NOT deleted",
			insert: []string{"INSERT INTO mailbox (username, server) VALUES ('new@example.org', 'b1')"},
			update: []string{"UPDATE mailbox SET server = 'b9' WHERE username = 'moved@example.org'",
				"UPDATE mailbox SET login = 'renamed' WHERE username = 'renamed@example.org'"},
			del:    []string{"UPDATE mailbox SET deleted = TRUE WHERE username = 'gone@example.org'"},
			wmKind: "text:", margin: true,
		},
		"change_table": {
			schema: []string{
				`CREATE TABLE mailbox (username VARCHAR(255) PRIMARY KEY, server VARCHAR(255) NOT NULL, login VARCHAR(255))`,
				`CREATE TABLE mailbox_change (id BIGINT AUTO_INCREMENT PRIMARY KEY, username VARCHAR(255) NOT NULL)`,
				`CREATE TRIGGER mailbox_ins AFTER INSERT ON mailbox FOR EACH ROW
				    INSERT INTO mailbox_change (username) VALUES (NEW.username)`,
				`CREATE TRIGGER mailbox_upd AFTER UPDATE ON mailbox FOR EACH ROW
				    INSERT INTO mailbox_change (username) VALUES (OLD.username), (NEW.username)`,
				`CREATE TRIGGER mailbox_del AFTER DELETE ON mailbox FOR EACH ROW
				    INSERT INTO mailbox_change (username) VALUES (OLD.username)`,
			},
			query:     "SELECT username, server, login FROM mailbox",
			watermark: "SELECT coalesce(max(id), 0) FROM mailbox_change",
			changes: `SELECT c.username, m.server, m.login, m.username IS NULL, c.id
			    FROM mailbox_change c LEFT JOIN mailbox m ON m.username = c.username
			    WHERE c.id > ? ORDER BY c.id`,
			lookup: "SELECT username, server, login FROM mailbox WHERE username = ?",
			insert: []string{"INSERT INTO mailbox (username, server) VALUES ('new@example.org', 'b1')"},
			update: []string{"UPDATE mailbox SET server = 'b9' WHERE username = 'moved@example.org'",
				"UPDATE mailbox SET login = 'renamed' WHERE username = 'renamed@example.org'"},
			del:    []string{"DELETE FROM mailbox WHERE username = 'gone@example.org'"},
			wmKind: "int:",
		},
	}
}

// changes applies one incremental read to state, as the syncer does, and
// returns the changes read and the next watermark.
func changes(t *testing.T, s *Source, wm string, state map[string]source.Entry) ([]source.Change, string) {
	t.Helper()
	var got []source.Change
	next, err := s.Changes(context.Background(), wm, func(c source.Change) error {
		got = append(got, c)
		if c.Deleted {
			if c.Target != "" || c.Login != "" {
				t.Errorf("deleted change with a target: %+v", c)
			}
			delete(state, c.User)
		} else {
			state[c.User] = c.Entry
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Changes(%q): %v", wm, err)
	}
	return got, next
}

// TestChanges follows INSERT, UPDATE and DELETE through changes_query in
// both documented patterns (package documentation) on both servers: the
// state built from a full read plus the changes is the table's, and the
// watermark moves forward with the marker's type.
func TestChanges(t *testing.T) {
	each(t, func(t *testing.T, srv *sqltest.Server) {
		for name, p := range patterns(srv) {
			t.Run(name, func(t *testing.T) {
				d := newDB(t, srv, p.schema...)
				exec(t, d, `INSERT INTO mailbox (username, server) VALUES ('moved@example.org', 'b1'),
					('renamed@example.org', 'b2'), ('gone@example.org', 'b3'), ('stays@example.org', 'b4')`)
				s := openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: p.query,
					WatermarkQuery: p.watermark, ChangesQuery: p.changes, LookupQuery: p.lookup})
				state, wm0 := collect(t, s)
				if len(state) != 4 || !strings.HasPrefix(wm0, p.wmKind) {
					t.Fatalf("full: %d entries, watermark %q (want kind %s)", len(state), wm0, p.wmKind)
				}
				// Nothing changed: nothing new (a margin re-reads the last
				// changes, which changes nothing).
				got, wm := changes(t, s, wm0, state)
				if !p.margin && (len(got) != 0 || wm != wm0) {
					t.Fatalf("no change: got %v, watermark %q -> %q", got, wm0, wm)
				}
				for _, step := range [][]string{p.insert, p.update, p.del} {
					exec(t, d, step...)
				}
				prev := wm
				got, wm = changes(t, s, wm, state)
				if wm == prev {
					t.Fatalf("watermark did not move: %q", wm)
				}
				if !p.margin && len(got) != 6 {
					// insert 1, two updates of 2 rows each (old and new
					// name), delete 1.
					t.Errorf("got %d changes, want 6: %+v", len(got), got)
				}
				want := map[string]source.Entry{
					"moved@example.org":   {User: "moved@example.org", Target: "b9"},
					"renamed@example.org": {User: "renamed@example.org", Target: "b2", Login: "renamed"},
					"stays@example.org":   {User: "stays@example.org", Target: "b4"},
					"new@example.org":     {User: "new@example.org", Target: "b1"},
				}
				if fmt.Sprint(state) != fmt.Sprint(want) {
					t.Fatalf("after changes: %v\nwant %v", state, want)
				}
				// A new full read agrees, and reading from the first
				// watermark again gives the same state (idempotent).
				if full, _ := collect(t, s); fmt.Sprint(full) != fmt.Sprint(want) {
					t.Fatalf("full read: %v", full)
				}
				again := map[string]source.Entry{}
				for u, tgt := range map[string]string{"moved": "b1", "renamed": "b2", "gone": "b3", "stays": "b4"} {
					again[u+"@example.org"] = source.Entry{User: u + "@example.org", Target: tgt}
				}
				changes(t, s, wm0, again)
				if fmt.Sprint(again) != fmt.Sprint(want) {
					t.Fatalf("replay from the first watermark: %v", again)
				}
				// The watermark survives a restart of the source (it is a
				// string the syncer stores): a new Source goes on from it.
				s2 := openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: p.query,
					WatermarkQuery: p.watermark, ChangesQuery: p.changes})
				exec(t, d, "UPDATE mailbox SET server = 'b5' WHERE username = 'stays@example.org'")
				_, wm2 := changes(t, s2, wm, state)
				if state["stays@example.org"].Target != "b5" || wm2 == wm {
					t.Fatalf("after restart: %v, watermark %q", state["stays@example.org"], wm2)
				}
			})
		}
	})
}

// TestChangesErrors: no feed or a foreign watermark is ErrNoChanges (the
// syncer then reads in full); rows out of marker order, a NULL marker or
// watermark are errors that say what to fix.
func TestChangesErrors(t *testing.T) {
	each(t, func(t *testing.T, srv *sqltest.Server) {
		p := patterns(srv)["change_table"]
		d := newDB(t, srv, p.schema...)
		exec(t, d, "INSERT INTO mailbox (username, server) VALUES ('a@example.org', 'b1'), ('b@example.org', 'b2')")
		plain := openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: p.query})
		if _, err := plain.Changes(context.Background(), "int:1", nil); !errors.Is(err, source.ErrNoChanges) {
			t.Fatalf("without changes_query: %v", err)
		}
		s := openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: p.query, WatermarkQuery: p.watermark, ChangesQuery: p.changes})
		for _, wm := range []string{"", "42", "sha256:abcd", "int:x"} {
			if _, err := s.Changes(context.Background(), wm, nil); !errors.Is(err, source.ErrNoChanges) {
				t.Fatalf("watermark %q: %v", wm, err)
			}
		}
		desc := strings.Replace(p.changes, "ORDER BY c.id", "ORDER BY c.id DESC", 1)
		s = openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: p.query, WatermarkQuery: p.watermark, ChangesQuery: desc})
		_, err := s.Changes(context.Background(), "int:0", func(source.Change) error { return nil })
		if err == nil || !strings.Contains(err.Error(), "ORDER BY") {
			t.Fatalf("descending markers: %v", err)
		}
		nullMarker := dialect(srv, "SELECT 'a', 'b', NULL, false, NULL WHERE $1::bigint >= 0", "SELECT 'a', 'b', NULL, false, NULL FROM DUAL WHERE ? >= 0")
		s = openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: p.query, WatermarkQuery: p.watermark, ChangesQuery: nullMarker})
		if _, err := s.Changes(context.Background(), "int:0", func(source.Change) error { return nil }); err == nil || !strings.Contains(err.Error(), "marker is NULL") {
			t.Fatalf("NULL marker: %v", err)
		}
		for q, want := range map[string]string{
			"SELECT max(id) FROM mailbox_change WHERE id < 0": "coalesce",
			"SELECT id FROM mailbox_change":                   "more than one row",
			"SELECT id, id FROM mailbox_change":               "returns 2 columns",
		} {
			s = openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: p.query, WatermarkQuery: q, ChangesQuery: p.changes})
			if _, err := s.Full(context.Background(), func(source.Entry) error { return nil }); err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("watermark_query %s: %v, want %q", q, err, want)
			}
		}
		// A change row that cannot be used is skipped, and the watermark
		// still moves past it.
		bad := dialect(srv,
			"SELECT c.username, NULL, NULL, false, c.id FROM mailbox_change c WHERE c.id > $1::bigint ORDER BY c.id",
			"SELECT c.username, NULL, NULL, false, c.id FROM mailbox_change c WHERE c.id > ? ORDER BY c.id")
		s = openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: p.query, WatermarkQuery: p.watermark, ChangesQuery: bad})
		next, err := s.Changes(context.Background(), "int:0", func(c source.Change) error { return fmt.Errorf("put %+v", c) })
		if err != nil || next != "int:2" || s.Skipped() != 2 {
			t.Fatalf("unusable changes: next %q, err %v, skipped %d", next, err, s.Skipped())
		}
	})
}

// TestLookup: a hit, a miss (ErrNotFound), and user names that try to
// inject SQL, which are only ever data: they find nothing, change
// nothing, and a stored name with quotes is found by its exact spelling.
func TestLookup(t *testing.T) {
	each(t, func(t *testing.T, srv *sqltest.Server) {
		d := newDB(t, srv, simpleSchema(srv)...)
		exec(t, d, `INSERT INTO mailbox VALUES ('alice@example.org', 'b1', NULL), ('bob@example.org', 'b2', 'robert'),
			('o''brien@example.org', 'b3', NULL), ('dup@example.org', 'b1', NULL), ('nulltarget@example.org', NULL, NULL)`)
		exec(t, d, "CREATE TABLE dup (username VARCHAR(255))", "INSERT INTO dup VALUES ('dup@example.org'), ('dup@example.org')")
		lookup := dialect(srv, "SELECT username, server, login FROM mailbox WHERE username = $1",
			"SELECT username, server, login FROM mailbox WHERE username = ?")
		s := openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: "SELECT username, server FROM mailbox", LookupQuery: lookup})
		ctx := context.Background()
		for user, want := range map[string]source.Entry{
			"alice@example.org":   {User: "alice@example.org", Target: "b1"},
			"bob@example.org":     {User: "bob@example.org", Target: "b2", Login: "robert"},
			"o'brien@example.org": {User: "o'brien@example.org", Target: "b3"},
		} {
			got, err := s.Lookup(ctx, user)
			if err != nil || got != want {
				t.Fatalf("Lookup(%q) = %+v, %v; want %+v", user, got, err, want)
			}
		}
		attempts := []string{
			"nobody@example.org",
			"' OR '1'='1",
			"alice@example.org' OR '1'='1",
			"x'; DROP TABLE mailbox; --",
			"x' UNION SELECT 'evil', 'attacker:143', NULL --",
			`x\' OR 1=1 -- `,
			`alice@example.org\`,
			"$1", "?", "%", "alice%",
			"alice@example.org\x00' OR 1=1",
			"' OR username LIKE '%",
		}
		for _, user := range attempts {
			got, err := s.Lookup(ctx, user)
			if !errors.Is(err, source.ErrNotFound) {
				// PostgreSQL refuses a NUL byte in text: an error, but
				// still not a row.
				if srv.Driver == sqltest.Postgres && strings.Contains(user, "\x00") && err != nil {
					continue
				}
				t.Fatalf("Lookup(%q) = %+v, %v; want ErrNotFound", user, got, err)
			}
		}
		var n int
		if err := d.DB.QueryRow("SELECT count(*) FROM mailbox").Scan(&n); err != nil || n != 5 {
			t.Fatalf("after the injection attempts: %d rows, %v", n, err)
		}
		// Not one user, or an unusable row: an error, not a miss.
		s2 := openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: "SELECT username, server FROM mailbox",
			LookupQuery: dialect(srv,
				"SELECT m.username, m.server FROM mailbox m JOIN dup USING (username) WHERE username = $1",
				"SELECT m.username, m.server FROM mailbox m JOIN dup USING (username) WHERE username = ?")})
		if _, err := s2.Lookup(ctx, "dup@example.org"); err == nil || errors.Is(err, source.ErrNotFound) || !strings.Contains(err.Error(), "more than one row") {
			t.Fatalf("two rows: %v", err)
		}
		if _, err := s.Lookup(ctx, "nulltarget@example.org"); err == nil || errors.Is(err, source.ErrNotFound) || !strings.Contains(err.Error(), "target is NULL") {
			t.Fatalf("NULL target: %v", err)
		}
		if _, err := openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: "SELECT username, server FROM mailbox"}).Lookup(ctx, "alice@example.org"); !errors.Is(err, ErrNoLookup) {
			t.Fatalf("no lookup_query: %v", err)
		}
	})
}

// TestBadCredentials: a refused login is an error (not ErrNotFound) that
// names the server and carries neither the wrong password nor the right
// one; the same source from a dsn_file with the right one works.
func TestBadCredentials(t *testing.T) {
	each(t, func(t *testing.T, srv *sqltest.Server) {
		d := newDB(t, srv, simpleSchema(srv)...)
		exec(t, d, "INSERT INTO mailbox VALUES ('alice@example.org', 'b1', NULL)")
		lookup := dialect(srv, "SELECT username, server FROM mailbox WHERE username = $1", "SELECT username, server FROM mailbox WHERE username = ?")
		const wrong = "Wr0ng-Passw0rd-7f3a"
		bad := srv.DSN(d.Name, wrong, d.Name)
		s := openSource(t, Config{Driver: srv.Driver, DSN: bad, Query: "SELECT username, server FROM mailbox", LookupQuery: lookup})
		_, errFull := s.Full(context.Background(), func(source.Entry) error { return nil })
		_, errLookup := s.Lookup(context.Background(), "alice@example.org")
		for _, err := range []error{errFull, errLookup} {
			if err == nil || errors.Is(err, source.ErrNotFound) {
				t.Fatalf("wrong password: %v", err)
			}
			msg := err.Error()
			t.Logf("error: %s", msg)
			if strings.Contains(msg, wrong) || strings.Contains(msg, d.Password) {
				t.Fatalf("error carries a password: %s", msg)
			}
			if !strings.Contains(msg, srv.Addr()) || !strings.Contains(msg, d.Name) {
				t.Fatalf("error does not name the server (%s) and user: %s", srv.Addr(), msg)
			}
		}
		file := filepath.Join(t.TempDir(), "routes.dsn")
		if err := os.WriteFile(file, []byte(d.DSN+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		s = openSource(t, Config{Driver: srv.Driver, DSNFile: file, Query: "SELECT username, server FROM mailbox", LookupQuery: lookup})
		if e, err := s.Lookup(context.Background(), "alice@example.org"); err != nil || e.Target != "b1" {
			t.Fatalf("dsn_file: %+v, %v", e, err)
		}
		if strings.Contains(s.Addr(), d.Password) {
			t.Fatalf("Addr() carries the password: %s", s.Addr())
		}
	})
}

// TestServerDown: with the server stopped every read fails with an error
// that is not ErrNotFound (the login path must not take it for a
// negative answer), within the timeout; once it is back, the same source
// reads again.
func TestServerDown(t *testing.T) {
	each(t, func(t *testing.T, srv *sqltest.Server) {
		p := patterns(srv)["change_table"]
		d := newDB(t, srv, p.schema...)
		exec(t, d, "INSERT INTO mailbox (username, server) VALUES ('alice@example.org', 'b1')")
		s := openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: p.query, WatermarkQuery: p.watermark,
			ChangesQuery: p.changes, LookupQuery: p.lookup, Timeout: 2 * time.Second})
		_, wm := collect(t, s)
		if _, err := s.Lookup(context.Background(), "alice@example.org"); err != nil {
			t.Fatal(err)
		}
		if err := srv.Stop(); err != nil {
			t.Fatal(err)
		}
		restarted := false
		defer func() {
			if !restarted {
				if err := srv.Start(); err != nil {
					t.Errorf("restart: %v", err)
				}
			}
		}()
		start := time.Now()
		_, err := s.Lookup(context.Background(), "alice@example.org")
		if err == nil || errors.Is(err, source.ErrNotFound) {
			t.Fatalf("lookup with the server down: %v", err)
		}
		if el := time.Since(start); el > 4*time.Second {
			t.Fatalf("lookup took %v with a 2s timeout", el)
		}
		t.Logf("lookup, server down: %v", err)
		if _, err := s.Lookup(context.Background(), "nobody@example.org"); err == nil || errors.Is(err, source.ErrNotFound) {
			t.Fatalf("lookup of an unknown user with the server down: %v", err)
		}
		if _, err := s.Full(context.Background(), func(source.Entry) error { return nil }); err == nil {
			t.Fatal("full read with the server down succeeded")
		}
		if _, err := s.Changes(context.Background(), wm, func(source.Change) error { return nil }); err == nil || errors.Is(err, source.ErrNoChanges) {
			t.Fatalf("changes with the server down: %v", err)
		}
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		restarted = true
		if e, err := s.Lookup(context.Background(), "alice@example.org"); err != nil || e.Target != "b1" {
			t.Fatalf("after the restart: %+v, %v", e, err)
		}
		if got, _ := collect(t, s); len(got) != 1 {
			t.Fatalf("after the restart: %v", got)
		}
	})
}

// TestContextCancel: a cancelled context or the timeout ends a query in
// flight (PostgreSQL's server-side query is gone too), and the error says
// so.
func TestContextCancel(t *testing.T) {
	each(t, func(t *testing.T, srv *sqltest.Server) {
		d := newDB(t, srv)
		sleep := dialect(srv, "SELECT 'u', 't' FROM pg_sleep(30) WHERE $1::text IS NOT NULL",
			"SELECT 'u', 't' FROM (SELECT SLEEP(30)) s WHERE ? IS NOT NULL")
		s := openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: dialect(srv, "SELECT 'u', 't' FROM pg_sleep(30)",
			"SELECT 'u', 't' FROM (SELECT SLEEP(30)) s"), LookupQuery: sleep, Timeout: 30 * time.Second})
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(300*time.Millisecond, cancel)
		start := time.Now()
		_, err := s.Lookup(ctx, "alice@example.org")
		if !errors.Is(err, context.Canceled) || errors.Is(err, source.ErrNotFound) {
			t.Fatalf("cancelled lookup: %v", err)
		}
		ctx, cancel = context.WithCancel(context.Background())
		time.AfterFunc(300*time.Millisecond, cancel)
		if _, err := s.Full(ctx, func(source.Entry) error { return nil }); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled full read: %v", err)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Fatalf("cancelled reads took %v", el)
		}
		// The source's own timeout.
		s = openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: "SELECT 'u', 't'", LookupQuery: sleep, Timeout: 300 * time.Millisecond})
		if _, err := s.Lookup(context.Background(), "alice@example.org"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("lookup past the timeout: %v", err)
		}
		// A full read cancelled from put, midway through a long result.
		s = openSource(t, Config{Driver: srv.Driver, DSN: d.DSN, Query: dialect(srv,
			endless+"'user' || i, 'b'"+endlessFrom, "SELECT concat('user', seq), 'b' FROM seq_1_to_1000000000")})
		ctx, cancel = context.WithCancel(context.Background())
		rows := 0
		_, err = s.Full(ctx, func(source.Entry) error {
			if rows++; rows == 1000 {
				cancel()
			}
			return nil
		})
		if !errors.Is(err, context.Canceled) || rows > 100000 {
			t.Fatalf("full read cancelled after 1000 rows: %v after %d rows", err, rows)
		}
		if srv.Driver == sqltest.Postgres {
			// The server was told to stop: no pg_sleep left running.
			deadline := time.Now().Add(5 * time.Second)
			for {
				var n int
				if err := srv.Admin().QueryRow("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND state = 'active' AND pid <> pg_backend_pid()").Scan(&n); err != nil {
					t.Fatal(err)
				}
				if n == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d cancelled queries still running on the server", n)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	})
}

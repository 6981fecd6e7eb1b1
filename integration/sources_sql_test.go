package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/loopback"
	"github.com/portico-mail/portico/integration/sqltest"
)

// sqlSetup is one server's schema and statements for TestSourceSQL: the
// change-table pattern on PostgreSQL, updated_at with soft deletes on
// MariaDB (routing/source/sqlsrc's documentation gives both).
type sqlSetup struct {
	start                             func() (*sqltest.Server, error)
	schema                            []string
	query, watermark, changes, lookup string
	lateLookup                        string
	add, change, del, insertLate      string
}

var sqlSetups = map[string]sqlSetup{
	"postgres": {
		start: sqltest.StartPostgres,
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
			`CREATE TABLE late (username text PRIMARY KEY, server text NOT NULL)`,
		},
		query:     "SELECT username, server, login FROM mailbox",
		watermark: "SELECT coalesce(max(id), 0) FROM mailbox_change",
		changes: `SELECT c.username, m.server, m.login, m.username IS NULL, c.id
		    FROM mailbox_change c LEFT JOIN mailbox m ON m.username = c.username
		    WHERE c.id > $1::bigint - 1000 ORDER BY c.id`,
		lookup:     "SELECT username, server, login FROM mailbox WHERE username = $1",
		lateLookup: "SELECT username, server FROM late WHERE username = $1",
		add:        "INSERT INTO mailbox (username, server) VALUES ('erin', 'dc1')",
		change:     "UPDATE mailbox SET login = 'bob2' WHERE username = 'bob'",
		del:        "DELETE FROM mailbox WHERE username = 'dave'",
		insertLate: "INSERT INTO late VALUES ('frank', 'dc1')",
	},
	"mariadb": {
		start: sqltest.StartMariaDB,
		schema: []string{
			`CREATE TABLE mailbox (
			    username   VARCHAR(255) PRIMARY KEY,
			    server     VARCHAR(255) NOT NULL,
			    login      VARCHAR(255),
			    deleted    BOOLEAN NOT NULL DEFAULT FALSE,
			    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
			    INDEX (updated_at)
			)`,
			`CREATE TABLE late (username VARCHAR(255) PRIMARY KEY, server VARCHAR(255) NOT NULL)`,
		},
		query:     "SELECT username, server, login FROM mailbox WHERE NOT deleted",
		watermark: "SELECT coalesce(max(updated_at), '1970-01-01') FROM mailbox",
		changes: `SELECT username, server, login, deleted, updated_at FROM mailbox
		    WHERE updated_at > ? - INTERVAL 5 MINUTE ORDER BY updated_at`,
		lookup:     "SELECT username, server, login FROM mailbox WHERE username = ? AND NOT deleted",
		lateLookup: "SELECT username, server FROM late WHERE username = ?",
		add:        "INSERT INTO mailbox (username, server) VALUES ('erin', 'dc1')",
		change:     "UPDATE mailbox SET login = 'bob2' WHERE username = 'bob'",
		del:        "UPDATE mailbox SET deleted = TRUE WHERE username = 'dave'",
		insertLate: "INSERT INTO late VALUES ('frank', 'dc1')",
	},
}

// A SQL database mirrored into the table, on PostgreSQL and on MariaDB:
// users added, changed (a rename for the backend login) and deleted in
// SQL are routed accordingly within the sync interval (incremental syncs
// through changes_query), with real logins to a real Dovecot; a user
// inserted into a table of a source that syncs hourly logs in at once
// through the on-miss lookup; with the database stopped, users in the
// table log in and an unknown one is told to come back (not refused), and
// the database's password is nowhere in the node's log or status; every
// row deleted at once is refused by the safety valve.
func TestSourceSQL(t *testing.T) {
	for _, name := range []string{"postgres", "mariadb"} {
		t.Run(name, func(t *testing.T) {
			su := sqlSetups[name]
			srv, err := su.start()
			sqltest.Require(t, err)
			t.Cleanup(func() { srv.Close() })
			db, err := srv.NewDatabase("mail")
			if err != nil {
				t.Fatal(err)
			}
			defer db.DB.Close()
			exec := func(qs ...string) {
				t.Helper()
				for _, q := range qs {
					if _, err := db.DB.Exec(q); err != nil {
						t.Fatalf("%s: %v", q, err)
					}
				}
			}
			exec(su.schema...)
			exec(`INSERT INTO mailbox (username, server, login) VALUES ('alice', 'dc1', 'alice.smith'),
				('bob', 'dc1', NULL), ('carol', 'dc1', NULL), ('dave', 'dc1', NULL)`)
			dsnFile := filepath.Join(t.TempDir(), "mail.dsn")
			if err := os.WriteFile(dsnFile, []byte(db.DSN+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}

			dc := dovecot.Start(t, dovecot.Options{Addr: loopback.Addr(t).String(), Users: map[string]string{
				"alice.smith": "secret", "bob": "secret", "bob2": "secret", "carol": "secret", "dave": "secret",
				"erin": "secret", "frank": "secret", "ghost": "secret"}})
			quote := func(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
			nodes := newCluster(t, 1, dc, fmt.Sprintf(`
sources:
  - name: mail
    type: sql
    interval: 1s
    full_interval: 1h
    sql:
      driver: %s
      dsn_file: %s
      query: %s
      watermark_query: %s
      changes_query: %s
      lookup_query: %s
      timeout: 1s
  - name: late
    type: sql
    interval: 1h
    sql: {driver: %s, dsn_file: %s, query: "SELECT username, server FROM late", lookup_query: %s, timeout: 1s}
    on_miss: {enabled: true, timeout: 1s, positive_ttl: 1s, negative_ttl: 1s}
`, srv.Driver, dsnFile, quote(su.query), quote(su.watermark), quote(strings.Join(strings.Fields(su.changes), " ")), quote(su.lookup),
				srv.Driver, dsnFile, quote(su.lateLookup)))
			nd := nodes[0]
			nd.start()
			waitSeeded(t, nodes)
			waitFor(t, "the database's users in the table", 15*time.Second, func() bool {
				return routeOf(nd, "alice") == "dc1/alice.smith/source:mail" && routeOf(nd, "dave") == "dc1//source:mail"
			})
			if err := loginVia(t, nd.imap, "alice", "secret"); err != nil {
				t.Fatalf("alice: %v", err)
			}
			if dc.WaitLogins("alice.smith", 1, 5*time.Second) != 1 {
				t.Fatalf("dovecot did not see alice as alice.smith\n%s", dc.Log())
			}
			out, err := nd.cli("source", "status", "mail")
			if err != nil || !strings.Contains(out, "sql") {
				t.Fatalf("source status: %v\n%s", err, out)
			}

			// Add erin, rename bob's backend login, delete dave.
			exec(su.add, su.change, su.del)
			took := waitFor(t, "the database's changes in the table", 10*time.Second, func() bool {
				return routeOf(nd, "bob") == "dc1/bob2/source:mail" && routeOf(nd, "erin") == "dc1//source:mail" && routeOf(nd, "dave") == ""
			})
			t.Logf("the table followed the database in %s (interval 1s)", took.Round(time.Millisecond))
			if st := sourcesOf(t, nd, "mail").Sources[0]; st.Last == nil || st.Last.Kind != "incremental" || !strings.HasPrefix(st.Watermark, map[string]string{"postgres": "int:", "mariadb": "text:"}[name]) {
				t.Fatalf("the changes were not read incrementally: %+v, watermark %q", st.Last, st.Watermark)
			}
			if err := loginVia(t, nd.imap, "bob", "secret"); err != nil || dc.WaitLogins("bob2", 1, 5*time.Second) != 1 {
				t.Fatalf("bob as bob2: %v\n%s", err, dc.Log())
			}
			if err := loginVia(t, nd.imap, "erin", "secret"); err != nil {
				t.Fatalf("erin: %v", err)
			}
			if err := loginVia(t, nd.imap, "dave", "secret"); err == nil || strings.Contains(err.Error(), "UNAVAILABLE") {
				t.Fatalf("dave (deleted) logged in, or was told to come back: %v", err)
			}

			// On a miss: frank, inserted into the hourly source's table,
			// logs in at once, and his route is written through.
			exec(su.insertLate)
			if err := loginVia(t, nd.imap, "frank", "secret"); err != nil {
				t.Fatalf("frank through the on-miss lookup: %v", err)
			}
			if r := routeOf(nd, "frank"); r != "dc1//source:late" {
				t.Fatalf("frank's route after the on-miss lookup: %q", r)
			}

			// The database down: users in the table log in; one the
			// source would have to be asked about is told to come back.
			if err := srv.Stop(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the failing sync in the status", 10*time.Second, func() bool {
				a, err := trySources(nd, "mail")
				return err == nil && a.Sources[0].LastError != ""
			})
			if err := loginVia(t, nd.imap, "carol", "secret"); err != nil {
				t.Fatalf("carol (in the table) with the database down: %v", err)
			}
			if err := loginVia(t, nd.imap, "ghost", "secret"); err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") {
				t.Fatalf("ghost with the database down: %v (want NO [UNAVAILABLE])", err)
			}
			if dc.Logins("ghost") != 0 {
				t.Fatal("ghost reached dovecot")
			}
			st := sourcesOf(t, nd, "mail").Sources[0]
			t.Logf("the sync's error with the database down: %s", st.LastError)
			if !strings.Contains(st.LastError, srv.Addr()) {
				t.Errorf("the sync error does not name the database (%s): %s", srv.Addr(), st.LastError)
			}
			out, _ = nd.cli("source", "status", "mail")
			for _, where := range []string{nd.log(), st.LastError, out} {
				if strings.Contains(where, db.Password) {
					t.Fatalf("the database's password is in the node's log or status:\n%s", grepLines(where, db.Password))
				}
			}

			// Back: syncs resume; ghost is in no table: a failed login.
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			exec("INSERT INTO mailbox (username, server) VALUES ('carol2', 'dc1')")
			waitFor(t, "syncs after the database came back", 15*time.Second, func() bool {
				a, err := trySources(nd, "mail")
				return err == nil && a.Sources[0].LastError == "" && routeOf(nd, "carol2") != ""
			})
			if err := loginVia(t, nd.imap, "ghost", "secret"); err == nil || strings.Contains(err.Error(), "UNAVAILABLE") {
				t.Fatalf("ghost, in no table: %v (want a failed login)", err)
			}

			// Every user deleted at once (a bad migration): the changes are
			// refused by the safety valve, and the users keep logging in.
			exec(map[string]string{"postgres": "DELETE FROM mailbox", "mariadb": "UPDATE mailbox SET deleted = TRUE"}[name])
			waitFor(t, "the refusal in the status", 10*time.Second, func() bool {
				a, err := trySources(nd, "mail")
				return err == nil && a.Sources[0].Refused != ""
			})
			for _, u := range []string{"alice", "bob", "carol", "erin", "carol2"} {
				if routeOf(nd, u) == "" {
					t.Fatalf("%s removed by a refused sync", u)
				}
			}
			if err := loginVia(t, nd.imap, "carol", "secret"); err != nil {
				t.Fatalf("carol after the refused sync: %v", err)
			}
		})
	}
}

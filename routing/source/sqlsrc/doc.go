// Package sqlsrc is the SQL directory source: routing entries read from a
// PostgreSQL (github.com/jackc/pgx/v5 through database/sql) or a MySQL or
// MariaDB database (github.com/go-sql-driver/mysql), with queries the
// operator writes against their own schema.
//
// Four queries, in the driver's own SQL and parameter syntax ($1 for
// PostgreSQL, ? for MySQL):
//
//   - query (required) returns every entry: user, target[, login].
//     target is a backend id, "pool:NAME", or host[:port]; login, when not
//     NULL or empty, is the name sent to the backend instead of the
//     client's.
//   - changes_query and watermark_query (optional, together) make
//     incremental syncs possible; see below.
//   - lookup_query (optional) returns one user's entry given the user name
//     as its parameter: the on-miss lookup of a login the table does not
//     know yet. PostgreSQL compares text case-sensitively, MySQL's default
//     collations do not: write lower(username) = lower($1) for PostgreSQL
//     if the column may hold capitals.
//
// Parameters are always sent apart from the query text (server-side
// prepared statements; a DSN that asks the driver to interpolate them,
// MySQL's interpolateParams or pgx's simple protocol, is refused), so a
// user name chosen by a client cannot change a query.
//
// Rows are streamed to the caller as the server sends them: a million-row
// directory is never held in memory. A row that cannot be used (a NULL or
// empty user or target, a column of a type that is not text) is skipped,
// logged (the first few one by one, then a count) and counted
// (Source.Skipped); a query that returns the wrong number of columns, or a
// full read whose every row is unusable, is an error. Lookup answers
// source.ErrNotFound only when the query ran and returned no row: a
// server that cannot be reached, a refused login or a timeout is another
// error, which the login path reports as "try again later", never as a
// wrong password. Errors and logs name the server as
// driver://user@host:port/db and never carry the password, which is in
// the DSN (or dsn_file).
//
// # Incremental syncs
//
// changes_query takes the watermark (the last change already read) as its
// one parameter and returns the columns user, target, login, deleted (a
// boolean: the user is gone) and a change marker, ordered by the marker.
// The last row's marker becomes the next watermark. watermark_query
// returns the current marker; the full read runs it and query in one
// read-only REPEATABLE READ transaction, so that the watermark a full sync
// returns is exactly where its snapshot ends. A marker is an integer (a
// change table's serial id) or a timestamp; the watermark keeps its type
// ("int:42", "time:2026-12-03T09:00:00.123456Z", "text:..." for a MySQL
// DATETIME) and passes it back as a parameter of that type. Rows out of
// marker order are an error (without ORDER BY, two changes of one user
// could be applied in the wrong order).
//
// Markers are assigned before commit: a transaction that commits after a
// later one was read has a marker below the watermark. The examples
// re-read a margin behind the watermark (5 minutes, or 1000 ids) to catch
// those; re-reading a change is harmless, as the syncer writes only
// differences. Anything missed all the same (a transaction open longer
// than the margin, a change table pruned past a watermark) is made good by
// the next full sync, every full_interval.
//
// Pattern 1: a timestamp column and soft deletes. The table has an
// updated_at that every change moves forward and a deleted flag (a hard
// DELETE is seen only at the next full sync). PostgreSQL:
//
//	CREATE TABLE mailbox (
//	    username   text PRIMARY KEY,
//	    server     text NOT NULL,
//	    login      text,
//	    deleted    boolean NOT NULL DEFAULT false,
//	    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
//	);
//	CREATE INDEX mailbox_updated_at ON mailbox (updated_at);
//	CREATE FUNCTION mailbox_touch() RETURNS trigger LANGUAGE plpgsql AS
//	    $$ BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$;
//	CREATE TRIGGER mailbox_touch BEFORE UPDATE ON mailbox
//	    FOR EACH ROW EXECUTE FUNCTION mailbox_touch();
//
//	sql:
//	  driver: postgres
//	  dsn_file: /etc/portico/routes.dsn
//	  query: SELECT username, server, login FROM mailbox WHERE NOT deleted
//	  watermark_query: SELECT coalesce(max(updated_at), 'epoch') FROM mailbox
//	  changes_query: >-
//	    SELECT username, server, login, deleted, updated_at FROM mailbox
//	    WHERE updated_at > $1::timestamptz - interval '5 minutes' ORDER BY updated_at
//	  lookup_query: SELECT username, server, login FROM mailbox WHERE username = $1 AND NOT deleted
//
// MySQL and MariaDB maintain the column themselves:
//
//	CREATE TABLE mailbox (
//	    username   VARCHAR(255) PRIMARY KEY,
//	    server     VARCHAR(255) NOT NULL,
//	    login      VARCHAR(255),
//	    deleted    BOOLEAN NOT NULL DEFAULT FALSE,
//	    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
//	    INDEX (updated_at)
//	);
//
//	sql:
//	  driver: mysql
//	  dsn: portico:PASSWORD@tcp(db.example.org:3306)/mail?tls=true
//	  query: SELECT username, server, login FROM mailbox WHERE NOT deleted
//	  watermark_query: SELECT coalesce(max(updated_at), '1970-01-01') FROM mailbox
//	  changes_query: >-
//	    SELECT username, server, login, deleted, updated_at FROM mailbox
//	    WHERE updated_at > ? - INTERVAL 5 MINUTE ORDER BY updated_at
//	  lookup_query: SELECT username, server, login FROM mailbox WHERE username = ? AND NOT deleted
//
// Pattern 2: a change table filled by triggers, for a schema that deletes
// rows. Each insert, update or delete appends the user's name; the changes
// query joins back to the table for the user's state now (no row: deleted).
// PostgreSQL:
//
//	CREATE TABLE mailbox (username text PRIMARY KEY, server text NOT NULL, login text);
//	CREATE TABLE mailbox_change (id bigserial PRIMARY KEY, username text NOT NULL);
//	CREATE FUNCTION mailbox_changed() RETURNS trigger LANGUAGE plpgsql AS $$
//	BEGIN
//	    IF TG_OP <> 'INSERT' THEN INSERT INTO mailbox_change (username) VALUES (OLD.username); END IF;
//	    IF TG_OP <> 'DELETE' THEN INSERT INTO mailbox_change (username) VALUES (NEW.username); END IF;
//	    RETURN NULL;
//	END $$;
//	CREATE TRIGGER mailbox_changed AFTER INSERT OR UPDATE OR DELETE ON mailbox
//	    FOR EACH ROW EXECUTE FUNCTION mailbox_changed();
//
//	sql:
//	  driver: postgres
//	  dsn_file: /etc/portico/routes.dsn
//	  query: SELECT username, server, login FROM mailbox
//	  watermark_query: SELECT coalesce(max(id), 0) FROM mailbox_change
//	  changes_query: >-
//	    SELECT c.username, m.server, m.login, m.username IS NULL, c.id
//	    FROM mailbox_change c LEFT JOIN mailbox m ON m.username = c.username
//	    WHERE c.id > $1::bigint - 1000 ORDER BY c.id
//
// MySQL and MariaDB (one trigger per event):
//
//	CREATE TABLE mailbox (username VARCHAR(255) PRIMARY KEY, server VARCHAR(255) NOT NULL, login VARCHAR(255));
//	CREATE TABLE mailbox_change (id BIGINT AUTO_INCREMENT PRIMARY KEY, username VARCHAR(255) NOT NULL);
//	CREATE TRIGGER mailbox_ins AFTER INSERT ON mailbox FOR EACH ROW
//	    INSERT INTO mailbox_change (username) VALUES (NEW.username);
//	CREATE TRIGGER mailbox_upd AFTER UPDATE ON mailbox FOR EACH ROW
//	    INSERT INTO mailbox_change (username) VALUES (OLD.username), (NEW.username);
//	CREATE TRIGGER mailbox_del AFTER DELETE ON mailbox FOR EACH ROW
//	    INSERT INTO mailbox_change (username) VALUES (OLD.username);
//
// with the same queries, ? for $1. Prune the change table by age, keeping
// more than a full_interval of it (DELETE FROM mailbox_change WHERE id <
// ...): a leader that takes over goes on from the replicated watermark.
package sqlsrc

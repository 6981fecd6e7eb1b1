package sqlsrc

import (
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// conn is a parsed connection string: how to open the pool, where it
// goes (for errors and logs), and what must never be shown.
type conn struct {
	open    func() *sql.DB
	addr    string   // "postgres://user@host:port/db": no password
	secrets []string // the password(s) and the DSN itself
}

// parseDSN parses dsn for driver without dialling. Its errors never quote
// the DSN: a driver's own parse error may (pgx says it redacts "on a best
// effort basis"), so only fixed messages are returned.
func parseDSN(driver, dsn string, timeout time.Duration, log *slog.Logger) (*conn, error) {
	if driver == Postgres {
		return parsePostgres(dsn, timeout)
	}
	return parseMySQL(dsn, timeout, log)
}

func parsePostgres(dsn string, timeout time.Duration) (*conn, error) {
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("dsn: not a PostgreSQL connection string (postgres://user:password@host:5432/db?sslmode=verify-full, or key=value pairs); the driver's reason is not shown, as it may quote the password")
	}
	if pc.DefaultQueryExecMode == pgx.QueryExecModeSimpleProtocol {
		return nil, errors.New("dsn: default_query_exec_mode=simple_protocol writes parameters into the query text; this source always sends them apart from it: remove the setting")
	}
	c := &conn{secrets: []string{dsn, pc.Password}}
	c.addr = (&url.URL{Scheme: "postgres", User: url.User(pc.User), Host: hostPort(pc.Host, pc.Port), Path: "/" + pc.Database}).String()
	if strings.HasPrefix(pc.Host, "/") {
		// A unix socket directory: a URL cannot hold it as a host.
		c.addr = fmt.Sprintf("postgres://%s@unix(%s/.s.PGSQL.%d)/%s", pc.User, pc.Host, pc.Port, pc.Database)
	}
	if pc.ConnectTimeout == 0 {
		pc.ConnectTimeout = timeout
	}
	if _, ok := pc.RuntimeParams["application_name"]; !ok {
		pc.RuntimeParams["application_name"] = "portico"
	}
	c.open = func() *sql.DB { return stdlib.OpenDB(*pc) }
	return c, nil
}

func hostPort(host string, port uint16) string {
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return fmt.Sprintf("%s:%d", host, port)
}

func parseMySQL(dsn string, timeout time.Duration, log *slog.Logger) (*conn, error) {
	mc, err := mysql.ParseDSN(dsn)
	if err != nil {
		msg := "not a MySQL connection string (user:password@tcp(host:3306)/db?tls=true)"
		// Its fixed messages quote nothing; the others may quote a value.
		if strings.HasPrefix(err.Error(), "invalid DSN: ") {
			msg = strings.TrimPrefix(err.Error(), "invalid DSN: ") + "; " + msg
		}
		return nil, errors.New("dsn: " + msg)
	}
	if mc.InterpolateParams {
		return nil, errors.New("dsn: interpolateParams=true writes parameters into the query text; this source always sends them apart from it: remove the setting")
	}
	c := &conn{secrets: []string{dsn, mc.Passwd}}
	c.addr = fmt.Sprintf("mysql://%s@%s(%s)/%s", mc.User, mc.Net, mc.Addr, mc.DBName)
	if mc.Timeout == 0 {
		mc.Timeout = timeout
	}
	if log != nil {
		mc.Logger = driverLogger{log}
	}
	connector, err := mysql.NewConnector(mc)
	if err != nil {
		return nil, errors.New("dsn: " + scrub(err.Error(), c.secrets))
	}
	c.open = func() *sql.DB { return sql.OpenDB(connector) }
	return c, nil
}

// driverLogger takes go-sql-driver's own lines ("closing bad idle
// connection") into the source's log, at debug level: the errors that
// matter reach the caller.
type driverLogger struct{ log *slog.Logger }

func (l driverLogger) Print(v ...any) {
	l.log.Debug("mysql driver: " + strings.TrimSpace(fmt.Sprint(v...)))
}

// scrub replaces every secret in s. Secrets shorter than 4 bytes are left
// alone (a one-letter password would blank every such letter of a
// message); no driver is known to quote a password in its errors, so this
// is a second line of defence.
func scrub(s string, secrets []string) string {
	for _, sec := range secrets {
		if len(sec) >= 4 {
			s = strings.ReplaceAll(s, sec, "xxxxx")
		}
	}
	return s
}

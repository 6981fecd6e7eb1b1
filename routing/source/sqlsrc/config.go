package sqlsrc

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Driver names.
const (
	Postgres = "postgres" // PostgreSQL, through github.com/jackc/pgx/v5
	MySQL    = "mysql"    // MySQL and MariaDB, through github.com/go-sql-driver/mysql
)

// Defaults of the optional settings.
const (
	DefaultTimeout         = 5 * time.Second
	DefaultSyncTimeout     = 10 * time.Minute
	DefaultMaxOpenConns    = 4
	DefaultMaxIdleConns    = 2
	DefaultConnMaxLifetime = 30 * time.Minute
)

// Config is a SQL source's block (`sql:` under a source).
type Config struct {
	// Driver is "postgres" or "mysql" (MySQL and MariaDB).
	Driver string `yaml:"driver"`
	// DSN is the connection string in the driver's syntax:
	// postgres://user:password@host:5432/db?sslmode=verify-full (or libpq
	// key=value pairs) for PostgreSQL, user:password@tcp(host:3306)/db
	// for MySQL. It holds the password, so it is never logged nor put in
	// an error; DSNFile keeps it out of the configuration file. Exactly
	// one of the two.
	DSN     string `yaml:"dsn"`
	DSNFile string `yaml:"dsn_file"`

	// Query returns every entry: the columns user and target, and
	// optionally login (the name sent to the backend; NULL or empty keeps
	// the client's). It takes no parameter.
	Query string `yaml:"query"`
	// ChangesQuery, optional, returns what changed since a watermark, its
	// one parameter: the columns user, target, login, deleted (a boolean)
	// and a change marker (an integer or a timestamp: a change table's
	// serial id, an updated_at column), ordered by the marker. The last
	// row's marker becomes the next watermark. See the package
	// documentation for the two usual schemas.
	ChangesQuery string `yaml:"changes_query"`
	// WatermarkQuery returns the current change marker (one row, one
	// column): it is read with Query in one consistent snapshot, so that
	// the changes after a full sync start where it ended. Required with
	// ChangesQuery, and only with it.
	WatermarkQuery string `yaml:"watermark_query"`
	// LookupQuery, optional, returns one user's entry (the columns of
	// Query) given the user name, its one parameter: the on-miss lookup.
	LookupQuery string `yaml:"lookup_query"`

	// Timeout bounds connecting and a lookup; default 5s.
	Timeout time.Duration `yaml:"timeout"`
	// SyncTimeout bounds a full or incremental read; default 10m.
	SyncTimeout time.Duration `yaml:"sync_timeout"`
	// MaxOpenConns and MaxIdleConns bound the connection pool (defaults 4
	// and 2); ConnMaxLifetime closes connections older than this (default
	// 30m), so that a fail-over or a DNS change is followed.
	MaxOpenConns    int           `yaml:"max_open_conns"`
	MaxIdleConns    int           `yaml:"max_idle_conns"`
	ConnMaxLifetime time.Duration `yaml:"conn_max_lifetime"`
}

// Paths lists the block's file names, for the configuration to make
// relative names relative to its own directory.
func (c *Config) Paths() []*string { return []*string{&c.DSNFile} }

// Check validates the block. An inline DSN is parsed (not dialled); a
// DSNFile is read by Open.
func (c *Config) Check() error {
	switch c.Driver {
	case Postgres, MySQL:
	case "":
		return errors.New(`driver: required: "postgres" or "mysql" (MySQL and MariaDB)`)
	default:
		return fmt.Errorf(`driver: %q: want "postgres" or "mysql" (MySQL and MariaDB)`, c.Driver)
	}
	switch {
	case c.DSN == "" && c.DSNFile == "":
		return errors.New("dsn or dsn_file: one is required (the connection string)")
	case c.DSN != "" && c.DSNFile != "":
		return errors.New("dsn and dsn_file: give one, not both")
	case c.DSN != "":
		if _, err := parseDSN(c.Driver, c.DSN, DefaultTimeout, nil); err != nil {
			return err
		}
	}
	if strings.TrimSpace(c.Query) == "" {
		return errors.New("query: required (SELECT user, target[, login] FROM ...)")
	}
	if (c.ChangesQuery == "") != (c.WatermarkQuery == "") {
		return errors.New("changes_query and watermark_query: give both (incremental syncs) or neither (full syncs only)")
	}
	param := "$1"
	if c.Driver == MySQL {
		param = "?"
	}
	if c.ChangesQuery != "" && !strings.Contains(c.ChangesQuery, param) {
		return fmt.Errorf("changes_query: no %s: it takes the watermark as its one parameter", param)
	}
	if c.LookupQuery != "" && !strings.Contains(c.LookupQuery, param) {
		return fmt.Errorf("lookup_query: no %s: it takes the user name as its one parameter", param)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"timeout", c.Timeout}, {"sync_timeout", c.SyncTimeout}, {"conn_max_lifetime", c.ConnMaxLifetime}} {
		if d.v < 0 || (d.v > 0 && d.v < time.Millisecond) {
			return fmt.Errorf("%s: %v: want a positive duration with a unit (5s, 10m)", d.name, d.v)
		}
	}
	if c.MaxOpenConns < 0 || c.MaxIdleConns < 0 {
		return errors.New("max_open_conns, max_idle_conns: must not be negative")
	}
	if c.MaxOpenConns > 0 && c.MaxIdleConns > c.MaxOpenConns {
		return fmt.Errorf("max_idle_conns: %d is more than max_open_conns (%d)", c.MaxIdleConns, c.MaxOpenConns)
	}
	return nil
}

// withDefaults fills in the unset optional settings.
func (c Config) withDefaults() Config {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.SyncTimeout == 0 {
		c.SyncTimeout = DefaultSyncTimeout
	}
	if c.MaxOpenConns == 0 {
		c.MaxOpenConns = DefaultMaxOpenConns
	}
	if c.MaxIdleConns == 0 {
		c.MaxIdleConns = min(DefaultMaxIdleConns, c.MaxOpenConns)
	}
	if c.ConnMaxLifetime == 0 {
		c.ConnMaxLifetime = DefaultConnMaxLifetime
	}
	return c
}

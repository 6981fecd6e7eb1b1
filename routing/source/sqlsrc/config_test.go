package sqlsrc

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/portico-mail/portico/routing/source"
)

func TestCheck(t *testing.T) {
	pg := Config{Driver: Postgres, DSN: "postgres://portico:secret@db:5432/mail", Query: "SELECT u, t FROM m"}
	my := Config{Driver: MySQL, DSN: "portico:secret@tcp(db:3306)/mail", Query: "SELECT u, t FROM m"}
	if err := pg.Check(); err != nil {
		t.Fatal(err)
	}
	if err := my.Check(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		edit func(*Config)
		base Config
		want string
	}{
		{"no driver", func(c *Config) { c.Driver = "" }, pg, `driver: required: "postgres" or "mysql"`},
		{"bad driver", func(c *Config) { c.Driver = "oracle" }, pg, `driver: "oracle": want "postgres" or "mysql"`},
		{"no dsn", func(c *Config) { c.DSN = "" }, pg, "dsn or dsn_file: one is required"},
		{"both dsn", func(c *Config) { c.DSNFile = "/etc/x" }, pg, "dsn and dsn_file: give one, not both"},
		{"no query", func(c *Config) { c.Query = " " }, pg, "query: required"},
		{"changes alone", func(c *Config) { c.ChangesQuery = "SELECT 1 WHERE $1" }, pg, "changes_query and watermark_query: give both"},
		{"watermark alone", func(c *Config) { c.WatermarkQuery = "SELECT 1" }, pg, "changes_query and watermark_query: give both"},
		{"changes no param", func(c *Config) { c.ChangesQuery, c.WatermarkQuery = "SELECT 1", "SELECT 1" }, pg, "changes_query: no $1"},
		{"lookup no param", func(c *Config) { c.LookupQuery = "SELECT u, t FROM m WHERE u = $1" }, my, "lookup_query: no ?"},
		{"lookup no param pg", func(c *Config) { c.LookupQuery = "SELECT u, t FROM m WHERE u = ?" }, pg, "lookup_query: no $1"},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, pg, "timeout: -1s"},
		{"timeout without unit", func(c *Config) { c.SyncTimeout = 5 }, pg, "sync_timeout: 5ns: want a positive duration with a unit"},
		{"negative pool", func(c *Config) { c.MaxOpenConns = -1 }, pg, "must not be negative"},
		{"idle over open", func(c *Config) { c.MaxOpenConns, c.MaxIdleConns = 2, 3 }, pg, "max_idle_conns: 3 is more than max_open_conns (2)"},
		{"simple protocol", func(c *Config) { c.DSN += "?default_query_exec_mode=simple_protocol" }, pg, "simple_protocol writes parameters into the query text"},
		{"interpolate", func(c *Config) { c.DSN += "?interpolateParams=true" }, my, "interpolateParams=true writes parameters into the query text"},
	} {
		cfg := c.base
		c.edit(&cfg)
		err := cfg.Check()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

// TestDSNErrorsHideThePassword: a DSN that does not parse is refused with
// a message that quotes none of it, even where the driver's own message
// would (pgx quotes a malformed port, where a mislaid password lands).
func TestDSNErrorsHideThePassword(t *testing.T) {
	const pw = "s3cr3t:pa55@w0rd"
	for _, c := range []Config{
		{Driver: Postgres, DSN: "postgres://portico:" + pw + "@db:99999999/mail"},
		{Driver: Postgres, DSN: "postgres://portico:" + pw + "@db:notaport/mail"},
		{Driver: Postgres, DSN: "host=db password='" + pw},
		{Driver: MySQL, DSN: "portico:" + pw + "@tcp(db:3306/mail"},
		{Driver: MySQL, DSN: "portico:" + pw + "@tcp(db:3306)/mail?parseTime=" + pw},
		{Driver: MySQL, DSN: "portico:" + pw + "@tcp(db:3306)mail"},
	} {
		c.Query = "SELECT 1, 2"
		err := c.Check()
		if err == nil {
			t.Errorf("%s: accepted", c.DSN)
			continue
		}
		for _, part := range []string{pw, "s3cr3t", "pa55", "w0rd"} {
			if strings.Contains(err.Error(), part) {
				t.Errorf("%s: error quotes the password: %v", c.DSN, err)
			}
		}
		if !strings.HasPrefix(err.Error(), "dsn: ") {
			t.Errorf("%s: %v", c.DSN, err)
		}
	}
}

// TestConfigYAML: the block decodes strictly, with durations written with
// their unit.
func TestConfigYAML(t *testing.T) {
	in := `
driver: postgres
dsn_file: routes.dsn
query: SELECT username, server, login FROM mailbox
watermark_query: SELECT coalesce(max(id), 0) FROM mailbox_change
changes_query: SELECT c.username, m.server, m.login, m.username IS NULL, c.id FROM mailbox_change c LEFT JOIN mailbox m USING (username) WHERE c.id > $1 ORDER BY c.id
lookup_query: SELECT username, server, login FROM mailbox WHERE username = $1
timeout: 2s
sync_timeout: 15m
max_open_conns: 8
max_idle_conns: 4
conn_max_lifetime: 1h
`
	var c Config
	dec := yaml.NewDecoder(strings.NewReader(in))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	if c.Timeout != 2*time.Second || c.SyncTimeout != 15*time.Minute || c.ConnMaxLifetime != time.Hour || c.MaxOpenConns != 8 {
		t.Fatalf("%+v", c)
	}
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	if p := c.Paths(); len(p) != 1 || *p[0] != "routes.dsn" {
		t.Fatalf("Paths: %v", p)
	}
	dec = yaml.NewDecoder(strings.NewReader("driver: postgres\npassword: x\n"))
	dec.KnownFields(true)
	if err := dec.Decode(&Config{}); err == nil || !strings.Contains(err.Error(), "password") {
		t.Fatalf("unknown key: %v", err)
	}
	d := (Config{}).withDefaults()
	if d.Timeout != DefaultTimeout || d.SyncTimeout != DefaultSyncTimeout || d.MaxOpenConns != 4 || d.MaxIdleConns != 2 || d.ConnMaxLifetime != DefaultConnMaxLifetime {
		t.Fatalf("defaults: %+v", d)
	}
	if d := (Config{MaxOpenConns: 1}).withDefaults(); d.MaxIdleConns != 1 {
		t.Fatalf("idle defaults above open: %+v", d)
	}
}

// TestOpenDoesNotConnect: a source opens while its database is down (the
// daemon must start and route from its table); reading it then fails
// with an error that is not a negative answer, naming the address only.
func TestOpenDoesNotConnect(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	for _, c := range []Config{
		{Driver: Postgres, DSN: "postgres://portico:hunter2hunter2@" + addr + "/mail?sslmode=disable"},
		{Driver: MySQL, DSN: "portico:hunter2hunter2@tcp(" + addr + ")/mail"},
	} {
		c.Query = "SELECT username, server FROM mailbox"
		c.LookupQuery = map[string]string{Postgres: "SELECT username, server FROM mailbox WHERE username = $1", MySQL: "SELECT username, server FROM mailbox WHERE username = ?"}[c.Driver]
		c.Timeout = time.Second
		var logged bytes.Buffer
		s, err := Open(c, slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug})))
		if err != nil {
			t.Fatalf("%s: %v", c.Driver, err)
		}
		_, err = s.Lookup(context.Background(), "alice")
		if err == nil || errors.Is(err, source.ErrNotFound) {
			t.Fatalf("%s: %v", c.Driver, err)
		}
		if strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), addr) {
			t.Fatalf("%s: %v", c.Driver, err)
		}
		if strings.Contains(logged.String(), "hunter2") {
			t.Fatal(logged.String())
		}
		s.Close()
	}
}

func TestDSNFile(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("portico:hunter2hunter2@tcp(db:3306/mail\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		filepath.Join(dir, "missing"): "no such file",
		empty:                         "is empty",
		bad:                           "dsn_file " + bad + ": dsn: ",
	} {
		_, err := Open(Config{Driver: MySQL, DSNFile: file, Query: "SELECT 1, 2"}, nil)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: %v, want %q", file, err, want)
		}
	}
}

func TestMarkers(t *testing.T) {
	ts := time.Date(2026, 12, 3, 9, 0, 0, 123456000, time.FixedZone("x", 3600))
	for _, c := range []struct {
		v    any
		want string
	}{
		{int64(42), "int:42"},
		{[]byte("42"), "int:42"},
		{"-7", "int:-7"},
		{1.5, "float:1.5"},
		{ts, "time:2026-12-03T09:00:00.123456+01:00"},
		{[]byte("2026-12-03 09:00:00.123456"), "text:2026-12-03 09:00:00.123456"},
	} {
		m, err := markerOf(c.v)
		if err != nil || m.String() != c.want {
			t.Errorf("markerOf(%v) = %q, %v; want %q", c.v, m.String(), err, c.want)
			continue
		}
		back, ok := parseWatermark(m.String())
		if !ok || back.String() != c.want || back.before(m) || m.before(back) {
			t.Errorf("parseWatermark(%q) = %v, %v", c.want, back, ok)
		}
	}
	for _, v := range []any{nil, "", true, []any{1}} {
		if _, err := markerOf(v); err == nil {
			t.Errorf("markerOf(%#v): no error", v)
		}
	}
	if m, _ := parseWatermark("time:2026-12-03T09:00:00Z"); !m.param().(time.Time).Equal(time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)) {
		t.Error(m.param())
	}
	a, _ := markerOf(int64(9))
	b, _ := markerOf(int64(10))
	if !a.before(b) || b.before(a) {
		t.Error("9 not before 10")
	}
	x, _ := markerOf([]byte("2026-12-03 09:00:00.000009"))
	y, _ := markerOf([]byte("2026-12-03 09:00:00.000010"))
	if !x.before(y) {
		t.Error("text markers")
	}
	for _, w := range []string{"", "42", "nope:1", "int:", "time:yesterday", "float:x"} {
		if _, ok := parseWatermark(w); ok {
			t.Errorf("parseWatermark(%q) accepted", w)
		}
	}
}

func TestBoolean(t *testing.T) {
	for v, want := range map[any]bool{true: true, false: false, int64(0): false, int64(1): true, "t": true, "FALSE": false, "1": true, "no": false} {
		if got, p := boolean("deleted", v); p != "" || got != want {
			t.Errorf("boolean(%#v) = %v, %q", v, got, p)
		}
	}
	if got, p := boolean("deleted", []byte{1}); p != "" || !got {
		t.Error("BIT(1) 1")
	}
	if got, p := boolean("deleted", []byte{0}); p != "" || got {
		t.Error("BIT(1) 0")
	}
	for _, v := range []any{nil, "maybe", 1.5} {
		if _, p := boolean("deleted", v); p == "" {
			t.Errorf("boolean(%#v) accepted", v)
		}
	}
}

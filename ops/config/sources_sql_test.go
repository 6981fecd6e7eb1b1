package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/routing/source/sqlsrc"
)

// A sql source: its block decoded strictly into sqlsrc.Config, durations
// with their unit, dsn_file made relative to the configuration file, and
// the driver's own checks reported with the source's key and line.
func TestSourcesSQL(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "portico.yaml")
	if err := os.WriteFile(path, []byte(sourcesBase+`
sources:
  - name: mail-db
    type: sql
    interval: 30s
    sql:
      driver: postgres
      dsn_file: routes.dsn
      query: SELECT username, server, login FROM mailbox
      watermark_query: SELECT coalesce(max(id), 0) FROM mailbox_change
      changes_query: SELECT c.username, m.server, m.login, m.username IS NULL, c.id FROM mailbox_change c LEFT JOIN mailbox m USING (username) WHERE c.id > $1 ORDER BY c.id
      lookup_query: SELECT username, server, login FROM mailbox WHERE username = $1
      timeout: 1s
      max_open_conns: 2
`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	sc, ok := c.Sources[0].Driver().(*sqlsrc.Config)
	if !ok || sc.DSNFile != filepath.Join(dir, "routes.dsn") || sc.Timeout != time.Second || sc.MaxOpenConns != 2 || sc.Driver != "postgres" {
		t.Fatalf("driver config %#v", c.Sources[0].Driver())
	}
	for in, want := range map[string]string{
		"sources:\n  - name: a\n    type: sql\n    sql: {driver: oracle, dsn: x, query: q}\n":                               `sources[0].sql (line 8): driver: "oracle"`,
		"sources:\n  - name: a\n    type: sql\n    sql: {driver: mysql, query: q}\n":                                        "dsn or dsn_file: one is required",
		"sources:\n  - name: a\n    type: sql\n    sql: {driver: mysql, dsn: 'u:p@tcp(h:3306)/d', query: q, password: x}\n": "field password not found",
		"sources:\n  - name: a\n    type: sql\n    sql: {driver: mysql, dsn: 'u:p@tcp(h:3306)/d', query: q, timeout: 5}\n":  "line 8: cannot unmarshal !!int `5` into time.Duration",
	} {
		_, err := Parse([]byte(sourcesBase + in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s\n  error %v\n  want %q", in, err, want)
		}
	}
}

// The README's SQL source example is a valid configuration.
func TestReadmeSQLExample(t *testing.T) {
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(raw), "```yaml\nsources:\n  - name: mail-db\n")
	if !ok {
		t.Fatal("README: the SQL source example is gone")
	}
	block := "sources:\n  - name: mail-db\n" + rest[:strings.Index(rest, "```")]
	c, err := Parse([]byte(sourcesBase + block))
	if err != nil {
		t.Fatalf("%v\n%s", err, block)
	}
	sc := c.Sources[0].Driver().(*sqlsrc.Config)
	if sc.ChangesQuery == "" || sc.WatermarkQuery == "" || sc.LookupQuery == "" || !c.Sources[0].OnMiss.Enabled {
		t.Fatalf("%+v", sc)
	}
}

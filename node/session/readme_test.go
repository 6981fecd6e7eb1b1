package session

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/routing"
)

// readmeTable returns the key and default columns of the README table
// under heading.
func readmeTable(t *testing.T, path, heading string) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(raw), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README: no %q section", heading)
	}
	rows := map[string]string{}
	for _, line := range strings.Split(sec, "\n") {
		if strings.HasPrefix(line, "#") {
			break
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		rows[strings.Trim(strings.TrimSpace(cells[1]), "`")] = strings.TrimSpace(cells[2])
	}
	return rows
}

// The README's limits table states DefaultLimits: every key of the table
// that is a session limit has its default there.
func TestReadmeLimitDefaults(t *testing.T) {
	imap, pop3 := DefaultLimits(routing.IMAP), DefaultLimits(routing.POP3)
	want := map[string]any{
		"max_line":              imap.MaxLine,
		"max_literal":           imap.MaxLiteral,
		"preauth_timeout":       imap.PreAuthTimeout,
		"preauth_lifetime":      imap.PreAuthLifetime,
		"tls_handshake_timeout": imap.TLSHandshakeTimeout,
		"max_errors":            imap.MaxErrors,
		"max_auth_failures":     imap.MaxAuthFailures,
		"auth_failure_delay":    imap.AuthFailureDelay,
		"backend_timeout":       imap.BackendTimeout,
		"imap_idle_timeout":     imap.IdleTimeout,
		"pop3_idle_timeout":     pop3.IdleTimeout,
	}
	rows := readmeTable(t, "../../README.md", "### `limits`")
	for key, w := range want {
		got, ok := rows[key]
		if !ok {
			t.Errorf("README limits table: no %s", key)
			continue
		}
		switch w := w.(type) {
		case int:
			if n, err := strconv.Atoi(got); err != nil || n != w {
				t.Errorf("README: %s defaults to %q, DefaultLimits to %d", key, got, w)
			}
		case time.Duration:
			if d, err := time.ParseDuration(got); err != nil || d != w {
				t.Errorf("README: %s defaults to %q, DefaultLimits to %v", key, got, w)
			}
		}
	}
	for key := range rows {
		if _, ok := want[key]; !ok && !strings.HasPrefix(key, "max_connections") {
			t.Errorf("README limits table: %s is not checked against DefaultLimits", key)
		}
	}
}

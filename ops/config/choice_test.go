package config

import (
	"strings"
	"testing"
)

// choice fills the default of an empty setting, accepts an allowed value
// as it is, and refuses any other with the allowed ones listed.
func TestValidatorChoice(t *testing.T) {
	v := &validator{c: &Config{}}
	s := ""
	if !v.choice("a.mode", &s, "two", "one", "two") || s != "two" || len(v.errs) != 0 {
		t.Fatalf("empty: %v %q", v.errs, s)
	}
	s = "one"
	if !v.choice("a.mode", &s, "two", "one", "two") || s != "one" || len(v.errs) != 0 {
		t.Fatalf("allowed: %v %q", v.errs, s)
	}
	s = "One"
	if v.choice("a.mode", &s, "two", "one", "two") || s != "One" {
		t.Fatalf("refused: %q", s)
	}
	if len(v.errs) != 1 || v.errs[0] != `a.mode: "One" is not one of one, two` {
		t.Fatalf("errors %q", v.errs)
	}
}

// Every setting checked by choice: its default, and its error with the
// line it is on.
func TestChoiceSettings(t *testing.T) {
	c, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if c.Log.Format != "text" || c.Listeners[0].TLS != "none" || c.Backends[0].TLS != "none" ||
		c.Backends[0].State != "active" || c.TLS.SessionTickets != "on" {
		t.Errorf("defaults: log %+v, listener tls %q, backend %+v, session tickets %q",
			c.Log, c.Listeners[0].TLS, c.Backends[0], c.TLS.SessionTickets)
	}
	for _, tc := range []struct{ old, new, want string }{
		{"level: debug", "level: loud", `log.level (line 3): "loud" is not one of debug, info, warn, error`},
		{"level: debug", "level: debug\n  format: xml", `log.format (line 4): "xml" is not one of text, json`},
		{"protocol: imap\n", "protocol: imap\n    tls: ssl\n", `listeners[0].tls (line 7): "ssl" is not one of none, starttls, implicit`},
		{"forward: id", "forward: id\n    tls: ssl", `backends[0].tls (line 19): "ssl" is not one of none, starttls, implicit`},
		{"forward: id", "forward: id\n    state: gone", `backends[0].state (line 19): "gone" is not one of active, draining, disabled`},
		{"level: debug", "level: debug\ntls:\n  session_tickets: no", `tls.session_tickets (line 5): "no" is not one of on, off`},
	} {
		_, err := Parse([]byte(strings.Replace(good, tc.old, tc.new, 1)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %s", tc.new, err, tc.want)
		}
	}
}

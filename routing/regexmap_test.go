package routing

import (
	"bytes"
	"errors"
	"testing"
)

// The regex popmap: first match wins, after exact rules and before domain
// rules; $n groups fill the server and the rename; a source's map is
// replaced in place.
func TestRegexMapLookup(t *testing.T) {
	s := importTable(t)
	s.must(Command{Type: CmdPutBackend, Backend: &Backend{ID: "b3", Host: "mail.example.org", IMAPPort: 143}})
	s.must(Command{Type: CmdPutDomain, Domain: "example.com", Target: "p"})
	s.must(Command{Type: CmdSetRegexMap, Source: "a.re", Regex: []RegexRule{
		{Pattern: "^[a-k]", Replace: "b1"},
		{Pattern: "^(.*)@(example\\.org)$", Replace: "$1_x@mail.$2"},
		{Pattern: "^user$", Replace: "user2@pool:p"},
		{Pattern: "^z(.*)", Replace: "$9@nowhere$1"},
	}})
	s.must(Command{Type: CmdSetRegexMap, Source: "b.re", Regex: []RegexRule{{Pattern: ".", Replace: "b2"}}})
	s.must(Command{Type: CmdPutUsers, Users: []UserRoute{{User: "alice", Target: Target{Backend: "b2"}}}})
	tb := s.f.Table()
	cases := []struct {
		user, backend, login, rule string
	}{
		{"alice", "b2", "", "user"}, // exact rule first
		{"bob", "b1", "", "regex"},  // first match
		{"mike@example.org", "b3", "mike_x", "regex"},
		{"user", "", "user2", "regex"},            // a pool
		{"xavier@example.com", "b2", "", "regex"}, // b.re's catch-all before the domain rule
	}
	for _, c := range cases {
		r, err := tb.Lookup(Request{User: c.user, Protocol: IMAP}, nil)
		if err != nil || r.Login != c.login || r.Rule != c.rule || c.backend != "" && r.Backend.ID != c.backend {
			t.Errorf("%s: %+v %v, want %s %q %s", c.user, r, err, c.backend, c.login, c.rule)
		}
	}
	// A replacement that names no server is the proxy's problem, not the
	// user's: unavailable, never "no route".
	if _, err := tb.Lookup(Request{User: "zed", Protocol: IMAP}, nil); !errors.Is(err, ErrUnavailable) {
		t.Errorf("zed: %v", err)
	}
	// a.re replaced keeps its place before b.re; removed, b.re catches all.
	s.must(Command{Type: CmdSetRegexMap, Source: "a.re", Regex: []RegexRule{{Pattern: "^m", Replace: "b1"}}})
	if m := s.f.Table().RegexMap(); len(m) != 2 || m[0].Source != "a.re" || m[1].Source != "b.re" {
		t.Fatalf("%+v", m)
	}
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, s.f.Table()); err != nil {
		t.Fatal(err)
	}
	got, err := ReadSnapshot(&buf)
	if err != nil || canon(got) != canon(s.f.Table()) {
		t.Fatalf("snapshot: %v\n%s", err, canon(got))
	}
	if r, _ := got.Lookup(Request{User: "mike", Protocol: IMAP}, nil); r.Backend.ID != "b1" {
		t.Fatalf("restored map: %+v", r)
	}
	s.must(Command{Type: CmdSetRegexMap, Source: "a.re"})
	if r, _ := s.f.Table().Lookup(Request{User: "mike", Protocol: IMAP}, nil); r.Backend.ID != "b2" {
		t.Fatalf("after removal: %+v", r)
	}
	for _, bad := range []Command{
		{Type: CmdSetRegexMap, Regex: []RegexRule{{Pattern: "a", Replace: "b1"}}},              // no source
		{Type: CmdSetRegexMap, Source: "x", Regex: []RegexRule{{Pattern: "(", Replace: "b1"}}}, // bad regex
		{Type: CmdSetRegexMap, Source: "x", Regex: []RegexRule{{Pattern: "a", Replace: ""}}},
		{Type: CmdSetRegexMap, Source: "x", Regex: []RegexRule{{Pattern: "a", Replace: "b 1"}}},
	} {
		if err := s.do(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v", bad, err)
		}
	}
}

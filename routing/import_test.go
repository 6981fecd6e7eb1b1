package routing

import (
	"bytes"
	"errors"
	"testing"
)

func importTable(t *testing.T) *seeder {
	t.Helper()
	s := &seeder{t: t, f: NewFSM()}
	s.must(Command{Type: CmdPutBackend, Backend: &Backend{ID: "b1", Host: "10.0.0.1", IMAPPort: 143}})
	s.must(Command{Type: CmdPutBackend, Backend: &Backend{ID: "b2", Host: "10.0.0.2", IMAPPort: 143}})
	s.must(Command{Type: CmdPutPool, Pool: &Pool{Name: "p", Backends: []string{"b1", "b2"}}})
	return s
}

func route(t *testing.T, tb *Table, user string) (Target, bool) {
	t.Helper()
	return tb.UserRoute(user)
}

// An import tags its rules with its source; a prune removes only rules
// still tagged with that source: the API, the file and other imports keep
// theirs.
func TestImportOwnership(t *testing.T) {
	s := importTable(t)
	s.must(Command{Type: CmdImport, Source: "a.map", Users: []UserRoute{
		{User: "Alice", Target: Target{Backend: "b1", Login: "alice.smith", Source: "ignored"}},
		{User: "bob", Target: Target{Pool: "p"}},
		{User: "carol", Target: Target{Backend: "b2"}},
		{User: "dave", Target: Target{Backend: "b2"}},
	}})
	tg, _ := route(t, s.f.Table(), "alice")
	if tg != (Target{Backend: "b1", Login: "alice.smith", Source: "a.map"}) {
		t.Fatalf("alice: %+v", tg)
	}
	s.must(Command{Type: CmdImport, Source: "b.map", Users: []UserRoute{{User: "carol", Target: Target{Backend: "b1"}}}})
	s.must(Command{Type: CmdPutUsers, Users: []UserRoute{{User: "bob", Target: Target{Pool: "p", Login: "x", Source: "a.map"}}}})
	if tg, _ := route(t, s.f.Table(), "bob"); tg != (Target{Pool: "p"}) {
		t.Fatalf("put-users kept a login or source: %+v", tg)
	}
	// a.map prunes everyone else it once named.
	s.must(Command{Type: CmdImport, Source: "a.map", Names: []string{"bob", "carol", "dave", "nobody"}})
	tb := s.f.Table()
	if _, ok := route(t, tb, "dave"); ok {
		t.Fatal("dave (a.map's) was not pruned")
	}
	if tg, ok := route(t, tb, "bob"); !ok || tg.Source != "" {
		t.Fatalf("bob (re-set by the API) was pruned: %+v %v", tg, ok)
	}
	if tg, ok := route(t, tb, "carol"); !ok || tg.Source != "b.map" {
		t.Fatalf("carol (b.map's now) was pruned: %+v %v", tg, ok)
	}
	if _, ok := route(t, tb, "alice"); !ok {
		t.Fatal("alice was pruned though not named")
	}
	for _, c := range []Command{
		{Type: CmdImport, Names: []string{"alice"}},                                                                        // prune without a source
		{Type: CmdImport, Source: "a\nb", Users: []UserRoute{{User: "x", Target: Target{Backend: "b1"}}}},                  // bad source
		{Type: CmdImport, Source: "a.map", Users: []UserRoute{{User: "x", Target: Target{Backend: "b1", Login: "a\r\n"}}}}, // bad login
		{Type: CmdImport, Source: "a.map", Users: []UserRoute{{User: "x", Target: Target{Backend: "b1"}}}, Names: []string{"X"}},
	} {
		if err := s.do(c); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", c, err)
		}
	}
	if s.f.Table() != tb {
		t.Fatal("a refused import changed the table")
	}
}

// A rename travels to the route, through a pool too, and survives a
// snapshot with the source tag.
func TestImportLoginLookupAndSnapshot(t *testing.T) {
	s := importTable(t)
	s.must(Command{Type: CmdImport, Source: "a.map", Users: []UserRoute{
		{User: "alice", Target: Target{Backend: "b1", Login: "Alice.Smith@corp"}},
		{User: "bob", Target: Target{Pool: "p", Login: "robert"}},
		{User: "carol", Target: Target{Pool: "p"}},
	}})
	s.must(Command{Type: CmdPutUsers, Users: []UserRoute{{User: "dave", Target: Target{Backend: "b2"}}}})
	tb := s.f.Table()
	for user, want := range map[string]string{"alice": "Alice.Smith@corp", "bob": "robert", "carol": "", "dave": ""} {
		r, err := tb.Lookup(Request{User: user, Protocol: IMAP}, nil)
		if err != nil || r.Login != want {
			t.Errorf("%s: login %q (%v), want %q", user, r.Login, err, want)
		}
	}
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, tb); err != nil {
		t.Fatal(err)
	}
	got, err := ReadSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if canon(got) != canon(tb) {
		t.Fatalf("snapshot lost something:\n%s\nwant\n%s", canon(got), canon(tb))
	}
}

// A put-users written by an older node's API (decoded without login and
// source) and by a newer one apply alike: the new fields are dropped.
func TestPutUsersDropsImportFields(t *testing.T) {
	c := Command{Type: CmdPutUsers, Users: []UserRoute{{User: "u", Target: Target{Backend: "b1", Login: "v", Source: "s"}}}}
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	d, err := DecodeCommand(b)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := importTable(t).f.Table().Apply(d)
	if err != nil {
		t.Fatal(err)
	}
	if tg, _ := tb.UserRoute("u"); tg != (Target{Backend: "b1"}) {
		t.Fatalf("%+v", tg)
	}
	if CmdImport.String() != "import" || CommandLevel < CmdSetRegexMap {
		t.Fatalf("level %d %s", CommandLevel, CmdImport)
	}
}

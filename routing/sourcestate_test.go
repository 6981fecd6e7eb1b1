package routing

import (
	"bytes"
	"errors"
	"testing"
)

// A source's sync state is replicated state: set, replaced, removed by
// its command, kept by a snapshot, refused when malformed.
func TestSourceState(t *testing.T) {
	s := importTable(t)
	st := SourceState{Watermark: "20240101000000Z", LastFull: 1700000000000, LastSync: 1700000001000, Entries: 3}
	s.must(Command{Type: CmdSourceState, Source: "ldap", State: &st})
	s.must(Command{Type: CmdSourceState, Source: "sql", State: &SourceState{Watermark: "42"}})
	if got, ok := s.f.Table().SourceState("ldap"); !ok || got != st {
		t.Fatalf("ldap state %+v %v", got, ok)
	}
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, s.f.Table()); err != nil {
		t.Fatal(err)
	}
	back, err := ReadSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if canon(back) != canon(s.f.Table()) || len(back.SourceStates()) != 2 {
		t.Fatalf("snapshot lost the source states:\n%s\nwant\n%s", canon(back), canon(s.f.Table()))
	}
	s.must(Command{Type: CmdSourceState, Source: "sql"})
	if _, ok := s.f.Table().SourceState("sql"); ok {
		t.Fatal("a state without a value did not remove the source's state")
	}
	if _, ok := s.f.Table().SourceState("ldap"); !ok {
		t.Fatal("removing sql's state removed ldap's")
	}
	for _, c := range []Command{
		{Type: CmdSourceState, State: &st},
		{Type: CmdSourceState, Source: "x", State: &SourceState{LastFull: -1}},
	} {
		if _, err := s.f.Table().Apply(c); !errors.Is(err, ErrInvalid) {
			t.Fatalf("%+v: %v", c, err)
		}
	}
	b, _ := Command{Type: CmdSourceState, Source: "ldap", State: &st}.Encode()
	c, err := DecodeCommand(b)
	if err != nil || c.State == nil || *c.State != st || c.Source != "ldap" {
		t.Fatalf("decode: %+v %v", c, err)
	}
}

// LookupTarget routes a target that is not (yet) a rule of the table, as
// a user rule would be routed.
func TestLookupTarget(t *testing.T) {
	s := importTable(t)
	tb := s.f.Table()
	r, err := tb.LookupTarget(Request{User: "new@x", Protocol: IMAP}, Target{Backend: "b2", Login: "n"}, nil, nil)
	if err != nil || r.Backend.ID != "b2" || r.Login != "n" || r.Rule != "source" {
		t.Fatalf("%+v %v", r, err)
	}
	r, err = tb.LookupTarget(Request{User: "new@x", Protocol: IMAP}, Target{Pool: "p"}, func(string) bool { return true }, nil)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("pool with every backend down: %+v %v", r, err)
	}
	if _, err := tb.LookupTarget(Request{User: "u"}, Target{Backend: "nope"}, nil, nil); !errors.Is(err, ErrConflict) {
		t.Fatalf("unknown backend: %v", err)
	}
	if _, err := s.f.RouteTarget(Request{User: "u"}, Target{Backend: "b1"}); !errors.Is(err, ErrNotReady) {
		t.Fatalf("before SetLoaded: %v", err)
	}
}

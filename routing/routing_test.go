package routing

import (
	"errors"
	"fmt"
	"math"
	"testing"
)

func testTable(t *testing.T, shared bool) *Table {
	t.Helper()
	tbl, err := NewTable(TableSpec{
		Backends: []Backend{
			{ID: "a", Host: "10.0.0.1", IMAPPort: 143, POP3Port: 110},
			{ID: "b", Host: "10.0.0.2", IMAPPort: 143, POP3Port: 110},
			{ID: "c", Host: "10.0.0.3", IMAPPort: 143},
			{ID: "solo", Host: "::1", IMAPPort: 1143},
		},
		Pools: []Pool{
			{Name: "main", Backends: []string{"a", "b", "c"}, SharedStorage: shared},
			{Name: "other", Backends: []string{"solo"}},
		},
		Users:       map[string]Target{"Pinned@Example.com": {Backend: "solo"}},
		Domains:     map[string]string{"@other.example": "other"},
		DefaultPool: "main",
	})
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

func TestLookupRules(t *testing.T) {
	tbl := testTable(t, false)
	cases := []struct {
		user, wantRule, wantBackend string
		proto                       Protocol
	}{
		{"pinned@example.com", "user", "solo", IMAP},
		{"PINNED@EXAMPLE.COM", "user", "solo", IMAP},
		{"x@other.example", "domain", "solo", IMAP},
		{"x@OTHER.example", "domain", "solo", IMAP},
	}
	for _, c := range cases {
		r, err := tbl.Lookup(Request{User: c.user, Protocol: c.proto}, nil)
		if err != nil {
			t.Fatalf("%s: %v", c.user, err)
		}
		if r.Rule != c.wantRule || r.Backend.ID != c.wantBackend {
			t.Errorf("%s: got rule %s backend %s, want %s %s", c.user, r.Rule, r.Backend.ID, c.wantRule, c.wantBackend)
		}
	}
	r, err := tbl.Lookup(Request{User: "someone@elsewhere", Protocol: IMAP}, nil)
	if err != nil || r.Rule != "default" || r.Pool != "main" {
		t.Fatalf("default: %+v %v", r, err)
	}
	if got := tbl.Backend("solo").Addr(IMAP); got != "[::1]:1143" {
		t.Errorf("ipv6 addr: %s", got)
	}
	// solo serves no POP3.
	if _, err := tbl.Lookup(Request{User: "pinned@example.com", Protocol: POP3}, nil); !errors.Is(err, ErrUnavailable) {
		t.Errorf("pop3 on imap-only backend: %v", err)
	}
	// c serves no POP3, so POP3 users never land there.
	for i := 0; i < 1000; i++ {
		r, err := tbl.Lookup(Request{User: fmt.Sprintf("u%d", i), Protocol: POP3}, nil)
		if err != nil || r.Backend.ID == "c" {
			t.Fatalf("pop3 user routed to %v (%v)", r.Backend, err)
		}
	}
	empty, _ := NewTable(TableSpec{})
	if _, err := empty.Lookup(Request{User: "x", Protocol: IMAP}, nil); !errors.Is(err, ErrNoRoute) {
		t.Errorf("empty table: %v", err)
	}
}

func TestNewTableErrors(t *testing.T) {
	cases := []TableSpec{
		{Backends: []Backend{{ID: ""}}},
		{Backends: []Backend{{ID: "a"}, {ID: "a"}}},
		{Pools: []Pool{{Name: "p", Backends: []string{"nope"}}}},
		{Users: map[string]Target{"u": {Pool: "nope"}}},
		{Users: map[string]Target{"u": {}}},
		{Domains: map[string]string{"d": "nope"}},
		{DefaultPool: "nope"},
	}
	for i, c := range cases {
		if _, err := NewTable(c); err == nil {
			t.Errorf("case %d: no error", i)
		}
	}
}

func TestSameUserSameBackend(t *testing.T) {
	tbl := testTable(t, false)
	for i := 0; i < 100; i++ {
		u := fmt.Sprintf("user%d@example.com", i)
		first, _ := tbl.Lookup(Request{User: u, Protocol: IMAP}, nil)
		for j := 0; j < 5; j++ {
			again, _ := tbl.Lookup(Request{User: u, Protocol: IMAP}, nil)
			if again.Backend != first.Backend {
				t.Fatalf("%s moved", u)
			}
		}
	}
}

// Removing one of N backends must move only the users that were on it.
func TestRendezvousStability(t *testing.T) {
	const n, users = 5, 20000
	var bs []Backend
	var ids []string
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("b%d", i)
		bs = append(bs, Backend{ID: id, Host: "h", IMAPPort: 143})
		ids = append(ids, id)
	}
	full, _ := NewTable(TableSpec{Backends: bs, Pools: []Pool{{Name: "p", Backends: ids}}, DefaultPool: "p"})
	less, _ := NewTable(TableSpec{Backends: bs, Pools: []Pool{{Name: "p", Backends: ids[1:]}}, DefaultPool: "p"})
	moved := 0
	for i := 0; i < users; i++ {
		u := fmt.Sprintf("user%d", i)
		a, _ := full.Lookup(Request{User: u, Protocol: IMAP}, nil)
		b, _ := less.Lookup(Request{User: u, Protocol: IMAP}, nil)
		if a.Backend.ID != b.Backend.ID {
			if a.Backend.ID != "b0" {
				t.Fatalf("%s moved from %s to %s though its backend stayed", u, a.Backend.ID, b.Backend.ID)
			}
			moved++
		}
	}
	frac := float64(moved) / users
	if math.Abs(frac-1.0/n) > 0.02 {
		t.Errorf("moved %.3f of users, want about %.3f", frac, 1.0/n)
	}
}

func TestRendezvousWeights(t *testing.T) {
	tbl, _ := NewTable(TableSpec{
		Backends: []Backend{{ID: "light", Host: "h", IMAPPort: 1, Weight: 1}, {ID: "heavy", Host: "h", IMAPPort: 1, Weight: 3}},
		Pools:    []Pool{{Name: "p", Backends: []string{"light", "heavy"}}}, DefaultPool: "p",
	})
	count := map[string]int{}
	const users = 40000
	for i := 0; i < users; i++ {
		r, _ := tbl.Lookup(Request{User: fmt.Sprintf("u%d", i), Protocol: IMAP}, nil)
		count[r.Backend.ID]++
	}
	if frac := float64(count["heavy"]) / users; math.Abs(frac-0.75) > 0.02 {
		t.Errorf("heavy got %.3f, want 0.75", frac)
	}
}

func TestDownBackend(t *testing.T) {
	for _, shared := range []bool{false, true} {
		tbl := testTable(t, shared)
		// Find a user living on "a".
		var user string
		for i := 0; ; i++ {
			user = fmt.Sprintf("u%d", i)
			r, _ := tbl.Lookup(Request{User: user, Protocol: IMAP}, nil)
			if r.Backend.ID == "a" {
				break
			}
		}
		down := func(id string) bool { return id == "a" }
		r, err := tbl.Lookup(Request{User: user, Protocol: IMAP}, down)
		if shared {
			if err != nil || r.Backend.ID == "a" {
				t.Errorf("shared: want reroute, got %v %v", r.Backend, err)
			}
		} else if !errors.Is(err, ErrUnavailable) {
			t.Errorf("not shared: want ErrUnavailable, got %v %v", r.Backend, err)
		}
	}
}

func TestStaticSwap(t *testing.T) {
	s := NewStatic(testTable(t, false))
	if _, err := s.Route(Request{User: "x", Protocol: IMAP}); err != nil {
		t.Fatal(err)
	}
	empty, _ := NewTable(TableSpec{})
	s.Swap(empty)
	if _, err := s.Route(Request{User: "x", Protocol: IMAP}); !errors.Is(err, ErrNoRoute) {
		t.Fatal(err)
	}
}

func BenchmarkLookupPool(b *testing.B) {
	tbl := testTableB(b)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_, _ = tbl.Lookup(Request{User: "someone@example.com", Protocol: IMAP}, nil)
	}
}

func testTableB(b *testing.B) *Table {
	tbl, err := NewTable(TableSpec{
		Backends:    []Backend{{ID: "a", Host: "h", IMAPPort: 1}, {ID: "b", Host: "h", IMAPPort: 1}, {ID: "c", Host: "h", IMAPPort: 1}},
		Pools:       []Pool{{Name: "p", Backends: []string{"a", "b", "c"}}},
		DefaultPool: "p",
	})
	if err != nil {
		b.Fatal(err)
	}
	return tbl
}

// A lookup with Request.Pool ignores the rules (a submission listener
// whose logins all go to the mail submission servers): the user is hashed
// among the pool's members serving the protocol.
func TestLookupInPool(t *testing.T) {
	tbl, err := NewTable(TableSpec{
		Backends: []Backend{
			{ID: "imap1", Host: "10.0.0.1", IMAPPort: 143},
			{ID: "smtp1", Host: "10.0.1.1", SubmissionPort: 587},
			{ID: "smtp2", Host: "10.0.1.2", SubmissionPort: 587},
			{ID: "smtp3", Host: "10.0.1.3", IMAPPort: 143},
		},
		Pools: []Pool{
			{Name: "mail", Backends: []string{"imap1"}},
			{Name: "relay", Backends: []string{"smtp1", "smtp2", "smtp3"}},
		},
		Users:       map[string]Target{"pinned@example.com": {Backend: "imap1"}},
		DefaultPool: "mail",
	})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i := 0; i < 200; i++ {
		user := fmt.Sprintf("user%d@example.com", i)
		if i == 0 {
			user = "pinned@example.com"
		}
		r, err := tbl.Lookup(Request{User: user, Protocol: Submission, Pool: "relay"}, nil)
		if err != nil {
			t.Fatalf("%s: %v", user, err)
		}
		if r.Rule != "pool" || r.Pool != "relay" || r.Backend.SubmissionPort != 587 {
			t.Fatalf("%s: %+v", user, r)
		}
		again, _ := tbl.Lookup(Request{User: user, Protocol: Submission, Pool: "relay"}, nil)
		if again.Backend != r.Backend {
			t.Fatalf("%s: not stable", user)
		}
		seen[r.Backend.ID] = true
	}
	if !seen["smtp1"] || !seen["smtp2"] || seen["smtp3"] {
		t.Fatalf("members used: %v (smtp3 serves no submission)", seen)
	}
	// Without the pool the rules apply; imap1 serves no submission.
	if _, err := tbl.Lookup(Request{User: "pinned@example.com", Protocol: Submission}, nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("rule lookup for submission: %v", err)
	}
	if _, err := tbl.Lookup(Request{User: "x", Protocol: Submission, Pool: "gone"}, nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("unknown pool: %v", err)
	}
	if b := tbl.Backend("smtp1"); b.Addr(Submission) != "10.0.1.1:587" || b.Port(IMAP) != 0 {
		t.Fatalf("addr %q", b.Addr(Submission))
	}
}

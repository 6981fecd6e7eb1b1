package routing

import (
	"fmt"
	"testing"
)

// fixedAffinity binds users to backends, most preferred first.
type fixedAffinity map[string][]string

func (f fixedAffinity) Backends(user string) []string { return f[user] }

// userOn finds a user whose hash choice in tbl's pool main is backend id.
func userOn(t *testing.T, tbl *Table, id string) string {
	t.Helper()
	for i := 0; i < 1000; i++ {
		u := fmt.Sprintf("u%d", i)
		if r, err := tbl.Lookup(Request{User: u, Protocol: IMAP}, nil); err == nil && r.Backend.ID == id {
			return u
		}
	}
	t.Fatalf("no user homed on %s", id)
	return ""
}

// In a shared_storage pool a lookup goes to the first backend of the
// user's affinity that can take the session, else to the hash's choice;
// in other pools, and for rules naming a backend, affinity is never
// consulted.
func TestLookupAffinity(t *testing.T) {
	shared := testTable(t, true)
	user := userOn(t, shared, "a")
	aff := fixedAffinity{user: {"b"}, "pinned@example.com": {"a"}}
	req := Request{User: user, Protocol: IMAP}

	r, err := shared.LookupWith(req, nil, aff)
	if err != nil || r.Backend.ID != "b" || !r.Steered || !r.SharedStorage || r.Pool != "main" || r.Rule != "default" {
		t.Fatalf("shared pool, affinity b: %+v %v", r, err)
	}
	// The name is normalised before affinity is asked.
	upper := Request{User: "U" + user[1:], Protocol: IMAP}
	if r, _ := shared.LookupWith(upper, nil, aff); r.Backend.ID != "b" {
		t.Errorf("upper-case name: %s", r.Backend.ID)
	}
	// Without affinity: the hash's choice, not steered, still shared.
	if r, _ := shared.LookupWith(req, nil, nil); r.Backend.ID != "a" || r.Steered || !r.SharedStorage {
		t.Errorf("no affinity: %+v", r)
	}
	// Affinity naming the hash's choice: not steered.
	if r, _ := shared.LookupWith(req, nil, fixedAffinity{user: {"a"}}); r.Backend.ID != "a" || r.Steered {
		t.Errorf("affinity = hash: %+v", r)
	}

	// Only while the affinity backend can take sessions: down, draining,
	// disabled, not serving the protocol, not in the pool: the next one,
	// else the hash's choice.
	down := func(id string) bool { return id == "b" }
	if r, _ := shared.LookupWith(req, down, aff); r.Backend.ID != "a" || r.Steered {
		t.Errorf("affinity backend down: %+v", r)
	}
	if r, _ := shared.LookupWith(req, down, fixedAffinity{user: {"b", "c"}}); r.Backend.ID != "c" || !r.Steered {
		t.Errorf("first down, second up: %+v", r)
	}
	if r, _ := shared.LookupWith(Request{User: user, Protocol: POP3}, nil, fixedAffinity{user: {"c", "b"}}); r.Backend.ID != "b" {
		t.Errorf("c serves no POP3: %+v", r)
	}
	if r, _ := shared.LookupWith(req, nil, fixedAffinity{user: {"solo", "nosuch"}}); r.Backend.ID != "a" || r.Steered {
		t.Errorf("affinity outside the pool: %+v", r)
	}
	for _, st := range []BackendState{StateDraining, StateDisabled} {
		tbl := withState(t, true, "b", st)
		if r, _ := tbl.LookupWith(req, nil, aff); r.Backend.ID != "a" || r.Steered {
			t.Errorf("affinity backend %s: %+v", st, r)
		}
	}
	// The hash's choice down, affinity up: affinity.
	if r, _ := shared.LookupWith(req, func(id string) bool { return id == "a" }, fixedAffinity{user: {"c"}}); r.Backend.ID != "c" || !r.Steered {
		t.Errorf("hash's choice down: %+v", r)
	}

	// A pool without shared storage: the hash's choice, always.
	single := testTable(t, false)
	r, err = single.LookupWith(req, nil, aff)
	if err != nil || r.Backend.ID != "a" || r.Steered || r.SharedStorage {
		t.Errorf("pool without shared storage: %+v %v", r, err)
	}
	// A rule naming a backend.
	r, err = shared.LookupWith(Request{User: "pinned@example.com", Protocol: IMAP}, nil, aff)
	if err != nil || r.Backend.ID != "solo" || r.Steered || r.SharedStorage {
		t.Errorf("user rule to a backend: %+v %v", r, err)
	}
}

// withState is testTable with backend id in state st.
func withState(t *testing.T, shared bool, id string, st BackendState) *Table {
	t.Helper()
	spec := TableSpec{
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
		DefaultPool: "main",
	}
	for i := range spec.Backends {
		if spec.Backends[i].ID == id {
			spec.Backends[i].State = st
		}
	}
	tbl, err := NewTable(spec)
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

// The routers consult the affinity they were given.
func TestRoutersAffinity(t *testing.T) {
	tbl := testTable(t, true)
	user := userOn(t, tbl, "a")
	aff := fixedAffinity{user: {"c"}}
	s := NewStatic(tbl)
	if r, _ := s.Route(Request{User: user, Protocol: IMAP}); r.Backend.ID != "a" {
		t.Fatalf("static without affinity: %s", r.Backend.ID)
	}
	s.SetAffinity(aff)
	if r, _ := s.Route(Request{User: user, Protocol: IMAP}); r.Backend.ID != "c" || !r.Steered {
		t.Fatalf("static with affinity: %+v", r)
	}
	s.SetHealth(func(id string) bool { return id == "c" })
	if r, _ := s.Route(Request{User: user, Protocol: IMAP}); r.Backend.ID != "a" {
		t.Fatalf("static, affinity backend down: %s", r.Backend.ID)
	}

	f := NewFSM()
	f.table.Store(tbl)
	f.SetLoaded()
	f.SetAffinity(aff)
	if f.Affinity() == nil {
		t.Fatal("FSM.Affinity: nil")
	}
	if r, _ := f.Route(Request{User: user, Protocol: IMAP}); r.Backend.ID != "c" || !r.Steered {
		t.Fatalf("FSM with affinity: %+v", r)
	}
}

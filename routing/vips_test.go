package routing

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"slices"
	"testing"
)

// Placements are compare-and-set on the address's epoch, which every
// applied change raises; they survive a snapshot and come back in order.
func TestVIPs(t *testing.T) {
	f := NewFSM()
	apply := func(i uint64, as ...VIPAssignment) error {
		t.Helper()
		if r := applyTo(t, f, i, Command{Type: CmdSetVIPs, VIPs: as}); r != nil {
			return r.(error)
		}
		return nil
	}
	if err := apply(1, VIPAssignment{Address: "198.18.0.101", Node: "n1"}, VIPAssignment{Address: "fd00::102", Node: "n2"}); err != nil {
		t.Fatal(err)
	}
	if v, ok := f.Table().VIP("198.18.0.101"); !ok || v.Node != "n1" || v.Epoch != 1 {
		t.Fatalf("%+v %v", v, ok)
	}
	// A stale epoch refuses the whole command, changing nothing.
	err := apply(2, VIPAssignment{Address: "198.18.0.101", Node: "n3", Epoch: 1}, VIPAssignment{Address: "fd00::102", Node: "n3", Epoch: 0})
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("stale epoch: %v", err)
	}
	if v, _ := f.Table().VIP("198.18.0.101"); v.Node != "n1" || v.Epoch != 1 {
		t.Fatalf("changed by a refused command: %+v", v)
	}
	if err := apply(3, VIPAssignment{Address: "198.18.0.101", Node: "n3", Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	// Applying the same change again is refused (its epoch is gone): a
	// retry after an unknown outcome cannot move an address twice.
	if err := apply(4, VIPAssignment{Address: "198.18.0.101", Node: "n3", Epoch: 1}); !errors.Is(err, ErrConflict) {
		t.Fatalf("replayed: %v", err)
	}
	for _, bad := range [][]VIPAssignment{
		nil,
		{{Address: "198.18.0.300", Node: "n1"}},
		{{Address: "::ffff:1.2.3.4", Node: "n1"}}, // an IPv4 address in IPv6 form
		{{Address: "fd00::1%eth0", Node: "n1"}},
		{{Address: "198.18.0.1", Node: "a b"}},
		{{Address: "198.18.0.1", Node: "n1"}, {Address: "198.18.0.1", Node: "n2"}},
	} {
		if err := apply(5, bad...); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v", bad, err)
		}
	}
	var buf bytes.Buffer
	snap, _ := f.Snapshot()
	if err := snap.(*fsmSnapshot).Persist(&memSink{Buffer: &buf}); err != nil {
		t.Fatal(err)
	}
	g := NewFSM()
	if err := g.Restore(io.NopCloser(&buf)); err != nil {
		t.Fatal(err)
	}
	got := g.Table().VIPs()
	if len(got) != 2 || got[0] != (VIPAssignment{Address: "198.18.0.101", Node: "n3", Epoch: 2}) || got[1] != (VIPAssignment{Address: "fd00::102", Node: "n2", Epoch: 1}) {
		t.Fatalf("restored %+v", got)
	}
	// "" removes a placement; the epoch starts again from 0.
	if err := apply(6, VIPAssignment{Address: "fd00::102", Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.Table().VIP("fd00::102"); ok {
		t.Fatal("not removed")
	}
	// The leader marker, alone or with placements, and in snapshots.
	if r := applyTo(t, f, 7, Command{Type: CmdSetVIPs, Target: "n2"}); r != nil || f.Table().VIPLeader() != "n2" {
		t.Fatalf("marker: %v %q", r, f.Table().VIPLeader())
	}
	if r := applyTo(t, f, 8, Command{Type: CmdSetVIPs, Target: "a b"}); r == nil || f.Table().VIPLeader() != "n2" {
		t.Fatalf("bad marker: %v %q", r, f.Table().VIPLeader())
	}
	buf.Reset()
	if err := WriteSnapshot(&buf, f.Table()); err != nil {
		t.Fatal(err)
	}
	if tb, err := ReadSnapshot(&buf); err != nil || tb.VIPLeader() != "n2" || len(tb.VIPs()) != 1 {
		t.Fatalf("restored marker: %v %+v", err, tb)
	}
	// A table without placements writes no "vips" in its snapshot: an
	// older version can read it.
	buf.Reset()
	if err := WriteSnapshot(&buf, EmptyTable()); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(buf.Bytes(), []byte("vips")) {
		t.Fatal("empty table's snapshot mentions vips")
	}
}

// The placements and the leader marker are kept by every other change to
// the table: a backend, pool, domain or default-pool change once built the
// new table without them (clone), so the configuration seed a node applies
// at start, or `portico backend add`, unplaced every address and erased
// the marker (found by the spread-mode storm drill: the leader's kill then
// waited a full lease for its addresses).
func TestVIPsSurviveOtherChanges(t *testing.T) {
	f := NewFSM()
	idx := uint64(0)
	apply := func(c Command) {
		t.Helper()
		idx++
		if r := applyTo(t, f, idx, c); r != nil {
			t.Fatalf("%v: %v", c.Type, r)
		}
	}
	apply(Command{Type: CmdSetVIPs, Target: "n1", VIPs: []VIPAssignment{{Address: "198.18.0.101", Node: "n1"}, {Address: "198.18.0.102", Node: "n2"}}})
	want := f.Table().VIPs()
	for _, c := range []Command{
		{Type: CmdSeed, Seed: &Seed{Backends: []Backend{{ID: "a", Host: "10.0.0.1", IMAPPort: 143}}, Pools: []Pool{{Name: "p", Backends: []string{"a"}}},
			Domains: map[string]string{"example.org": "p"}, DefaultPool: "p"}},
		{Type: CmdPutBackend, Backend: &Backend{ID: "b", Host: "10.0.0.2", IMAPPort: 143}},
		{Type: CmdPutPool, Pool: &Pool{Name: "q", Backends: []string{"b"}}},
		{Type: CmdPutDomain, Domain: "example.net", Target: "q"},
		{Type: CmdDeleteDomain, Names: []string{"example.net", "example.org"}},
		{Type: CmdSetDefaultPool, Target: "q"},
		{Type: CmdPutUsers, Users: []UserRoute{{User: "alice@example.org", Target: Target{Backend: "a"}}}},
		{Type: CmdDeletePool, Names: []string{"p"}},
		{Type: CmdDeleteUsers, Names: []string{"alice@example.org"}},
		{Type: CmdDeleteBackend, Names: []string{"a"}},
	} {
		apply(c)
		if got := f.Table().VIPs(); !slices.Equal(got, want) || f.Table().VIPLeader() != "n1" {
			t.Fatalf("after %v: placements %+v (want %+v), marker %q", c.Type, got, want, f.Table().VIPLeader())
		}
	}
}

// clone carries every field of the table (a field added later and
// forgotten there is lost by every backend, pool and domain change).
func TestCloneKeepsEveryField(t *testing.T) {
	tb := &Table{
		backends:    map[string]*Backend{"a": {ID: "a"}},
		pools:       map[string]*Pool{"p": {Name: "p"}},
		users:       &userMap{},
		domains:     map[string]string{"example.org": "p"},
		defaultPool: "p",
		hashKey:     "local",
		seed:        &seedRecord{},
		regex:       []regexRule{{}},
		sources:     map[string]SourceState{"s": {}},
		vips:        map[string]VIPAssignment{"198.18.0.101": {Address: "198.18.0.101", Node: "n1", Epoch: 1}},
		vipLeader:   "n1",
	}
	v := reflect.ValueOf(tb).Elem()
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Fatalf("the test's table leaves %s unset: set it", v.Type().Field(i).Name)
		}
	}
	c := reflect.ValueOf(tb.clone()).Elem()
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if c.Field(i).IsZero() {
			t.Errorf("clone drops %s", name)
		}
	}
	if !reflect.DeepEqual(*tb, *tb.clone()) {
		t.Errorf("clone differs from the table")
	}
}

package routing

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

// canon is a deterministic dump of a table, for comparisons.
func canon(t *Table) string {
	var b strings.Builder
	for _, be := range t.Backends() {
		fmt.Fprintf(&b, "B %+v\n", *be)
	}
	for _, p := range t.Pools() {
		fmt.Fprintf(&b, "P %+v\n", *p)
	}
	for _, d := range sortedKeys(t.domains) {
		fmt.Fprintf(&b, "D %s %s\n", d, t.domains[d])
	}
	fmt.Fprintf(&b, "default %s\n", t.defaultPool)
	fmt.Fprintf(&b, "hash key %s\n", t.HashKey())
	for _, u := range t.UserRoutes("", "", 0) {
		fmt.Fprintf(&b, "U %s %+v\n", u.User, u.Target)
	}
	fmt.Fprintf(&b, "seeded %+v\n", t.Seeded())
	fmt.Fprintf(&b, "regex %+v\n", t.RegexMap())
	for _, name := range sortedKeys(t.sources) {
		fmt.Fprintf(&b, "S %s %+v\n", name, t.sources[name])
	}
	fmt.Fprintf(&b, "vips %+v\n", t.VIPs())
	return b.String()
}

func randomCommand(r *rand.Rand) Command {
	id := func() string { return fmt.Sprintf("b%d", r.IntN(6)) }
	pool := func() string { return fmt.Sprintf("p%d", r.IntN(4)) }
	user := func() string { return fmt.Sprintf("u%d@d%d.example", r.IntN(50), r.IntN(3)) }
	switch r.IntN(16) {
	case 0:
		return Command{Type: CmdPutBackend, Backend: &Backend{ID: id(), Host: "10.0.0.1", IMAPPort: 143 + r.IntN(3), Weight: r.IntN(3)}}
	case 1:
		return Command{Type: CmdDeleteBackend, Names: []string{id()}}
	case 2:
		return Command{Type: CmdPutPool, Pool: &Pool{Name: pool(), Backends: []string{id()}, SharedStorage: r.IntN(2) == 0}}
	case 3:
		return Command{Type: CmdDeletePool, Names: []string{pool()}}
	case 4:
		var us []UserRoute
		for i := 0; i < 1+r.IntN(5); i++ {
			if r.IntN(2) == 0 {
				us = append(us, UserRoute{User: user(), Target: Target{Backend: id()}})
			} else {
				us = append(us, UserRoute{User: user(), Target: Target{Pool: pool()}})
			}
		}
		return Command{Type: CmdPutUsers, Users: us}
	case 5:
		return Command{Type: CmdDeleteUsers, Names: []string{user(), user()}}
	case 6:
		return Command{Type: CmdPutDomain, Domain: fmt.Sprintf("d%d.example", r.IntN(3)), Target: pool()}
	case 7:
		return Command{Type: CmdDeleteDomain, Names: []string{fmt.Sprintf("d%d.example", r.IntN(3))}}
	case 8:
		w, st := r.IntN(3), []BackendState{StateActive, StateDraining, StateDisabled}[r.IntN(3)]
		p := &BackendPatch{ID: id(), State: &st}
		if r.IntN(2) == 0 {
			p.Weight = &w
		}
		return Command{Type: CmdPatchBackend, Patch: p}
	case 9:
		b := Backend{ID: id(), Host: "10.0.0.2", IMAPPort: 143 + r.IntN(2)}
		s := Seed{Backends: []Backend{b}}
		if r.IntN(2) == 0 {
			s.Pools = []Pool{{Name: pool(), Backends: []string{b.ID}}}
			s.Users = []UserRoute{{User: user(), Target: Target{Backend: b.ID}}}
		}
		return Command{Type: CmdSeed, Seed: &s}
	case 10:
		return Command{Type: CmdSetHashKey, Target: string([]HashKey{HashAddress, HashLocal, HashDomain}[r.IntN(3)])}
	case 11:
		src := []string{"", "a.map", "b.map"}[r.IntN(3)]
		c := Command{Type: CmdImport, Source: src}
		for i := 0; i < r.IntN(4); i++ {
			tg := Target{Backend: id()}
			if r.IntN(2) == 0 {
				tg = Target{Pool: pool()}
			}
			if r.IntN(2) == 0 {
				tg.Login = fmt.Sprintf("renamed%d", r.IntN(3))
			}
			c.Users = append(c.Users, UserRoute{User: user(), Target: tg})
		}
		if src != "" {
			c.Names = []string{user(), user()}
		}
		return c
	case 12:
		c := Command{Type: CmdSetRegexMap, Source: []string{"a.re", "b.re", ""}[r.IntN(3)]}
		for i := 0; i < r.IntN(3); i++ {
			c.Regex = append(c.Regex, RegexRule{Pattern: fmt.Sprintf("^u%d(.*)", r.IntN(5)), Replace: []string{"$1@" + id(), "pool:" + pool(), "("}[r.IntN(3)]})
		}
		if r.IntN(8) == 0 {
			c.Regex = append(c.Regex, RegexRule{Pattern: "(", Replace: "b1"})
		}
		return c
	case 13:
		c := Command{Type: CmdSourceState, Source: []string{"ldap", "sql", ""}[r.IntN(3)]}
		if r.IntN(4) != 0 {
			c.State = &SourceState{Watermark: fmt.Sprint(r.IntN(9)), LastFull: int64(r.IntN(3)), LastSync: int64(r.IntN(3)), Entries: r.IntN(3) - 1}
		}
		return c
	case 14:
		// Epochs are compare-and-set: small ones, so that some match.
		c := Command{Type: CmdSetVIPs}
		for i, a := range []string{"198.18.0.101", "198.18.0.102", "fd00::103"} {
			if r.IntN(2) == 0 || i == 0 && len(c.VIPs) == 0 {
				c.VIPs = append(c.VIPs, VIPAssignment{Address: a, Node: []string{"", "n1", "n2", "n3"}[r.IntN(4)], Epoch: uint64(r.IntN(3))})
			}
		}
		return c
	default:
		return Command{Type: CmdSetDefaultPool, Target: pool()}
	}
}

func applyTo(t *testing.T, f *FSM, idx uint64, c Command) interface{} {
	t.Helper()
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return f.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: b})
}

// Random command sequences applied on two state machines give identical
// tables and identical responses; snapshot -> restore gives an identical
// table; applying every command twice changes nothing (idempotence).
func TestFSMProperties(t *testing.T) {
	for seed := uint64(1); seed <= 30; seed++ {
		r := rand.New(rand.NewPCG(seed, seed))
		a, b, twice := NewFSM(), NewFSM(), NewFSM()
		accepted := 0
		for i := uint64(1); i <= 400; i++ {
			c := randomCommand(r)
			ra, rb := applyTo(t, a, i, c), applyTo(t, b, i, c)
			if fmt.Sprint(ra) != fmt.Sprint(rb) {
				t.Fatalf("seed %d step %d: responses differ: %v / %v", seed, i, ra, rb)
			}
			if ra == nil {
				accepted++
			}
			applyTo(t, twice, 2*i-1, c)
			applyTo(t, twice, 2*i, c)
		}
		if canon(a.Table()) != canon(b.Table()) {
			t.Fatalf("seed %d: tables differ", seed)
		}
		if canon(a.Table()) != canon(twice.Table()) {
			t.Fatalf("seed %d: applying each command twice gave a different table", seed)
		}
		if accepted == 0 {
			t.Fatalf("seed %d: every command was refused; the test exercises nothing", seed)
		}
		var buf bytes.Buffer
		snap, _ := a.Snapshot()
		if err := snap.(*fsmSnapshot).Persist(&memSink{Buffer: &buf}); err != nil {
			t.Fatal(err)
		}
		c := NewFSM()
		if err := c.Restore(io.NopCloser(bytes.NewReader(buf.Bytes()))); err != nil {
			t.Fatalf("seed %d: restore: %v", seed, err)
		}
		if canon(c.Table()) != canon(a.Table()) {
			t.Fatalf("seed %d: restored table differs:\n%s\nvs\n%s", seed, canon(c.Table()), canon(a.Table()))
		}
		if c.AppliedIndex() != a.AppliedIndex() || !c.IndexKnown() {
			t.Fatalf("seed %d: restored index %d (known %v), want %d", seed, c.AppliedIndex(), c.IndexKnown(), a.AppliedIndex())
		}
	}
}

// Until the node has caught up with the cluster, the table answers
// ErrNotReady for every user: one it has a rule for (the rule may have
// changed meanwhile) and one it has none for (the rule may be on its way):
// neither is the user's fault. Afterwards it answers from its copy, and
// keeps doing so (the latch is never undone).
func TestFSMNotReadyUntilLoaded(t *testing.T) {
	f := NewFSM()
	applyTo(t, f, 3, Command{Type: CmdPutBackend, Backend: &Backend{ID: "a", Host: "h", IMAPPort: 143}})
	applyTo(t, f, 4, Command{Type: CmdPutUsers, Users: []UserRoute{{User: "alice", Target: Target{Backend: "a"}}}})
	for _, u := range []string{"alice", "nobody"} {
		if _, err := f.Route(Request{User: u, Protocol: IMAP}); !errors.Is(err, ErrNotReady) {
			t.Fatalf("%s before the table is loaded: %v, want ErrNotReady", u, err)
		}
	}
	if f.Loaded() {
		t.Fatal("a new FSM says it is loaded")
	}
	f.SetLoaded()
	if r, err := f.Route(Request{User: "alice", Protocol: IMAP}); err != nil || r.Backend.ID != "a" {
		t.Fatalf("alice once loaded: %+v %v", r, err)
	}
	if _, err := f.Route(Request{User: "nobody", Protocol: IMAP}); !errors.Is(err, ErrNoRoute) {
		t.Fatalf("unknown user once loaded: %v, want ErrNoRoute", err)
	}
	// A snapshot restored later (raft installing one on a lagging node)
	// does not unload the table.
	var buf bytes.Buffer
	snap, _ := f.Snapshot()
	if err := snap.(*fsmSnapshot).Persist(&memSink{Buffer: &buf}); err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(io.NopCloser(&buf)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Route(Request{User: "alice", Protocol: IMAP}); err != nil {
		t.Fatalf("after a restore: %v", err)
	}
}

// A snapshot records the index of the last command its table reflects, so
// a node restored from it can tell whether it holds what the leader holds.
// A snapshot from an older version has no index: the FSM says so until the
// next command, instead of claiming index 0.
func TestFSMSnapshotIndex(t *testing.T) {
	f := NewFSM()
	applyTo(t, f, 5, Command{Type: CmdPutBackend, Backend: &Backend{ID: "a", Host: "h", IMAPPort: 143}})
	f.Apply(&raft.Log{Index: 6, Type: raft.LogNoop})
	snap, _ := f.Snapshot()
	var buf bytes.Buffer
	if err := snap.(*fsmSnapshot).Persist(&memSink{Buffer: &buf}); err != nil {
		t.Fatal(err)
	}
	g := NewFSM()
	if err := g.Restore(io.NopCloser(bytes.NewReader(buf.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if g.AppliedIndex() != f.AppliedIndex() || !g.IndexKnown() {
		t.Fatalf("restored index %d known %v, want %d", g.AppliedIndex(), g.IndexKnown(), f.AppliedIndex())
	}
	// Older versions read the new snapshot (they ignore the index).
	if tbl, err := ReadSnapshot(bytes.NewReader(buf.Bytes())); err != nil || canon(tbl) != canon(f.Table()) {
		t.Fatalf("ReadSnapshot of an indexed snapshot: %v", err)
	}

	var old bytes.Buffer
	if err := WriteSnapshot(&old, f.Table()); err != nil { // as an older version wrote it
		t.Fatal(err)
	}
	h := NewFSM()
	applyTo(t, h, 2, Command{Type: CmdPutBackend, Backend: &Backend{ID: "z", Host: "h", IMAPPort: 143}})
	if err := h.Restore(io.NopCloser(&old)); err != nil {
		t.Fatal(err)
	}
	if h.IndexKnown() || h.AppliedIndex() != 0 || canon(h.Table()) != canon(f.Table()) {
		t.Fatalf("old snapshot: index %d known %v", h.AppliedIndex(), h.IndexKnown())
	}
	// Its own snapshot then records no index either.
	snap, _ = h.Snapshot()
	buf.Reset()
	if err := snap.(*fsmSnapshot).Persist(&memSink{Buffer: &buf}); err != nil {
		t.Fatal(err)
	}
	if s, err := readSnapshot(bytes.NewReader(buf.Bytes())); err != nil || s.index != nil {
		t.Fatalf("snapshot of a table of unknown index recorded %v (%v)", s.index, err)
	}
	applyTo(t, h, 9, Command{Type: CmdPutBackend, Backend: &Backend{ID: "b", Host: "h", IMAPPort: 143}})
	if !h.IndexKnown() || h.AppliedIndex() != 9 {
		t.Fatalf("after a command: index %d known %v", h.AppliedIndex(), h.IndexKnown())
	}
}

type memSink struct{ *bytes.Buffer }

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Cancel() error { return nil }
func (m *memSink) Close() error  { return nil }

func TestFSMUnknownCommandHalts(t *testing.T) {
	put := func(id string) []byte {
		b, err := Command{Type: CmdPutBackend, Backend: &Backend{ID: id, Host: "10.0.0.1", IMAPPort: 143}}.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, bad := range [][]byte{{200, 1, '{', '}'}, {byte(CmdPutBackend), 9, '{', '}'}} {
		f := NewFSM()
		f.Apply(&raft.Log{Index: 6, Type: raft.LogCommand, Data: put("a")})
		select {
		case <-f.Halted():
			t.Fatal("halted before the unknown entry")
		default:
		}
		res := f.Apply(&raft.Log{Index: 7, Type: raft.LogCommand, Data: bad})
		err, _ := res.(error)
		if !errors.Is(err, ErrUnknownCommand) || !strings.Contains(err.Error(), "index 7") || !strings.Contains(err.Error(), "Upgrade this node") {
			t.Fatalf("unknown entry %v: %v", bad[:2], res)
		}
		select {
		case <-f.Halted():
		default:
			t.Fatal("not halted")
		}
		if !errors.Is(f.HaltError(), ErrUnknownCommand) {
			t.Fatalf("HaltError: %v", f.HaltError())
		}
		// Nothing after it is applied: the table and index stay where the
		// entry before left them.
		f.Apply(&raft.Log{Index: 8, Type: raft.LogCommand, Data: put("b")})
		if f.AppliedIndex() != 6 || f.Table().Backend("b") != nil || f.Table().Backend("a") == nil {
			t.Fatalf("applied past the unknown entry: index %d", f.AppliedIndex())
		}
	}
}

func TestFSMRefusals(t *testing.T) {
	f := NewFSM()
	applyTo(t, f, 1, Command{Type: CmdPutBackend, Backend: &Backend{ID: "a", Host: "h", IMAPPort: 143}})
	applyTo(t, f, 2, Command{Type: CmdPutPool, Pool: &Pool{Name: "p", Backends: []string{"a"}}})
	cases := []struct {
		c    Command
		want error
	}{
		{Command{Type: CmdDeleteBackend, Names: []string{"a"}}, ErrConflict},
		{Command{Type: CmdPutPool, Pool: &Pool{Name: "q", Backends: []string{"nope"}}}, ErrConflict},
		{Command{Type: CmdPutBackend, Backend: &Backend{ID: "bad id", Host: "h", IMAPPort: 1}}, ErrInvalid},
		{Command{Type: CmdPutBackend, Backend: &Backend{ID: "x", Host: "h"}}, ErrInvalid},
		{Command{Type: CmdPutUsers, Users: []UserRoute{{User: "u", Target: Target{Pool: "nope"}}}}, ErrConflict},
		{Command{Type: CmdPutUsers, Users: []UserRoute{{User: "bad\r\nuser", Target: Target{Pool: "p"}}}}, ErrInvalid},
	}
	before := canon(f.Table())
	for i, c := range cases {
		res := applyTo(t, f, uint64(10+i), c.c)
		err, _ := res.(error)
		if !errors.Is(err, c.want) {
			t.Errorf("case %d: got %v, want %v", i, res, c.want)
		}
	}
	if canon(f.Table()) != before {
		t.Fatal("a refused command changed the table")
	}
	if f.AppliedIndex() != 15 {
		t.Fatalf("applied index %d", f.AppliedIndex())
	}
	// Deleting something absent is fine (idempotent).
	if res := applyTo(t, f, 20, Command{Type: CmdDeleteBackend, Names: []string{"ghost"}}); res != nil {
		t.Fatal(res)
	}
}

func TestCommandRoundTrip(t *testing.T) {
	c := Command{Type: CmdPutUsers, Users: []UserRoute{{User: "a@b", Target: Target{Backend: "x"}}}}
	b, _ := c.Encode()
	d, err := DecodeCommand(b)
	if err != nil || !reflect.DeepEqual(c, d) {
		t.Fatalf("%v %+v", err, d)
	}
}

func FuzzDecodeCommand(f *testing.F) {
	for _, c := range []Command{
		{Type: CmdPutBackend, Backend: &Backend{ID: "a", Host: "h", IMAPPort: 1}},
		{Type: CmdPutUsers, Users: []UserRoute{{User: "u", Target: Target{Pool: "p"}}}},
		{Type: CmdDeleteDomain, Names: []string{"x"}},
		{Type: CmdSetHashKey, Target: "domain"},
		{Type: CmdTicketKeys, Tickets: &TicketRotation{Keys: []TicketKey{{1}, {2}}, Keep: 3, At: 1}},
		{Type: CmdSetVIPs, VIPs: []VIPAssignment{{Address: "192.0.2.1", Node: "n1"}, {Address: "2001:db8::1", Node: "n2", Epoch: 0}}, Target: "n1"},
	} {
		b, _ := c.Encode()
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add([]byte("\x10\x01{\"tickets\":{\"keys\":[\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"],\"keep\":2}}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			return
		}
		if c.Tickets != nil {
			// A rotation from the log: a ring it makes holds no zero
			// key, no key twice and never more than MaxTicketKeys.
			ring := &TicketRing{Keys: []TicketKey{{9}, {8}}}
			for _, r := range []*TicketRing{nil, ring} {
				n, err := r.Rotate(*c.Tickets)
				if err != nil {
					continue
				}
				if n.Empty() || len(n.Keys) > MaxTicketKeys {
					t.Fatalf("a ring of %d keys", len(n.Keys))
				}
				seen := map[TicketKey]bool{}
				for _, k := range n.Keys {
					if k == (TicketKey{}) || seen[k] {
						t.Fatalf("ring %v", n.Keys)
					}
					seen[k] = true
				}
				if len(n.ServerKeys()) != len(n.Keys) {
					t.Fatal("server keys differ from the ring")
				}
			}
		}
		// Whatever decodes must apply (or be refused) without panicking,
		// and deterministically.
		base, _ := EmptyTable().WithBackend(Backend{ID: "a", Host: "h", IMAPPort: 1})
		n1, e1 := base.Apply(c)
		n2, e2 := base.Apply(c)
		if (e1 == nil) != (e2 == nil) || (e1 == nil && canon(n1) != canon(n2)) {
			t.Fatal("non-deterministic apply")
		}
	})
}

func FuzzReadSnapshot(f *testing.F) {
	tbl, _ := NewTable(TableSpec{
		Backends: []Backend{{ID: "a", Host: "h", IMAPPort: 1}}, Pools: []Pool{{Name: "p", Backends: []string{"a"}}},
		Users: map[string]Target{"u": {Pool: "p"}, "v": {Backend: "a"}}, DefaultPool: "p",
	})
	var buf bytes.Buffer
	WriteSnapshot(&buf, tbl)
	f.Add(buf.Bytes())
	f.Add([]byte(snapshotMagic))
	// With the FSM state a raft snapshot carries: placements of virtual
	// addresses and the session-ticket keys.
	vt, _ := tbl.WithVIPs([]VIPAssignment{{Address: "192.0.2.1", Node: "n1"}, {Address: "2001:db8::1", Node: "n2"}}, "n1")
	buf.Reset()
	idx := uint64(7)
	writeSnapshot(&buf, vt, &idx, &TicketRing{Keys: []TicketKey{{1}, {2}, {3}}, Rotated: 5})
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, _, tk, err := readSnapshotParts(bytes.NewReader(b)); err == nil && tk != nil {
			if len(tk.Keys) > MaxTicketKeys {
				t.Fatalf("a snapshot's ring of %d keys", len(tk.Keys))
			}
			for _, k := range tk.Keys {
				if k == (TicketKey{}) {
					t.Fatal("an all-zero key from a snapshot")
				}
			}
		}
		got, err := ReadSnapshot(bytes.NewReader(b))
		if err != nil {
			return
		}
		var again bytes.Buffer
		if err := WriteSnapshot(&again, got); err != nil {
			t.Fatal(err)
		}
		back, err := ReadSnapshot(&again)
		if err != nil || canon(back) != canon(got) {
			t.Fatalf("snapshot does not round-trip: %v", err)
		}
	})
}

package routing

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// seeder applies commands to one FSM as the cluster would, in order.
type seeder struct {
	t *testing.T
	f *FSM
}

func (s *seeder) do(c Command) error {
	s.t.Helper()
	if r := applyTo(s.t, s.f, s.f.AppliedIndex()+1, c); r != nil {
		return r.(error)
	}
	return nil
}

func (s *seeder) must(c Command) {
	s.t.Helper()
	if err := s.do(c); err != nil {
		s.t.Fatalf("%s: %v", c.Type, err)
	}
}

func (s *seeder) seed(sd Seed) error {
	s.t.Helper()
	return s.do(Command{Type: CmdSeed, Seed: &sd})
}

func (s *seeder) backend(id string) Backend {
	s.t.Helper()
	b := s.f.Table().Backend(id)
	if b == nil {
		s.t.Fatalf("no backend %s", id)
	}
	return *b
}

func (s *seeder) patch(id, body string) {
	s.t.Helper()
	p := mustPatch(s.t, id, body)
	s.must(Command{Type: CmdPatchBackend, Patch: &p})
}

// fileSeed is a configuration file's routing section.
func fileSeed() Seed {
	return Seed{
		Backends: []Backend{
			{ID: "imap1", Host: "10.0.1.1", IMAPPort: 143, Forward: ForwardID},
			{ID: "imap2", Host: "10.0.1.2", IMAPPort: 143, Forward: ForwardID},
		},
		Pools:       []Pool{{Name: "main", Backends: []string{"imap1", "imap2"}}},
		Users:       []UserRoute{{User: "Alice@example.com", Target: Target{Backend: "imap2"}}},
		Domains:     map[string]string{"example.com": "main"},
		DefaultPool: "main",
	}
}

// The file seeds what it names; what the API changed since survives a
// seed of the same file (a reload or restart of any node), and a change
// in the file applies only to what it changed.
func TestSeedKeepsWhatTheAPIChanged(t *testing.T) {
	s := &seeder{t: t, f: NewFSM()}
	file := fileSeed()
	if err := s.seed(file); err != nil {
		t.Fatal(err)
	}
	first := s.backend("imap1")
	if first.Host != "10.0.1.1" || first.Forward != ForwardID || first.State != StateActive || first.Weight != 1 {
		t.Fatalf("seeded imap1: %+v", first)
	}
	if tg, ok := s.f.Table().UserRoute("alice@example.com"); !ok || tg.Backend != "imap2" {
		t.Fatalf("seeded alice: %+v %v", tg, ok)
	}
	if s.f.Table().DefaultPool() != "main" || s.f.Table().Domains()["example.com"] != "main" {
		t.Fatal("default pool or domain not seeded")
	}
	seeded := s.f.Table().Seeded()
	if len(seeded.Backends) != 2 || seeded.Backends[0].State != StateActive || seeded.Users[0].User != "alice@example.com" {
		t.Fatalf("record: %+v", seeded)
	}

	// Through the API: drain imap1 and give it weight 5, disable imap2,
	// move alice to the pool, take imap2 out of the pool, route a domain
	// elsewhere, set another default.
	s.patch("imap1", `{"state": "draining", "weight": 5}`)
	s.patch("imap2", `{"state": "disabled"}`)
	s.must(Command{Type: CmdPutUsers, Users: []UserRoute{{User: "alice@example.com", Target: Target{Pool: "main"}}}})
	s.must(Command{Type: CmdPutPool, Pool: &Pool{Name: "main", Backends: []string{"imap1"}}})
	s.must(Command{Type: CmdPutPool, Pool: &Pool{Name: "other", Backends: []string{"imap2"}}})
	s.must(Command{Type: CmdPutDomain, Domain: "example.com", Target: "other"})
	s.must(Command{Type: CmdSetDefaultPool, Target: "other"})
	api := canon(s.f.Table())

	// The same file again (a reload, another node starting): nothing the
	// API did is undone.
	if err := s.seed(fileSeed()); err != nil {
		t.Fatal(err)
	}
	if got := canon(s.f.Table()); got != api {
		t.Fatalf("seeding the same file changed the table:\n%s\nwant\n%s", got, api)
	}

	// The file changes imap1's port and forward mode: those two fields
	// change, imap1 stays draining with weight 5.
	file.Backends[0].IMAPPort, file.Backends[0].Forward = 1143, ForwardProxy
	if err := s.seed(file); err != nil {
		t.Fatal(err)
	}
	want := Backend{ID: "imap1", Host: "10.0.1.1", IMAPPort: 1143, TLS: TLSNone, Forward: ForwardProxy, Weight: 5, State: StateDraining}
	if got := s.backend("imap1"); got != want {
		t.Fatalf("imap1 after the file changed its port:\n%+v\nwant\n%+v", got, want)
	}
	if s.backend("imap2").State != StateDisabled {
		t.Fatal("imap2, unchanged in the file, lost its API state")
	}
	// The file sets a state: the file's change applies.
	file.Backends[0].State = StateActive // written out, same as the default: no change
	if err := s.seed(file); err != nil {
		t.Fatal(err)
	}
	if s.backend("imap1").State != StateDraining {
		t.Fatal("writing the default state out in the file undid the drain")
	}
	file.Backends[0].State = StateDisabled
	if err := s.seed(file); err != nil {
		t.Fatal(err)
	}
	if b := s.backend("imap1"); b.State != StateDisabled || b.Weight != 5 {
		t.Fatalf("imap1 after the file disabled it: %+v", b)
	}

	// The file changes alice's route and the pool: written again. The
	// domain and default it did not change stay as the API set them.
	file.Users[0].Target = Target{Backend: "imap1"}
	file.Pools[0].SharedStorage = true
	if err := s.seed(file); err != nil {
		t.Fatal(err)
	}
	if tg, _ := s.f.Table().UserRoute("alice@example.com"); tg.Backend != "imap1" {
		t.Fatalf("alice after the file changed her route: %+v", tg)
	}
	if p := s.f.Table().Pool("main"); !p.SharedStorage || len(p.Backends) != 2 {
		t.Fatalf("pool after the file changed it: %+v", p)
	}
	if s.f.Table().Domains()["example.com"] != "other" || s.f.Table().DefaultPool() != "other" {
		t.Fatal("the domain or default the file did not change was reset")
	}
	file.DefaultPool = "main"
	file.Domains = map[string]string{"Example.COM": "main"} // the same domain, written differently
	if err := s.seed(file); err != nil {
		t.Fatal(err)
	}
	if s.f.Table().DefaultPool() != "other" || s.f.Table().Domains()["example.com"] != "other" {
		t.Fatal("an unchanged default pool or domain was written again")
	}
}

// What the API deleted stays deleted while the file's entry is unchanged;
// an entry the file stops naming is forgotten, and named again it is new.
func TestSeedDeletionsAndForgetting(t *testing.T) {
	s := &seeder{t: t, f: NewFSM()}
	file := fileSeed()
	if err := s.seed(file); err != nil {
		t.Fatal(err)
	}
	s.must(Command{Type: CmdDeleteUsers, Names: []string{"alice@example.com"}})
	if err := s.seed(file); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.f.Table().UserRoute("alice@example.com"); ok {
		t.Fatal("a user rule deleted through the API came back with an unchanged file")
	}
	// The file stops naming alice: she leaves the record; the table keeps
	// whatever it has (nothing here).
	users := file.Users
	file.Users = nil
	if err := s.seed(file); err != nil {
		t.Fatal(err)
	}
	if len(s.f.Table().Seeded().Users) != 0 {
		t.Fatal("the record kept a user the file no longer names")
	}
	file.Users = users
	if err := s.seed(file); err != nil {
		t.Fatal(err)
	}
	if tg, ok := s.f.Table().UserRoute("alice@example.com"); !ok || tg.Backend != "imap2" {
		t.Fatal("a user the file names again was not written")
	}

	// A backend deleted through the API whose entry the file then changes
	// is written whole. (Pools must let go of it first.)
	s.must(Command{Type: CmdPutUsers, Users: []UserRoute{{User: "alice@example.com", Target: Target{Backend: "imap1"}}}})
	s.must(Command{Type: CmdPutPool, Pool: &Pool{Name: "main", Backends: []string{"imap1"}}})
	s.must(Command{Type: CmdDeleteBackend, Names: []string{"imap2"}})
	if err := s.seed(file); err != nil {
		t.Fatal(err)
	}
	if s.f.Table().Backend("imap2") != nil {
		t.Fatal("a backend deleted through the API came back with an unchanged file")
	}
	file.Backends[1].Weight = 2
	if err := s.seed(file); err != nil {
		t.Fatal(err)
	}
	if b := s.backend("imap2"); b.Weight != 2 || b.Host != "10.0.1.2" || b.Forward != ForwardID {
		t.Fatalf("imap2 written again: %+v", b)
	}
}

// A backend that exists before the file first names it (made through the
// API, or seeded by a version without the record) is written as the file
// says; a seed that does not fit the table is refused whole.
func TestSeedFirstTimeAndRefusal(t *testing.T) {
	s := &seeder{t: t, f: NewFSM()}
	s.must(Command{Type: CmdPutBackend, Backend: &Backend{ID: "imap1", Host: "10.9.9.9", IMAPPort: 993, TLS: TLSImplicit, State: StateDraining}})
	if err := s.seed(fileSeed()); err != nil {
		t.Fatal(err)
	}
	if b := s.backend("imap1"); b.Host != "10.0.1.1" || b.TLS != TLSNone || b.State != StateActive {
		t.Fatalf("first seed over an existing backend: %+v", b)
	}

	before, rec := canon(s.f.Table()), s.f.Table().Seeded()
	bad := fileSeed()
	bad.Backends[0].Host = "10.0.1.7"
	bad.Pools = append(bad.Pools, Pool{Name: "p2", Backends: []string{"ghost"}})
	err := s.seed(bad)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), `unknown backend "ghost"`) {
		t.Fatalf("seed with a pool naming an unknown backend: %v", err)
	}
	bad = fileSeed()
	bad.Backends = append(bad.Backends, bad.Backends[0])
	if err := s.seed(bad); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "named twice") {
		t.Fatalf("seed naming a backend twice: %v", err)
	}
	if canon(s.f.Table()) != before || fmt.Sprintf("%+v", s.f.Table().Seeded()) != fmt.Sprintf("%+v", rec) {
		t.Fatal("a refused seed changed the table or the record")
	}
}

// The record is part of the snapshot: a node restored from one keeps
// what the API changed when the same file is seeded again.
func TestSeedRecordInSnapshot(t *testing.T) {
	s := &seeder{t: t, f: NewFSM()}
	if err := s.seed(fileSeed()); err != nil {
		t.Fatal(err)
	}
	s.patch("imap1", `{"state": "draining"}`)
	var buf bytes.Buffer
	snap, _ := s.f.Snapshot()
	if err := snap.(*fsmSnapshot).Persist(&memSink{Buffer: &buf}); err != nil {
		t.Fatal(err)
	}
	r := &seeder{t: t, f: NewFSM()}
	if err := r.f.Restore(io.NopCloser(bytes.NewReader(buf.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if canon(r.f.Table()) != canon(s.f.Table()) {
		t.Fatalf("restored:\n%s\nwant\n%s", canon(r.f.Table()), canon(s.f.Table()))
	}
	if err := r.seed(fileSeed()); err != nil {
		t.Fatal(err)
	}
	if r.backend("imap1").State != StateDraining {
		t.Fatal("after a restore, seeding the same file undid the drain")
	}
}

package syncer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source"
)

// users returns the table's user rules.
func users(t *routing.Table) map[string]routing.Target {
	out := map[string]routing.Target{}
	t.EachUser(func(u string, tg routing.Target) bool {
		out[u] = tg
		return true
	})
	return out
}

// A sync writes its batches grouped by the table's shards, and the table
// it leaves is exactly the one its difference written as one command
// leaves: random sources (names in several spellings, renames, backends,
// pools, new hosts, invalid entries) over random tables (the source's,
// another source's, an import's and the API's rules), a full sync and
// then an incremental one with changes and deletions, forced past the
// safety valve.
func TestGroupedBatchesSameTable(t *testing.T) {
	clock := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for seed := range uint64(25) {
		rng := rand.New(rand.NewPCG(seed, 3))
		universe := 50 + rng.IntN(2000)
		spell := func(i int) string {
			switch rng.IntN(3) {
			case 0:
				return fmt.Sprintf("User%d@EXÄMPLE.org", i)
			case 1:
				return fmt.Sprintf("user%d@exa\u0308mple.org", i)
			}
			return fmt.Sprintf("user%d@xn--exmple-cua.org", i)
		}
		targets := []string{"b1", "b2", "pool:p", "10.0.0.2", "h3.example.org", "h4.example.org:1143", "pool:missing", ""}
		// One spelling per user in the source: the fake keys its
		// entries by the name as written, and a user named twice in
		// one read takes whichever comes last.
		spelling := func(i int) string {
			return []string{"User%d@EXÄMPLE.org", "user%d@exa\u0308mple.org", "user%d@xn--exmple-cua.org"}[i%3]
		}
		entry := func(i int) source.Entry {
			e := source.Entry{User: fmt.Sprintf(spelling(i), i), Target: targets[rng.IntN(len(targets))]}
			if rng.IntN(5) == 0 {
				e.Login = fmt.Sprintf("login%d", i)
			}
			return e
		}
		// The tables before: the same on both clusters.
		start := newCluster(t)
		ctx := context.Background()
		for _, src := range []string{Tag("dir"), Tag("other"), "users.map", ""} {
			var routes []routing.UserRoute
			for range universe / 4 {
				routes = append(routes, routing.UserRoute{User: spell(rng.IntN(universe)), Target: routing.Target{Backend: "b1"}})
			}
			cmd := routing.Command{Type: routing.CmdImport, Source: src, Users: routes}
			if err := start.Apply(ctx, cmd); err != nil {
				t.Fatal(err)
			}
		}
		f := newFake(true)
		for range rng.IntN(universe) {
			f.set(entry(rng.IntN(universe)))
		}
		overwrite := rng.IntN(2) == 0
		whole := &fakeCluster{t: start.table()}
		cut := &fakeCluster{t: start.table()}
		batch := 1 + rng.IntN(200)
		sWhole := newSyncer(whole, f, Config{Batch: 1 << 30, Overwrite: overwrite}, nil)
		sCut := newSyncer(cut, f, Config{Batch: batch, Overwrite: overwrite}, nil)
		sWhole.now = func() time.Time { return clock }
		sCut.now = sWhole.now
		check := func(what string, rw, rc Result, errw, errc error) {
			t.Helper()
			if (errw == nil) != (errc == nil) {
				t.Fatalf("seed %d %s: errors %v and %v", seed, what, errw, errc)
			}
			// The same difference, in more or fewer commands.
			rw.Commands, rc.Commands = 0, 0
			if !reflect.DeepEqual(rw, rc) {
				t.Fatalf("seed %d %s: results differ:\n%+v\n%+v", seed, what, rw, rc)
			}
			tw, tc := whole.table(), cut.table()
			if !reflect.DeepEqual(users(tw), users(tc)) || !reflect.DeepEqual(tw.Backends(), tc.Backends()) {
				t.Fatalf("seed %d %s (batches of %d): tables differ", seed, what, batch)
			}
			sw, _ := tw.SourceState("dir")
			sc, _ := tc.SourceState("dir")
			if sw != sc {
				t.Fatalf("seed %d %s: states %+v and %+v", seed, what, sw, sc)
			}
			// Every batch of users lies in shards at or after the
			// previous one's.
			last := -1
			for _, c := range cut.cmds {
				if c.Type != routing.CmdImport || c.Source != Tag("dir") || len(c.Users) == 0 {
					last = -1
					continue
				}
				for _, u := range c.Users {
					s := routing.ShardOf(u.User)
					if s < last {
						t.Fatalf("seed %d %s: a batch in shard %d after shard %d", seed, what, s, last)
					}
					last = s
				}
			}
		}
		opt := Options{Full: true, Force: true}
		rw, errw := sWhole.Sync(ctx, opt)
		rc, errc := sCut.Sync(ctx, opt)
		check("full sync", rw, rc, errw, errc)
		if rc.Added+rc.Changed > batch && len(cut.cmds) <= len(whole.cmds) {
			t.Fatalf("seed %d: %d puts in batches of %d in %d commands", seed, rc.Added+rc.Changed, batch, len(cut.cmds))
		}

		for range rng.IntN(universe / 2) {
			if rng.IntN(3) == 0 {
				f.mu.Lock()
				var victim string
				for u := range f.entries {
					victim = u
					break
				}
				f.mu.Unlock()
				if victim != "" {
					f.del(victim)
				}
				continue
			}
			f.set(entry(rng.IntN(universe)))
		}
		cut.cmds = nil
		rw, errw = sWhole.Sync(ctx, Options{Force: true})
		rc, errc = sCut.Sync(ctx, Options{Force: true})
		if rc.Kind != "incremental" {
			t.Fatalf("seed %d: a %s sync, want incremental", seed, rc.Kind)
		}
		check("incremental sync", rw, rc, errw, errc)
	}
}

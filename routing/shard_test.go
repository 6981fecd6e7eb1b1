package routing

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// referenceUpdate is userMap.update as it was before updates cloned
// shards (every touched shard rebuilt by inserting its rules again, the
// puts a map): the oracle the update must agree with.
func referenceUpdate(m *userMap, puts map[string]Target, dels []string) *userMap {
	next := &userMap{}
	if m != nil {
		*next = *m
	}
	copied := [userShards]bool{}
	touch := func(i int) map[string]Target {
		if !copied[i] {
			old := next.shards[i]
			cp := make(map[string]Target, len(old)+1)
			for k, v := range old {
				cp[k] = v
			}
			next.shards[i] = cp
			copied[i] = true
		}
		return next.shards[i]
	}
	for u, t := range puts {
		sh := touch(shardOf(u))
		if _, exists := sh[u]; !exists {
			next.n++
		}
		sh[u] = t
	}
	for _, u := range dels {
		i := shardOf(u)
		if _, exists := next.shards[i][u]; !exists {
			continue
		}
		delete(touch(i), u)
		next.n--
	}
	return next
}

func contents(m *userMap) map[string]Target {
	out := map[string]Target{}
	m.each(func(u string, t Target) bool {
		out[u] = t
		return true
	})
	return out
}

// Random updates (puts with repeated keys, deletions of present, absent
// and just-written keys, mass deletions) give the rules the old update
// gave, leave the map they start from as it was, and share every shard
// they do not change.
func TestUserMapUpdateMatchesReference(t *testing.T) {
	for seed := range uint64(30) {
		rng := rand.New(rand.NewPCG(seed, 7))
		universe := 50 + rng.IntN(3000) // few names: puts and deletions meet
		name := func() string { return fmt.Sprintf("u%d@example.org", rng.IntN(universe)) }
		targets := []Target{{Backend: "a"}, {Pool: "main"}, {Backend: "b", Login: "x@y"}, {Backend: "a", Source: "s1"}, {Pool: "main", Source: "source:dir"}}
		var got, want *userMap
		if rng.IntN(2) == 0 {
			got, want = &userMap{}, &userMap{}
		}
		for step := range 12 {
			var puts []userPut
			putMap := map[string]Target{}
			for range rng.IntN(2 * universe) {
				p := userPut{name(), targets[rng.IntN(len(targets))]}
				puts = append(puts, p)
				putMap[p.key] = p.t
			}
			var dels []string
			nd := rng.IntN(universe / 4)
			if step%5 == 4 {
				nd = universe * 2 // a mass deletion: shards emptied or halved
			}
			for range nd {
				dels = append(dels, name())
			}
			if len(puts) > 0 && rng.IntN(3) == 0 {
				dels = append(dels, puts[rng.IntN(len(puts))].key) // written, then deleted
			}
			if step%4 == 3 {
				puts = nil
			}
			if len(puts) == 0 {
				putMap = nil
			}
			before := contents(got)
			next := got.update(puts, dels)
			want = referenceUpdate(want, putMap, dels)
			if c := contents(got); !reflect.DeepEqual(c, before) {
				t.Fatalf("seed %d step %d: the update changed the map it started from", seed, step)
			}
			if c, w := contents(next), contents(want); !reflect.DeepEqual(c, w) || next.len() != want.len() || next.len() != len(c) {
				t.Fatalf("seed %d step %d: %d rules (len %d), want %d (len %d)", seed, step, len(c), next.len(), len(w), want.len())
			}
			touched := map[int]bool{}
			for _, p := range puts {
				touched[shardOf(p.key)] = true
			}
			for _, u := range dels {
				touched[shardOf(u)] = true
			}
			for s := range userShards {
				if got == nil || touched[s] {
					continue
				}
				if reflect.ValueOf(next.shards[s]).UnsafePointer() != reflect.ValueOf(got.shards[s]).UnsafePointer() {
					t.Fatalf("seed %d step %d: shard %d copied without a change", seed, step, s)
				}
			}
			got = next
		}
	}
}

// GroupByShard is a stable permutation in shard order.
func TestGroupByShard(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	type item struct {
		user string
		seq  int
	}
	var items []item
	for i := range 20000 {
		items = append(items, item{fmt.Sprintf("User%d@Example.org", rng.IntN(5000)), i})
	}
	key := func(it item) string { return NormalizeUser(it.user) }
	out := GroupByShard(items, key)
	if len(out) != len(items) {
		t.Fatalf("%d items, want %d", len(out), len(items))
	}
	seen := make([]bool, len(items))
	for i, it := range out {
		if seen[it.seq] {
			t.Fatalf("item %d twice", it.seq)
		}
		seen[it.seq] = true
		if i == 0 {
			continue
		}
		prev := out[i-1]
		if ps, s := ShardOf(key(prev)), ShardOf(key(it)); ps > s || ps == s && prev.seq > it.seq {
			t.Fatalf("out of order at %d: shard %d seq %d, then shard %d seq %d", i, ps, prev.seq, s, it.seq)
		}
	}
	if got := GroupByShard([]item{{"x", 0}}, key); len(got) != 1 {
		t.Fatal("one item lost")
	}
	if got := GroupByShard[item](nil, key); len(got) != 0 {
		t.Fatal("items from nothing")
	}
}

// The same import cut into batches by name or by shard, or written as one
// command, leaves exactly the same table: random puts (names in several
// spellings of one key, renames, other sources' and untagged rules in
// the table) and prunes.
func TestGroupedImportBatchesSameTable(t *testing.T) {
	const source = "source:dir"
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 11))
		tbl := testTable(t, false)
		universe := 100 + rng.IntN(4000)
		spell := func(i int) string {
			switch rng.IntN(4) {
			case 0:
				return fmt.Sprintf("U%d@EXÄMPLE.org", i)
			case 1:
				return fmt.Sprintf("u%d@xn--exmple-cua.org", i)
			case 2:
				return fmt.Sprintf("u%d@exa\u0308mple.org", i) // NFD
			}
			return fmt.Sprintf("u%d@exämple.org", i)
		}
		targets := []Target{{Backend: "a"}, {Pool: "main"}, {Backend: "b", Login: "other@example.org"}, {Pool: "other"}}
		// What the table holds before: the source's, another import's
		// and untagged rules.
		for _, src := range []string{source, "file.popmap", ""} {
			var routes []UserRoute
			for range universe / 3 {
				routes = append(routes, UserRoute{User: spell(rng.IntN(universe)), Target: targets[rng.IntN(len(targets))]})
			}
			var err error
			if tbl, err = tbl.WithImport(src, routes, nil); err != nil {
				t.Fatal(err)
			}
		}
		var puts []UserRoute
		written := map[string]bool{}
		for range rng.IntN(universe) {
			r := UserRoute{User: spell(rng.IntN(universe)), Target: targets[rng.IntN(len(targets))]}
			puts = append(puts, r)
			written[NormalizeUser(r.User)] = true
		}
		var prunes []string
		for range rng.IntN(universe / 2) {
			if u := spell(rng.IntN(universe)); !written[NormalizeUser(u)] {
				prunes = append(prunes, u)
			}
		}
		one, err := tbl.WithImport(source, puts, prunes)
		if err != nil {
			t.Fatal(err)
		}
		byName := slices.Clone(puts)
		slices.SortStableFunc(byName, func(a, b UserRoute) int { return strings.Compare(NormalizeUser(a.User), NormalizeUser(b.User)) })
		key := func(r UserRoute) string { return NormalizeUser(r.User) }
		batch := 1 + rng.IntN(300)
		for _, c := range []struct {
			name   string
			puts   []UserRoute
			prunes []string
		}{
			{"in order", puts, prunes},
			{"by name", byName, prunes},
			{"by shard", GroupByShard(puts, key), GroupByShard(prunes, NormalizeUser)},
		} {
			got := tbl
			for i := 0; i < len(c.puts); i += batch {
				if got, err = got.Apply(Command{Type: CmdImport, Source: source, Users: c.puts[i:min(i+batch, len(c.puts))]}); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < len(c.prunes); i += batch {
				if got, err = got.Apply(Command{Type: CmdImport, Source: source, Names: c.prunes[i:min(i+batch, len(c.prunes))]}); err != nil {
					t.Fatal(err)
				}
			}
			if g, w := contents(got.users), contents(one.users); !reflect.DeepEqual(g, w) || got.users.len() != one.users.len() {
				t.Fatalf("seed %d, batches of %d %s: %d rules, want %d", seed, batch, c.name, len(g), len(w))
			}
		}
	}
}

// Rules decoded from a command or a snapshot name their backend, pool and
// source with one string each, not a copy per rule.
func TestRulesShareNames(t *testing.T) {
	tbl := testTable(t, false)
	enc, err := Command{Type: CmdImport, Source: "src", Users: []UserRoute{
		{User: "x1", Target: Target{Backend: "a"}}, {User: "x2", Target: Target{Backend: "a"}},
		{User: "y1", Target: Target{Pool: "main"}}, {User: "y2", Target: Target{Pool: "main"}},
	}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	c, err := DecodeCommand(enc)
	if err != nil {
		t.Fatal(err)
	}
	n, err := tbl.Apply(c)
	if err != nil {
		t.Fatal(err)
	}
	same := func(what string, tb *Table) {
		t.Helper()
		x1, _ := tb.UserRoute("x1")
		x2, _ := tb.UserRoute("x2")
		y1, _ := tb.UserRoute("y1")
		y2, _ := tb.UserRoute("y2")
		if x1.Backend != "a" || y1.Pool != "main" || x1.Source != "src" {
			t.Fatalf("%s: %+v %+v", what, x1, y1)
		}
		if unsafe.StringData(x1.Backend) != unsafe.StringData(tb.backends["a"].ID) || unsafe.StringData(x2.Backend) != unsafe.StringData(x1.Backend) ||
			unsafe.StringData(y1.Pool) != unsafe.StringData(tb.pools["main"].Name) || unsafe.StringData(y2.Pool) != unsafe.StringData(y1.Pool) ||
			unsafe.StringData(x1.Source) != unsafe.StringData(y2.Source) {
			t.Fatalf("%s: the rules hold copies of the names", what)
		}
	}
	same("applied", n)
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, n); err != nil {
		t.Fatal(err)
	}
	back, err := ReadSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	same("restored", back)
}

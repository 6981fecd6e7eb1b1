package routesapi

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/portico-mail/portico/routing"
)

// A bulk import larger than a batch writes its batches grouped by the
// table's shards, and the table ends as the file says: a user named twice
// (in two spellings) keeps its last rule, untagged and tagged imports
// alike, and a --replace removes what the smaller file no longer names.
func TestBulkImportGroupedBatches(t *testing.T) {
	nd, base := bulkNode(t)
	var mu sync.Mutex
	var cmds []routing.Command
	nd.fsm.OnApply = func(_ uint64, c routing.Command, err error) {
		if err != nil {
			t.Errorf("%s: %v", c.Type, err)
		}
		mu.Lock()
		cmds = append(cmds, c)
		mu.Unlock()
	}
	// checkGrouped: the users (or names) of the commands of one import
	// come in shard order.
	checkGrouped := func(what string) {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		last, n := -1, 0
		for _, c := range cmds {
			names := c.Names
			for _, u := range c.Users {
				names = append(names, u.User)
			}
			for _, u := range names {
				s := routing.ShardOf(routing.NormalizeUser(u))
				if s < last {
					t.Fatalf("%s: shard %d after shard %d", what, s, last)
				}
				last = s
				n++
			}
		}
		if len(cmds) < 2 {
			t.Fatalf("%s: %d commands for %d users", what, len(cmds), n)
		}
		cmds = nil
	}
	rng := rand.New(rand.NewPCG(4, 2))
	file := func(n, universe int) (string, map[string]routing.Target) {
		var data strings.Builder
		want := map[string]routing.Target{}
		for range n {
			i := rng.IntN(universe)
			name := []string{"user%d@example.org", "User%d@Example.ORG", "USER%d@EXAMPLE.ORG"}[rng.IntN(3)]
			name = fmt.Sprintf(name, i)
			b := []string{"b1", "b2"}[rng.IntN(2)]
			fmt.Fprintf(&data, "%s: %s\n", name, b)
			want[routing.NormalizeUser(name)] = routing.Target{Backend: b}
		}
		return data.String(), want
	}
	same := func(what string, want map[string]routing.Target) {
		t.Helper()
		got := rules(t, nd)
		if len(got) != len(want) {
			t.Fatalf("%s: %d rules, want %d", what, len(got), len(want))
		}
		for u, tg := range want {
			if got[u] != tg {
				t.Fatalf("%s: %s %+v, want %+v", what, u, got[u], tg)
			}
		}
	}

	// Untagged: put-users, every line (duplicates too) in its batch.
	data, want := file(2*importBatch+700, 8000)
	doImport(t, base, ImportRequest{Data: data})
	checkGrouped("untagged import")
	same("untagged import", want)

	// Tagged: the difference, then a smaller file with --replace.
	data, tagged := file(2*importBatch+700, 30000)
	doImport(t, base, ImportRequest{Source: "big.map", Data: data})
	checkGrouped("tagged import")
	for u, tg := range tagged {
		tg.Source = "big.map"
		want[u] = tg
	}
	same("tagged import", want)
	var smaller strings.Builder
	kept := 0
	for u, tg := range tagged {
		if kept == 3000 {
			delete(want, u)
			continue
		}
		fmt.Fprintf(&smaller, "%s: %s\n", u, tg.Backend)
		kept++
	}
	res := doImport(t, base, ImportRequest{Source: "big.map", Data: smaller.String(), Replace: true})
	if res.Removed != len(tagged)-3000 || res.Unchanged != 3000 {
		t.Fatalf("replace: %+v", res)
	}
	checkGrouped("replace")
	same("replace", want)
}

package routing_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/routing"
)

// BenchmarkImport1M: one import command (what the directory syncer and
// the bulk import API write, 5,000 users) applied to a 1,000,000-user
// table, as every node's FSM applies it. The table copies each shard a
// command touches (routing.UserShards of them):
//
//   - new/sorted: 5,000 new users in name order, as a full sync cut its
//     sorted difference into batches before the batches were grouped;
//
//   - new/grouped: 5,000 new users of one or two shards, a batch of a
//     difference grouped by shard (routing.GroupByShard) as the syncer
//     and the bulk import now write;
//
//   - changed/random-1000: 1,000 existing users moved, in no order (an
//     incremental sync's single batch);
//
//   - prune/grouped: 5,000 of the source's users removed, grouped.
//
//     go test -run=^$ -bench=Import1M -benchmem ./bench/routing/
func BenchmarkImport1M(b *testing.B) {
	t := table(b, 1_000_000)
	const source = "source:dir"
	// The difference of a full sync of 1,000,000 new users: grouped, a
	// shard holds about 3,900 of them.
	names := make([]string, 1_000_000)
	for i := range names {
		names[i] = fmt.Sprintf("new%07d@example.org", i)
	}
	slices.Sort(names)
	routes := func(users []string, backend string) []routing.UserRoute {
		out := make([]routing.UserRoute, len(users))
		for i, u := range users {
			out[i] = routing.UserRoute{User: u, Target: routing.Target{Backend: backend}}
		}
		return out
	}
	grouped := routing.GroupByShard(names, func(s string) string { return s })
	rng := rand.New(rand.NewPCG(1, 2))
	var moved []string
	for range 1000 {
		moved = append(moved, fmt.Sprintf("user%d@example.net", rng.IntN(1_000_000)))
	}
	// The source's own rules to prune: the grouped batch, written first.
	owned, err := t.Apply(routing.Command{Type: routing.CmdImport, Source: source, Users: routes(grouped[:5000], "imap2")})
	if err != nil {
		b.Fatal(err)
	}
	cases := []struct {
		name string
		t    *routing.Table
		c    routing.Command
	}{
		{"new/sorted/5000", t, routing.Command{Type: routing.CmdImport, Source: source, Users: routes(names[:5000], "imap1")}},
		{"new/grouped/5000", t, routing.Command{Type: routing.CmdImport, Source: source, Users: routes(grouped[:5000], "imap1")}},
		{"changed/random/1000", t, routing.Command{Type: routing.CmdImport, Source: source, Users: routes(moved, "imap3")}},
		{"prune/grouped/5000", owned, routing.Command{Type: routing.CmdImport, Source: source, Names: grouped[:5000]}},
		{"put-users/sorted/5000", t, routing.Command{Type: routing.CmdPutUsers, Users: routes(names[:5000], "imap1")}},
		{"put-users/grouped/5000", t, routing.Command{Type: routing.CmdPutUsers, Users: routes(grouped[:5000], "imap1")}},
	}
	for _, c := range cases {
		shards := map[int]bool{}
		for _, u := range c.c.Users {
			shards[routing.ShardOf(u.User)] = true
		}
		for _, u := range c.c.Names {
			shards[routing.ShardOf(u)] = true
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			cpu := cpuTime()
			for b.Loop() {
				if _, err := c.t.Apply(c.c); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(shards)), "shards")
			// The process's CPU time (GC included): the machine is
			// shared, so wall time alone overstates.
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N)/1e6, "cpu-ms/op")
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Package routing_test measures the routing table at scale: lookups (of
// ASCII and Unicode names), the user-name normaliser, an apply at
// 1,000,000 users, snapshot size and restore time.
//
//	go test -run=^$ -bench=. -benchmem ./bench/routing/
package routing_test

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"github.com/portico-mail/portico/routing"
)

var (
	tables   = map[int]*routing.Table{}
	tablesMu sync.Mutex
)

// table builds (once) a table with n user pins over a 4-backend pool, plus
// a domain rule and a default pool.
func table(b *testing.B, n int) *routing.Table {
	tablesMu.Lock()
	defer tablesMu.Unlock()
	if t := tables[n]; t != nil {
		return t
	}
	spec := routing.TableSpec{Users: make(map[string]routing.Target, n), Domains: map[string]string{"example.com": "main"}, DefaultPool: "main"}
	var ids []string
	for i := 0; i < 4; i++ {
		id := fmt.Sprintf("imap%d", i)
		ids = append(ids, id)
		spec.Backends = append(spec.Backends, routing.Backend{ID: id, Host: "10.0.0.1", IMAPPort: 143})
	}
	spec.Pools = []routing.Pool{{Name: "main", Backends: ids}}
	for i := 0; i < n; i++ {
		spec.Users[fmt.Sprintf("user%d@example.net", i)] = routing.Target{Backend: ids[i%4]}
	}
	t, err := routing.NewTable(spec)
	if err != nil {
		b.Fatal(err)
	}
	tables[n] = t
	return t
}

func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{10_000, 1_000_000} {
		t := table(b, n)
		b.Run(fmt.Sprintf("pinned-user/%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := t.Lookup(routing.Request{User: "user4242@example.net", Protocol: routing.IMAP}, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("domain-pool/%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := t.Lookup(routing.Request{User: "someone@example.com", Protocol: routing.IMAP}, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
		// A name that is not plain ASCII: made canonical (lower case,
		// NFC, IDNA) before the lookup, then hashed in the default pool.
		b.Run(fmt.Sprintf("unicode-default-pool/%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := t.Lookup(routing.Request{User: "BÜCHER@Exämple.org", Protocol: routing.IMAP}, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkNormalizeUser: the canonical key of login names (every lookup
// starts with it).
func BenchmarkNormalizeUser(b *testing.B) {
	for _, c := range []struct{ name, user string }{
		{"ascii-lower", "user4242@example.net"},
		{"ascii-upper", "User4242@Example.NET"},
		{"unicode-local", "müller@example.net"},
		{"unicode-domain", "BÜCHER@Exämple.org"},
		{"unicode-nfd", "BU\u0308CHER@EXA\u0308MPLE.ORG"},
		{"unicode-punycode", "bücher@xn--exmple-cua.org"},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = routing.NormalizeUser(c.user)
			}
		})
	}
}

// BenchmarkApply1M: one user-pin change on a 1,000,000-user table (what a
// raft apply does): one shard is copied, not the table.
func BenchmarkApply1M(b *testing.B) {
	t := table(b, 1_000_000)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c := routing.Command{Type: routing.CmdPutUsers, Users: []routing.UserRoute{{User: fmt.Sprintf("new%d@example.net", i), Target: routing.Target{Backend: "imap1"}}}}
		if _, err := t.Apply(c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSnapshot1M reports the snapshot size and write/restore times of
// a 1,000,000-user table.
func BenchmarkSnapshot1M(b *testing.B) {
	t := table(b, 1_000_000)
	var buf bytes.Buffer
	if err := routing.WriteSnapshot(&buf, t); err != nil {
		b.Fatal(err)
	}
	size := buf.Len()
	b.Run("write", func(b *testing.B) {
		for b.Loop() {
			var w bytes.Buffer
			w.Grow(size)
			if err := routing.WriteSnapshot(&w, t); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(size)/(1<<20), "MiB")
	})
	b.Run("restore", func(b *testing.B) {
		for b.Loop() {
			if _, err := routing.ReadSnapshot(bytes.NewReader(buf.Bytes())); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(size)/(1<<20), "MiB")
	})
}

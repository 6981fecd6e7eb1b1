// Package ldapsrc_test measures the LDAP source driver alone against a
// real slapd (integration/ldaptest): a full read of a large directory
// (throughput, allocation, memory held), an incremental read that finds
// a few changes in it, and the on-miss lookup's latency.
//
//	go test -run=^$ -bench=. -benchmem -benchtime=3x ./bench/ldapsrc/
//	PORTICO_BENCH_LDAP_ENTRIES=1000000 go test -run=^$ -bench=. -benchmem -benchtime=3x -timeout 30m ./bench/ldapsrc/
//
// The directory has PORTICO_BENCH_LDAP_ENTRIES users (default 100,000),
// loaded with slapadd once per run. The whole cluster (the syncer, raft,
// three nodes) is measured by integration.TestBenchLDAPSource.
package ldapsrc_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/ldaptest"
	"github.com/portico-mail/portico/routing/source"
	"github.com/portico-mail/portico/routing/source/ldapsrc"
)

var (
	dirOnce sync.Once
	dir     *ldaptest.Server
	dirN    int
	dirErr  error
	epoch   = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
)

// directory starts (once) a slapd with n users user0000000.. on
// imap0..imap7, their modifyTimestamps a second apart from 2020.
func directory(b *testing.B) (*ldaptest.Server, int) {
	dirOnce.Do(func() {
		if err := ldaptest.Available(); err != nil {
			dirErr = err
			return
		}
		dirN = 100000
		if v, err := strconv.Atoi(os.Getenv("PORTICO_BENCH_LDAP_ENTRIES")); err == nil && v > 0 {
			dirN = v
		}
		tmp, err := os.MkdirTemp("", "ldapbench-")
		if err != nil {
			dirErr = err
			return
		}
		defer os.RemoveAll(tmp)
		file := filepath.Join(tmp, "people.ldif")
		f, err := os.Create(file)
		if err != nil {
			dirErr = err
			return
		}
		err = ldaptest.WritePeople(f, "ou=people,"+ldaptest.DefaultSuffix, "user", dirN,
			func(i int) string { return fmt.Sprintf("imap%d.example.org", i%8) },
			func(i int) []string { return []string{ldaptest.Stamp(epoch.Add(time.Duration(i) * time.Second))} })
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			dirErr = err
			return
		}
		dir, dirErr = ldaptest.StartProcess(ldaptest.Options{LDIFFile: file, MaxSize: 16 << 30})
	})
	if dirErr != nil {
		b.Skipf("slapd: %v", dirErr)
	}
	return dir, dirN
}

func TestMain(m *testing.M) {
	code := m.Run()
	if dir != nil {
		dir.Remove()
	}
	os.Exit(code)
}

func open(b *testing.B, s *ldaptest.Server, pageSize int) source.Fetcher {
	f, err := ldapsrc.Open(ldapsrc.Config{URL: s.URL, BindDN: s.ReaderDN, BindPassword: s.ReaderPassword,
		Base: s.People, PageSize: pageSize, Timeout: time.Minute}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f
}

// A full read of the directory, at two page sizes: entries/s, bytes
// allocated per entry, and the heap in use during the read (the driver
// holds a page, not the directory).
func BenchmarkFull(b *testing.B) {
	s, n := directory(b)
	for _, ps := range []int{500, 2000} {
		b.Run(fmt.Sprintf("entries=%d/page=%d", n, ps), func(b *testing.B) {
			f := open(b, s, ps)
			b.ReportAllocs()
			var peak uint64
			for b.Loop() {
				got := 0
				_, err := f.Full(b.Context(), func(source.Entry) error {
					if got++; got%5000 == 0 {
						var ms runtime.MemStats
						runtime.ReadMemStats(&ms)
						peak = max(peak, ms.HeapInuse)
					}
					return nil
				})
				if err != nil || got != n {
					b.Fatalf("%d entries, %v", got, err)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "entries/s")
			b.ReportMetric(float64(peak)/(1<<20), "heap-MiB")
		})
	}
}

// An incremental read after one entry changed in a million-second spread
// of stamps: the cost of an interval with (almost) nothing to do, which
// the modifyTimestamp index keeps small.
func BenchmarkChangesNothingNew(b *testing.B) {
	s, n := directory(b)
	f := open(b, s, 500)
	w, err := f.Full(b.Context(), func(source.Entry) error { return nil })
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		got := 0
		if _, err := f.Changes(b.Context(), w, func(source.Change) error { got++; return nil }); err != nil {
			b.Fatal(err)
		}
		// The overlap (5m) re-reads the last 300-odd entries stamped a
		// second apart: nothing like the directory.
		if got > 1000 || got == 0 && n > 1000 {
			b.Fatalf("%d changes", got)
		}
	}
}

// The on-miss lookup of a random user, one at a time and from 8
// goroutines (pooled connections).
func BenchmarkLookup(b *testing.B) {
	s, n := directory(b)
	f := open(b, s, 500)
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			u := fmt.Sprintf("user%07d", rand.IntN(n))
			if e, err := f.Lookup(b.Context(), u); err != nil || e.User != u {
				b.Fatalf("%s: %+v %v", u, e, err)
			}
		}
	})
	b.Run("parallel-8", func(b *testing.B) {
		b.SetParallelism(8 / max(1, runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				u := fmt.Sprintf("user%07d", rand.IntN(n))
				if e, err := f.Lookup(b.Context(), u); err != nil || e.User != u {
					b.Errorf("%s: %+v %v", u, e, err)
					return
				}
			}
		})
	})
	b.Run("miss", func(b *testing.B) {
		for b.Loop() {
			if _, err := f.Lookup(b.Context(), "nobody"); err != source.ErrNotFound {
				b.Fatal(err)
			}
		}
	})
}

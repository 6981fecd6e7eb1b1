// Package sourcesync_test measures a directory source's sync at scale
// without a directory: an in-memory fetcher hands the syncer
// (routing/source/syncer) its entries, and every command the syncer
// writes goes through its wire form into a routing.FSM's raft Apply, as
// on every node of a cluster (raft and the network left out). What it
// measures is the syncer's diff and the FSM's applies, the part the
// LDAP and SQL drivers' own benchmarks (bench/ldapsrc, bench/sqlsrc)
// leave out.
//
//	go test -run=^$ -bench=. -benchtime=1x -timeout 60m ./bench/sourcesync/
//	PORTICO_BENCH_SYNC_ENTRIES=100000 go test -run=^$ -bench=. -benchtime=3x ./bench/sourcesync/
//
// The source has PORTICO_BENCH_SYNC_ENTRIES users (default 1,000,000),
// user0000000@example.org.., on eight hosts imap0..imap7.example.org
// that no backend names yet (the syncer adds a backend for each, as with
// the LDAP benchmark's directory). Reported per sync, beside ns/op and
// the allocations: cpu-s (the process's user and system CPU time, GC
// included), apply-s (time inside FSM.Apply, the part every follower
// pays too), cmds (commands written), log-MiB (their size),
// heap-before-MiB and heap-after-MiB (live heap objects after a GC,
// before and after the sync: what the benchmark holds, then that and the
// table), peak-heap-MiB (heap objects, live or garbage not yet
// collected, sampled every 10 ms), peak-rss-MiB (VmHWM, reset before
// each sync) and, for FullSync, paused-s (the syncer's pauses at
// work_share, PORTICO_BENCH_SYNC_WORK_SHARE or the default: wall time,
// not CPU), late-p99-ms and late-max-ms (how late a goroutine sleeping
// 5 ms at a time woke up during the sync: what the sync's work, the
// collector's included, costs the other goroutines of a leader, its
// raft heartbeats among them).
package sourcesync_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source"
	"github.com/portico-mail/portico/routing/source/syncer"
)

// fetcher is an in-memory directory with a change feed whose watermark
// is the number of changes made.
type fetcher struct {
	entries []source.Entry
	changes []source.Change
}

func (f *fetcher) Full(ctx context.Context, put func(source.Entry) error) (string, error) {
	for _, e := range f.entries {
		if err := put(e); err != nil {
			return "", err
		}
	}
	return strconv.Itoa(len(f.changes)), nil
}

func (f *fetcher) Changes(ctx context.Context, wm string, put func(source.Change) error) (string, error) {
	n, err := strconv.Atoi(wm)
	if err != nil || n > len(f.changes) {
		return "", source.ErrNoChanges
	}
	for _, c := range f.changes[n:] {
		if err := put(c); err != nil {
			return "", err
		}
	}
	return strconv.Itoa(len(f.changes)), nil
}

func (f *fetcher) Lookup(ctx context.Context, user string) (source.Entry, error) {
	return source.Entry{}, source.ErrNotFound
}

func (f *fetcher) Close() error { return nil }

// fsmCluster writes each command through its wire form into an FSM, as
// raft would on every node.
type fsmCluster struct {
	fsm   *routing.FSM
	index uint64
	apply time.Duration
	cmds  int
	bytes int
	// record, if set, receives every command's wire form.
	record *[][]byte
}

func (c *fsmCluster) Apply(_ context.Context, cmd routing.Command) error {
	b, err := cmd.Encode()
	if err != nil {
		return err
	}
	if c.record != nil {
		*c.record = append(*c.record, b)
	}
	return c.applyEntry(b)
}

// applyEntry applies one log entry's data, as raft on every node.
func (c *fsmCluster) applyEntry(b []byte) error {
	c.index++
	start := time.Now()
	res := c.fsm.Apply(&raft.Log{Index: c.index, Term: 1, Type: raft.LogCommand, Data: b})
	c.apply += time.Since(start)
	c.cmds++
	c.bytes += len(b)
	if err, ok := res.(error); ok && err != nil {
		return err
	}
	return nil
}

func newCluster(b *testing.B) *fsmCluster {
	f := routing.NewFSM()
	f.SetLoaded()
	return &fsmCluster{fsm: f}
}

func entries() int {
	if v, err := strconv.Atoi(os.Getenv("PORTICO_BENCH_SYNC_ENTRIES")); err == nil && v > 0 {
		return v
	}
	return 1_000_000
}

func directory(n int) *fetcher {
	f := &fetcher{entries: make([]source.Entry, n)}
	for i := range f.entries {
		f.entries[i] = source.Entry{User: fmt.Sprintf("user%07d@example.org", i), Target: fmt.Sprintf("imap%d.example.org", i%8)}
	}
	return f
}

// workShare is PORTICO_BENCH_SYNC_WORK_SHARE (0: the syncer's default).
func workShare() float64 {
	v, _ := strconv.ParseFloat(os.Getenv("PORTICO_BENCH_SYNC_WORK_SHARE"), 64)
	return v
}

func newSyncer(c *fsmCluster, f source.Fetcher) *syncer.Syncer {
	return syncer.New(syncer.Config{Name: "dir", Type: "bench", Interval: time.Hour, FullInterval: 24 * time.Hour,
		MaxDeleteShare: 0.1, NewBackends: syncer.DefaultNewBackends(), WorkShare: workShare()}, f, c.fsm.Table, c, nil, nil)
}

// lateness runs a goroutine that sleeps 5 ms at a time, as raft's
// heartbeat goroutines wake every few tens of milliseconds, until the
// returned function is called, which returns how late its wake-ups
// were: the 99th percentile and the worst.
func lateness() func() (p99, worst time.Duration) {
	var late []time.Duration
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-done:
				return
			default:
			}
			t0 := time.Now()
			time.Sleep(5 * time.Millisecond)
			late = append(late, time.Since(t0)-5*time.Millisecond)
		}
	}()
	return func() (time.Duration, time.Duration) {
		close(done)
		<-stopped
		if len(late) == 0 {
			return 0, 0
		}
		slices.Sort(late)
		return late[len(late)*99/100], late[len(late)-1]
	}
}

// measure runs sync b.N times (prepare, untimed, before each) and reports
// the figures of the package comment.
func measure(b *testing.B, prepare func(), sync func() *fsmCluster) {
	b.ReportAllocs()
	var cpu, apply time.Duration
	var cmds, bytes int
	var peakHeap, peakRSS, heapBefore, heapAfter uint64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		prepare()
		// Collected and given back to the kernel: the peak RSS then
		// starts from what is live, not from the setup's garbage.
		debug.FreeOSMemory()
		heapBefore = max(heapBefore, heapObjects())
		resetPeakRSS(b)
		stop := sampleHeap()
		c0 := cpuTime()
		b.StartTimer()
		c := sync()
		b.StopTimer()
		cpu += cpuTime() - c0
		peakHeap = max(peakHeap, stop())
		peakRSS = max(peakRSS, vmHWM(b))
		runtime.GC()
		heapAfter = max(heapAfter, heapObjects())
		apply += c.apply
		cmds += c.cmds
		bytes += c.bytes
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(cpu.Seconds()/n, "cpu-s")
	b.ReportMetric(apply.Seconds()/n, "apply-s")
	b.ReportMetric(float64(cmds)/n, "cmds")
	b.ReportMetric(float64(bytes)/n/(1<<20), "log-MiB")
	b.ReportMetric(float64(heapBefore)/(1<<20), "heap-before-MiB")
	b.ReportMetric(float64(heapAfter)/(1<<20), "heap-after-MiB")
	b.ReportMetric(float64(peakHeap)/(1<<20), "peak-heap-MiB")
	b.ReportMetric(float64(peakRSS)/(1<<10), "peak-rss-MiB")
}

// BenchmarkFullSync: the first full sync of the whole source into an
// empty table (the LDAP benchmark's 3 min 19 s at a million entries).
func BenchmarkFullSync(b *testing.B) {
	f := directory(entries())
	var c *fsmCluster
	var paused float64
	var p99, worst time.Duration
	defer func() {
		b.ReportMetric(paused/float64(b.N), "paused-s")
		b.ReportMetric(float64(p99)/1e6, "late-p99-ms")
		b.ReportMetric(float64(worst)/1e6, "late-max-ms")
	}()
	measure(b, func() { c = newCluster(b) }, func() *fsmCluster {
		stop := lateness()
		res, err := newSyncer(c, f).Sync(context.Background(), syncer.Options{Full: true})
		p, w := stop()
		p99, worst = max(p99, p), max(worst, w)
		if err != nil {
			b.Fatal(err)
		}
		paused += res.Paused
		if _, _, users, _ := c.fsm.Table().Len(); res.Added != len(f.entries) || users != len(f.entries) {
			b.Fatalf("added %d of %d; the table holds %d", res.Added, len(f.entries), users)
		}
		return c
	})
}

// BenchmarkFollowerApply: a follower's share of the first full sync: the
// log entries the leader's syncer wrote, applied to an empty table, with
// no syncer, no source and nothing else in the process (heap-before-MiB
// is the log itself, held in memory by the benchmark).
func BenchmarkFollowerApply(b *testing.B) {
	var log [][]byte
	func() {
		f := directory(entries())
		c := newCluster(b)
		c.record = &log
		if _, err := newSyncer(c, f).Sync(context.Background(), syncer.Options{Full: true}); err != nil {
			b.Fatal(err)
		}
	}()
	var c *fsmCluster
	measure(b, func() { c = newCluster(b) }, func() *fsmCluster {
		for _, e := range log {
			if err := c.applyEntry(e); err != nil {
				b.Fatal(err)
			}
		}
		if _, _, users, _ := c.fsm.Table().Len(); users != entries() {
			b.Fatalf("the table holds %d users", users)
		}
		return c
	})
}

// BenchmarkIncrementalSync: 1,000 changed entries (each moved to another
// host) in the full source, one incremental sync.
func BenchmarkIncrementalSync(b *testing.B) {
	f := directory(entries())
	base := newCluster(b)
	if _, err := newSyncer(base, f).Sync(context.Background(), syncer.Options{Full: true}); err != nil {
		b.Fatal(err)
	}
	step := len(f.entries) / 1000
	for i := range 1000 {
		e := f.entries[i*step]
		e.Target = "imap9.example.org"
		f.changes = append(f.changes, source.Change{Entry: e})
	}
	var c *fsmCluster
	measure(b, func() {
		// Every run starts from the full sync's table and watermark.
		fsm := routing.NewFSM()
		snap, err := base.fsm.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		sink := &memSink{}
		if err := snap.Persist(sink); err != nil {
			b.Fatal(err)
		}
		if err := fsm.Restore(sink); err != nil {
			b.Fatal(err)
		}
		fsm.SetLoaded()
		c = &fsmCluster{fsm: fsm, index: base.index}
	}, func() *fsmCluster {
		res, err := newSyncer(c, f).Sync(context.Background(), syncer.Options{})
		if err != nil {
			b.Fatal(err)
		}
		if res.Kind != "incremental" || res.Changed != 1000 {
			b.Fatalf("%s sync changed %d", res.Kind, res.Changed)
		}
		return c
	})
}

// memSink is a raft.SnapshotSink in memory (and the reader of what it
// holds, for Restore).
type memSink struct{ bytes.Buffer }

func (s *memSink) ID() string    { return "bench" }
func (s *memSink) Cancel() error { return nil }
func (s *memSink) Close() error  { return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

func heapObjects() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// sampleHeap samples the live heap every 10 ms until the returned
// function is called, which returns the peak.
func sampleHeap() func() uint64 {
	var mu sync.Mutex
	peak := heapObjects()
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				h := heapObjects()
				mu.Lock()
				peak = max(peak, h)
				mu.Unlock()
			}
		}
	}()
	return func() uint64 {
		close(done)
		<-stopped
		mu.Lock()
		defer mu.Unlock()
		return max(peak, heapObjects())
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// resetPeakRSS resets the process's VmHWM (Linux 4.0+).
func resetPeakRSS(b *testing.B) {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Logf("cannot reset the peak RSS: %v", err)
	}
}

// vmHWM returns the process's peak RSS in KiB.
func vmHWM(b *testing.B) uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Logf("peak RSS: %v", err)
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var kb uint64
		if _, err := fmt.Sscanf(sc.Text(), "VmHWM: %d kB", &kb); err == nil {
			return kb
		}
	}
	return 0
}

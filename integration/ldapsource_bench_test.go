package integration

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/ldaptest"
	"github.com/portico-mail/portico/integration/loopback"
)

// TestBenchLDAPSource measures an LDAP source on a three-node cluster of
// real portico processes (bench/RESULTS.md has the figures and the
// command). It runs only when PORTICO_BENCH_LDAP_ENTRIES is set:
//
//	PORTICO_BENCH_LDAP_ENTRIES=1000000 go test -run TestBenchLDAPSource -v -timeout 60m ./integration/
//
// PORTICO_BENCH_LDAP_CHANGES (default 1000) and PORTICO_BENCH_LDAP_INTERVAL
// (the incremental sync interval, default 1s) tune the second part.
//
// The directory (slapadd) holds ENTRIES users user0000000.. on dc1, their
// modifyTimestamps a second apart. Measured: the first full sync (wall
// time until every node routes the last user, the leader's own sync time),
// each node's CPU and peak RSS, the raft log's growth; then CHANGES
// modifications in one ldapmodify run (a login rename each) until every
// node routes all of them, and ten single changes, each from ldapmodify's
// return until every node routes it.
func TestBenchLDAPSource(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("PORTICO_BENCH_LDAP_ENTRIES"))
	if n <= 0 {
		t.Skip("set PORTICO_BENCH_LDAP_ENTRIES (e.g. 1000000) to run this benchmark")
	}
	changes := 1000
	if v, err := strconv.Atoi(os.Getenv("PORTICO_BENCH_LDAP_CHANGES")); err == nil && v > 0 {
		changes = min(v, n)
	}
	interval := cmp.Or(os.Getenv("PORTICO_BENCH_LDAP_INTERVAL"), "1s")
	report := &benchReport{t: t}
	report.add("machine", fmt.Sprintf("%d cores, load average at start %s", runtime.NumCPU(), loadAvg()))

	// The directory.
	people := "ou=people," + ldaptest.DefaultSuffix
	ldif := filepath.Join(t.TempDir(), "people.ldif")
	f, err := os.Create(ldif)
	if err != nil {
		t.Fatal(err)
	}
	epoch := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	err = ldaptest.WritePeople(f, people, "user", n, func(int) string { return "dc1" },
		func(i int) []string { return []string{ldaptest.Stamp(epoch.Add(time.Duration(i) * time.Second))} })
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	dir := ldaptest.Start(t, ldaptest.Options{LDIFFile: ldif, MaxSize: 16 << 30})
	report.add("slapadd and slapd start", time.Since(start).Round(100*time.Millisecond).String())
	os.Remove(ldif)

	step := n / changes
	changed := func(k int) (user, login string) {
		return fmt.Sprintf("user%07d", k*step), fmt.Sprintf("ren%07d", k*step)
	}
	u0, l0 := changed(0)
	dc := dovecot.Start(t, dovecot.Options{Addr: loopback.Addr(t).String(), Users: map[string]string{
		l0: "secret", fmt.Sprintf("user%07d", n-1): "secret"}})
	nodes := newCluster(t, 3, dc, fmt.Sprintf(`
sources:
  - name: directory
    type: ldap
    interval: %s
    full_interval: 24h
    ldap:
      url: %s
      bind_dn: %s
      bind_password: %s
      base: %s
      login_attribute: mailRoutingAddress
      timeout: 60s
`, interval, dir.URL, dir.ReaderDN, dir.ReaderPassword, dir.People))

	// The first full sync.
	start = time.Now()
	for _, nd := range nodes {
		nd.start()
	}
	last := fmt.Sprintf("user%07d", n-1)
	waitFor(t, "every node routing the directory's last user", 30*time.Minute, func() bool {
		for _, nd := range nodes {
			if routeOf(nd, last) != "dc1//source:directory" {
				return false
			}
		}
		return true
	})
	fullAll := time.Since(start)
	leader := nodeByName(nodes, leaderOf(nodes))
	if leader == nil {
		t.Fatal("no leader")
	}
	st := sourcesOf(t, leader, "directory").Sources[0]
	if st.Last == nil || st.Entries != n {
		t.Fatalf("status after the full sync: %+v", st)
	}
	// The leader's full sync, from its log (the last sync may be an
	// incremental one by now).
	report.add("entries", strconv.Itoa(n))
	report.add("full sync, leader (read, diff, write; from its log)", grepField(leader.log(), "kind=full", "duration"))
	report.add("full sync, start of the nodes to every node routing the last user", fullAll.Round(100*time.Millisecond).String())
	cpuFull := map[string]time.Duration{}
	for _, nd := range nodes {
		role := "follower"
		if nd == leader {
			role = "leader"
		}
		cpuFull[nd.name] = nd.cpu(t)
		report.add(fmt.Sprintf("%s %s: CPU since start / peak RSS", role, nd.name),
			fmt.Sprintf("%s / %d MiB", cpuFull[nd.name].Round(10*time.Millisecond), nd.peakRSS(t)>>10))
	}
	for _, nd := range nodes {
		raft := filepath.Join(nd.dir, "data", "raft")
		report.add(fmt.Sprintf("%s raft: applied index / log written (segments allocated) / snapshots / process disk writes", nd.name),
			fmt.Sprintf("%d / %s (%s) / %s / %s", appliedIndex(t, nd), mib(walUsed(t, filepath.Join(raft, "wal"))),
				mib(dirBytes(filepath.Join(raft, "wal"))), mib(dirBytes(filepath.Join(raft, "snapshots"))), mib(nd.writeBytes(t))))
	}

	// A burst of changes.
	var mod strings.Builder
	for k := 0; k < changes; k++ {
		u, l := changed(k)
		fmt.Fprintf(&mod, "dn: uid=%s,%s\nchangetype: modify\nadd: mailRoutingAddress\nmailRoutingAddress: %s\n\n", u, dir.People, l)
	}
	cpuBefore := leader.cpu(t)
	start = time.Now()
	if err := dir.Modify(mod.String()); err != nil {
		t.Fatal(err)
	}
	written := time.Since(start)
	uLast, lLast := changed(changes - 1)
	waitFor(t, "every node routing the last change", 10*time.Minute, func() bool {
		for _, nd := range nodes {
			if routeOf(nd, uLast) != "dc1/"+lLast+"/source:directory" {
				return false
			}
		}
		return true
	})
	burstAll := time.Since(start)
	for _, nd := range nodes {
		for k := 0; k < changes; k++ {
			if u, l := changed(k); routeOf(nd, u) != "dc1/"+l+"/source:directory" {
				t.Fatalf("%s: %s not routed by its change", nd.name, u)
			}
		}
	}
	report.add(fmt.Sprintf("%d changes: ldapmodify run (one connection)", changes), written.Round(10*time.Millisecond).String())
	report.add(fmt.Sprintf("%d changes: from the first written to every node routing all", changes), burstAll.Round(10*time.Millisecond).String())
	report.add(fmt.Sprintf("%d changes: from the last written to every node routing all", changes), (burstAll - written).Round(10*time.Millisecond).String())
	report.add(fmt.Sprintf("%d changes: leader CPU", changes), (leader.cpu(t) - cpuBefore).Round(10*time.Millisecond).String())

	// Single changes.
	var lat []time.Duration
	for j := 0; j < 10; j++ {
		u := fmt.Sprintf("user%07d", (j*7919+13)%n)
		login := fmt.Sprintf("single%02d", j)
		if err := dir.Modify(fmt.Sprintf("dn: uid=%s,%s\nchangetype: modify\nreplace: mailRoutingAddress\nmailRoutingAddress: %s\n", u, dir.People, login)); err != nil {
			t.Fatal(err)
		}
		start = time.Now()
		waitFor(t, "every node routing a single change", time.Minute, func() bool {
			for _, nd := range nodes {
				if routeOf(nd, u) != "dc1/"+login+"/source:directory" {
					return false
				}
			}
			return true
		})
		lat = append(lat, time.Since(start))
		time.Sleep(time.Duration(j%4) * 250 * time.Millisecond) // spread over the interval
	}
	slices.Sort(lat)
	report.add("single change, ldapmodify returned to every node routing it (10 runs): min / median / max",
		fmt.Sprintf("%s / %s / %s", lat[0].Round(10*time.Millisecond), lat[len(lat)/2].Round(10*time.Millisecond), lat[len(lat)-1].Round(10*time.Millisecond)))
	report.add("incremental sync, leader (from its log, the last one)", grepField(leader.log(), "kind=incremental", "duration"))
	report.add("load average at the end", loadAvg())

	// A real login by a changed user, through every node.
	for _, nd := range nodes {
		if err := loginVia(t, nd.imap, u0, "secret"); err != nil {
			t.Fatalf("%s through %s: %v", u0, nd.name, err)
		}
	}
	if got := dc.WaitLogins(l0, 3, 10*time.Second); got != 3 {
		t.Fatalf("dovecot saw %s %d times, want 3", l0, got)
	}
	report.print(fmt.Sprintf("interval %s", interval))
}

type benchReport struct {
	t    *testing.T
	rows [][2]string
}

func (r *benchReport) add(what, value string) {
	r.t.Logf("%s: %s", what, value)
	r.rows = append(r.rows, [2]string{what, value})
}

func (r *benchReport) print(title string) {
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s\n\n| figure | value |\n|---|---:|\n", title)
	for _, row := range r.rows {
		fmt.Fprintf(&b, "| %s | %s |\n", row[0], row[1])
	}
	r.t.Log(b.String())
}

func (nd *procNode) pid(t *testing.T) int {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd == nil {
		t.Fatalf("%s is not running", nd.name)
	}
	return nd.cmd.Process.Pid
}

// cpu is the process's user and system CPU time since it started.
func (nd *procNode) cpu(t *testing.T) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", nd.pid(t)))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	// Fields from the state (3rd): utime is the 14th, stime the 15th.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// peakRSS is the process's peak resident set (VmHWM), in KiB.
func (nd *procNode) peakRSS(t *testing.T) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", nd.pid(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb
		}
	}
	return 0
}

// writeBytes is what the process made the kernel write to disk.
func (nd *procNode) writeBytes(t *testing.T) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", nd.pid(t)))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "write_bytes: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return -1
}

// walUsed is how much of raft-wal's segment files (preallocated, zero
// filled) holds records: each file's size less its trailing zeros.
func walUsed(t *testing.T, dir string) int64 {
	files, _ := filepath.Glob(filepath.Join(dir, "*.wal"))
	var n int64
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		i := len(b)
		for i > 0 && b[i-1] == 0 {
			i--
		}
		n += int64(i)
	}
	return n
}

func mib(n int64) string {
	if n < 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// dirBytes is the disk space (allocated blocks) of the files under dir.
func dirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

func appliedIndex(t *testing.T, nd *procNode) uint64 {
	_, b, err := nd.api("GET", "/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "portico_raft_applied_index "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return uint64(f)
		}
	}
	return 0
}

// grepField returns key=value of the last log line containing match.
func grepField(log, match, key string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if !strings.Contains(lines[i], match) {
			continue
		}
		for _, f := range strings.Fields(lines[i]) {
			if v, ok := strings.CutPrefix(f, key+"="); ok {
				return v
			}
		}
	}
	return "?"
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

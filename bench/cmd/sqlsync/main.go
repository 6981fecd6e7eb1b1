// Command sqlsync measures a SQL directory source (routing/source/sqlsrc)
// on a three-node cluster of real portico processes: a full sync of a
// PostgreSQL table of -rows users (wall time until every node routes
// them, the leader's sync time, CPU and peak memory of every node, raft
// log growth), and login latency through the leader and a follower while
// that sync runs, next to the same login load without a sync.
//
//	go run ./bench/cmd/sqlsync -rows 1000000
//
// It starts everything itself on this machine and stops it at the end:
// PostgreSQL (integration/sqltest: initdb in a temp dir), the IMAP sink
// (bench/cmd/imapsink) as the one backend, and three portico nodes on
// 127.0.77.1-3 (mutual TLS between them, as deployed). The table is
// loaded before the nodes start, behind a switch the source's query reads
// (`WHERE (SELECT enabled FROM bench_switch)`): the nodes' first full sync
// finds nothing, the login baseline runs, then the switch is flipped and
// a sync asked of the leader, so that the measured sync starts in a warm,
// idle cluster. The logins are users of the default pool (the load does
// not depend on the sync's progress), LOGIN then LOGOUT, open loop at
// -rate per second on each of the two nodes. See bench/RESULTS.md.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/portico-mail/portico/bench/internal/procstat"
	"github.com/portico-mail/portico/cluster/pki"
	"github.com/portico-mail/portico/integration/sqltest"
	"github.com/portico-mail/portico/routing/source"
	"github.com/portico-mail/portico/routing/source/sqlsrc"
)

const token = "bench-token-0123456789"

func main() {
	rows := flag.Int("rows", 1000000, "users in the SQL table")
	rate := flag.Int("rate", 50, "logins per second on each of the two measured nodes")
	window := flag.Duration("baseline", 30*time.Second, "length of the login run without a sync")
	porticoBin := flag.String("portico", "", "portico binary (default: go build ./cmd/portico)")
	sinkBin := flag.String("sink", "", "imapsink binary (default: go build ./bench/cmd/imapsink)")
	keep := flag.Bool("keep", false, "keep the work directory")
	workShare := flag.Float64("work-share", 0.5, "the source's work_share (1: the sync's commands back to back)")
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)

	work, err := os.MkdirTemp("", "portico-sqlsync-")
	check(err)
	b := &bench{work: work, rows: *rows, workShare: *workShare}
	cleanup = func() {
		b.stop()
		if !*keep {
			os.RemoveAll(work)
		} else {
			log.Printf("work directory kept: %s", work)
		}
	}
	defer cleanup()
	if *porticoBin == "" {
		*porticoBin = build(work, "portico", "./cmd/portico")
	}
	if *sinkBin == "" {
		*sinkBin = build(work, "imapsink", "./bench/cmd/imapsink")
	}
	b.report("machine", fmt.Sprintf("%d cores, %s, load average %s", runtime.NumCPU(), memTotal(), loadAvg()))

	// PostgreSQL and the table.
	start := time.Now()
	b.pg, err = sqltest.StartPostgres()
	check(err)
	db, err := b.pg.NewDatabase("mail")
	check(err)
	for _, q := range []string{
		"CREATE TABLE mailbox (username text PRIMARY KEY, server text NOT NULL, login text)",
		"CREATE TABLE bench_switch (enabled boolean NOT NULL)",
		"INSERT INTO bench_switch VALUES (false)",
		fmt.Sprintf(`INSERT INTO mailbox SELECT 'user' || lpad(i::text, 7, '0') || '@example.org', 'sink',
		    CASE WHEN i %% 10 = 0 THEN 'login' || i END FROM generate_series(1, %d) i`, *rows),
		"VACUUM ANALYZE mailbox",
	} {
		_, err := db.DB.Exec(q)
		check(err)
	}
	var size string
	check(db.DB.QueryRow("SELECT pg_size_pretty(pg_total_relation_size('mailbox'))").Scan(&size))
	b.report("PostgreSQL table", fmt.Sprintf("%d rows (a tenth with a login), %s; initdb, start and load %s", *rows, size, time.Since(start).Round(100*time.Millisecond)))
	// The driver alone: one full read, each row handed to a callback that
	// only counts it.
	src, err := sqlsrc.Open(sqlsrc.Config{Driver: sqlsrc.Postgres, DSN: db.DSN, Query: "SELECT username, server, login FROM mailbox"}, nil)
	check(err)
	self, pgBefore := procstat.ReadCPU([]int{os.Getpid()}), procstat.ReadCPU(b.pgPIDs())
	start = time.Now()
	n := 0
	_, err = src.Full(context.Background(), func(source.Entry) error { n++; return nil })
	check(err)
	took := time.Since(start)
	self2, pgAfter := procstat.ReadCPU([]int{os.Getpid()}), procstat.ReadCPU(b.pgPIDs())
	src.Close()
	b.report("sqlsrc alone: Full over the table (wall / this process's CPU / PostgreSQL's CPU)", fmt.Sprintf("%d rows in %s / %.2f s / %.2f s",
		n, took.Round(10*time.Millisecond), (self2.Millis()-self.Millis())/1000, (pgAfter.Millis()-pgBefore.Millis())/1000))

	dsnFile := filepath.Join(work, "mail.dsn")
	check(os.WriteFile(dsnFile, []byte(db.DSN), 0o600))

	// The backend.
	sinkAddr := freeAddr("127.0.0.1")
	b.sink = exec.Command(*sinkBin, "-listen", sinkAddr, "-password", "secret")
	b.sink.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	check(b.sink.Start())
	waitDial(sinkAddr)

	// Three nodes.
	b.startNodes(*porticoBin, sinkAddr, dsnFile)
	leader, follower := b.roles()
	b.report("nodes", fmt.Sprintf("%s leader, %s and %s followers", leader.name, follower.name, b.other(leader, follower).name))
	b.waitSource(leader, func(s sourceStatus) bool { return s.LastSuccess != nil }, time.Minute)

	measured := []*node{leader, follower}
	roleAtStart := map[*node]string{leader: "leader", follower: "follower"}

	// Logins without a sync.
	baseElections := b.elections()
	base := b.logins([]*node{leader, follower}, *rate, func(stop <-chan struct{}) {
		select {
		case <-time.After(*window):
		case <-stop:
		}
	})
	b.report("leader changes without a sync (the login baseline)", fmt.Sprint(b.elections()-baseElections))
	if b.elections() != baseElections {
		leader, follower = b.roles()
	}

	// The sync.
	before := map[string]sample{}
	for _, nd := range b.nodes {
		before[nd.name] = nd.sample()
		nd.resetPeak()
	}
	pgPIDs := b.pgPIDs()
	pgCPU := procstat.ReadCPU(pgPIDs)
	_, err = db.DB.Exec("UPDATE bench_switch SET enabled = true")
	check(err)
	reached := map[string]time.Duration{}
	var syncStart time.Time
	var syncErr string
	elections := b.elections()
	during := b.logins([]*node{leader, follower}, *rate, func(stop <-chan struct{}) {
		syncStart = time.Now()
		code, body := leader.api("POST", "/v1/sources/db/sync", "{}")
		if code != 200 && code != 202 {
			// A leader that loses its quorum (a saturated machine
			// delays heartbeats past the lease) ends its sync; the next
			// leader reads the source in full when it takes over.
			var a struct{ Error string }
			_ = json.Unmarshal(body, &a)
			syncErr = fmt.Sprintf("%d: %s", code, a.Error)
			log.Printf("the sync asked of %s failed: %s", leader.name, syncErr)
		}
		// Every user in this node's table: the sync writes its batches
		// grouped by the table's shards, so the last user by name may
		// come with any of them.
		for len(reached) < len(b.nodes) {
			for _, nd := range b.nodes {
				if _, ok := reached[nd.name]; !ok && nd.users() >= *rows {
					reached[nd.name] = time.Since(syncStart)
				}
			}
			if time.Since(syncStart) > time.Hour {
				fatalf("the sync did not reach every node within an hour")
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	pgCPU2 := procstat.ReadCPU(pgPIDs)
	elections = b.elections() - elections
	if elections > 0 || syncErr != "" {
		b.report("leader changes during the sync", fmt.Sprintf("%d (the sync asked of %s: %s)", elections, leader.name, syncErr))
		leader, _ = b.roles()
	}
	// The leader's last sync that succeeded (after a leader change, the new
	// leader's, which wrote what the cut-off one had not).
	st := b.waitSource(leader, func(s sourceStatus) bool {
		return s.LastError == "" && s.Last != nil && s.Last.Kind == "full" && s.Last.Entries == *rows
	}, time.Minute)

	// The figures.
	b.report("sync", fmt.Sprintf("full, %d entries, %d added (leader's own: read, diff, write in batches)", st.Last.Entries, st.Last.Added))
	b.report(fmt.Sprintf("leader's sync duration (%s's status)", leader.name), fmt.Sprintf("%.1f s", st.Last.Duration))
	b.report(fmt.Sprintf("leader's sync: commands / applying them / paused between them (work_share %g)", b.workShare),
		fmt.Sprintf("%d / %.1f s / %.1f s", st.Last.Commands, st.Last.Writing, st.Last.Paused))
	for _, nd := range b.nodes {
		b.report(fmt.Sprintf("asked to %s routing every user (%s)", nd.name, nd.role), reached[nd.name].Round(10*time.Millisecond).String())
	}
	for _, nd := range b.nodes {
		a, z := before[nd.name], nd.sample()
		b.report(fmt.Sprintf("%s (%s): CPU during the sync / peak RSS / RSS after", nd.name, nd.role),
			fmt.Sprintf("%.1f s / %d MiB / %d MiB", (z.cpu-a.cpu).Seconds(), nd.peakRSS()>>10, z.rss>>10))
	}
	b.report("PostgreSQL: CPU during the sync", fmt.Sprintf("%.2f s (%d processes)", (pgCPU2.Millis()-pgCPU.Millis())/1000, pgCPU2.Procs))
	for _, nd := range b.nodes {
		a, z := before[nd.name], nd.sample()
		b.report(fmt.Sprintf("%s raft: applied index / log written / WAL files / snapshots", nd.name),
			fmt.Sprintf("+%d / +%s / %s -> %s / %s", z.applied-a.applied, mib(z.walUsed-a.walUsed), mib(a.walAlloc), mib(z.walAlloc), mib(z.snaps)))
	}
	for _, r := range []struct {
		what string
		res  []loginResult
	}{{"no sync", base}, {"during the sync", during}} {
		for i, nd := range measured {
			b.report(fmt.Sprintf("logins through %s (%s at the start), %s: n / errors / p50 / p99 / max", nd.name, roleAtStart[nd], r.what), r.res[i].String())
		}
	}
	b.report("load average at the end", loadAvg())
	b.print(*rows, *rate)
}

type bench struct {
	work      string
	rows      int
	workShare float64
	pg        *sqltest.Server
	sink      *exec.Cmd
	nodes     []*node
	lines     [][2]string
}

func (b *bench) report(what, v string) {
	log.Printf("%s: %s", what, v)
	b.lines = append(b.lines, [2]string{what, v})
}

func (b *bench) print(rows, rate int) {
	fmt.Printf("\nSQL source, PostgreSQL, %d rows; logins at %d/s on each of two nodes\n\n| figure | value |\n|---|---|\n", rows, rate)
	for _, l := range b.lines {
		fmt.Printf("| %s | %s |\n", l[0], l[1])
	}
}

func (b *bench) stop() {
	for _, nd := range b.nodes {
		nd.kill()
	}
	if b.sink != nil && b.sink.Process != nil {
		_ = b.sink.Process.Kill()
		_ = b.sink.Wait()
	}
	if b.pg != nil {
		_ = b.pg.Close()
	}
}

// pgPIDs are the PostgreSQL server's processes (the postmaster and its
// children, the backends that serve the sync among them).
func (b *bench) pgPIDs() []int {
	pids, _ := (&procstat.Selector{Match: regexp.MustCompile(regexp.QuoteMeta(b.pg.Dir))}).Resolve()
	return pids
}

func (b *bench) startNodes(bin, sinkAddr, dsnFile string) {
	caCert, caKey, err := pki.CreateCA("bench cluster CA", 24*time.Hour)
	check(err)
	ca := filepath.Join(b.work, "ca.pem")
	check(os.WriteFile(ca, caCert, 0o600))
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	gossipKey := base64.StdEncoding.EncodeToString(key)
	var join []string
	for i := 1; i <= 3; i++ {
		ip := fmt.Sprintf("127.0.77.%d", i)
		nd := &node{name: fmt.Sprintf("n%d", i), dir: filepath.Join(b.work, fmt.Sprintf("n%d", i)),
			admin: freeAddr(ip), imap: freeAddr(ip), raft: freeAddr(ip), gossip: freeAddr(ip)}
		check(os.MkdirAll(nd.dir, 0o700))
		join = append(join, nd.gossip)
		b.nodes = append(b.nodes, nd)
	}
	for _, nd := range b.nodes {
		cert, k, err := pki.CreateNodeCert(caCert, caKey, nd.name, 24*time.Hour, nil)
		check(err)
		cf, kf := filepath.Join(nd.dir, "node.pem"), filepath.Join(nd.dir, "node-key.pem")
		check(os.WriteFile(cf, cert, 0o600))
		check(os.WriteFile(kf, k, 0o600))
		cfg := fmt.Sprintf(`node_name: %s
data_dir: %s
listeners:
  - {name: imap, protocol: imap, address: "%s"}
limits: {max_connections_per_ip: -1}
admin: {address: "%s", token: %s}
cluster:
  raft_address: "%s"
  gossip_address: "%s"
  join: [%s]
  bootstrap_expect: 3
  tls: {ca_file: %q, cert_file: %q, key_file: %q}
  encrypt_key: %s
backends:
  - {id: sink, host: 127.0.0.1, imap_port: %s}
pools:
  - {name: main, backends: [sink]}
routes:
  default_pool: main
sources:
  - name: db
    type: sql
    interval: 1h
    full_interval: 24h
    work_share: %g
    sql:
      driver: postgres
      dsn_file: %s
      query: SELECT username, server, login FROM mailbox WHERE (SELECT enabled FROM bench_switch)
      sync_timeout: 1h
`, nd.name, filepath.Join(nd.dir, "data"), nd.imap, nd.admin, token, nd.raft, nd.gossip, strings.Join(join, ", "),
			ca, cf, kf, gossipKey, portOf(sinkAddr), b.workShare, dsnFile)
		path := filepath.Join(nd.dir, "portico.yaml")
		check(os.WriteFile(path, []byte(cfg), 0o600))
		logf, err := os.Create(filepath.Join(nd.dir, "portico.log"))
		check(err)
		nd.cmd = exec.Command(bin, "serve", "--config", path)
		nd.cmd.Stdout, nd.cmd.Stderr = logf, logf
		nd.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		nd.cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
		check(nd.cmd.Start())
	}
	deadline := time.Now().Add(2 * time.Minute)
	for _, nd := range b.nodes {
		for {
			code, _ := nd.api("GET", "/readyz", "")
			if code == 200 {
				break
			}
			if time.Now().After(deadline) {
				fatalf("%s not ready; its log:\n%s", nd.name, nd.log())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// roles returns the leader and a follower.
func (b *bench) roles() (leader, follower *node) {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		leader, follower = nil, nil
		for _, nd := range b.nodes {
			var s struct{ Role string }
			if code, body := nd.api("GET", "/v1/status", ""); code == 200 && json.Unmarshal(body, &s) == nil {
				nd.role = strings.ToLower(s.Role)
				switch nd.role {
				case "leader":
					leader = nd
				case "follower":
					follower = nd
				}
			}
		}
		if leader != nil && follower != nil {
			return leader, follower
		}
		time.Sleep(200 * time.Millisecond)
	}
	fatalf("no leader and follower")
	return nil, nil
}

// elections counts the "became raft leader" lines of the nodes' logs.
func (b *bench) elections() int {
	n := 0
	for _, nd := range b.nodes {
		n += strings.Count(nd.log(), `msg="became raft leader"`)
	}
	return n
}

func (b *bench) other(x, y *node) *node {
	for _, nd := range b.nodes {
		if nd != x && nd != y {
			return nd
		}
	}
	return nil
}

type sourceStatus struct {
	LastSuccess *time.Time `json:"last_success"`
	LastError   string     `json:"last_error"`
	Last        *struct {
		Kind     string  `json:"kind"`
		Duration float64 `json:"duration_seconds"`
		Entries  int     `json:"entries"`
		Added    int     `json:"added"`
		Commands int     `json:"commands"`
		Writing  float64 `json:"writing_seconds"`
		Paused   float64 `json:"paused_seconds"`
	} `json:"last"`
}

func (b *bench) waitSource(nd *node, cond func(sourceStatus) bool, d time.Duration) sourceStatus {
	deadline := time.Now().Add(d)
	for {
		var a struct{ Sources []sourceStatus }
		if code, body := nd.api("GET", "/v1/sources/db", ""); code == 200 && json.Unmarshal(body, &a) == nil && len(a.Sources) == 1 {
			if cond(a.Sources[0]) {
				return a.Sources[0]
			}
			if time.Now().After(deadline) {
				fatalf("source status: %+v", a.Sources[0])
			}
		} else if time.Now().After(deadline) {
			fatalf("GET /v1/sources/db: %d %s", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// logins runs an open-loop login load on each node until run returns.
func (b *bench) logins(nodes []*node, rate int, run func(stop <-chan struct{})) []loginResult {
	stop := make(chan struct{})
	res := make([]loginResult, len(nodes))
	var wg sync.WaitGroup
	for i, nd := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = loginLoad(nd.imap, rate, stop)
		}()
	}
	run(stop)
	close(stop)
	wg.Wait()
	return res
}

type loginResult struct {
	lat    []time.Duration
	errors int
	first  string
}

func (r loginResult) String() string {
	if len(r.lat) == 0 {
		return fmt.Sprintf("0 / %d (%s)", r.errors, r.first)
	}
	slices.Sort(r.lat)
	q := func(p float64) string {
		return fmt.Sprintf("%.1f ms", float64(r.lat[min(len(r.lat)-1, int(p*float64(len(r.lat))))].Microseconds())/1000)
	}
	s := fmt.Sprintf("%d / %d / %s / %s / %s", len(r.lat), r.errors, q(0.5), q(0.99), q(1))
	if r.first != "" {
		s += " (" + r.first + ")"
	}
	return s
}

// loginLoad starts a login every 1/rate s until stop: connect, greeting,
// LOGIN, tagged OK (the latency), LOGOUT.
func loginLoad(addr string, rate int, stop <-chan struct{}) loginResult {
	var mu sync.Mutex
	var res loginResult
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			wg.Wait()
			return res
		case <-tick.C:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := login(addr, fmt.Sprintf("load%d@example.net", i%5000))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.errors++
				if res.first == "" {
					res.first = err.Error()
				}
				return
			}
			res.lat = append(res.lat, d)
		}()
	}
}

func login(addr, user string) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "* OK") {
		return 0, fmt.Errorf("greeting %q: %v", l, err)
	}
	fmt.Fprintf(c, "a LOGIN %s secret\r\n", user)
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return 0, fmt.Errorf("login: %v", err)
		}
		if strings.HasPrefix(l, "a ") {
			if !strings.HasPrefix(l, "a OK") {
				return 0, fmt.Errorf("login: %q", strings.TrimSpace(l))
			}
			break
		}
	}
	d := time.Since(start)
	fmt.Fprintf(c, "b LOGOUT\r\n")
	_, _ = io.Copy(io.Discard, r)
	return d, nil
}

type node struct {
	name, role, dir           string
	admin, imap, raft, gossip string
	cmd                       *exec.Cmd
}

func (nd *node) api(method, path, body string) (int, []byte) {
	req, _ := http.NewRequest(method, "http://"+nd.admin+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	if method != "GET" {
		req.Header.Set("Content-Type", "application/json")
	}
	// Long enough for a sync (the API answers 202 after 25 s when it
	// passes the call on, and waits for the sync when it runs it).
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// users is the number of user rules in this node's table.
func (nd *node) users() int {
	var st struct {
		Routing struct {
			Users int `json:"users"`
		}
	}
	if code, body := nd.api("GET", "/v1/status", ""); code != 200 || json.Unmarshal(body, &st) != nil {
		return -1
	}
	return st.Routing.Users
}

func (nd *node) log() string {
	b, _ := os.ReadFile(filepath.Join(nd.dir, "portico.log"))
	return string(b)
}

func (nd *node) kill() {
	if nd.cmd != nil && nd.cmd.Process != nil {
		_ = nd.cmd.Process.Kill()
		_ = nd.cmd.Wait()
	}
}

type sample struct {
	cpu               time.Duration
	rss               int64 // KiB
	applied           uint64
	walUsed, walAlloc int64
	snaps             int64
}

func (nd *node) sample() sample {
	pid := nd.cmd.Process.Pid
	s := sample{cpu: time.Duration(procstat.ReadCPU([]int{pid}).Millis()) * time.Millisecond, rss: statusKiB(pid, "VmRSS:")}
	var st struct {
		Routing struct {
			AppliedIndex uint64 `json:"applied_index"`
		}
	}
	if code, body := nd.api("GET", "/v1/status", ""); code == 200 {
		_ = json.Unmarshal(body, &st)
	}
	s.applied = st.Routing.AppliedIndex
	raft := filepath.Join(nd.dir, "data", "raft")
	s.walUsed, s.walAlloc = walBytes(filepath.Join(raft, "wal"))
	_, s.snaps = walBytes(filepath.Join(raft, "snapshots"))
	return s
}

// resetPeak resets the process's peak RSS (VmHWM) to its RSS now.
func (nd *node) resetPeak() {
	_ = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", nd.cmd.Process.Pid), []byte("5"), 0)
}

func (nd *node) peakRSS() int64 { return statusKiB(nd.cmd.Process.Pid, "VmHWM:") }

func statusKiB(pid int, field string) int64 {
	return kibField(fmt.Sprintf("/proc/%d/status", pid), field)
}

// kibField reads a "Field:  123 kB" line of a /proc file.
func kibField(file, field string) int64 {
	b, _ := os.ReadFile(file)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// walBytes returns, over the files under dir, the bytes holding data
// (raft-wal preallocates its segments and fills them from the start: a
// file's size less its trailing zero bytes) and the disk space allocated.
func walBytes(dir string) (used, alloc int64) {
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			alloc += st.Blocks * 512
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		used += int64(len(bytes.TrimRight(b, "\x00")))
		return nil
	})
	return used, alloc
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func build(dir, name, pkg string) string {
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	check(cmd.Run())
	return out
}

func freeAddr(ip string) string {
	l, err := net.Listen("tcp", ip+":0")
	check(err)
	defer l.Close()
	return l.Addr().String()
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func waitDial(addr string) {
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	fatalf("nothing listens on %s", addr)
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func memTotal() string {
	return fmt.Sprintf("%d GiB", kibField("/proc/meminfo", "MemTotal:")>>20)
}

// cleanup stops what was started; fatal runs it before exiting.
var cleanup = func() {}

func fatalf(format string, args ...any) {
	log.Printf(format, args...)
	cleanup()
	os.Exit(1)
}

func check(err error) {
	if err != nil {
		fatalf("%v", err)
	}
}

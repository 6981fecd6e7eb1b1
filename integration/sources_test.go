package integration

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/loopback"
	"github.com/portico-mail/portico/ops/daemon"
)

// sourceExtra is the sources section of a test node: a popmap file
// synced every interval.
func sourceExtra(path, interval string, onMiss bool) string {
	return fmt.Sprintf(`
sources:
  - name: users
    type: popmap
    interval: %s
    full_interval: 1h
    popmap: {path: %s}
    on_miss: {enabled: %v, timeout: 1s, positive_ttl: 1s, negative_ttl: 1s}
`, interval, path, onMiss)
}

// replaceFile replaces a file as an editor (or a configuration manager)
// would: a new file renamed over the old one.
func replaceFile(t *testing.T, path, s string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// routeOf returns a user's rule on a node ("" if none) as
// "backend/login/source".
func routeOf(nd *procNode, user string) string {
	code, b, err := nd.api("GET", "/v1/routes/users/"+user, nil)
	if err != nil || code != 200 {
		return ""
	}
	var r struct{ Backend, Login, Source string }
	_ = json.Unmarshal(b, &r)
	return r.Backend + "/" + r.Login + "/" + r.Source
}

func sourcesOf(t *testing.T, nd *procNode, name string) daemon.SourcesAnswer {
	t.Helper()
	a, err := trySources(nd, name)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// trySources reads GET /v1/sources/NAME (for polling: an error is not
// fatal).
func trySources(nd *procNode, name string) (daemon.SourcesAnswer, error) {
	code, b, err := nd.api("GET", "/v1/sources/"+name, nil)
	var a daemon.SourcesAnswer
	if err != nil || code != 200 || json.Unmarshal(b, &a) != nil || len(a.Sources) != 1 {
		return a, fmt.Errorf("GET /v1/sources/%s on %s: %d %v %s", name, nd.name, code, err, b)
	}
	return a, nil
}

// A popmap file mirrored into the table: users added, changed (a rename)
// and deleted in the file are routed accordingly within the interval,
// with real logins to a real Dovecot; `route list` shows the source; a
// user added to the file logs in at once through the on-miss lookup
// (written through to the table); when the file cannot be read, users in
// the table keep logging in and a user it would have to be asked about
// gets "unavailable" (IMAP and POP3), not a failed login.
func TestSourcePopmapFile(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: loopback.Addr(t).String(), Users: map[string]string{
		"alice.smith": "secret", "bob": "secret", "bob2": "secret", "carol": "secret", "dave": "secret", "erin": "secret", "frank": "secret", "ghost": "secret"}})
	dir := t.TempDir()
	popmap, late := filepath.Join(dir, "users.popmap"), filepath.Join(dir, "late.popmap")
	replaceFile(t, popmap, "# users\nalice: alice.smith@dc1\nbob: dc1\ncarol: dc1\ndave: dc1\n")
	replaceFile(t, late, "# nobody yet\n")
	// "users" syncs every second; "late" syncs once an hour and is asked
	// on a miss.
	nodes := newCluster(t, 1, dc, sourceExtra(popmap, "1s", false)+fmt.Sprintf(`
  - name: late
    type: popmap
    interval: 1h
    popmap: {path: %s}
    on_miss: {enabled: true, timeout: 1s, positive_ttl: 1s, negative_ttl: 1s}
`, late))
	nd := nodes[0]
	// A POP3 listener too.
	ip := netip.MustParseAddr(nd.ip)
	pop3 := netip.AddrPortFrom(ip, uint16(loopback.Ports(t, ip, 1)[0])).String()
	cfg, _ := os.ReadFile(nd.cfgPath)
	cfg = []byte(strings.Replace(string(cfg), "listeners:\n", fmt.Sprintf("listeners:\n  - {name: pop3, protocol: pop3, address: %q}\n", pop3), 1))
	os.WriteFile(nd.cfgPath, cfg, 0o644)
	nd.start()
	waitSeeded(t, nodes)
	waitFor(t, "the file's users in the table", 10*time.Second, func() bool {
		return routeOf(nd, "alice") == "dc1/alice.smith/source:users" && routeOf(nd, "dave") == "dc1//source:users"
	})
	if err := loginVia(t, nd.imap, "alice", "secret"); err != nil {
		t.Fatalf("alice: %v", err)
	}
	if dc.WaitLogins("alice.smith", 1, 5*time.Second) != 1 {
		t.Fatalf("dovecot did not see alice as alice.smith\n%s", dc.Log())
	}
	out, err := nd.cli("route", "list")
	if err != nil || !strings.Contains(out, "source:users") {
		t.Fatalf("route list: %v\n%s", err, out)
	}
	out, err = nd.cli("status")
	if err != nil || !strings.Contains(out, "source users:") || !strings.Contains(out, "popmap, ok, 4 rules") {
		t.Fatalf("status: %v\n%s", err, out)
	}

	// Change bob (a rename), add erin, delete dave.
	replaceFile(t, popmap, "# users\nalice: alice.smith@dc1\nbob: bob2@dc1\ncarol: dc1\nerin: dc1\n")
	took := waitFor(t, "the file's changes in the table", 10*time.Second, func() bool {
		return routeOf(nd, "bob") == "dc1/bob2/source:users" && routeOf(nd, "erin") != "" && routeOf(nd, "dave") == ""
	})
	t.Logf("the table followed the file in %s (interval 1s)", took.Round(time.Millisecond))
	if err := loginVia(t, nd.imap, "bob", "secret"); err != nil || dc.WaitLogins("bob2", 1, 5*time.Second) != 1 {
		t.Fatalf("bob as bob2: %v\n%s", err, dc.Log())
	}
	if err := loginVia(t, nd.imap, "erin", "secret"); err != nil {
		t.Fatalf("erin: %v", err)
	}
	if err := loginVia(t, nd.imap, "dave", "secret"); err == nil || strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Fatalf("dave (deleted) logged in, or was told to come back: %v", err)
	}

	// The on-miss lookup: frank, added to the file of the source that
	// syncs once an hour, logs in at once: the lookup reads the file, and
	// writes frank's route through to the table, tagged with the source.
	replaceFile(t, late, "frank: dc1\n")
	if err := loginVia(t, nd.imap, "frank", "secret"); err != nil {
		t.Fatalf("frank through the on-miss lookup: %v", err)
	}
	if r := routeOf(nd, "frank"); r != "dc1//source:late" {
		t.Fatalf("frank's route after the on-miss lookup: %q", r)
	}

	// The file unreadable: users in the table log in; a user the source
	// would have to be asked about is "unavailable", on IMAP and POP3.
	os.Rename(popmap, popmap+".gone")
	os.Rename(late, late+".gone")
	waitFor(t, "the failing sync in the status", 10*time.Second, func() bool {
		a, err := trySources(nd, "users")
		return err == nil && a.Sources[0].LastError != ""
	})
	if err := loginVia(t, nd.imap, "carol", "secret"); err != nil {
		t.Fatalf("carol (in the table) with the source down: %v", err)
	}
	err = loginVia(t, nd.imap, "ghost", "secret")
	if err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Fatalf("ghost with the source down: %v (want NO [UNAVAILABLE])", err)
	}
	p := dialLine(t, pop3, false)
	p.line()
	p.send("USER ghost\r\n")
	p.line()
	p.send("PASS secret\r\n")
	if got := p.line(); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Fatalf("POP3 with the source down: %q", got)
	}
	if dc.Logins("ghost") != 0 {
		t.Fatal("ghost reached dovecot")
	}
	out, err = nd.cli("source", "status", "users")
	if err != nil || !strings.Contains(out, "failing") || !strings.Contains(out, "users.popmap") {
		t.Fatalf("source status: %v\n%s", err, out)
	}
	// Back: ghost is in no file; a failed login now (a negative answer:
	// failures were not cached).
	os.Rename(popmap+".gone", popmap)
	os.Rename(late+".gone", late)
	if err := loginVia(t, nd.imap, "ghost", "secret"); err == nil || strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Fatalf("ghost, not in the file: %v (want a failed login)", err)
	}
	// Metrics of the source.
	code, b, _ := nd.api("GET", "/metrics", nil)
	for _, m := range []string{`portico_source_last_success_timestamp_seconds{source="users"}`, `portico_source_lookups_total{result="found",source="late"} 1`,
		`portico_source_lookups_total{result="error",source="late"}`, `portico_source_changes_total{kind="removed",source="users"} 1`} {
		if code != 200 || !strings.Contains(string(b), m) {
			t.Errorf("metrics lack %s", m)
		}
	}
}

// The safety valve: the file truncated to nothing does not empty the
// table; the refusal shows in the status, the metrics and `source sync
// --dry-run`; --force applies it.
func TestSourceSafetyValve(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: loopback.Addr(t).String()})
	popmap := filepath.Join(t.TempDir(), "users.popmap")
	var b strings.Builder
	for i := range 20 {
		fmt.Fprintf(&b, "user%02d: dc1\n", i)
	}
	replaceFile(t, popmap, b.String())
	nodes := newCluster(t, 1, dc, sourceExtra(popmap, "1s", false))
	nd := nodes[0]
	nd.start()
	waitSeeded(t, nodes)
	waitFor(t, "20 users synced", 10*time.Second, func() bool { return routeOf(nd, "user19") != "" })
	replaceFile(t, popmap, "")
	waitFor(t, "the refusal in the status", 10*time.Second, func() bool {
		a, err := trySources(nd, "users")
		return err == nil && a.Sources[0].Refused != ""
	})
	time.Sleep(1500 * time.Millisecond) // another interval: still refused
	for i := range 20 {
		if routeOf(nd, fmt.Sprintf("user%02d", i)) == "" {
			t.Fatalf("user%02d removed by an empty file", i)
		}
	}
	out, err := nd.cli("source", "list")
	if err != nil || !strings.Contains(out, "refused") {
		t.Fatalf("source list: %v\n%s", err, out)
	}
	out, err = nd.cli("source", "sync", "users", "--dry-run")
	if err != nil || !strings.Contains(out, "20 removed") || !strings.Contains(out, "- user07: dc1 [source:users]") || !strings.Contains(out, "refused by the safety valve") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	out, err = nd.cli("source", "sync", "users")
	if err == nil || !strings.Contains(out, "refused") {
		t.Fatalf("sync without --force: %v\n%s", err, out)
	}
	_, m, _ := nd.api("GET", "/metrics", nil)
	if !strings.Contains(string(m), `portico_source_refused_total{source="users"}`) || strings.Contains(string(m), `portico_source_refused_total{source="users"} 0`) {
		t.Fatalf("refusals not counted:\n%s", grepLines(string(m), "portico_source_"))
	}
	out, err = nd.cli("source", "sync", "users", "--force")
	if err != nil || !strings.Contains(out, "20 removed") {
		t.Fatalf("forced sync: %v\n%s", err, out)
	}
	if routeOf(nd, "user07") != "" {
		t.Fatal("user07 still routed after the forced sync")
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Three nodes read the same popmap file: only the leader syncs; after the
// leader is killed the new one carries on from the replicated watermark
// (an incremental sync that finds nothing, not a full one), then follows
// the file; every node ends with each user once, nothing lost.
func TestSourceThreeNodesLeaderChange(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	dc := dovecot.Start(t, dovecot.Options{Addr: loopback.Addr(t).String(), Users: map[string]string{
		"u1": "secret", "u2": "secret", "u3": "secret", "u4": "secret", "u5": "secret"}})
	popmap := filepath.Join(t.TempDir(), "users.popmap")
	replaceFile(t, popmap, "u1: dc1\nu2: dc1\nu3: dc1\n")
	nodes := newCluster(t, 3, dc, sourceExtra(popmap, "1s", false))
	for _, nd := range nodes {
		nd.start()
	}
	waitSeeded(t, nodes)
	waitFor(t, "u1..u3 on every node", 30*time.Second, func() bool {
		for _, nd := range nodes {
			if routeOf(nd, "u3") != "dc1//source:users" {
				return false
			}
		}
		return true
	})
	leader := nodeByName(nodes, leaderOf(nodes))
	// The sync logs once it wrote its state, after its batch and a pause
	// (the syncer's pacing): the users may be routed a moment before.
	waitFor(t, "the leader's sync logged", 10*time.Second, func() bool {
		return strings.Contains(leader.log(), "directory source synced")
	})
	// Only a leader syncs: a node that logged a sync led at some point
	// (an election while the cluster formed may have moved leadership).
	for _, nd := range nodes {
		log := nd.log()
		synced := strings.Contains(log, "directory source synced")
		if nd == leader && !synced || synced && !strings.Contains(log, "became raft leader") {
			t.Fatalf("%s (leader %s) synced: %v, without leading:\n%s", nd.name, leader.name, synced, grepLines(log, "source"))
		}
	}
	// Every node shows the leader's view (a follower passes the call on).
	for _, nd := range nodes {
		var a daemon.SourcesAnswer
		var err error
		ok := func() bool {
			a, err = trySources(nd, "users")
			s := a.Sources
			return err == nil && s[0].Node == leader.name && s[0].Watermark != "" && s[0].Rules == 3
		}
		deadline := time.Now().Add(10 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("status through %s: %+v %v", nd.name, a, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	leader.kill()
	var rest []*procNode
	for _, nd := range nodes {
		if nd != leader {
			rest = append(rest, nd)
		}
	}
	var next *procNode
	waitFor(t, "a new leader", 20*time.Second, func() bool {
		next = nodeByName(rest, leaderOf(rest))
		return next != nil && next != leader
	})
	waitFor(t, "the new leader's first sync", 30*time.Second, func() bool {
		a, err := trySources(next, "users")
		return err == nil && a.Sources[0].Node == next.name && a.Sources[0].Last != nil
	})
	if s := sourcesOf(t, next, "users").Sources[0]; s.Last.Kind != "incremental" || s.Last.Added+s.Last.Changed+s.Last.Removed != 0 {
		t.Fatalf("the new leader's first sync: %+v (want an incremental one that found nothing)", s.Last)
	}
	if strings.Contains(next.log(), "kind=full") {
		t.Fatalf("the new leader read the file in full:\n%s", grepLines(next.log(), "directory source"))
	}

	replaceFile(t, popmap, "u1: dc1\nu2: u2@dc1\nu4: dc1\nu5: dc1\n")
	waitFor(t, "the file's change on the live nodes", 30*time.Second, func() bool {
		for _, nd := range rest {
			if routeOf(nd, "u5") == "" || routeOf(nd, "u3") != "" {
				return false
			}
		}
		return true
	})
	leader.start()
	waitFor(t, "the restarted node caught up", 60*time.Second, func() bool { return routeOf(leader, "u5") != "" && routeOf(leader, "u3") == "" })
	waitSeeded(t, nodes)
	for _, nd := range nodes {
		out, err := nd.cli("route", "list")
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range []string{"u1", "u2", "u4", "u5"} {
			if n := strings.Count(out, "\n"+u+" "); n != 1 {
				t.Fatalf("%s lists %s %d times:\n%s", nd.name, u, n, out)
			}
		}
		// (A restarted node learns the backend's health from the others'
		// probes and its own first: until then a login may be told to
		// come back.)
		waitFor(t, "u5 logging in through "+nd.name, 20*time.Second, func() bool { return loginVia(t, nd.imap, "u5", "secret") == nil })
	}
	if got := routeOf(nodes[0], "u2"); got != "dc1/u2/source:users" {
		t.Fatalf("u2: %q", got)
	}
}

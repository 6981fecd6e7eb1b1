package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/loopback"
	"github.com/portico-mail/portico/routing"
)

// getBackend reads a backend from nd's copy of the table, after a
// consistent read.
func getBackend(t *testing.T, nd *procNode, id string) routing.Backend {
	t.Helper()
	code, body, err := nd.api("GET", "/v1/backends/"+id+"?consistent=true", nil)
	var b routing.Backend
	if err != nil || code != 200 || json.Unmarshal(body, &b) != nil {
		t.Fatalf("GET backend %s on %s: %d %v %s", id, nd.name, code, err, body)
	}
	return b
}

func backendSessionCount(t *testing.T, nd *procNode, id string) (int, bool) {
	t.Helper()
	code, body, err := nd.api("GET", "/v1/backends/"+id+"/sessions", nil)
	var s struct {
		Sessions int  `json:"sessions"`
		Complete bool `json:"complete"`
	}
	if err != nil || code != 200 || json.Unmarshal(body, &s) != nil {
		t.Fatalf("sessions of %s on %s: %d %v %s", id, nd.name, code, err, body)
	}
	return s.Sessions, s.Complete
}

// Backend maintenance against real processes and real Dovecot: one-field
// updates through the CLI change only that field; `portico backend drain
// --wait` ends the backend's IDLE sessions on both nodes with a BYE at a
// response boundary, leaves other backends' sessions alone, and returns
// once none is left; new logins no longer go there; neither a reload nor
// a restart (which seed the configuration file, which names the backend)
// undoes the drain; enable takes it back.
func TestBackendDrainAndOneFieldUpdates(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	users := map[string]string{"alice": "secret", "bob": "secret"}
	dc1 := dovecot.Start(t, dovecot.Options{Addr: loopback.Addr(t).String(), Users: users})
	dc2 := dovecot.Start(t, dovecot.Options{Addr: loopback.Addr(t).String(), Users: users})
	nodes := newCluster(t, 2, dc1, "routes: {default_pool: main}\n")
	for _, nd := range nodes {
		nd.start()
	}
	waitSeeded(t, nodes)
	n1, n2 := nodes[0], nodes[1]
	cli := func(nd *procNode, args ...string) string {
		t.Helper()
		out, err := nd.cli(args...)
		if err != nil {
			t.Fatalf("portico %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}

	// backend set adds a backend that does not exist, then changes only
	// the fields given.
	cli(n1, "backend", "set", "dc2", "--host", dc2.Addr, "--imap-port", fmt.Sprint(dc2.IMAPPort), "--forward", "id")
	cli(n2, "backend", "set", "dc2", "--pop3-port", fmt.Sprint(dc2.POP3Port))
	want := routing.Backend{ID: "dc2", Host: dc2.Addr, IMAPPort: dc2.IMAPPort, POP3Port: dc2.POP3Port, TLS: routing.TLSNone,
		Forward: routing.ForwardID, Weight: 1, State: routing.StateActive}
	if got := getBackend(t, n1, "dc2"); got != want {
		t.Fatalf("dc2:\n%+v\nwant\n%+v", got, want)
	}
	// --host alone keeps forward and tls (it used to reset them).
	cli(n1, "backend", "set", "dc2", "--host", dc2.Addr)
	if got := getBackend(t, n2, "dc2"); got != want {
		t.Fatalf("dc2 after --host:\n%+v\nwant\n%+v", got, want)
	}
	// dc1 comes from the configuration file (forward: id); --weight 5
	// changes its weight and nothing else.
	before := getBackend(t, n2, "dc1")
	cli(n2, "backend", "set", "dc1", "--weight", "5")
	wantDC1 := before
	wantDC1.Weight = 5
	if got := getBackend(t, n1, "dc1"); got != wantDC1 || got.Forward != routing.ForwardID {
		t.Fatalf("dc1 after --weight 5:\n%+v\nwant\n%+v", got, wantDC1)
	}
	if out, err := n1.cli("backend", "set", "dc1", "--weight", "-3"); err == nil || !strings.Contains(out, "weight -3 out of range") {
		t.Fatalf("a bad weight: %v\n%s", err, out)
	}
	cli(n1, "route", "set", "alice", "--backend", "dc1")
	cli(n1, "route", "set", "bob", "--backend", "dc2")
	waitFor(t, "the routes on n2", 10*time.Second, func() bool { return hasUser(n2, "alice") && hasUser(n2, "bob") })

	// alice: two IDLE sessions through n1 (raw IMAP, go-imap v2) and one
	// through n2, all on dc1; bob's session on dc2 through n2.
	idleRaw := func(nd *procNode, user string) *lineConn {
		c := dialLine(t, nd.imap, false)
		c.line()
		c.send("a1 LOGIN " + user + " secret\r\n")
		if got := c.until("a1 "); !strings.HasPrefix(got, "a1 OK") {
			t.Fatalf("%s's login through %s: %q", user, nd.name, got)
		}
		c.send("a2 SELECT INBOX\r\na3 IDLE\r\n")
		c.until("a2 OK")
		if got := c.line(); !strings.HasPrefix(got, "+ ") {
			t.Fatalf("IDLE: %q", got)
		}
		return c
	}
	raw1 := idleRaw(n1, "alice")
	gc, err := imapclient.DialInsecure(n1.imap, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	if err := gc.Login("alice", "secret").Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := gc.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := gc.Idle()
	if err != nil {
		t.Fatal(err)
	}
	raw2 := idleRaw(n2, "alice")
	bob := idleRaw(n2, "bob")
	waitFor(t, "alice's 3 sessions on dc1", 10*time.Second, func() bool {
		n, complete := backendSessionCount(t, n2, "dc1")
		return n == 3 && complete
	})

	// The drain, through the real CLI on n2, waiting.
	type result struct {
		out string
		err error
		in  time.Duration
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		out, err := n2.cli("backend", "drain", "dc1", "--wait", "--spread", "2s", "--timeout", "60s")
		done <- result{out, err, time.Since(start)}
	}()
	const bye = "* BYE [UNAVAILABLE] Backend going down for maintenance, please reconnect.\r\n"
	for _, c := range []*lineConn{raw1, raw2} {
		if got := c.line(); got != bye {
			t.Fatalf("IDLE client got %q, want %q", got, bye)
		}
		if !c.closed(10 * time.Second) {
			t.Fatal("a drained session is still open")
		}
	}
	select {
	case <-gc.Closed():
	case <-time.After(15 * time.Second):
		t.Fatal("go-imap client's connection not closed by the drain")
	}
	_ = idle.Wait()
	var r result
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("backend drain --wait did not return")
	}
	if r.err != nil || !strings.Contains(r.out, "backend dc1 is draining: ending 3 session(s)") ||
		!strings.Contains(r.out, "backend dc1 has no sessions left") {
		t.Fatalf("backend drain --wait: %v\n%s", r.err, r.out)
	}
	// n1 had two sessions spread over 2s: the second ended about 1s in,
	// and --wait returned after it.
	if r.in < 900*time.Millisecond {
		t.Fatalf("backend drain --wait returned after %v, before the spread let the last session end", r.in)
	}
	for _, nd := range nodes {
		if n, complete := backendSessionCount(t, nd, "dc1"); n != 0 || !complete {
			t.Fatalf("after the drain, %s counts %d session(s) on dc1 (complete %v)", nd.name, n, complete)
		}
	}
	t.Logf("backend drain --wait of 3 sessions on 2 nodes, spread 2s: returned after %v", r.in.Round(10*time.Millisecond))
	// bob's session on dc2 is untouched.
	bob.send("DONE\r\n")
	if got := bob.until("a3 "); !strings.HasPrefix(got, "a3 OK") {
		t.Fatalf("bob's IDLE after the drain: %q", got)
	}
	bob.send("b2 NOOP\r\n")
	if got := bob.until("b2 "); !strings.HasPrefix(got, "b2 OK") {
		t.Fatalf("bob's session after the drain: %q", got)
	}
	bob.send("b3 LOGOUT\r\n")
	if !bob.closed(5 * time.Second) {
		t.Fatal("bob's session did not end at LOGOUT")
	}
	// New logins no longer go to dc1.
	for _, nd := range nodes {
		if err := loginVia(t, nd.imap, "alice", "secret"); err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") {
			t.Fatalf("alice's login through %s while dc1 drains: %v", nd.name, err)
		}
	}
	wantDC1.State = routing.StateDraining
	if got := getBackend(t, n1, "dc1"); got != wantDC1 {
		t.Fatalf("dc1 after the drain:\n%+v\nwant\n%+v", got, wantDC1)
	}

	// A reload of n1 and a restart of n2 seed the file (which names dc1,
	// unchanged): the drain and the weight set through the API stay.
	seeded := func(nd *procNode) int { return strings.Count(nd.log(), "routes from the configuration file written") }
	s1, s2 := seeded(n1), seeded(n2)
	if code, body, err := n1.api("POST", "/v1/reload", nil); err != nil || code != 200 {
		t.Fatalf("reload: %d %v %s", code, err, body)
	}
	waitFor(t, "n1 to seed the reloaded file", 15*time.Second, func() bool { return seeded(n1) > s1 })
	if err := n2.stop(); err != nil {
		t.Fatal(err)
	}
	n2.start()
	waitSeeded(t, nodes)
	waitFor(t, "n2 to seed the file at start", 15*time.Second, func() bool { return seeded(n2) > s2 })
	for _, nd := range nodes {
		if got := getBackend(t, nd, "dc1"); got != wantDC1 {
			t.Fatalf("dc1 on %s after a reload and a restart:\n%+v\nwant\n%+v", nd.name, got, wantDC1)
		}
	}

	// enable takes it back: alice logs in again, on dc1.
	cli(n1, "backend", "enable", "dc1")
	waitFor(t, "alice's login through n2 after enable", 10*time.Second, func() bool {
		return loginVia(t, n2.imap, "alice", "secret") == nil
	})
	cli(n1, "backend", "disable", "dc1")
	if got := getBackend(t, n2, "dc1"); got.State != routing.StateDisabled || got.Weight != 5 {
		t.Fatalf("dc1 after disable: %+v", got)
	}
}

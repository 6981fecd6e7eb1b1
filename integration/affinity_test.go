package integration

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/loopback"
)

// lookupVia asks nd where a login of user would go now (health and
// affinity included).
func lookupVia(nd *procNode, user string) (backend string, steered bool) {
	code, b, err := nd.api("GET", "/v1/routes/lookup?user="+user, nil)
	if err != nil || code != 200 {
		return "", false
	}
	var r struct {
		Backend string `json:"backend"`
		Steered bool   `json:"steered"`
	}
	_ = json.Unmarshal(b, &r)
	return r.Backend, r.Steered
}

// metricOf reads one series of nd's metrics (-1 if absent).
func metricOf(nd *procNode, series string) int {
	_, b, err := nd.api("GET", "/metrics", nil)
	if err != nil {
		return -1
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\d+)$`).FindSubmatch(b)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// Stickiness across a backend outage in a three-node cluster (issue 12,
// item 3), with real processes and real Dovecot: in a shared_storage
// pool with backends A and B, a user whose hash's choice is A logs in
// while A is down (lands on B) and holds an IDLE session. When A is back
// up and healthy, the user's new logins on every node still go to B,
// while its session is open and until affinity.expire after it ended;
// then they go to A, the hash's choice. A user without sessions goes to A
// as soon as A is up; a user moved (POST /v1/users/{user}/move) with its
// session on B goes to A at once, on every node.
func TestAffinityAcrossBackendOutage(t *testing.T) {
	const expire = 4 * time.Second
	users := map[string]string{}
	for i := 0; i < 40; i++ {
		users[fmt.Sprintf("s%d@shared.example", i)] = "secret"
	}
	a := dovecot.Start(t, dovecot.Options{Addr: loopback.Addr(t).String(), Users: users})
	bk := dovecot.Start(t, dovecot.Options{Addr: loopback.Addr(t).String(), Users: users})
	nodes := newCluster(t, 3, a, fmt.Sprintf("affinity: {expire: %s}\n", expire))
	for _, nd := range nodes {
		nd.start()
	}
	waitSeeded(t, nodes)
	// The file's backend dc1 is A; B and the shared pool come through the
	// API.
	for _, w := range []struct {
		path string
		body any
	}{
		{"/v1/backends/b", map[string]any{"host": bk.Addr, "imap_port": bk.IMAPPort, "pop3_port": bk.POP3Port, "forward": "id"}},
		{"/v1/pools/shared", map[string]any{"backends": []string{"dc1", "b"}, "shared_storage": true}},
		{"/v1/routes/domains/shared.example", map[string]any{"pool": "shared"}},
	} {
		if code, body, err := nodes[1].api("PUT", w.path, w.body); err != nil || code >= 300 {
			t.Fatalf("PUT %s: %d %s %v", w.path, code, body, err)
		}
	}
	// Three users whose hash's choice is A: one will hold a session, one
	// has none, one holds a session and is moved.
	var homed []string
	waitFor(t, "the shared pool on every node, and three users homed on A", 20*time.Second, func() bool {
		homed = homed[:0]
		for i := 0; i < 40 && len(homed) < 3; i++ {
			u := fmt.Sprintf("s%d@shared.example", i)
			homes := 0
			for _, nd := range nodes {
				if be, _ := lookupVia(nd, u); be == "dc1" {
					homes++
				}
			}
			if homes == len(nodes) {
				homed = append(homed, u)
			}
		}
		return len(homed) == 3
	})
	user, other, mover := homed[0], homed[1], homed[2]
	t.Logf("%s, %s and %s homed on A (dc1)", user, other, mover)

	// A goes down: every node sends both to B.
	a.Stop()
	waitFor(t, "A marked down on every node", 20*time.Second, func() bool {
		for _, nd := range nodes {
			if be, _ := lookupVia(nd, user); be != "b" {
				return false
			}
		}
		return true
	})
	// The user logs in through n1 (lands on B) and holds IDLE; so does the
	// mover, through n2.
	idleOn := func(nd *procNode, u string) (*imapclient.Client, *imapclient.IdleCommand) {
		t.Helper()
		c, err := imapclient.DialInsecure(nd.imap, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.Login(u, "secret").Wait(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
		idle, err := c.Idle()
		if err != nil {
			t.Fatal(err)
		}
		if bk.WaitLogins(u, 1, 5*time.Second) != 1 {
			t.Fatalf("%s's login did not reach B", u)
		}
		return c, idle
	}
	c, idle := idleOn(nodes[0], user)
	idleOn(nodes[1], mover)
	// The bindings reach the other nodes (each count logged as it changes,
	// so that a timeout says which node went without).
	entries := ""
	waitFor(t, "n1's and n2's bindings gossiped to the others", 10*time.Second, func() bool {
		got := fmt.Sprintf("n1 local %d remote %d, n2 local %d remote %d, n3 remote %d",
			metricOf(nodes[0], `portico_affinity_entries{source="local"}`), metricOf(nodes[0], `portico_affinity_entries{source="remote"}`),
			metricOf(nodes[1], `portico_affinity_entries{source="local"}`), metricOf(nodes[1], `portico_affinity_entries{source="remote"}`),
			metricOf(nodes[2], `portico_affinity_entries{source="remote"}`))
		if got != entries {
			t.Logf("affinity entries: %s", got)
			entries = got
		}
		return got == "n1 local 1 remote 1, n2 local 1 remote 1, n3 remote 2"
	})

	// A comes back up on the same address and is healthy everywhere: the
	// user without sessions goes to A again.
	a2 := dovecot.Start(t, dovecot.Options{Addr: a.Addr, IMAPPort: a.IMAPPort, POP3Port: a.POP3Port, Users: users})
	waitFor(t, "A up again on every node", 20*time.Second, func() bool {
		for _, nd := range nodes {
			if be, steered := lookupVia(nd, other); be != "dc1" || steered {
				return false
			}
		}
		return true
	})
	loginAt := func(nd *procNode, u string) {
		t.Helper()
		if err := loginVia(t, nd.imap, u, "secret"); err != nil {
			t.Fatalf("login %s via %s: %v", u, nd.name, err)
		}
	}
	loginAt(nodes[1], other)
	if a2.WaitLogins(other, 1, 5*time.Second) != 1 {
		t.Fatalf("%s (no sessions) did not go to A once A was back", other)
	}

	// A move (here to the same pool) clears the mover's affinity on every
	// node before its session is ended: at once, not after
	// affinity.expire, every node sends it to the hash's choice.
	for _, nd := range nodes {
		if be, steered := lookupVia(nd, mover); be != "b" || !steered {
			t.Fatalf("%s: lookup of %s gives %s (steered %v), want b by affinity", nd.name, mover, be, steered)
		}
	}
	code, body, err := nodes[2].api("POST", "/v1/users/"+mover+"/move", map[string]string{"to": "shared"})
	if err != nil || code != 200 {
		t.Fatalf("move %s: %d %s %v", mover, code, body, err)
	}
	var moved struct{ Kicked int }
	if json.Unmarshal(body, &moved); moved.Kicked != 1 {
		t.Fatalf("move kicked %d sessions, want 1: %s", moved.Kicked, body)
	}
	for _, nd := range nodes {
		if be, steered := lookupVia(nd, mover); be != "dc1" || steered {
			t.Fatalf("%s: right after the move, lookup of %s gives %s (steered %v), want dc1", nd.name, mover, be, steered)
		}
	}
	loginAt(nodes[0], mover)
	if a2.WaitLogins(mover, 1, 5*time.Second) != 1 || bk.Logins(mover) != 1 {
		t.Fatalf("%s after the move: %d logins on A, %d on B; want 1 and 1", mover, a2.Logins(mover), bk.Logins(mover))
	}

	// The user with a session: every node says B (steered), and new
	// logins through every node land on B, none on A.
	for _, nd := range nodes {
		if be, steered := lookupVia(nd, user); be != "b" || !steered {
			t.Fatalf("%s: lookup of %s gives %s (steered %v), want b by affinity", nd.name, user, be, steered)
		}
	}
	for i, nd := range nodes {
		loginAt(nd, user)
		if got := bk.WaitLogins(user, 2+i, 5*time.Second); got != 2+i {
			t.Fatalf("login via %s: B has %d logins of %s, want %d", nd.name, got, user, 2+i)
		}
	}
	if n := a2.Logins(user); n != 0 {
		t.Fatalf("%d logins of %s reached A while its session was open on B", n, user)
	}
	for _, nd := range nodes {
		if n := metricOf(nd, "portico_affinity_steered_total"); n < 1 {
			t.Errorf("%s: portico_affinity_steered_total %d, want at least 1", nd.name, n)
		}
	}

	// The IDLE session ends. Until affinity.expire has passed the user
	// still goes to B; then to A, through every node.
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	ended := time.Now()
	loginAt(nodes[2], user)
	if got := bk.WaitLogins(user, 5, 5*time.Second); got != 5 {
		t.Fatalf("login right after the session ended: B has %d logins of %s, want 5", got, user)
	}
	if since := time.Since(ended); since >= expire {
		t.Fatalf("the login after the session took %v, longer than affinity.expire: the check proved nothing", since)
	}
	last := time.Now()
	took := waitFor(t, "the user's affinity expired on every node", 30*time.Second, func() bool {
		for _, nd := range nodes {
			if be, _ := lookupVia(nd, user); be != "dc1" {
				return false
			}
		}
		return true
	})
	// Later than a few gossip rounds after affinity.expire: a node did
	// not hear that a binding ended until a push/pull (15 s) told it.
	if took > expire+5*time.Second {
		t.Fatalf("affinity ended %v after the user's last session, affinity.expire is %v: the end of a binding did not reach every node at once", took, expire)
	}
	if took < expire-time.Second {
		t.Fatalf("affinity ended %v after the user's last session, before affinity.expire (%v)", took, expire)
	}
	t.Logf("affinity ended %v after the last session (affinity.expire %v)", time.Since(last).Round(time.Millisecond), expire)
	for i, nd := range nodes {
		loginAt(nd, user)
		if got := a2.WaitLogins(user, 1+i, 5*time.Second); got != 1+i {
			t.Fatalf("login via %s after expiry: A has %d logins of %s, want %d", nd.name, got, user, 1+i)
		}
	}
	if n := bk.Logins(user); n != 5 {
		t.Fatalf("B has %d logins of %s, want still 5", n, user)
	}
}

package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
)

// imapAttempt logs in over a raw connection and returns the tagged reply
// to LOGIN, or an error when there was none (node down, connection lost).
func imapAttempt(addr, user, pass string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	br := bufio.NewReader(c)
	if l, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(l, "* OK") {
		return "", fmt.Errorf("greeting %q: %v", l, err)
	}
	fmt.Fprintf(c, "a LOGIN %s %s\r\n", user, pass)
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(l, "a ") {
			fmt.Fprintf(c, "z LOGOUT\r\n")
			return strings.TrimSpace(l), nil
		}
	}
}

// readyz returns a node's /readyz status and reasons (0 when unreachable).
func readyzOf(nd *procNode) (int, []string) {
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + nd.admin + "/readyz")
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var b struct{ Reasons []string }
	_ = json.NewDecoder(resp.Body).Decode(&b)
	return resp.StatusCode, b.Reasons
}

// A node killed and restarted while clients log in through it with good
// passwords: until its routing table has caught up with the cluster the
// answer is NO [UNAVAILABLE], never an authentication failure, even for a
// user whose route was written while it was down, behind several hundred
// other writes (more than one batch of raft entries to catch up).
func TestRestartedNodeNeverRefusesGoodPassword(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	users := map[string]string{"alice@example.com": "secret", "bob@example.com": "secret"}
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.134", Users: users})
	nodes := newClusterWith(t, 3, 3, "1h", 3, dc, `
routes:
  users: {alice@example.com: {backend: dc1}}
`)
	for _, nd := range nodes {
		nd.start()
	}
	waitFor(t, "a leader", 20*time.Second, func() bool { return leaderOf(nodes) != "" })
	waitSeeded(t, nodes)
	var victim *procNode
	leader := nodeByName(nodes, leaderOf(nodes))
	for _, nd := range nodes {
		if nd != leader {
			victim = nd
		}
	}
	waitFor(t, victim.name+" ready", 20*time.Second, func() bool { c, _ := readyzOf(victim); return c == 200 })
	if r, err := imapAttempt(victim.imap, "alice@example.com", "secret"); err != nil || !strings.HasPrefix(r, "a OK") {
		t.Fatalf("login through %s before the restart: %q %v", victim.name, r, err)
	}

	// Clients hammer logins through the victim with good passwords.
	var (
		ok, unavailable, down atomic.Int64
		badMu                 sync.Mutex
		bad                   []string
		bobOK                 atomic.Int64
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, u := range []string{"alice@example.com", "bob@example.com"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := imapAttempt(victim.imap, u, "secret")
				switch {
				case err != nil:
					down.Add(1)
					time.Sleep(20 * time.Millisecond)
				case strings.HasPrefix(r, "a OK"):
					ok.Add(1)
					if u == "bob@example.com" {
						bobOK.Add(1)
					}
				case strings.Contains(r, "[UNAVAILABLE]"):
					unavailable.Add(1)
				default:
					badMu.Lock()
					bad = append(bad, u+": "+r)
					badMu.Unlock()
				}
			}
		}()
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	victim.kill()
	// While it is down: 300 writes, then bob's route, the last one.
	for i := 0; i < 300; i++ {
		if code, b, err := leader.api("PUT", fmt.Sprintf("/v1/routes/users/filler%d@example.com", i), map[string]string{"backend": "dc1"}); err != nil || code != 200 {
			t.Fatalf("write %d: %d %s %v", i, code, b, err)
		}
	}
	if code, b, err := leader.api("PUT", "/v1/routes/users/bob@example.com", map[string]string{"backend": "dc1"}); err != nil || code != 200 {
		t.Fatalf("bob's route: %d %s %v", code, b, err)
	}
	ok.Store(0)
	unavailable.Store(0)
	victim.start()

	// Readiness while it catches up.
	var saw503 atomic.Value
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if c, reasons := readyzOf(victim); c == 503 && saw503.Load() == nil {
				saw503.Store(strings.Join(reasons, "; "))
			}
		}
	}()
	took := waitFor(t, "bob logged in through the restarted node", 60*time.Second, func() bool { return bobOK.Load() >= 3 })
	waitFor(t, victim.name+" ready again", 20*time.Second, func() bool { c, _ := readyzOf(victim); return c == 200 })
	close(stop)
	wg.Wait()
	t.Logf("after the restart: %d logins ok, %d unavailable, %d without an answer (starting); bob's first logins within %v; first /readyz 503: %v",
		ok.Load(), unavailable.Load(), down.Load(), took.Round(time.Millisecond), saw503.Load())
	if len(bad) > 0 {
		t.Fatalf("%d logins with a good password refused otherwise than UNAVAILABLE, first: %s", len(bad), bad[0])
	}
}

// /readyz in a multi-node cluster: a node that cannot reach a quorum
// (here the last of three running) answers 503 with the reason after an
// election's time, while it still serves logins from its copy of the
// table; 200 again once the others are back.
func TestReadyzWithoutQuorum(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.135", Users: map[string]string{"alice@example.com": "secret"}})
	nodes := newClusterWith(t, 3, 3, "1h", 3, dc, `
routes:
  users: {alice@example.com: {backend: dc1}}
`)
	for _, nd := range nodes {
		nd.start()
	}
	waitFor(t, "a leader", 20*time.Second, func() bool { return leaderOf(nodes) != "" })
	waitSeeded(t, nodes)
	waitFor(t, "every node ready", 20*time.Second, func() bool {
		for _, nd := range nodes {
			if c, _ := readyzOf(nd); c != 200 {
				return false
			}
		}
		return true
	})

	survivor := nodes[0]
	lost := time.Now()
	nodes[1].kill()
	nodes[2].kill()
	var reasons []string
	took := waitFor(t, survivor.name+" not ready without a quorum", 20*time.Second, func() bool {
		var c int
		c, reasons = readyzOf(survivor)
		return c == 503
	})
	t.Logf("quorum lost: /readyz 503 after %v: %q", took.Round(time.Millisecond), reasons)
	if len(reasons) != 1 || !strings.HasPrefix(reasons[0], "cluster: no raft leader for ") {
		t.Fatalf("reasons %q, want the cluster check only", reasons)
	}
	if since := time.Since(lost); since < 2*time.Second {
		t.Fatalf("503 after %v: an ordinary election must not make a node unready", since)
	}
	// Logins still work from the node's copy of the table.
	if r, err := imapAttempt(survivor.imap, "alice@example.com", "secret"); err != nil || !strings.HasPrefix(r, "a OK") {
		t.Fatalf("login through the node without quorum: %q %v", r, err)
	}

	nodes[1].start()
	nodes[2].start()
	took = waitFor(t, "every node ready again", 60*time.Second, func() bool {
		for _, nd := range nodes {
			if c, _ := readyzOf(nd); c != 200 {
				return false
			}
		}
		return true
	})
	t.Logf("quorum back: every node ready %v after the restart", took.Round(time.Millisecond))
}

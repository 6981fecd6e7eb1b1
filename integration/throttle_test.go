package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
)

// throttleUsers are the Dovecot users of the throttle tests.
var throttleUsers = map[string]string{"alice": "secret", "bob": "secret", "carol": "secret"}

// backendAttempts counts the logins of user that reached Dovecot, failed
// ones included: imap-login and pop3-login log one line per client
// connection that tried to authenticate ("Login: user=<...>" or
// "Disconnected (auth failed, ...): user=<...>"), and Portico opens one
// backend connection per attempt.
func backendAttempts(dc *dovecot.Server, user string) int {
	re := regexp.MustCompile(`-login: Info: (Login|.*auth failed.*): user=<` + regexp.QuoteMeta(user) + `>`)
	return len(re.FindAllString(dc.Log(), -1))
}

// waitAttempts waits until Dovecot logged n attempts of user.
func waitAttempts(t *testing.T, dc *dovecot.Server, user string, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d backend attempts of %s", n, user), 10*time.Second, func() bool {
		return backendAttempts(dc, user) >= n
	})
}

// fromIP is a raw client connecting from a chosen loopback address.
func fromIP(t *testing.T, src, addr string) *lineConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &lineConn{t: t, c: c, br: bufio.NewReader(c)}
}

// imapLogin logs in once from src and returns the tagged reply.
func imapLogin(t *testing.T, src, addr, user, pass string) string {
	t.Helper()
	lc := fromIP(t, src, addr)
	lc.until("* OK")
	lc.send(fmt.Sprintf("a LOGIN %s %s\r\n", user, pass))
	reply := lc.until("a ")
	lc.c.Close()
	return reply
}

// awayFromWindowEdge waits, if need be, until the throttle's clock-aligned
// window (of length window) has at least need left: failures counted in
// the previous window weigh (1 - elapsed share) in the sliding count, so
// limit failures straddling a window's start count as a little less than
// limit, and a test expecting the limit to be reached at exactly that
// count fails (it did, at 10:50:00 with the 10-minute default). Tests
// that count to a limit use a 24 h window, whose edge is midnight UTC.
func awayFromWindowEdge(t *testing.T, window, need time.Duration) {
	t.Helper()
	now := time.Now()
	left := window - time.Duration(now.UnixMilli()%window.Milliseconds())*time.Millisecond
	if left < need {
		t.Logf("waiting %v for the throttle window's edge to pass", left+time.Second)
		time.Sleep(left + time.Second)
	}
}

// Real logins through one node against Dovecot: failures from one address
// block that user there (and only there), a blocked attempt never reaches
// the backend, the right password works from another address, a network
// failing for several users is blocked for all, POP3 gets [SYS/TEMP], and
// the block ends after block_for.
func TestThrottleSingleNode(t *testing.T) {
	awayFromWindowEdge(t, 24*time.Hour, time.Minute)
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.101", Users: throttleUsers})
	p := startPortico(t, fmt.Sprintf(`
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0"}
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0"}
limits: {auth_failure_delay: 10ms}
throttle:
  window: 24h
  trusted_networks: [127.0.0.1]
  delay: 20ms
  max_delay: 80ms
  user_ip_limit: 3
  ip_limit: 5
  block_for: 4s
backends:
  - {id: dc1, host: %s, imap_port: %d, pop3_port: %d, forward: id}
pools:
  - {name: main, backends: [dc1]}
routes:
  default_pool: main
`, dc.Addr, dc.IMAPPort, dc.POP3Port))
	imapAddr, pop3Addr := p.addr("imap"), p.addr("pop3")
	const attacker, home, sprayer, trusted = "127.0.0.121", "127.0.0.122", "127.0.0.123", "127.0.0.1"

	// Three wrong passwords for alice from the attacker's address: each
	// reaches Dovecot, each reply waits longer.
	var last time.Duration
	for i := 1; i <= 3; i++ {
		start := time.Now()
		if r := imapLogin(t, attacker, imapAddr, "alice", fmt.Sprint("guess", i)); !strings.Contains(r, "NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("attempt %d: %q", i, r)
		}
		last = time.Since(start)
		waitAttempts(t, dc, "alice", i)
	}
	if last < 80*time.Millisecond {
		t.Errorf("third failure answered after %v, want the progressive delay (80ms)", last)
	}

	// Blocked now, even with the right password, without asking Dovecot.
	if r := imapLogin(t, attacker, imapAddr, "alice", "secret"); r != "a NO [UNAVAILABLE] Too many failed logins, try again later.\r\n" {
		t.Errorf("blocked IMAP login: %q", r)
	}
	pc := fromIP(t, attacker, pop3Addr)
	pc.until("+OK")
	pc.send("USER alice\r\n")
	pc.until("+OK")
	pc.send("PASS secret\r\n")
	if r := pc.line(); r != "-ERR [SYS/TEMP] Too many failed logins, try again later.\r\n" {
		t.Errorf("blocked POP3 login: %q", r)
	}
	// The real alice, elsewhere, logs in; bob from the attacker's address
	// too (the block is for alice from there).
	if r := imapLogin(t, home, imapAddr, "alice", "secret"); !strings.HasPrefix(r, "a OK") {
		t.Errorf("alice from another address: %q", r)
	}
	if r := imapLogin(t, attacker, imapAddr, "bob", "secret"); !strings.HasPrefix(r, "a OK") {
		t.Errorf("bob from the attacker's address: %q", r)
	}
	waitAttempts(t, dc, "alice", 4)
	waitAttempts(t, dc, "bob", 1)
	// Give Dovecot time to log anything else, then check the blocked
	// attempts never reached it: 3 failures + 1 login from home.
	time.Sleep(500 * time.Millisecond)
	if n := backendAttempts(dc, "alice"); n != 4 {
		t.Errorf("Dovecot saw %d attempts of alice, want 4 (blocked ones must not reach it)", n)
	}
	if n := dc.Logins("alice"); n != 1 {
		t.Errorf("Dovecot logged %d logins of alice, want 1", n)
	}

	// Password spraying from one address: ip_limit (5) blocks it for everyone.
	for i, u := range []string{"bob", "carol", "dave", "erin", "frank"} {
		if r := imapLogin(t, sprayer, imapAddr, u, "Summer2026"); !strings.Contains(r, "NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("spray %d: %q", i, r)
		}
	}
	if r := imapLogin(t, sprayer, imapAddr, "carol", "secret"); !strings.Contains(r, "NO [UNAVAILABLE] Too many failed logins") {
		t.Errorf("sprayer not blocked: %q", r)
	}
	// A trusted address is never counted.
	for i := 0; i < 4; i++ {
		imapLogin(t, trusted, imapAddr, "carol", "wrong")
	}
	if r := imapLogin(t, trusted, imapAddr, "carol", "secret"); !strings.HasPrefix(r, "a OK") {
		t.Errorf("trusted address: %q", r)
	}

	mfs, _ := scrape(t, p)
	for _, c := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"portico_throttle_blocked_total", l("scope", "user_ip"), 2},
		{"portico_throttle_blocked_total", l("scope", "ip"), 1},
		{"portico_throttle_blocks_total", l("scope", "ip"), 1},
		{"portico_throttle_delayed_total", nil, 8},
		{"portico_throttle_entries", l("scope", "user_ip"), 2},
		{"portico_logins_total", l("result", "limit"), 3},
	} {
		if v, _ := value(mfs, c.name, c.labels); v < c.min {
			t.Errorf("%s%v = %v, want >= %v", c.name, c.labels, v, c.min)
		}
	}

	// After block_for, the right password works from the attacker's
	// address again (the counts are still in the window: one more failure
	// would block again at once).
	waitFor(t, "the block to end", 10*time.Second, func() bool {
		return strings.HasPrefix(imapLogin(t, attacker, imapAddr, "alice", "secret"), "a OK")
	})
}

// Three real portico processes: failures spread over the nodes add up (an
// attacker gains nothing by spreading), a block reaches every node, and a
// node restarted (killed) learns it back from the others.
func TestThrottleCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	awayFromWindowEdge(t, 24*time.Hour, 3*time.Minute)
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.102", Users: throttleUsers})
	nodes := newCluster(t, 3, dc, `routes: {default_pool: main}
throttle:
  window: 24h
  trusted_networks: []
  delay: 10ms
  max_delay: 20ms
  ip_limit: 3
  user_ip_limit: 100
  block_for: 2m
`)
	for _, nd := range nodes {
		nd.start()
	}
	waitSeeded(t, nodes)
	const attacker = "127.0.0.125"
	// One failure on each node (different users: the ip rule).
	for i, nd := range nodes {
		u := []string{"bob", "carol", "nobody"}[i]
		if r := imapLogin(t, attacker, nd.imap, u, "guess"); !strings.Contains(r, "NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("%s: %q", nd.name, r)
		}
		if i+1 == len(nodes) {
			break
		}
		// The next node hears of the failures so far (one user entry
		// each) before the attacker's next try, as it would with a real
		// attacker, whose replies are delayed.
		next := nodes[i+1]
		waitFor(t, next.name+" hearing of the failures", 20*time.Second, func() bool {
			return metricValue(t, next, `portico_throttle_entries{scope="user"}`) >= float64(i+1)
		})
	}
	// The third failure (on n3) saw the two others: the address is blocked
	// on every node. Probing with alice's right password is harmless: it
	// would only clear alice's own record.
	for _, nd := range nodes {
		waitFor(t, "the block on "+nd.name, 5*time.Second, func() bool {
			return strings.Contains(imapLogin(t, attacker, nd.imap, "alice", "secret"), "NO [UNAVAILABLE] Too many failed logins")
		})
	}
	before := backendAttempts(dc, "alice")
	// Restart n1 from scratch (kill -9: nothing saved): it learns the block
	// back from the others at its first push/pull.
	nodes[0].kill()
	nodes[0].start()
	waitFor(t, "n1 ready again", 20*time.Second, func() bool {
		code, _, err := nodes[0].api("GET", "/readyz", nil)
		return err == nil && code == 200
	})
	waitFor(t, "the block on the restarted n1", 15*time.Second, func() bool {
		return strings.Contains(imapLogin(t, attacker, nodes[0].imap, "alice", "secret"), "NO [UNAVAILABLE] Too many failed logins")
	})
	if n := backendAttempts(dc, "alice"); n != before {
		t.Errorf("blocked attempts reached Dovecot (%d -> %d)", before, n)
	}
	// Every node still serves alice from another address.
	for _, nd := range nodes {
		if r := imapLogin(t, "127.0.0.126", nd.imap, "alice", "secret"); !strings.HasPrefix(r, "a OK") {
			t.Errorf("%s: alice from elsewhere: %q", nd.name, r)
		}
	}
	// Each node counted the attempt it refused.
	for _, nd := range nodes {
		if v := metricValue(t, nd, `portico_throttle_blocked_total{scope="ip"}`); v < 1 {
			t.Errorf("%s: portico_throttle_blocked_total{scope=\"ip\"} = %v", nd.name, v)
		}
	}

	// The help desk: the block is listed on any node, and lifted on every
	// node by one command on one of them.
	out, err := nodes[1].cli("throttle", "list", "--ip", attacker, "--json")
	var entries []struct {
		Scope   string `json:"scope"`
		Network string `json:"network"`
		Blocked bool   `json:"blocked"`
	}
	if err != nil || json.Unmarshal([]byte(out), &entries) != nil {
		t.Fatalf("throttle list: %v\n%s", err, out)
	}
	if len(entries) == 0 || entries[0].Scope != "ip" || entries[0].Network != attacker+"/32" || !entries[0].Blocked {
		t.Fatalf("throttle list --ip %s: %s", attacker, out)
	}
	if out, err := nodes[1].cli("throttle", "list"); err != nil || !strings.Contains(out, attacker+"/32") {
		t.Fatalf("throttle list (table): %v\n%s", err, out)
	}
	if out, err := nodes[2].cli("throttle", "unblock"); err == nil {
		t.Fatalf("unblock without a user or an address: %s", out)
	}
	if out, err := nodes[2].cli("throttle", "unblock", "--ip", attacker); err != nil || !strings.Contains(out, "reset ") {
		t.Fatalf("throttle unblock: %v\n%s", err, out)
	}
	// The reset is broadcast at once; a broadcast lost on a loaded
	// machine is made good by the next push/pull (every 15 s), which
	// carries the reset too.
	for _, nd := range nodes {
		waitFor(t, "the unblock on "+nd.name, 40*time.Second, func() bool {
			return strings.HasPrefix(imapLogin(t, attacker, nd.imap, "alice", "secret"), "a OK")
		})
	}
}

// metricValue scrapes a process node and returns one series' value (-1
// when absent).
func metricValue(t *testing.T, nd *procNode, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + nd.admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v
			}
		}
	}
	return -1
}

package integration

import (
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/portico-mail/portico/integration/dovecot"
)

// proxiedIMAP connects to a proxy_protocol listener as the client src (a
// PROXY v2 header from the trusted balancer at 127.0.0.1) and reads the
// greeting.
func proxiedIMAP(t *testing.T, addr, src string) *lineConn {
	t.Helper()
	l := dialLine(t, addr, false)
	h := proxyproto.HeaderProxyFromAddrs(2, tcpAddr(src), tcpAddr("203.0.113.1:143"))
	if _, err := h.WriteTo(l.c); err != nil {
		t.Fatal(err)
	}
	l.until("* OK")
	return l
}

// Issue 10, ID smuggling against real Dovecot. Dovecot trusts Portico
// (login_trusted_networks) and so takes the client address from its ID;
// carol may only log in from 10.66.0.0/16 (passdb allow_nets). A client at
// 198.51.100.23 sends ID lists crafted to smuggle x-originating-ip
// 10.66.6.6 (the literal-key shift of the attack, and plain, upper-case and
// literal reserved keys): Dovecot never sees 10.66.6.6, logs the real
// address, and refuses carol, while alice, with the same ID, logs in with
// rip=198.51.100.23.
func TestIDSmugglingDovecotAllowNets(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.111",
		Users:      map[string]string{"alice": "secret", "carol": "secret"},
		UserFields: map[string]string{"carol": "allow_nets=10.66.0.0/16"}})

	// Control: what the attack is after. A trusted proxy's x-originating-ip
	// is honoured and admits carol; from elsewhere allow_nets refuses her.
	direct := dialLine(t, dc.IMAPAddr, false)
	direct.until("* OK")
	direct.send("a LOGIN carol secret\r\n")
	if r := direct.until("a "); !strings.HasPrefix(r, "a NO") {
		t.Fatalf("carol from 127.0.0.1 (outside allow_nets), directly: %q", r)
	}
	direct = dialLine(t, dc.IMAPAddr, false)
	direct.until("* OK")
	direct.send("a ID (\"x-originating-ip\" \"10.66.6.6\")\r\nb LOGIN carol secret\r\n")
	if r := direct.until("b "); !strings.HasPrefix(r, "b OK") {
		t.Fatalf("carol as 10.66.6.6 through a trusted connection, directly: %q (Dovecot does not act on x-originating-ip here; the test proves nothing)", r)
	}
	direct.c.Close()
	if ips := dc.LoginRemoteIPs("carol"); len(ips) != 1 || ips[0] != "10.66.6.6" {
		dc.WaitLogins("carol", 1, 5*time.Second)
		if ips = dc.LoginRemoteIPs("carol"); len(ips) != 1 || ips[0] != "10.66.6.6" {
			t.Fatalf("control login rip=%v", ips)
		}
	}
	smuggledBefore := strings.Count(dc.Log(), "10.66.6.6")

	p := startPortico(t, fmt.Sprintf(`
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0", proxy_protocol: true, trusted_proxies: [127.0.0.1]}
limits: {auth_failure_delay: 10ms}
throttle: {delay: 0s}
backends:
  - {id: dc1, host: %s, imap_port: %d, forward: id}
pools:
  - {name: main, backends: [dc1]}
routes:
  default_pool: main
`, dc.Addr, dc.IMAPPort))
	const client = "198.51.100.23"
	attacks := []string{
		// The reported attack: a literal key with CR LF shifted the list.
		"a ID ({4+}\r\nx\r\ny \"x-originating-ip\" \"10.66.6.6\" \"zz\" \"x-originating-port\" \"1\")\r\n",
		"a ID (\"x-originating-ip\" \"10.66.6.6\" \"name\" \"m\")\r\n",
		"a ID (\"X-Originating-IP\" \"10.66.6.6\")\r\n",
		"a ID ({16+}\r\nx-originating-ip {9+}\r\n10.66.6.6)\r\n",
		"a ID (\"x-forward-originating-ip\" \"10.66.6.6\" \"x-connected-ip\" \"10.66.6.6\")\r\n",
		"a ID ({1+}\r\n\x00 \"x-originating-ip\" \"10.66.6.6\" \"zz\")\r\n",
	}
	for i, attack := range attacks {
		l := proxiedIMAP(t, p.addr("imap"), fmt.Sprintf("%s:%d", client, 40000+i))
		l.send(attack)
		l.until("a ")
		l.send("b LOGIN carol secret\r\n")
		if r := l.until("b "); !strings.HasPrefix(r, "b NO") {
			t.Errorf("attack %d: carol logged in from outside allow_nets: %q", i, r)
		}
		l.c.Close()
	}
	// alice with the attack's ID: logged in, with the real address.
	l := proxiedIMAP(t, p.addr("imap"), client+":41000")
	l.send(attacks[0])
	l.until("a ")
	l.send("b LOGIN alice secret\r\n")
	if r := l.until("b "); !strings.HasPrefix(r, "b OK") {
		t.Fatalf("alice: %q", r)
	}
	dc.WaitLogins("alice", 1, 5*time.Second)
	if ips := dc.LoginRemoteIPs("alice"); len(ips) != 1 || ips[0] != client {
		t.Errorf("Dovecot logged alice with rip=%v, want %s", ips, client)
	}
	// Every carol attempt reached Dovecot as the real client and was refused
	// by allow_nets; 10.66.6.6 appears nowhere new in the log.
	refused := regexp.MustCompile(`passwd-file\(carol,` + regexp.QuoteMeta(client) + `,[^)]*\): allow_nets check failed`)
	waitFor(t, "Dovecot's allow_nets refusals of carol", 10*time.Second, func() bool {
		return len(refused.FindAllString(dc.Log(), -1)) >= len(attacks)
	})
	if n := strings.Count(dc.Log(), "10.66.6.6"); n != smuggledBefore {
		t.Errorf("the smuggled address reached Dovecot: %d new mentions in its log", n-smuggledBefore)
	}
	if n := dc.Logins("carol"); n != 1 {
		t.Errorf("carol logged in %d times, want only the control login", n)
	}
}

// Issue 10, throttle burst against real Dovecot: 40 wrong passwords for one
// user sent at once on parallel connections from one address reach Dovecot
// at most user_ip_limit (10) times; the others are refused by Portico.
func TestThrottleParallelBurstDovecot(t *testing.T) {
	awayFromWindowEdge(t, 24*time.Hour, time.Minute)
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.112", Users: throttleUsers})
	p := startPortico(t, fmt.Sprintf(`
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0", proxy_protocol: true, trusted_proxies: [127.0.0.1]}
limits: {auth_failure_delay: 10ms}
throttle: {delay: 0s, window: 24h}
backends:
  - {id: dc1, host: %s, imap_port: %d, forward: id}
pools:
  - {name: main, backends: [dc1]}
routes:
  default_pool: main
`, dc.Addr, dc.IMAPPort))
	const n = 40
	conns := make([]*lineConn, n)
	for i := range conns {
		conns[i] = proxiedIMAP(t, p.addr("imap"), fmt.Sprintf("198.51.100.50:%d", 42000+i))
	}
	replies := make([]string, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, l := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if _, err := l.c.Write([]byte("a LOGIN alice wrong\r\n")); err != nil {
				replies[i] = err.Error()
				return
			}
			s, err := l.br.ReadString('\n')
			if err != nil {
				s = err.Error()
			}
			replies[i] = s
		}()
	}
	close(start)
	wg.Wait()
	failed, limited := 0, 0
	for _, r := range replies {
		switch {
		case strings.HasPrefix(r, "a NO [AUTHENTICATIONFAILED]"):
			failed++
		case strings.HasPrefix(r, "a NO [UNAVAILABLE] Too many failed logins"):
			limited++
		default:
			t.Errorf("reply %q", r)
		}
	}
	if failed > 10 || failed == 0 || failed+limited != n {
		t.Errorf("%d wrong passwords reached Dovecot (limit 10), %d refused by the throttle", failed, limited)
	}
	waitAttempts(t, dc, "alice", failed)
	// Dovecot logs asynchronously: give it a moment to show any attempt
	// beyond those the clients were answered for.
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if got := backendAttempts(dc, "alice"); got > 10 {
			t.Fatalf("Dovecot saw %d attempts of alice, limit 10", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("of %d parallel wrong passwords, %d reached Dovecot, %d were refused", n, backendAttempts(dc, "alice"), limited)
}

// Issue 10, pre-login resources through a real node: a client kept busy
// with NOOPs is ended at preauth_lifetime; a client that sends commands and
// never reads the replies is disconnected by the write deadline.
func TestPreauthLifetimeAndClientThatNeverReads(t *testing.T) {
	p := startPortico(t, `
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0"}
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0"}
limits: {preauth_timeout: 1s, preauth_lifetime: 2s, max_errors: 1000}
backends:
  - {id: b, host: 127.0.0.1, imap_port: 1, pop3_port: 1}
pools:
  - {name: main, backends: [b]}
routes:
  default_pool: main
`)
	for _, c := range []struct{ listener, cmd, bye string }{
		{"imap", "a NOOP\r\n", "* BYE Login time limit exceeded.\r\n"},
		{"pop3", "CAPA\r\n", "-ERR Login time limit exceeded.\r\n"},
	} {
		l := dialLine(t, p.addr(c.listener), false)
		l.line()
		start := time.Now()
		var last string
		for !strings.Contains(last, "time limit") {
			if time.Since(start) > 10*time.Second {
				t.Fatalf("%s: still open after 10s (lifetime 2s)", c.listener)
			}
			l.send(c.cmd)
			_ = l.c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			for {
				s, err := l.br.ReadString('\n')
				if err != nil {
					break
				}
				last = s
			}
		}
		if last != c.bye {
			t.Errorf("%s: %q", c.listener, last)
		}
		if d := time.Since(start); d < 1900*time.Millisecond {
			t.Errorf("%s: ended after %v, before the 2s lifetime", c.listener, d)
		}
		if !l.closed(5 * time.Second) {
			t.Errorf("%s: not closed after the goodbye", c.listener)
		}
	}
	waitFor(t, "no connection left", 5*time.Second, func() bool { return p.d.Server().Connections() == 0 })

	// 1 MB of CAPABILITY commands whose replies never get read: the
	// session ends (write deadline 1s) while the client still reads nothing.
	c, err := net.Dial("tcp", p.addr("imap"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go c.Write([]byte(strings.Repeat("a CAPABILITY\r\n", 1<<20/14)))
	waitFor(t, "the server to drop the client that never reads", 20*time.Second, func() bool {
		return p.d.Server().Connections() == 0
	})
}

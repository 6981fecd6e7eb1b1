package integration

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pires/go-proxyproto"

	"github.com/portico-mail/portico/integration/dovecot"
)

// singleBackendConfig has one listener of each kind in front of dc.
func singleBackendConfig(t *testing.T, dc *dovecot.Server, extra string) string {
	cert, key := demoCert(t)
	return fmt.Sprintf(`
tls:
  certificates: [{cert: %s, key: %s}]
listeners:
  - {name: imap-plain, protocol: imap, address: "127.0.0.1:0", tls: none}
  - {name: imap-starttls, protocol: imap, address: "127.0.0.1:0", tls: starttls, event_loop: true}
  - {name: imaps, protocol: imap, address: "127.0.0.1:0", tls: implicit, event_loop: true}
  - {name: pop3-plain, protocol: pop3, address: "127.0.0.1:0", tls: none, event_loop: true}
  - {name: pop3-starttls, protocol: pop3, address: "127.0.0.1:0", tls: starttls}
  - {name: pop3s, protocol: pop3, address: "127.0.0.1:0", tls: implicit}
  - {name: imap-proxied, protocol: imap, address: "127.0.0.1:0", proxy_protocol: true, trusted_proxies: [127.0.0.0/8]}
limits:
  auth_failure_delay: 100ms
backends:
  - {id: dc1, host: %s, imap_port: %d, pop3_port: %d, forward: id}
pools:
  - {name: main, backends: [dc1]}
routes:
  default_pool: main
%s`, cert, key, dc.Addr, dc.IMAPPort, dc.POP3Port, extra)
}

func dialIMAP(t *testing.T, p *portico, listener string, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	if opts == nil {
		opts = &imapclient.Options{}
	}
	opts.TLSConfig = clientTLS
	var c *imapclient.Client
	var err error
	switch listener {
	case "imaps":
		c, err = imapclient.DialTLS(p.addr(listener), opts)
	case "imap-starttls":
		c, err = imapclient.DialStartTLS(p.addr(listener), opts)
	default:
		c, err = imapclient.DialInsecure(p.addr(listener), opts)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", listener, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Through each listener kind the go-imap client logs in, selects INBOX,
// appends and fetches a message, and runs IDLE.
func TestIMAPClientThroughEachListener(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.81"})
	p := startPortico(t, singleBackendConfig(t, dc, ""))
	for _, listener := range []string{"imap-plain", "imap-starttls", "imaps"} {
		t.Run(listener, func(t *testing.T) {
			var mu sync.Mutex
			var exists []uint32
			c := dialIMAP(t, p, listener, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
				Mailbox: func(d *imapclient.UnilateralDataMailbox) {
					if d.NumMessages != nil {
						mu.Lock()
						exists = append(exists, *d.NumMessages)
						mu.Unlock()
					}
				},
			}})
			if err := c.Login("alice", "secret").Wait(); err != nil {
				t.Fatalf("login: %v", err)
			}
			// The login reply carried the backend's post-login capabilities.
			if caps := c.Caps(); !caps.Has(imap.CapIdle) {
				t.Errorf("post-login capabilities missing IDLE: %v", caps)
			}
			sel, err := c.Select("INBOX", nil).Wait()
			if err != nil {
				t.Fatal(err)
			}
			before := sel.NumMessages
			body := fmt.Sprintf("From: a@example.com\r\nSubject: via %s\r\n\r\n%s\r\n", listener, strings.Repeat("0123456789", 20000))
			app := c.Append("INBOX", int64(len(body)), nil)
			if _, err := app.Write([]byte(body)); err != nil {
				t.Fatal(err)
			}
			if err := app.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := app.Wait(); err != nil {
				t.Fatalf("append: %v", err)
			}
			msgs, err := c.Fetch(imap.SeqSetNum(before+1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}}).Collect()
			if err != nil || len(msgs) != 1 {
				t.Fatalf("fetch: %v %d", err, len(msgs))
			}
			var got []byte
			for _, b := range msgs[0].BodySection {
				got = b.Bytes
			}
			if !bytes.Equal(got, []byte(body)) {
				t.Fatalf("fetched %d bytes, want %d identical", len(got), len(body))
			}

			// IDLE: a message appended by another session is announced.
			idle, err := c.Idle()
			if err != nil {
				t.Fatal(err)
			}
			other := dialIMAP(t, p, "imaps", nil)
			if err := other.Login("alice", "secret").Wait(); err != nil {
				t.Fatal(err)
			}
			small := "Subject: idle\r\n\r\nhi\r\n"
			a2 := other.Append("INBOX", int64(len(small)), nil)
			a2.Write([]byte(small))
			a2.Close()
			if _, err := a2.Wait(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				mu.Lock()
				n := len(exists)
				var last uint32
				if n > 0 {
					last = exists[n-1]
				}
				mu.Unlock()
				if last >= before+2 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no EXISTS during IDLE (saw %v)", exists)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err := idle.Close(); err != nil {
				t.Fatal(err)
			}
			if err := idle.Wait(); err != nil {
				t.Fatal(err)
			}
			if err := c.Logout().Wait(); err != nil {
				t.Fatal(err)
			}
			other.Logout().Wait()
		})
	}
}

func TestIMAPWrongPasswordThenRetryAndLimit(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.81"})
	p := startPortico(t, singleBackendConfig(t, dc, ""))
	c := dialIMAP(t, p, "imaps", nil)
	if err := c.Login("alice", "wrong").Wait(); err == nil {
		t.Fatal("wrong password accepted")
	}
	if err := c.Login("alice", "secret").Wait(); err != nil {
		t.Fatalf("retry after failure: %v", err)
	}

	l := dialLine(t, p.addr("imaps"), true)
	l.line()
	for i, tag := range []string{"a", "b", "c"} {
		l.send(tag + " LOGIN alice wrong\r\n")
		if got := l.until(tag + " "); !strings.HasPrefix(got, tag+" NO") {
			t.Fatalf("attempt %d: %q", i, got)
		}
	}
	if got := l.line(); !strings.HasPrefix(got, "* BYE") {
		t.Fatalf("after 3 failures: %q", got)
	}
	if !l.closed(5 * time.Second) {
		t.Fatal("not disconnected after too many failures")
	}
}

// A user routed by domain to a pool of two Dovecots always lands on the
// same one.
func TestDomainPoolSameBackend(t *testing.T) {
	users := map[string]string{}
	for i := 0; i < 8; i++ {
		users[fmt.Sprintf("user%d@pool.example", i)] = "secret"
	}
	d1 := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.81", Users: users})
	d2 := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.82", Users: users})
	p := startPortico(t, fmt.Sprintf(`
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0"}
limits: {auth_failure_delay: 10ms}
backends:
  - {id: d1, host: %s, imap_port: %d}
  - {id: d2, host: %s, imap_port: %d}
pools:
  - {name: two, backends: [d1, d2]}
routes:
  domains: {pool.example: two}
`, d1.Addr, d1.IMAPPort, d2.Addr, d2.IMAPPort))
	for round := 0; round < 3; round++ {
		for u := range users {
			c := dialIMAP(t, p, "imap", nil)
			if err := c.Login(u, "secret").Wait(); err != nil {
				t.Fatalf("%s: %v", u, err)
			}
			c.Logout().Wait()
			c.Close()
		}
	}
	used := map[string]int{}
	for u := range users {
		n1 := d1.WaitLogins(u, 0, 0)
		n2 := d2.WaitLogins(u, 0, 0)
		if !(n1 == 3 && n2 == 0 || n1 == 0 && n2 == 3) {
			// The log is written asynchronously: wait for the total first.
			deadline := time.Now().Add(5 * time.Second)
			for d1.Logins(u)+d2.Logins(u) < 3 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			n1, n2 = d1.Logins(u), d2.Logins(u)
		}
		if !(n1 == 3 && n2 == 0 || n1 == 0 && n2 == 3) {
			t.Errorf("%s: %d logins on d1, %d on d2; want all 3 on one", u, n1, n2)
		}
		if n1 > 0 {
			used["d1"]++
		} else {
			used["d2"]++
		}
	}
	if used["d1"] == 0 || used["d2"] == 0 {
		t.Logf("all users on one backend (possible but unlikely): %v", used)
	}
}

// The client's address reaches Dovecot: through a PROXY header from a
// trusted balancer into Portico, and out as IMAP ID x-originating-ip.
func TestClientAddressForwarded(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.81"})
	p := startPortico(t, singleBackendConfig(t, dc, ""))
	l := dialLine(t, p.addr("imap-proxied"), false)
	h := proxyproto.HeaderProxyFromAddrs(2, tcpAddr("198.51.100.23:40000"), tcpAddr("203.0.113.1:143"))
	if _, err := h.WriteTo(l.c); err != nil {
		t.Fatal(err)
	}
	l.line()
	l.send("a LOGIN alice secret\r\n")
	if got := l.until("a "); !strings.HasPrefix(got, "a OK") {
		t.Fatal(got)
	}
	dc.WaitLogins("alice", 1, 5*time.Second)
	ips := dc.LoginRemoteIPs("alice")
	if len(ips) == 0 || ips[len(ips)-1] != "198.51.100.23" {
		t.Fatalf("dovecot saw rip=%v, want 198.51.100.23", ips)
	}
}

// A relayed session outlives the pre-login timeout: deadlines from the
// pre-login phase are cleared at the hand-off.
func TestRelayedSessionOutlivesPreauthTimeout(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.81"})
	cfg := strings.Replace(singleBackendConfig(t, dc, ""), "auth_failure_delay: 100ms", "auth_failure_delay: 100ms\n  preauth_timeout: 1s", 1)
	p := startPortico(t, cfg)
	for _, listener := range []string{"imap-plain", "imaps"} {
		c := dialIMAP(t, p, listener, nil)
		if err := c.Login("alice", "secret").Wait(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond)
		if err := c.Noop().Wait(); err != nil {
			t.Fatalf("%s: NOOP after the pre-login timeout: %v", listener, err)
		}
		c.Logout().Wait()
	}
}

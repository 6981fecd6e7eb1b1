package integration

import (
	"bufio"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/portico-mail/portico/integration/dovecot"
)

// Backends with forward: proxy behind a Dovecot that requires the PROXY
// header on every listener (haproxy = yes): the health probe sends the
// header (LOCAL: the node's own connection) and speaks the backend's TLS
// as configured, so every such backend stays up; logins through Portico
// reach Dovecot with the client's address (rip=). A backend entry for the
// same Dovecot without the header is marked down: the probes are real.
func TestForwardProxyBackendsHealthy(t *testing.T) {
	users := map[string]string{"alice": "secret", "bob": "secret", "carol": "secret", "dave": "secret", "erin": "secret"}
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.132", Users: users, HAProxy: true, ImplicitTLS: true})
	const clientIP = "127.0.0.133"
	p := startPortico(t, fmt.Sprintf(`
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.131:0"}
  - {name: pop3, protocol: pop3, address: "127.0.0.131:0"}
limits: {auth_failure_delay: 10ms}
cluster: {raft_address: "127.0.0.1:0", gossip_address: "127.0.0.1:0", health: {interval: 200ms, timeout: 2s, fall: 2, rise: 2}}
backends:
  - {id: plain, host: %[1]s, imap_port: %[2]d, forward: proxy}
  - {id: starttls, host: %[1]s, imap_port: %[2]d, tls: starttls, tls_ca_file: %[3]q, forward: proxy}
  - {id: implicit, host: %[1]s, imap_port: %[4]d, tls: implicit, tls_ca_file: %[3]q, forward: proxy}
  - {id: pop3, host: %[1]s, pop3_port: %[5]d, tls: starttls, tls_ca_file: %[3]q, forward: proxy}
  - {id: noheader, host: %[1]s, imap_port: %[2]d, forward: id}
routes:
  users:
    alice: {backend: plain}
    bob: {backend: starttls}
    carol: {backend: implicit}
    dave: {backend: pop3}
    erin: {backend: noheader}
`, dc.Addr, dc.IMAPPort, dc.CertFile, tcpAddr(dc.IMAPSAddr).Port, dc.POP3Port))

	// The entry without the header is down after two failed probes; by
	// then every other backend has been probed at least twice.
	waitFor(t, "the backend entry without a PROXY header marked down", 15*time.Second, func() bool {
		return p.d.BackendDown("noheader")
	})
	for _, id := range []string{"plain", "starttls", "implicit", "pop3"} {
		if p.d.BackendDown(id) {
			t.Fatalf("backend %s (forward: proxy) marked down", id)
		}
	}
	// The probes say goodbye (LOGOUT/QUIT), and Dovecot logs them with the
	// node's own address.
	probes := 0
	for _, l := range strings.Split(dc.Log(), "\n") {
		if strings.Contains(l, "Aborted login by logging out") {
			probes++
			if strings.Contains(l, "rip="+clientIP) {
				t.Fatalf("a probe carried the client's address: %s", l)
			}
		}
	}
	if probes < 8 {
		t.Fatalf("%d probes logged out politely, want at least 8 (4 backends, 2 rounds)\n%s", probes, dc.Log())
	}

	// Logins through Portico from the client's own address.
	from := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientIP)}, Timeout: 5 * time.Second}
	imapLogin := func(user string) error {
		conn, err := from.Dial("tcp", p.addr("imap"))
		if err != nil {
			t.Fatal(err)
		}
		c := imapclient.New(conn, nil)
		defer c.Close()
		if err := c.Login(user, "secret").Wait(); err != nil {
			return err
		}
		return c.Logout().Wait()
	}
	for _, u := range []string{"alice", "bob", "carol"} {
		if err := imapLogin(u); err != nil {
			t.Fatalf("login %s: %v", u, err)
		}
	}
	conn, err := from.Dial("tcp", p.addr("pop3"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	pop := func(cmd, want string) {
		t.Helper()
		if cmd != "" {
			fmt.Fprintf(conn, "%s\r\n", cmd)
		}
		l, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(l, want) {
			t.Fatalf("POP3 %q: %q %v, want %q", cmd, l, err, want)
		}
	}
	pop("", "+OK")
	pop("USER dave", "+OK")
	pop("PASS secret", "+OK")
	pop("QUIT", "+OK")

	for _, u := range []string{"alice", "bob", "carol", "dave"} {
		if dc.WaitLogins(u, 1, 5*time.Second) < 1 {
			t.Fatalf("no Dovecot login for %s\n%s", u, dc.Log())
		}
		if ips := dc.LoginRemoteIPs(u); !slices.Equal(ips, []string{clientIP}) {
			t.Fatalf("Dovecot saw %s from %q, want rip=%s", u, ips, clientIP)
		}
	}
	// The backend that is down: unavailable, not a wrong password.
	err = imapLogin("erin")
	if err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Fatalf("login to the backend that is down: %v", err)
	}
}

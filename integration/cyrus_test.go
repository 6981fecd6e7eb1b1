package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/portico-mail/portico/integration/cyrus"
	"github.com/portico-mail/portico/integration/dovecot"
)

// cyrusPortico runs a node whose users carol and dave live on a real Cyrus
// (backend cy1) and everyone else on Dovecot (dc1), both with forward: id.
func cyrusPortico(t *testing.T, cy *cyrus.Server, dc *dovecot.Server) *portico {
	t.Helper()
	return startPortico(t, fmt.Sprintf(`
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0"}
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0"}
backends:
  - {id: cy1, host: %s, imap_port: %d, pop3_port: %d, forward: id}
  - {id: dc1, host: %s, imap_port: %d, pop3_port: %d, forward: id}
pools:
  - {name: main, backends: [dc1]}
routes:
  default_pool: main
  users: {carol: {backend: cy1}, dave: {backend: cy1}}
`, cy.Addr, cy.IMAPPort, cy.POP3Port, dc.Addr, dc.IMAPPort, dc.POP3Port))
}

// Cyrus as a second real backend: through Portico the go-imap client logs
// in, selects INBOX, fetches a message byte for byte and hears, in IDLE, of
// a message delivered meanwhile; POP3 logs in and retrieves it.
func TestCyrusThroughPortico(t *testing.T) {
	cy := cyrus.Start(t, cyrus.Options{Addr: "127.0.0.147", Users: []string{"carol", "dave"}})
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.147"})
	p := cyrusPortico(t, cy, dc)
	body := "From: a@example.com\r\nSubject: to cyrus\r\n\r\n" + strings.Repeat("0123456789", 5000) + "\r\n"
	if err := cy.Deliver("carol", body); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var exists []uint32
	c, err := imapclient.DialInsecure(p.addr("imap"), &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				mu.Lock()
				exists = append(exists, *d.NumMessages)
				mu.Unlock()
			}
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("carol", "secret").Wait(); err != nil {
		t.Fatalf("login: %v", err)
	}
	if caps := c.Caps(); !caps.Has(imap.CapIdle) {
		t.Errorf("post-login capabilities (Cyrus's) missing IDLE: %v", caps)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil || sel.NumMessages != 1 {
		t.Fatalf("select: %v %+v", err, sel)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("fetch: %v %d", err, len(msgs))
	}
	for _, b := range msgs[0].BodySection {
		if !bytes.Equal(b.Bytes, []byte(body)) {
			t.Fatalf("fetched %d bytes, want the %d delivered", len(b.Bytes), len(body))
		}
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	if err := cy.Deliver("carol", "Subject: during idle\r\n\r\nhi\r\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "EXISTS 2 during IDLE", 15*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(exists) > 0 && exists[len(exists)-1] == 2
	})
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}

	// POP3 through Portico to Cyrus's pop3d.
	l := dialLine(t, p.addr("pop3"), false)
	if g := l.line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("pop3 greeting %q", g)
	}
	l.send("USER carol\r\n")
	if got := l.line(); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("USER: %q", got)
	}
	l.send("PASS secret\r\n")
	if got := l.line(); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("PASS: %q", got)
	}
	l.send("STAT\r\n")
	if got := l.line(); !strings.HasPrefix(got, "+OK 2 ") {
		t.Fatalf("STAT: %q", got)
	}
	l.send("RETR 1\r\n")
	if got := l.line(); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("RETR: %q", got)
	}
	var retr strings.Builder
	for {
		line := l.line()
		if line == ".\r\n" {
			break
		}
		retr.WriteString(strings.TrimPrefix(line, "."))
	}
	if retr.String() != body {
		t.Fatalf("RETR gave %d bytes, want the %d delivered", retr.Len(), len(body))
	}
	l.send("QUIT\r\n")
	if got := l.line(); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("QUIT: %q", got)
	}
}

// loginLatency logs user in through addr n times (greeting read first, then
// LOGIN timed until its tagged reply) and returns the sorted durations.
func loginLatency(t *testing.T, addr, user string, n int) (login, dialed []time.Duration) {
	t.Helper()
	for range n {
		dial := time.Now()
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		if g, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(g, "* OK") {
			t.Fatalf("greeting %q %v", g, err)
		}
		start := time.Now()
		fmt.Fprintf(c, "a LOGIN %s secret\r\n", user)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("login of %s: %v", user, err)
			}
			if strings.HasPrefix(line, "a ") {
				if !strings.HasPrefix(line, "a OK") {
					t.Fatalf("login of %s: %q", user, line)
				}
				break
			}
		}
		login = append(login, time.Since(start))
		dialed = append(dialed, time.Since(dial))
		fmt.Fprintf(c, "z LOGOUT\r\n")
		c.Close()
	}
	slices.Sort(login)
	slices.Sort(dialed)
	return login, dialed
}

// Issue 14: no backend may cost a stall. With forward: id, Portico sends
// the ID and the login in one packet; Cyrus answered the ID at once and its
// login reply ~40 ms later (Nagle on Cyrus's second small reply, waiting
// for Portico's delayed ACK of the first). A login through Portico must
// take about what it takes straight against the backend, for Cyrus as for
// Dovecot. (A delayed ACK costs at least 40 ms on Linux, on every login:
// a quarter of the logins well below that means no stall.)
func TestBackendLoginLatency(t *testing.T) {
	cy := cyrus.Start(t, cyrus.Options{Addr: "127.0.0.148", Users: []string{"carol", "dave"}})
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.148"})
	p := cyrusPortico(t, cy, dc)
	const n = 40
	for _, c := range []struct {
		name, user, direct string
	}{{"cyrus", "carol", cy.IMAPAddr}, {"dovecot", "alice", dc.IMAPAddr}} {
		direct, directDialed := loginLatency(t, c.direct, c.user, n)
		via, _ := loginLatency(t, p.addr("imap"), c.user, n)
		// Through Portico, the clock from the LOGIN to its reply also runs
		// while Portico connects to the backend and waits for its
		// greeting: the straight figure to compare with is from the dial.
		r := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
		t.Logf("%s login (forward: id): straight, LOGIN to reply median %v p90 %v, dial to reply median %v p90 %v; through Portico, LOGIN to reply median %v p90 %v",
			c.name, r(direct[n/2]), r(direct[n*9/10]), r(directDialed[n/2]), r(directDialed[n*9/10]), r(via[n/2]), r(via[n*9/10]))
		// A stall delays every login by 40 ms or more; on a loaded machine
		// some logins are slow anyway, so ask only that a quarter be fast.
		if via[n/4] >= 35*time.Millisecond {
			t.Errorf("%s: a quarter of the logins through Portico take %v or more (straight: %v): a stall", c.name, via[n/4], direct[n/4])
		}
	}
}

// The options for the ID before the login, measured straight against each
// backend (no Portico): the login alone; ID, wait for its reply, then the
// login (one round trip more); both in one write; both in one write with
// TCP_QUICKACK set after it (Portico's choice). Only the pipelined write
// without quick ACKs stalls, and only on Cyrus.
func TestBackendPipelinedIDOptions(t *testing.T) {
	cy := cyrus.Start(t, cyrus.Options{Addr: "127.0.0.149", Users: []string{"carol"}})
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.149"})
	const n = 30
	id := "i ID (\"x-originating-ip\" \"192.0.2.1\" \"x-originating-port\" \"40000\")\r\n"
	for _, b := range []struct{ name, addr, user string }{{"cyrus", cy.IMAPAddr, "carol"}, {"dovecot", dc.IMAPAddr, "alice"}} {
		p25 := map[string]time.Duration{}
		for _, mode := range []string{"login", "id-wait-login", "pipelined", "pipelined+quickack"} {
			var ds []time.Duration
			for range n {
				ds = append(ds, idLogin(t, b.addr, b.user, id, mode))
			}
			sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
			p25[mode] = ds[n/4]
			t.Logf("%s %-18s median %8v  p90 %8v", b.name, mode, ds[n/2].Round(10*time.Microsecond), ds[n*9/10].Round(10*time.Microsecond))
		}
		if m := p25["pipelined+quickack"]; m >= 35*time.Millisecond {
			t.Errorf("%s: a quarter of the pipelined ID and logins with quick ACKs take %v or more", b.name, m)
		}
	}
}

// idLogin logs user in at addr as mode says and returns the time from the
// first byte sent to the login's tagged reply.
func idLogin(t *testing.T, addr, user, id, mode string) time.Duration {
	t.Helper()
	tc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	c := tc.(*net.TCPConn)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	until := func(tag string) {
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("%s %s: %v", addr, mode, err)
			}
			if strings.HasPrefix(line, tag+" ") {
				if !strings.HasPrefix(line, tag+" OK") {
					t.Fatalf("%s %s: %q", addr, mode, line)
				}
				return
			}
		}
	}
	until("*")
	login := fmt.Sprintf("l LOGIN %s secret\r\n", user)
	start := time.Now()
	switch mode {
	case "login":
		c.Write([]byte(login))
	case "id-wait-login":
		c.Write([]byte(id))
		until("i")
		c.Write([]byte(login))
	case "pipelined", "pipelined+quickack":
		c.Write([]byte(id + login))
		if mode == "pipelined+quickack" {
			raw, _ := c.SyscallConn()
			_ = raw.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, 12 /* TCP_QUICKACK */, 1) })
		}
	}
	until("l")
	d := time.Since(start)
	c.Write([]byte("z LOGOUT\r\n"))
	return d
}

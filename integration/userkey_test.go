package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/portico-mail/portico/integration/dovecot"
)

// Master-user logins and SASL authorization identities reach the mailbox
// they name, with real Dovecot backends holding every user (so a login
// routed to the wrong one would succeed there, into an empty mailbox):
// "user*admin" over IMAP LOGIN and POP3 USER, and AUTHENTICATE PLAIN with
// authorization identity user, all land on user's backend and see the
// message user put there. Then routes.hash_key: domain, reloaded into the
// replicated table, puts every user of a domain on one backend, master
// logins included.
func TestMasterUserAndAuthzidRouting(t *testing.T) {
	users := map[string]string{}
	var aUsers, bUsers []string
	for i := 0; i < 6; i++ {
		a, b := fmt.Sprintf("user%d@a.example", i), fmt.Sprintf("user%d@b.example", i)
		users[a], users[b] = "secret", "secret"
		aUsers, bUsers = append(aUsers, a), append(bUsers, b)
	}
	opts := func(addr string) dovecot.Options {
		return dovecot.Options{Addr: addr, Users: users, MasterUsers: map[string]string{"admin": "masterpw"}}
	}
	d1 := dovecot.Start(t, opts("127.0.0.85"))
	d2 := dovecot.Start(t, opts("127.0.0.86"))
	p := startPortico(t, fmt.Sprintf(`
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0"}
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0"}
limits: {auth_failure_delay: 10ms}
backends:
  - {id: d1, host: %s, imap_port: %d, pop3_port: %d}
  - {id: d2, host: %s, imap_port: %d, pop3_port: %d}
pools:
  - {name: two, backends: [d1, d2]}
routes:
  default_pool: two
  master_user_separator: "*"
`, d1.Addr, d1.IMAPPort, d1.POP3Port, d2.Addr, d2.IMAPPort, d2.POP3Port))
	backends := map[string]*dovecot.Server{"d1": d1, "d2": d2}

	// where waits for user's next successful login (after seen) to show in
	// a backend's log, and names that backend.
	seen := map[string]int{}
	where := func(user string) string {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			n1, n2 := d1.Logins(user), d2.Logins(user)
			if n1+n2 > seen[user] {
				if n1+n2 > seen[user]+1 {
					t.Fatalf("%s: %d logins on d1, %d on d2, expected one more than %d", user, n1, n2, seen[user])
				}
				key := user + "@d1"
				if n2 > seen[user+"@d2"] {
					key = user + "@d2"
				}
				seen[user]++
				seen[key]++
				return key[len(user)+1:]
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no new login in either backend's log", user)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	homes := map[string]string{}
	onHome := map[string]int{}
	for _, u := range aUsers {
		// The user's own login puts a message in the mailbox.
		c := dialIMAP(t, p, "imap", nil)
		if err := c.Login(u, "secret").Wait(); err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		body := "Subject: mine\r\n\r\nfor " + u + "\r\n"
		app := c.Append("INBOX", int64(len(body)), nil)
		app.Write([]byte(body))
		app.Close()
		if _, err := app.Wait(); err != nil {
			t.Fatalf("%s: append: %v", u, err)
		}
		c.Logout().Wait()
		c.Close()
		homes[u] = where(u)
		onHome[homes[u]]++

		// IMAP LOGIN as the master.
		c = dialIMAP(t, p, "imap", nil)
		if err := c.Login(u+"*admin", "masterpw").Wait(); err != nil {
			t.Fatalf("%s*admin: %v", u, err)
		}
		sel, err := c.Select("INBOX", nil).Wait()
		if err != nil || sel.NumMessages != 1 {
			t.Fatalf("%s*admin: INBOX %+v %v, want the user's message", u, sel, err)
		}
		c.Logout().Wait()
		c.Close()
		if got := where(u); got != homes[u] {
			t.Errorf("%s*admin logged in on %s, %s's mailbox is on %s", u, got, u, homes[u])
		}

		// AUTHENTICATE PLAIN: authorization identity u, authentication
		// identity admin.
		c = dialIMAP(t, p, "imap", nil)
		if err := c.Authenticate(sasl.NewPlainClient(u, "admin", "masterpw")); err != nil {
			t.Fatalf("PLAIN %s as admin: %v", u, err)
		}
		sel, err = c.Select("INBOX", nil).Wait()
		if err != nil || sel.NumMessages != 1 {
			t.Fatalf("PLAIN %s as admin: INBOX %+v %v", u, sel, err)
		}
		c.Logout().Wait()
		c.Close()
		if got := where(u); got != homes[u] {
			t.Errorf("PLAIN %s as admin logged in on %s, the mailbox is on %s", u, got, homes[u])
		}

		// POP3 USER u*admin.
		l := dialLine(t, p.addr("pop3"), false)
		if g := l.line(); !strings.HasPrefix(g, "+OK") {
			t.Fatalf("pop3 greeting %q", g)
		}
		l.send("USER " + u + "*admin\r\nPASS masterpw\r\nSTAT\r\n")
		l.line()
		if got := l.line(); !strings.HasPrefix(got, "+OK") {
			t.Fatalf("pop3 %s*admin: %q", u, got)
		}
		var n, size int
		if stat := l.line(); func() error { _, err := fmt.Sscanf(stat, "+OK %d %d", &n, &size); return err }() != nil || n != 1 {
			t.Fatalf("pop3 %s*admin: STAT %d messages, want 1", u, n)
		}
		l.send("QUIT\r\n")
		l.until("+OK")
		if got := where(u); got != homes[u] {
			t.Errorf("pop3 %s*admin logged in on %s, the mailbox is on %s", u, got, homes[u])
		}
	}
	if onHome["d1"] == 0 || onHome["d2"] == 0 {
		// Otherwise a routing that ignored the user would pass too.
		t.Logf("all of %d users on one backend (possible, unlikely): %v", len(aUsers), onHome)
	}
	for _, u := range aUsers {
		other := map[string]string{"d1": "d2", "d2": "d1"}[homes[u]]
		if n := backends[other].Logins(u); n != 0 {
			t.Errorf("%s: %d logins on %s, which does not hold the mailbox", u, n, other)
		}
	}

	// hash_key: domain, written into the replicated table by a reload.
	next := *p.cfg
	next.Routes.HashKey = "domain"
	if err := p.d.Reload(&next); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for lookupHashKey(t, p, "USER0@A.EXAMPLE") != "domain" {
		if time.Now().After(deadline) {
			t.Fatal("hash_key domain not in the table after the reload")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, dom := range [][]string{aUsers, bUsers} {
		var first string
		for _, u := range dom {
			// In upper case: one key for Portico, and Dovecot's
			// auth_username_format (%Lu) lower-cases it.
			c := dialIMAP(t, p, "imap", nil)
			if err := c.Login(strings.ToUpper(u), "secret").Wait(); err != nil {
				t.Fatalf("%s: %v", u, err)
			}
			c.Logout().Wait()
			c.Close()
			got := where(u)
			if first == "" {
				first = got
			} else if got != first {
				t.Errorf("hash_key domain: %s on %s, the first of its domain on %s", u, got, first)
			}
			// A master login follows the mailbox's domain too.
			c = dialIMAP(t, p, "imap", nil)
			if err := c.Login(u+"*admin", "masterpw").Wait(); err != nil {
				t.Fatalf("%s*admin: %v", u, err)
			}
			c.Logout().Wait()
			c.Close()
			if got := where(u); got != first {
				t.Errorf("hash_key domain: %s*admin on %s, its domain on %s", u, got, first)
			}
		}
	}
}

// lookupHashKey asks the admin API how user is routed and returns the
// table's hash key.
func lookupHashKey(t *testing.T, p *portico, user string) string {
	t.Helper()
	resp, err := http.Get("http://" + p.d.AdminAddr().String() + "/v1/routes/lookup?user=" + url.QueryEscape(user))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		User    string `json:"user"`
		HashKey string `json:"hash_key"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	if r.User != strings.ToLower(user) {
		t.Fatalf("lookup of %s answered for %q", user, r.User)
	}
	return r.HashKey
}

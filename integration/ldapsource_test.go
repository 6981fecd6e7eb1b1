package integration

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/ldaptest"
	"github.com/portico-mail/portico/integration/loopback"
)

// ldapSourceExtra is the sources section of a node reading the directory
// of s: "directory" (ou=people) synced every second and in full every
// four, "late" (ou=late) synced once an hour and asked on a miss.
func ldapSourceExtra(s *ldaptest.Server) string {
	return fmt.Sprintf(`
sources:
  - name: directory
    type: ldap
    interval: 1s
    full_interval: 4s
    ldap:
      url: %[1]s
      bind_dn: %[2]s
      bind_password: %[3]s
      base: %[4]s
      login_attribute: mailRoutingAddress
      timeout: 2s
      changes_overlap: 2s
  - name: late
    type: ldap
    interval: 1h
    ldap:
      url: %[1]s
      bind_dn: %[2]s
      bind_password: %[3]s
      base: ou=late,%[5]s
      timeout: 1s
    on_miss: {enabled: true, timeout: 1s, positive_ttl: 1s, negative_ttl: 1s}
`, s.URL, s.ReaderDN, s.ReaderPassword, s.People, s.Suffix)
}

// A real slapd mirrored into the table of a real portico: users added,
// changed (a login rename, a move to a host:port) and deleted with
// ldapmodify are routed accordingly within the sync intervals, with real
// logins to a real Dovecot; a user added under the base of the hourly
// source logs in at once through the on-miss lookup, and a name made of
// filter syntax finds nobody; with the directory killed, users in the
// table keep logging in, the table is not emptied, and a user the
// directory would have to be asked about is "unavailable"; once it is
// back, the same source reads it again.
func TestSourceLDAP(t *testing.T) {
	p := "ou=people," + ldaptest.DefaultSuffix
	dir := ldaptest.Start(t, ldaptest.Options{LDIF: ldaptest.Person(p, "alice", "dc1", "mailRoutingAddress: alice.smith") +
		ldaptest.Person(p, "bob", "dc1") + ldaptest.Person(p, "carol", "dc1") + ldaptest.Person(p, "dave", "dc1") +
		"dn: ou=late," + ldaptest.DefaultSuffix + "\nobjectClass: organizationalUnit\nou: late\n\n"})
	dc := dovecot.Start(t, dovecot.Options{Addr: loopback.Addr(t).String(), Users: map[string]string{
		"alice.smith": "secret", "bob": "secret", "bob2": "secret", "carol": "secret", "dave": "secret",
		"erin": "secret", "frank": "secret", "ghost": "secret", "grace": "secret"}})
	// dc2 is a server the table does not know: named by host:port in the
	// directory, it becomes a backend (as Perdition would connect to it).
	dc2 := dovecot.Start(t, dovecot.Options{Addr: loopback.Addr(t).String(), Users: map[string]string{"carol": "secret"}})
	nodes := newCluster(t, 1, dc, ldapSourceExtra(dir))
	nd := nodes[0]
	nd.start()
	waitSeeded(t, nodes)
	waitFor(t, "the directory's users in the table", 15*time.Second, func() bool {
		return routeOf(nd, "alice") == "dc1/alice.smith/source:directory" && routeOf(nd, "dave") == "dc1//source:directory"
	})
	if err := loginVia(t, nd.imap, "alice", "secret"); err != nil {
		t.Fatalf("alice: %v", err)
	}
	if dc.WaitLogins("alice.smith", 1, 5*time.Second) != 1 {
		t.Fatalf("dovecot did not see alice as alice.smith\n%s", dc.Log())
	}
	if st := sourcesOf(t, nd, "directory").Sources[0]; !strings.HasSuffix(st.Watermark[:min(15, len(st.Watermark))], "Z") || st.Rules != 4 {
		t.Fatalf("status: %+v (want an LDAP watermark and 4 rules)", st)
	}

	// Rename bob's login, add erin, move carol to dc2's host:port,
	// delete dave.
	hostPort := fmt.Sprintf("%s:%d", dc2.Addr, dc2.IMAPPort)
	start := time.Now()
	if err := dir.Modify("dn: uid=bob," + dir.People + "\nchangetype: modify\nadd: mailRoutingAddress\nmailRoutingAddress: bob2\n\n" +
		ldaptest.Person(dir.People, "erin", "dc1") +
		"dn: uid=carol," + dir.People + "\nchangetype: modify\nreplace: mailHost\nmailHost: " + hostPort + "\n\n" +
		"dn: uid=dave," + dir.People + "\nchangetype: delete\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the additions and changes in the table", 10*time.Second, func() bool {
		return routeOf(nd, "bob") == "dc1/bob2/source:directory" && routeOf(nd, "erin") == "dc1//source:directory" &&
			strings.HasSuffix(routeOf(nd, "carol"), "//source:directory") && routeOf(nd, "carol") != "dc1//source:directory"
	})
	t.Logf("additions and changes routed %s after ldapmodify (interval 1s)", time.Since(start).Round(time.Millisecond))
	waitFor(t, "the deletion in the table", 15*time.Second, func() bool { return routeOf(nd, "dave") == "" })
	t.Logf("the deletion routed %s after ldapmodify (full_interval 4s)", time.Since(start).Round(time.Millisecond))
	for _, u := range []struct {
		user, as string
		at       *dovecot.Server
	}{{"bob", "bob2", dc}, {"erin", "erin", dc}, {"carol", "carol", dc2}} {
		if err := loginVia(t, nd.imap, u.user, "secret"); err != nil || u.at.WaitLogins(u.as, 1, 5*time.Second) != 1 {
			t.Fatalf("%s as %s: %v\n%s", u.user, u.as, err, u.at.Log())
		}
	}
	if err := loginVia(t, nd.imap, "dave", "secret"); err == nil || strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Fatalf("dave (deleted) logged in, or was told to come back: %v", err)
	}
	if !strings.Contains(nd.log(), "kind=incremental") {
		t.Fatalf("no incremental sync logged:\n%s", grepLines(nd.log(), "directory source"))
	}

	// On a miss: frank, added under the hourly source's base, logs in at
	// once (and is written through); names made of filter syntax find
	// nobody, and reach no backend.
	if err := dir.Modify(ldaptest.Person("ou=late,"+dir.Suffix, "frank", "dc1")); err != nil {
		t.Fatal(err)
	}
	if err := loginVia(t, nd.imap, "frank", "secret"); err != nil {
		t.Fatalf("frank through the on-miss lookup: %v", err)
	}
	if r := routeOf(nd, "frank"); r != "dc1//source:late" {
		t.Fatalf("frank's route after the on-miss lookup: %q", r)
	}
	for _, user := range []string{"fr*", "*", "frank)(uid=*"} {
		err := loginVia(t, nd.imap, user, "secret")
		if err == nil || strings.Contains(err.Error(), "UNAVAILABLE") {
			t.Fatalf("login as %q: %v (want a failed login)", user, err)
		}
		if r := routeOf(nd, url.PathEscape(user)); r != "" {
			t.Fatalf("%q routed: %s", user, r)
		}
	}
	if strings.Contains(dc.Log(), "fr*") || strings.Contains(dc.Log(), "uid=*") {
		t.Fatalf("a filter-syntax name reached dovecot:\n%s", dc.Log())
	}

	// The directory killed: the table keeps its rules through failing
	// syncs (full ones included), users in it log in, a user the
	// directory would have to be asked about is unavailable.
	dir.Kill()
	waitFor(t, "a failing sync in the status", 10*time.Second, func() bool {
		return sourcesOf(t, nd, "directory").Sources[0].LastError != ""
	})
	st := sourcesOf(t, nd, "directory").Sources[0]
	if strings.Contains(st.LastError, dir.ReaderPassword) || !strings.Contains(st.LastError, dir.URL) {
		t.Fatalf("sync error %q: want the server named, not the password", st.LastError)
	}
	time.Sleep(5 * time.Second) // past a full_interval
	for _, u := range []struct{ user, as string }{{"alice", "alice.smith"}, {"carol", "carol"}, {"erin", "erin"}} {
		if err := loginVia(t, nd.imap, u.user, "secret"); err != nil {
			t.Fatalf("%s (in the table) with the directory down: %v", u.user, err)
		}
	}
	if st := sourcesOf(t, nd, "directory").Sources[0]; st.Rules != 4 {
		t.Fatalf("rules with the directory down: %d, want 4", st.Rules)
	}
	err := loginVia(t, nd.imap, "ghost", "secret")
	if err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Fatalf("ghost with the directory down: %v (want NO [UNAVAILABLE])", err)
	}
	if dc.Logins("ghost") != 0 {
		t.Fatal("ghost reached dovecot")
	}

	// Back: the same sources reconnect; grace, added meanwhile, syncs.
	if err := dir.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := dir.Modify(ldaptest.Person(dir.People, "grace", "dc1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the directory read again", 15*time.Second, func() bool {
		return routeOf(nd, "grace") == "dc1//source:directory" && sourcesOf(t, nd, "directory").Sources[0].LastError == ""
	})
	if err := loginVia(t, nd.imap, "grace", "secret"); err != nil {
		t.Fatalf("grace: %v", err)
	}
	if err := loginVia(t, nd.imap, "ghost", "secret"); err == nil || strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Fatalf("ghost, in no directory: %v (want a failed login)", err)
	}
}

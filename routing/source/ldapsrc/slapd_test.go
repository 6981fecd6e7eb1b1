package ldapsrc_test

// These tests run a real OpenLDAP slapd (integration/ldaptest); they skip
// when it is not installed, unless PORTICO_REQUIRE_DOVECOT=1.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/portico-mail/portico/integration/ldaptest"
	"github.com/portico-mail/portico/routing/source"
	"github.com/portico-mail/portico/routing/source/ldapsrc"
)

const old = "modifyTimestamp: 20200101000000Z"

// people is the LDIF of n users u0000.. with hosts imapN (N = i mod 3),
// timestamped in 2020.
func people(base string, n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		b.WriteString(ldaptest.Person(base, fmt.Sprintf("u%04d", i), fmt.Sprintf("imap%d.example.org", i%3), old))
	}
	return b.String()
}

func open(t *testing.T, s *ldaptest.Server, mod func(*ldapsrc.Config)) *ldapsrc.Directory {
	t.Helper()
	cfg := ldapsrc.Config{
		URL:          s.URL,
		BindDN:       s.ReaderDN,
		BindPassword: s.ReaderPassword,
		Base:         s.People,
		Timeout:      5 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	f, err := ldapsrc.Open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f.(*ldapsrc.Directory)
}

func full(t *testing.T, d source.Fetcher) (map[string]source.Entry, string) {
	t.Helper()
	got := map[string]source.Entry{}
	w, err := d.Full(t.Context(), func(e source.Entry) error {
		if _, dup := got[e.User]; dup {
			t.Errorf("entry %s delivered twice", e.User)
		}
		got[e.User] = e
		return nil
	})
	if err != nil {
		t.Fatalf("Full: %v", err)
	}
	return got, w
}

func changes(t *testing.T, d source.Fetcher, w string) (map[string]source.Change, string) {
	t.Helper()
	got := map[string]source.Change{}
	next, err := d.Changes(t.Context(), w, func(c source.Change) error {
		got[c.User] = c
		return nil
	})
	if err != nil {
		t.Fatalf("Changes(%q): %v", w, err)
	}
	return got, next
}

// A full sync pages through more entries than a page and than the
// directory's size limit, delivers each usable entry once, and skips and
// counts the unusable ones.
func TestFullPaged(t *testing.T) {
	const n = 1234
	p := "ou=people," + ldaptest.DefaultSuffix
	ldif := people(p, n) +
		ldaptest.Person(p, "renamed", "imap9.example.org", "mailRoutingAddress: r.enamed", old) +
		ldaptest.Person(p, "nohost", "", old) +
		ldaptest.Person(p, "twonames", "imap1.example.org", "uid: alias", old)
	// The reader may page past the size limit (500), not search past it.
	s := ldaptest.Start(t, ldaptest.Options{LDIF: ldif})
	d := open(t, s, func(c *ldapsrc.Config) {
		c.PageSize = 100
		c.Filter = "(objectClass=inetOrgPerson)"
		c.LoginAttribute = "mailRoutingAddress"
	})
	got, w := full(t, d)
	if len(got) != n+1 {
		t.Fatalf("%d entries, want %d", len(got), n+1)
	}
	for i := 0; i < n; i++ {
		u := fmt.Sprintf("u%04d", i)
		if e := got[u]; e.Target != fmt.Sprintf("imap%d.example.org", i%3) || e.Login != "" {
			t.Fatalf("%s: %+v", u, e)
		}
	}
	if e := got["renamed"]; e.Target != "imap9.example.org" || e.Login != "r.enamed" {
		t.Fatalf("renamed: %+v", e)
	}
	if !strings.HasPrefix(w, "2019123123") { // 2020-01-01 00:00 less the overlap
		t.Fatalf("watermark %q: want the newest stamp (2020) less the overlap", w)
	}
	want := map[string]uint64{ldapsrc.SkipNoTarget: 1, ldapsrc.SkipManyUsers: 1}
	if sk := d.Skipped(); fmt.Sprint(sk) != fmt.Sprint(want) {
		t.Fatalf("skipped %v, want %v", sk, want)
	}

	// The default filter (mailHost=*) does not even select "nohost".
	d2 := open(t, s, nil)
	if got, _ := full(t, d2); len(got) != n+1 {
		t.Fatalf("default filter: %d entries", len(got))
	}
	if sk := d2.Skipped(); sk[ldapsrc.SkipNoTarget] != 0 {
		t.Fatalf("default filter skipped %v", sk)
	}

	// mailHost is single-valued in OpenLDAP's schema; a site schema's
	// target attribute may not be (description stands in for one here).
	if err := s.Modify("dn: uid=u0005," + s.People + "\nchangetype: modify\nadd: description\ndescription: imap1\ndescription: imap2\n\n" +
		"dn: uid=u0006," + s.People + "\nchangetype: modify\nadd: description\ndescription: imap3\n"); err != nil {
		t.Fatal(err)
	}
	d3 := open(t, s, func(c *ldapsrc.Config) { c.TargetAttribute = "description" })
	if got, _ := full(t, d3); len(got) != 1 || got["u0006"].Target != "imap3" {
		t.Fatalf("description as the target: %v", got)
	}
	if sk := d3.Skipped(); len(sk) != 1 || sk[ldapsrc.SkipManyTargets] != 1 {
		t.Fatalf("skipped %v: the filter (description=*) selects two entries, one multi-valued", sk)
	}
	d3 = open(t, s, func(c *ldapsrc.Config) { c.TargetAttribute, c.Filter = "description", "(uid=u000*)" })
	if got, _ := full(t, d3); len(got) != 1 {
		t.Fatalf("description as the target: %v", got)
	}
	if sk := d3.Skipped(); len(sk) != 2 || sk[ldapsrc.SkipManyTargets] != 1 || sk[ldapsrc.SkipNoTarget] != 8 {
		t.Fatalf("skipped %v, want 1 multi-valued and 8 without", sk)
	}
}

// A directory that holds the reader to its size limit even when paging
// makes the full sync fail: a truncated result is never a smaller
// directory.
func TestFullSizeLimitIsAnError(t *testing.T) {
	p := "ou=people," + ldaptest.DefaultSuffix
	s := ldaptest.Start(t, ldaptest.Options{LDIF: people(p, 30), SizeLimit: 20, ReaderLimits: "-"})
	d := open(t, s, func(c *ldapsrc.Config) { c.PageSize = 7 })
	n := 0
	_, err := d.Full(t.Context(), func(source.Entry) error { n++; return nil })
	if err == nil {
		t.Fatalf("Full succeeded with %d of 30 entries", n)
	}
	if !strings.Contains(err.Error(), "Size Limit Exceeded") || !strings.Contains(err.Error(), s.URL) {
		t.Fatalf("error %q: want the size limit and the server named", err)
	}
	// The error of put ends the walk and is returned as it is.
	stop := errors.New("enough")
	if _, err := d.Full(t.Context(), func(source.Entry) error { return stop }); err != stop {
		t.Fatalf("put's error: %v", err)
	}
}

// Incremental syncs see what ldapmodify added and changed since the
// watermark, and nothing older; deletions wait for the full sync.
func TestChanges(t *testing.T) {
	p := "ou=people," + ldaptest.DefaultSuffix
	// One entry changed in 2021, the rest in 2020: the watermark is 2021
	// less the overlap.
	s := ldaptest.Start(t, ldaptest.Options{LDIF: people(p, 50) +
		ldaptest.Person(p, "recent", "imap5.example.org", "modifyTimestamp: 20210101000000Z")})
	d := open(t, s, func(c *ldapsrc.Config) { c.PageSize = 10 })
	_, w0 := full(t, d)
	if !strings.HasPrefix(w0, "2020123123") {
		t.Fatalf("watermark %q: want 2021-01-01 less the overlap", w0)
	}

	if err := s.Modify(ldaptest.Person(s.People, "dave", "imap7.example.org") +
		"dn: uid=u0001," + s.People + "\nchangetype: modify\nreplace: mailHost\nmailHost: imap8.example.org\n\n" +
		"dn: uid=u0002," + s.People + "\nchangetype: delete\n"); err != nil {
		t.Fatal(err)
	}
	got, w1 := changes(t, d, w0)
	want := map[string]source.Change{
		"dave":   {Entry: source.Entry{User: "dave", Target: "imap7.example.org"}},
		"u0001":  {Entry: source.Entry{User: "u0001", Target: "imap8.example.org"}},
		"recent": {Entry: source.Entry{User: "recent", Target: "imap5.example.org"}}, // at the boundary
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("changes since %s: %v, want %v", w0, got, want)
	}
	if w1 <= w0 {
		t.Fatalf("watermark did not move: %s -> %s", w0, w1)
	}
	// The next change shows in the next incremental sync; the entries of
	// the previous one may be read again (at the boundary), never older
	// ones.
	if err := s.Modify("dn: uid=u0003," + s.People + "\nchangetype: modify\nreplace: mailHost\nmailHost: imap9.example.org\n"); err != nil {
		t.Fatal(err)
	}
	got, w2 := changes(t, d, w1)
	if got["u0003"].Target != "imap9.example.org" {
		t.Fatalf("second changes: %v", got)
	}
	for u := range got {
		if u != "u0003" && u != "dave" && u != "u0001" && u != "recent" {
			t.Fatalf("second changes read %s, unchanged since 2020", u)
		}
	}
	if w2 < w1 {
		t.Fatalf("watermark went back: %s -> %s", w1, w2)
	}
	// Nothing changed: the watermark stays or moves on, never back.
	if _, w3 := changes(t, d, w2); w3 < w2 {
		t.Fatalf("watermark went back: %s -> %s", w2, w3)
	}
	// The full sync finds the deletion.
	all, _ := full(t, d)
	if _, ok := all["u0002"]; ok || len(all) != 51 {
		t.Fatalf("full sync after a delete: %d entries, u0002 present: %v", len(all), ok)
	}
	// No change feed for a watermark that is not this source's.
	for _, w := range []string{"", "20200101000000Z", "sql:1234"} {
		if _, err := d.Changes(t.Context(), w, func(source.Change) error { return nil }); !errors.Is(err, source.ErrNoChanges) {
			t.Errorf("Changes(%q): %v, want ErrNoChanges", w, err)
		}
	}
}

// An empty directory still gives a watermark (the base entry's stamp),
// from which the first user added is seen.
func TestChangesFromEmpty(t *testing.T) {
	s := ldaptest.Start(t, ldaptest.Options{})
	d := open(t, s, nil)
	got, w := full(t, d)
	if len(got) != 0 || w == "" {
		t.Fatalf("empty directory: %d entries, watermark %q", len(got), w)
	}
	if err := s.Modify(ldaptest.Person(s.People, "first", "imap1.example.org")); err != nil {
		t.Fatal(err)
	}
	if ch, _ := changes(t, d, w); ch["first"].Target != "imap1.example.org" || len(ch) != 1 {
		t.Fatalf("changes: %v", ch)
	}
}

// Lookup: a hit, a miss, and names that would be filter syntax if they
// were not escaped.
func TestLookup(t *testing.T) {
	p := "ou=people," + ldaptest.DefaultSuffix
	weird := `we(ird)*us\er`
	ldif := ldaptest.Person(p, "alice", "imap1.example.org") +
		ldaptest.Person(p, "bob", "imap2.example.org") +
		ldaptest.Person(p, "nohost", "") +
		ldaptest.Person(p, "twonames", "imap1.example.org", "uid: twonames2") +
		ldaptest.Person(p, weird, "imap3.example.org") +
		"dn: ou=other," + p + "\nobjectClass: organizationalUnit\nou: other\n\n" +
		"dn: uid=bob,ou=other," + p + "\nobjectClass: inetOrgPerson\nobjectClass: inetLocalMailRecipient\nuid: bob\ncn: bob\nsn: bob\nmailHost: imap4.example.org\n\n"
	s := ldaptest.Start(t, ldaptest.Options{LDIF: ldif})
	d := open(t, s, nil)
	ctx := t.Context()

	for _, user := range []string{"alice", "ALICE"} {
		e, err := d.Lookup(ctx, user)
		if err != nil || e != (source.Entry{User: "alice", Target: "imap1.example.org"}) {
			t.Fatalf("Lookup(%s): %+v %v", user, e, err)
		}
	}
	if e, err := d.Lookup(ctx, weird); err != nil || e.User != weird || e.Target != "imap3.example.org" {
		t.Fatalf("Lookup(%s): %+v %v", weird, e, err)
	}
	for _, user := range []string{"carol", "nohost"} {
		if e, err := d.Lookup(ctx, user); !errors.Is(err, source.ErrNotFound) {
			t.Fatalf("Lookup(%s): %+v %v, want ErrNotFound", user, e, err)
		}
	}
	for _, user := range []string{"twonames", "bob"} {
		if e, err := d.Lookup(ctx, user); !errors.Is(err, ldapsrc.ErrBadEntry) || errors.Is(err, source.ErrNotFound) {
			t.Fatalf("Lookup(%s): %+v %v, want ErrBadEntry", user, e, err)
		}
	}

	// Injection: each name below, pasted into the filter as it is, would
	// select alice (or everyone); escaped, it names no entry.
	c, err := ldap.DialURL(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind(s.ReaderDN, s.ReaderPassword); err != nil {
		t.Fatal(err)
	}
	for _, user := range []string{"*", "al*", "alice)(uid=*", "*)(|(uid=*", "alice)(|(objectClass=*", `\61lice`} {
		raw := fmt.Sprintf("(&(mailHost=*)(uid=%s))", user)
		if res, err := c.Search(ldap.NewSearchRequest(s.People, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
			0, 0, false, raw, []string{"uid"}, nil)); err == nil && len(res.Entries) == 0 {
			t.Errorf("the attempt %q would not have matched unescaped either: a useless case", user)
		}
		e, err := d.Lookup(ctx, user)
		if !errors.Is(err, source.ErrNotFound) {
			t.Errorf("Lookup(%q): %+v %v, want ErrNotFound", user, e, err)
		}
	}
	for _, user := range []string{"alice\x00", "alice\x00)(uid=*", "ali\u00e7e"} {
		if e, err := d.Lookup(ctx, user); !errors.Is(err, source.ErrNotFound) {
			t.Errorf("Lookup(%q): %+v %v, want ErrNotFound", user, e, err)
		}
	}
	if _, err := d.Lookup(ctx, ""); err == nil || errors.Is(err, source.ErrNotFound) {
		t.Fatalf("Lookup of an empty name: %v", err)
	}

	// Concurrent lookups share the pool.
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 10; j++ {
				user, host := "alice", "imap1.example.org"
				if (i+j)%2 == 1 {
					user, host = weird, "imap3.example.org"
				}
				if e, err := d.Lookup(ctx, user); err != nil || e.Target != host {
					t.Errorf("concurrent Lookup(%s): %+v %v", user, e, err)
					return
				}
			}
		}()
	}
	wg.Wait()

	d.Close()
	if _, err := d.Lookup(ctx, "alice"); err == nil || errors.Is(err, source.ErrNotFound) {
		t.Fatalf("Lookup after Close: %v", err)
	}
}

// A wrong password: an error that names the server and the bind DN, not
// the password, and is not ErrNotFound; from a file as well.
func TestBindFailure(t *testing.T) {
	s := ldaptest.Start(t, ldaptest.Options{LDIF: people("ou=people,"+ldaptest.DefaultSuffix, 3)})
	const wrong = "Wr0ng-p4ssw0rd-x7q"
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte(wrong+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, mod := range []func(*ldapsrc.Config){
		func(c *ldapsrc.Config) { c.BindPassword = wrong },
		func(c *ldapsrc.Config) { c.BindPassword, c.BindPasswordFile = "", pwFile },
	} {
		d := open(t, s, mod)
		_, lerr := d.Lookup(t.Context(), "u0001")
		_, ferr := d.Full(t.Context(), func(source.Entry) error { return nil })
		for _, err := range []error{lerr, ferr} {
			if err == nil || errors.Is(err, source.ErrNotFound) {
				t.Fatalf("wrong password: %v", err)
			}
			msg := err.Error()
			if strings.Contains(msg, wrong) || !strings.Contains(msg, s.URL) ||
				!strings.Contains(msg, "bind as "+s.ReaderDN) || !strings.Contains(msg, "Invalid Credentials") {
				t.Fatalf("error %q: want the server, the bind DN and the cause, without the password", msg)
			}
		}
	}
	// The right password from the file works.
	if err := os.WriteFile(pwFile, []byte(s.ReaderPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := open(t, s, func(c *ldapsrc.Config) { c.BindPassword, c.BindPasswordFile = "", pwFile })
	if _, err := d.Lookup(t.Context(), "u0001"); err != nil {
		t.Fatal(err)
	}
}

// The directory stopped: errors, never ErrNotFound; it comes back: the
// same source reconnects.
func TestDirectoryDown(t *testing.T) {
	s := ldaptest.Start(t, ldaptest.Options{LDIF: people("ou=people,"+ldaptest.DefaultSuffix, 3)})
	d := open(t, s, nil)
	ctx := t.Context()
	if _, err := d.Lookup(ctx, "u0001"); err != nil {
		t.Fatal(err)
	}
	s.Kill()
	if _, err := d.Lookup(ctx, "u0001"); err == nil || errors.Is(err, source.ErrNotFound) || !strings.Contains(err.Error(), s.URL) {
		t.Fatalf("Lookup with the directory down: %v", err)
	}
	if _, err := d.Full(ctx, func(source.Entry) error { return nil }); err == nil {
		t.Fatal("Full with the directory down succeeded")
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if e, err := d.Lookup(ctx, "u0001"); err != nil || e.Target != "imap1.example.org" {
		t.Fatalf("Lookup after the restart: %+v %v", e, err)
	}
	// A restart under pooled connections: the dead one is replaced.
	s.Stop()
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if e, err := d.Lookup(ctx, "u0002"); err != nil || e.Target != "imap2.example.org" {
		t.Fatalf("Lookup after a second restart: %+v %v", e, err)
	}
	if got, _ := full(t, d); len(got) != 3 {
		t.Fatalf("Full after restarts: %d entries", len(got))
	}
}

// A hung directory: the context (or the timeout) ends the wait.
func TestContextCancel(t *testing.T) {
	s := ldaptest.Start(t, ldaptest.Options{LDIF: people("ou=people,"+ldaptest.DefaultSuffix, 250)})
	d := open(t, s, func(c *ldapsrc.Config) { c.PageSize = 50; c.Timeout = 30 * time.Second })

	// Cancelled in the middle of a full sync: the walk ends with ctx's
	// error, not a shorter success.
	ctx, cancel := context.WithCancel(t.Context())
	n := 0
	_, err := d.Full(ctx, func(source.Entry) error {
		if n++; n == 75 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || n >= 250 {
		t.Fatalf("cancelled Full: %v after %d entries", err, n)
	}

	if _, err := d.Lookup(t.Context(), "u0001"); err != nil { // a pooled connection
		t.Fatal(err)
	}
	if err := s.Pause(); err != nil {
		t.Fatal(err)
	}
	defer s.Resume()
	for _, name := range []string{"pooled", "new"} {
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		start := time.Now()
		_, err := d.Lookup(ctx, "u0001")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
			t.Fatalf("%s connection, hung directory: %v after %v", name, err, time.Since(start))
		}
	}
	start := time.Now()
	_, err = d.Full(ctxTimeout(t, 300*time.Millisecond), func(source.Entry) error { return nil })
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("Full, hung directory: %v after %v", err, time.Since(start))
	}
	// Without a deadline from the caller, the timeout ends it.
	d2 := open(t, s, func(c *ldapsrc.Config) { c.Timeout = 300 * time.Millisecond })
	start = time.Now()
	_, err = d2.Lookup(t.Context(), "u0001")
	if err == nil || errors.Is(err, source.ErrNotFound) || time.Since(start) > 5*time.Second {
		t.Fatalf("timeout, hung directory: %v after %v", err, time.Since(start))
	}
	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	if e, err := d.Lookup(t.Context(), "u0001"); err != nil || e.Target != "imap1.example.org" {
		t.Fatalf("Lookup after resume: %+v %v", e, err)
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// StartTLS and LDAPS, verified against the directory's CA; an unknown
// CA is refused.
func TestTLS(t *testing.T) {
	s := ldaptest.Start(t, ldaptest.Options{TLS: true, LDIF: people("ou=people,"+ldaptest.DefaultSuffix, 5)})
	for name, mod := range map[string]func(*ldapsrc.Config){
		"starttls": func(c *ldapsrc.Config) { c.StartTLS, c.CAFile = true, s.CAFile },
		"ldaps":    func(c *ldapsrc.Config) { c.URL, c.CAFile = s.LDAPSURL, s.CAFile },
		"insecure": func(c *ldapsrc.Config) { c.URL, c.InsecureSkipVerify = s.LDAPSURL, true },
	} {
		d := open(t, s, mod)
		if got, _ := full(t, d); len(got) != 5 {
			t.Fatalf("%s: %d entries", name, len(got))
		}
		if e, err := d.Lookup(t.Context(), "u0004"); err != nil || e.Target != "imap1.example.org" {
			t.Fatalf("%s: Lookup: %+v %v", name, e, err)
		}
	}
	for name, mod := range map[string]func(*ldapsrc.Config){
		"starttls": func(c *ldapsrc.Config) { c.StartTLS = true },
		"ldaps":    func(c *ldapsrc.Config) { c.URL = s.LDAPSURL },
	} {
		d := open(t, s, mod) // the system roots do not know the test CA
		_, err := d.Lookup(t.Context(), "u0004")
		if err == nil || errors.Is(err, source.ErrNotFound) || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("%s with an unknown CA: %v", name, err)
		}
	}
	// The directory's TLS is not an ldap:// listener's plain text: a
	// client speaking LDAPS to the plain port fails, it does not hang.
	d := open(t, s, func(c *ldapsrc.Config) { c.URL, c.CAFile, c.Timeout = "ldaps://"+s.Addr, s.CAFile, time.Second })
	if _, err := d.Lookup(t.Context(), "u0004"); err == nil {
		t.Fatal("LDAPS to the plain port succeeded")
	}
}

// ldapi:// (a local socket) works too.
func TestLDAPI(t *testing.T) {
	s := ldaptest.Start(t, ldaptest.Options{LDIF: people("ou=people,"+ldaptest.DefaultSuffix, 2)})
	d := open(t, s, func(c *ldapsrc.Config) { c.URL = s.LDAPIURL })
	got, _ := full(t, d)
	users := make([]string, 0, len(got))
	for u := range got {
		users = append(users, u)
	}
	sort.Strings(users)
	if fmt.Sprint(users) != "[u0000 u0001]" {
		t.Fatalf("ldapi: %v", users)
	}
	// An address nobody listens on: an error, quickly.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	d = open(t, s, func(c *ldapsrc.Config) { c.URL = "ldap://" + addr })
	if _, err := d.Lookup(t.Context(), "u0001"); err == nil || !strings.Contains(err.Error(), "connect") {
		t.Fatalf("no directory: %v", err)
	}
}

// proxy forwards TCP connections to a directory; freeze makes the
// connections open so far go silent (a firewall that dropped them without
// a word), cut closes them; connections made afterwards work.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	all    []net.Conn // closed at the end of the test
	conns  []net.Conn // forwarding
	frozen []chan struct{}
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.all {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			freeze := make(chan struct{})
			p.mu.Lock()
			p.conns = append(p.conns, c, b)
			p.all = append(p.all, c, b)
			p.frozen = append(p.frozen, freeze)
			p.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					select {
					case <-freeze:
						// Swallow everything until the end of the test.
						for err == nil {
							_, err = src.Read(buf)
						}
						return
					default:
					}
					if n > 0 {
						if _, err := dst.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						dst.Close()
						return
					}
				}
			}
			go pipe(b, c)
			go pipe(c, b)
		}
	}()
	return p
}

func (p *proxy) url() string { return "ldap://" + p.ln.Addr().String() }

func (p *proxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.frozen {
		close(f)
	}
	p.frozen = nil
	p.conns = nil
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns, p.frozen = nil, nil
}

// A pooled connection that went silent or was cut is replaced, and the
// lookup answered on a new one.
func TestReconnect(t *testing.T) {
	s := ldaptest.Start(t, ldaptest.Options{LDIF: people("ou=people,"+ldaptest.DefaultSuffix, 3)})
	p := newProxy(t, s.Addr)
	d := open(t, s, func(c *ldapsrc.Config) { c.URL, c.Timeout = p.url(), 500*time.Millisecond })
	lookup := func(what string) {
		t.Helper()
		if e, err := d.Lookup(t.Context(), "u0001"); err != nil || e.Target != "imap1.example.org" {
			t.Fatalf("%s: %+v %v", what, e, err)
		}
	}
	lookup("first")
	p.freeze()
	start := time.Now()
	lookup("pooled connection gone silent")
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Fatalf("answered in %v: the frozen connection was not used", took)
	}
	p.cut()
	lookup("pooled connection cut")
	// A full sync is retried the same way when it had delivered nothing.
	p.freeze()
	if got, _ := full(t, d); len(got) != 3 {
		t.Fatalf("Full after a freeze: %d entries", len(got))
	}
}

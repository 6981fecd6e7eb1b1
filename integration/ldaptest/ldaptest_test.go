package ldaptest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
)

func search(t *testing.T, s *Server, url, filter string) []*ldap.Entry {
	t.Helper()
	c, err := ldap.DialURL(url, ldap.DialWithTLSConfig(s.TLSConfig()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind(s.ReaderDN, s.ReaderPassword); err != nil {
		t.Fatal(err)
	}
	res, err := c.Search(ldap.NewSearchRequest(s.People, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
		filter, []string{"uid", "mailHost", "modifyTimestamp"}, nil))
	if err != nil {
		t.Fatal(err)
	}
	return res.Entries
}

// The instance serves what slapadd loaded (with the timestamp the LDIF
// stated), on every listener; ldapmodify changes it; it survives a kill
// and a restart on the same ports; Remove leaves nothing behind.
func TestServer(t *testing.T) {
	s := Start(t, Options{TLS: true, LDIF: Person("ou=people,"+DefaultSuffix, "alice", "imap1.example.org",
		"modifyTimestamp: 20200101000000Z")})
	for _, u := range []string{s.URL, s.LDAPSURL, s.LDAPIURL} {
		es := search(t, s, u, "(uid=alice)")
		if len(es) != 1 || es[0].GetAttributeValue("mailHost") != "imap1.example.org" ||
			es[0].GetAttributeValue("modifyTimestamp") != "20200101000000Z" {
			t.Fatalf("%s: got %d entries %v", u, len(es), es)
		}
	}
	c, err := ldap.DialURL(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.StartTLS(s.TLSConfig()); err != nil {
		t.Fatalf("StartTLS: %v", err)
	}
	c.Close()

	if err := s.Modify(Person(s.People, "bob", "imap2.example.org") +
		"dn: uid=alice," + s.People + "\nchangetype: modify\nreplace: mailHost\nmailHost: imap3.example.org\n"); err != nil {
		t.Fatal(err)
	}
	es := search(t, s, s.URL, "(&(uid=*)(modifyTimestamp>=20210101000000Z))")
	if len(es) != 2 {
		t.Fatalf("after ldapmodify: %d entries modified since 2021, want 2", len(es))
	}

	s.Kill()
	if c, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
		c.Close()
		t.Fatal("killed slapd still accepts")
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if es := search(t, s, s.URL, "(uid=alice)"); len(es) != 1 || es[0].GetAttributeValue("mailHost") != "imap3.example.org" {
		t.Fatalf("after restart: %v", es)
	}
	dir := s.Dir
	s.Remove()
	if _, err := os.Stat(dir); !os.IsNotExist(err) && os.Getenv(EnvKeep) != "1" {
		t.Fatalf("directory left behind: %v", err)
	}
	if s.PID() != 0 {
		t.Fatal("slapd still running after Remove")
	}
}

// A generated directory is loaded from a file.
func TestWritePeople(t *testing.T) {
	file := filepath.Join(t.TempDir(), "people.ldif")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	err = WritePeople(f, "ou=people,"+DefaultSuffix, "user", 1200, func(i int) string { return fmt.Sprintf("imap%d", i%4) },
		func(i int) []string { return []string{Stamp(time.Date(2020, 1, 1, 0, 0, i, 0, time.UTC))} })
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	s := Start(t, Options{LDIFFile: file})
	c, err := ldap.DialURL(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind(s.ReaderDN, s.ReaderPassword); err != nil {
		t.Fatal(err)
	}
	res, err := c.SearchWithPaging(ldap.NewSearchRequest(s.People, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
		"(mailHost=imap3)", []string{"uid"}, nil), 100)
	if err != nil || len(res.Entries) != 300 {
		t.Fatalf("%d entries on imap3, %v", len(res.Entries), err)
	}
	// Entry 1199 was stamped 1199 s after 2020-01-01.
	res, err = c.Search(ldap.NewSearchRequest(s.People, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
		"(&(uid=*)(modifyTimestamp>=20200101001959Z))", []string{"uid"}, nil))
	if err != nil || len(res.Entries) != 1 || res.Entries[0].GetAttributeValue("uid") != "user0001199" {
		t.Fatalf("the newest entry: %v %v", res, err)
	}
}

// The reader is held to the size limit without the paged results control.
func TestReaderSizeLimit(t *testing.T) {
	var ldif string
	for _, u := range []string{"a", "b", "c", "d"} {
		ldif += Person("ou=people,"+DefaultSuffix, u, "h")
	}
	s := Start(t, Options{LDIF: ldif, SizeLimit: 3})
	c, err := ldap.DialURL(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind(s.ReaderDN, s.ReaderPassword); err != nil {
		t.Fatal(err)
	}
	req := ldap.NewSearchRequest(s.People, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
		"(uid=*)", []string{"uid"}, nil)
	if _, err := c.Search(req); !ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) {
		t.Fatalf("unpaged search of 4 entries with a limit of 3: %v, want sizeLimitExceeded", err)
	}
	res, err := c.SearchWithPaging(req, 2)
	if err != nil || len(res.Entries) != 4 {
		t.Fatalf("paged search: %d entries, %v", len(res.Entries), err)
	}
}

package ldapsrc_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/portico-mail/portico/integration/ldaptest"
	"github.com/portico-mail/portico/routing/source"
	"github.com/portico-mail/portico/routing/source/ldapsrc"
)

// An incremental sync walks the entries as a full one does: an entry
// that makes no route is skipped and counted, put's error ends the walk
// and is returned as it is, and the directory's error names the step.
func TestChangesWalk(t *testing.T) {
	p := "ou=people," + ldaptest.DefaultSuffix
	s := ldaptest.Start(t, ldaptest.Options{LDIF: people(p, 5)})
	d := open(t, s, func(c *ldapsrc.Config) { c.Filter = "(objectClass=inetOrgPerson)" })
	_, w := full(t, d)
	if err := s.Modify(ldaptest.Person(s.People, "nohost", "") +
		ldaptest.Person(s.People, "twonames", "imap1.example.org", "uid: alias") +
		ldaptest.Person(s.People, "new", "imap2.example.org")); err != nil {
		t.Fatal(err)
	}
	got, _ := changes(t, d, w) // the entries at the watermark are read again
	_, nohost := got["nohost"]
	_, twonames := got["twonames"]
	if got["new"].Target != "imap2.example.org" || nohost || twonames {
		t.Fatalf("changes: %v", got)
	}
	want := map[string]uint64{ldapsrc.SkipNoTarget: 1, ldapsrc.SkipManyUsers: 1}
	if sk := d.Skipped(); fmt.Sprint(sk) != fmt.Sprint(want) {
		t.Fatalf("skipped %v, want %v", sk, want)
	}

	stop := errors.New("enough")
	if _, err := d.Changes(t.Context(), w, func(source.Change) error { return stop }); err != stop {
		t.Fatalf("put's error: %v", err)
	}

	s.Kill()
	_, err := d.Changes(t.Context(), w, func(source.Change) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "changes since ") || !strings.Contains(err.Error(), s.URL) {
		t.Fatalf("directory error: %v", err)
	}
}

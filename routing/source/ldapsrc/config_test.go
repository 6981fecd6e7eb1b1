package ldapsrc

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"

	"github.com/portico-mail/portico/routing/source"
)

func TestCheckDefaults(t *testing.T) {
	c := Config{URL: "ldap://dir.example.org", Base: "ou=people,dc=example,dc=org"}
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	if c.UserAttribute != "uid" || c.TargetAttribute != "mailHost" || c.Filter != "(mailHost=*)" ||
		c.PageSize != 500 || c.Timeout != 10*time.Second || c.ChangesOverlap != 5*time.Minute {
		t.Fatalf("defaults: %+v", c)
	}
	c = Config{URL: "ldaps://dir.example.org:1636", Base: "dc=example,dc=org", TargetAttribute: "host",
		UserAttribute: "mail", Filter: "(&(objectClass=inetOrgPerson)(host=*))", PageSize: 1000}
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	if c.Filter != "(&(objectClass=inetOrgPerson)(host=*))" || c.PageSize != 1000 {
		t.Fatalf("explicit values changed: %+v", c)
	}
}

func TestCheckErrors(t *testing.T) {
	base := func() Config {
		return Config{URL: "ldap://dir.example.org", Base: "ou=people,dc=example,dc=org"}
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no url", func(c *Config) { c.URL = "" }, "url: required"},
		{"scheme", func(c *Config) { c.URL = "http://dir.example.org" }, "scheme must be ldap, ldaps or ldapi"},
		{"password in url", func(c *Config) { c.URL = "ldap://cn=x:secret@dir.example.org" }, "no user or password in the URL"},
		{"no host", func(c *Config) { c.URL = "ldap://" }, "no host"},
		{"base in url", func(c *Config) { c.URL = "ldap://dir.example.org/dc=example,dc=org" }, "keys of their own"},
		{"starttls on ldaps", func(c *Config) { c.URL = "ldaps://dir.example.org"; c.StartTLS = true }, "start_tls: only with an ldap:// url"},
		{"ca without tls", func(c *Config) { c.CAFile = "/ca.pem" }, "ca_file: set, but the connection does not use TLS"},
		{"insecure without tls", func(c *Config) { c.InsecureSkipVerify = true }, "insecure_skip_verify: set, but"},
		{"insecure with ca", func(c *Config) { c.StartTLS = true; c.InsecureSkipVerify = true; c.CAFile = "/ca.pem" }, "choose one"},
		{"two passwords", func(c *Config) { c.BindDN = "cn=a"; c.BindPassword = "x"; c.BindPasswordFile = "/f" }, "set one, not both"},
		{"password without dn", func(c *Config) { c.BindPassword = "x" }, "bind_dn: required with a bind password"},
		{"dn without password", func(c *Config) { c.BindDN = "cn=reader,dc=example,dc=org" }, "bind_password or bind_password_file: required"},
		{"bad bind dn", func(c *Config) { c.BindDN = "not a dn"; c.BindPassword = "x" }, "bind_dn \"not a dn\""},
		{"no base", func(c *Config) { c.Base = "" }, "base: required"},
		{"bad base", func(c *Config) { c.Base = "ou=people,,x" }, "base \"ou=people,,x\""},
		{"bad attribute", func(c *Config) { c.UserAttribute = "uid)(x" }, "user_attribute \"uid)(x\": not an attribute name"},
		{"same attributes", func(c *Config) { c.UserAttribute = "mail"; c.TargetAttribute = "MAIL" }, "the same as user_attribute"},
		{"filter without parens", func(c *Config) { c.Filter = "objectClass=person" }, "must be in parentheses"},
		{"bad filter", func(c *Config) { c.Filter = "(&(objectClass=person)" }, "filter \"(&(objectClass=person)\""},
		{"page size", func(c *Config) { c.PageSize = -1 }, "page_size -1"},
		{"timeout", func(c *Config) { c.Timeout = -time.Second }, "timeout -1s"},
		{"overlap", func(c *Config) { c.ChangesOverlap = -time.Second }, "changes_overlap -1s"},
	} {
		c := base()
		tc.mod(&c)
		err := c.Check()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

func TestOpenPasswordFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "pw")
	if err := os.WriteFile(f, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := Config{URL: "ldap://127.0.0.1", Base: "dc=example,dc=org", BindDN: "cn=r,dc=example,dc=org", BindPasswordFile: f}
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}
	if p, err := c.password(); err != nil || p != "s3cret" {
		t.Fatalf("password %q, %v", p, err)
	}
	c.BindPasswordFile = filepath.Join(dir, "missing")
	if _, err := Open(c, nil); err == nil || !strings.Contains(err.Error(), "bind_password_file") {
		t.Fatalf("Open with a missing password file: %v", err)
	}
	c.BindPasswordFile = f
	c.URL, c.StartTLS, c.CAFile = "ldap://127.0.0.1", true, filepath.Join(dir, "pw") // not PEM
	if _, err := Open(c, nil); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("Open with a CA file without a certificate: %v", err)
	}
}

func TestServerNameHidesTheRest(t *testing.T) {
	c := Config{URL: "ldaps://dir.example.org:636/", Base: "dc=x"}
	if got := c.server(); got != "ldaps://dir.example.org:636" {
		t.Fatal(got)
	}
}

func TestWatermark(t *testing.T) {
	open := func(filter string) *Directory {
		f, err := Open(Config{URL: "ldap://127.0.0.1", Base: "dc=example,dc=org", Filter: filter}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return f.(*Directory)
	}
	d := open("")
	newest := time.Date(2026, 3, 1, 12, 0, 30, 0, time.UTC)
	w := d.watermark(newest, 1500*time.Millisecond)
	// 12:00:30 - 1.5 s - 5 min, rounded down to the second.
	if !strings.HasPrefix(w, "20260301115528Z#") {
		t.Fatalf("watermark %q", w)
	}
	got, ok := d.parseWatermark(w)
	if !ok || !got.Equal(time.Date(2026, 3, 1, 11, 55, 28, 0, time.UTC)) {
		t.Fatalf("parse %q: %v %v", w, got, ok)
	}
	for _, bad := range []string{"", "20260301115528Z", "garbage#" + d.fp, "20260301115528Z#00000000"} {
		if _, ok := d.parseWatermark(bad); ok {
			t.Errorf("watermark %q accepted", bad)
		}
	}
	// Another filter: another fingerprint, so the old watermark is refused
	// (the syncer then reads in full).
	d2 := open("(&(objectClass=inetOrgPerson)(mailHost=*))")
	if _, ok := d2.parseWatermark(w); ok {
		t.Fatal("watermark of another filter accepted")
	}
	if _, err := d2.Changes(t.Context(), w, nil); !errors.Is(err, source.ErrNoChanges) {
		t.Fatalf("Changes from another filter's watermark: %v", err)
	}
	for in, want := range map[string]string{
		"20240102030405Z":     "2024-01-02T03:04:05Z",
		"20240102030405.0Z":   "2024-01-02T03:04:05Z", // Active Directory
		"20240102040405+0100": "2024-01-02T03:04:05Z",
	} {
		ts, ok := parseStamp(in)
		if !ok || ts.Format(time.RFC3339) != want {
			t.Errorf("parseStamp(%q) = %v %v, want %s", in, ts, ok, want)
		}
	}
	if _, ok := parseStamp("yesterday"); ok {
		t.Error("parseStamp accepted garbage")
	}
}

func TestEntry(t *testing.T) {
	f, err := Open(Config{URL: "ldap://127.0.0.1", Base: "dc=x", LoginAttribute: "mailRoutingAddress"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := f.(*Directory)
	for _, tc := range []struct {
		attrs  map[string][]string
		want   source.Entry
		reason string
	}{
		{map[string][]string{"uid": {"alice"}, "mailhost": {" imap1 "}}, source.Entry{User: "alice", Target: "imap1"}, ""},
		{map[string][]string{"UID": {"bob"}, "mailHost": {"imap2"}, "mailRoutingAddress": {"b.smith"}}, source.Entry{User: "bob", Target: "imap2", Login: "b.smith"}, ""},
		{map[string][]string{"mailHost": {"imap2"}}, source.Entry{}, SkipNoUser},
		{map[string][]string{"uid": {"", " "}, "mailHost": {"imap2"}}, source.Entry{}, SkipNoUser},
		{map[string][]string{"uid": {"a", "b"}, "mailHost": {"imap2"}}, source.Entry{}, SkipManyUsers},
		{map[string][]string{"uid": {"a"}}, source.Entry{}, SkipNoTarget},
		{map[string][]string{"uid": {"a"}, "mailHost": {"h1", "h2"}}, source.Entry{}, SkipManyTargets},
		{map[string][]string{"uid": {"a"}, "mailHost": {"h1"}, "mailRoutingAddress": {"x", "y"}}, source.Entry{}, SkipManyLogins},
	} {
		got, reason := d.entry(ldap.NewEntry("cn=x", tc.attrs))
		if got != tc.want || reason != tc.reason {
			t.Errorf("%v: %+v %q, want %+v %q", tc.attrs, got, reason, tc.want, tc.reason)
		}
	}
	// One attribute returned in two parts (slapd does, for an entry
	// slapadd -q loaded with the values apart) has two values.
	e := &ldap.Entry{DN: "uid=a", Attributes: []*ldap.EntryAttribute{
		ldap.NewEntryAttribute("uid", []string{"a"}),
		ldap.NewEntryAttribute("mailHost", []string{"h"}),
		ldap.NewEntryAttribute("UID", []string{"alias"}),
	}}
	if got, reason := d.entry(e); reason != SkipManyUsers {
		t.Errorf("split attribute: %+v %q", got, reason)
	}
}

// The paged results control goes out critical, with the size and cookie.
func TestCriticalPaging(t *testing.T) {
	c := &criticalPaging{ControlPaging: ldap.ControlPaging{PagingSize: 250, Cookie: []byte("abc")}}
	p := c.Encode()
	if len(p.Children) != 3 {
		t.Fatalf("%d children", len(p.Children))
	}
	if crit, ok := p.Children[1].Value.(bool); !ok || !crit {
		t.Fatalf("criticality %v", p.Children[1].Value)
	}
	// Round trip through the BER bytes.
	decoded, err := ldap.DecodeControl(ber.DecodePacket(p.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	dp, ok := decoded.(*ldap.ControlPaging)
	if !ok || dp.PagingSize != 250 || string(dp.Cookie) != "abc" {
		t.Fatalf("decoded %v", decoded)
	}
}

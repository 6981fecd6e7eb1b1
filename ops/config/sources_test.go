package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/routing/source/filesrc"
	"github.com/portico-mail/portico/routing/source/ldapsrc"
)

const sourcesBase = `
listeners:
  - protocol: imap
    address: 127.0.0.1:0
`

// A popmap source with its defaults filled, its block decoded into the
// driver's Config and its relative path made relative to the file.
func TestSourcesDefaults(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "portico.yaml")
	if err := os.WriteFile(path, []byte(sourcesBase+`
sources:
  - name: users
    type: popmap
    popmap:
      path: users.popmap
    on_miss:
      enabled: true
    new_backends:
      port_protocol: pop3
      sieve_port: -1
`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Sources[0]
	pc, ok := s.Driver().(*filesrc.Config)
	if !ok || pc.Path != filepath.Join(dir, "users.popmap") {
		t.Fatalf("driver config %#v", s.Driver())
	}
	sc := s.SyncConfig()
	if sc.Interval != time.Minute || sc.FullInterval != time.Hour || sc.MaxDeleteShare != 0.1 || sc.WorkShare != 0.5 || sc.Name != "users" {
		t.Fatalf("sync config %+v", sc)
	}
	if nb := sc.NewBackends; nb.Off || nb.IMAPPort != 143 || nb.POP3Port != 110 || nb.SievePort != 0 || nb.PortProtocol != "pop3" || nb.TLS != "none" {
		t.Fatalf("new backends %+v", nb)
	}
	if ms := s.MissSource(nil); ms.Timeout != 2*time.Second || ms.PositiveTTL != time.Minute || ms.NegativeTTL != 30*time.Second {
		t.Fatalf("on-miss %+v", ms)
	}
	if len(c.OnMissSources()) != 1 {
		t.Fatal("on-miss source not listed")
	}
	f, err := s.Open(nil)
	if err != nil || f == nil {
		t.Fatalf("open: %v", err)
	}
}

// Bad source configurations are errors naming the source, the key and its
// line.
func TestSourcesErrors(t *testing.T) {
	for in, want := range map[string]string{
		"sources:\n  - name: a\n    type: popmap\n    popmap: {path: x, nope: 1}\n":                                                                                          "field nope not found",
		"sources:\n  - name: a\n    type: nosuch\n":                                                                                                                          `sources[0].type (line 7): "nosuch" is not one of ldap, popmap`,
		"sources:\n  - type: popmap\n    popmap: {path: x}\n":                                                                                                                "sources[0].name (line 6): required",
		"sources:\n  - name: a b\n    type: popmap\n    popmap: {path: x}\n":                                                                                                 `"a b": use 1-64 letters`,
		"sources:\n  - name: a\n    type: popmap\n":                                                                                                                          "type popmap needs a popmap: block",
		"sources:\n  - name: a\n    type: popmap\n    popmap: {}\n":                                                                                                          "sources[0].popmap (line 8): path: required",
		"sources:\n  - name: a\n    type: popmap\n    popmap: {path: x}\n    sql: {}\n":                                                                                      "a sql block in a source of type",
		"sources:\n  - name: a\n    type: popmap\n    popmap: {path: x}\n  - name: a\n    type: popmap\n    popmap: {path: y}\n":                                             `"a" is used by another source`,
		"sources:\n  - name: a\n    type: popmap\n    popmap: {path: x}\n    max_delete_share: 0\n":                                                                          "max_delete_share (line 9): 0 is outside",
		"sources:\n  - name: a\n    type: popmap\n    popmap: {path: x}\n    work_share: 0\n":                                                                                "work_share (line 9): 0 is outside 0.05..1",
		"sources:\n  - name: a\n    type: popmap\n    popmap: {path: x}\n    work_share: 1.5\n":                                                                              "work_share (line 9): 1.5 is outside",
		"sources:\n  - name: a\n    type: popmap\n    popmap: {path: x}\n    interval: 1h\n    full_interval: 10m\n":                                                         "full_interval",
		"sources:\n  - name: a\n    type: popmap\n    popmap: {path: x}\n    on_miss: {timeout: 1m}\n":                                                                       "on_miss.timeout",
		"sources:\n  - name: a\n    type: popmap\n    popmap: {path: x}\n    new_backends: {port_protocol: smtp}\n":                                                          "port_protocol",
		"standalone: true\nroutes: {users: {a: {backend: b}}}\nbackends: [{id: b, host: h, imap_port: 1}]\nsources:\n  - name: a\n    type: popmap\n    popmap: {path: x}\n": "a standalone node has none",
	} {
		_, err := Parse([]byte(sourcesBase + in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s\n  error %v\n  want %q", in, err, want)
		}
	}
}

// An LDAP source: its block decoded strictly into ldapsrc.Config, its
// defaults filled by the driver's Check, its files made relative to the
// configuration file, and its errors named by key and line.
func TestSourcesLDAP(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "portico.yaml")
	if err := os.WriteFile(filepath.Join(dir, "ldap.pw"), []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(sourcesBase+`
sources:
  - name: directory
    type: ldap
    interval: 30s
    ldap:
      url: ldap://ldap.example.org
      start_tls: true
      bind_dn: cn=portico,ou=system,dc=example,dc=org
      bind_password_file: ldap.pw
      base: ou=people,dc=example,dc=org
      filter: (objectClass=inetOrgPerson)
      login_attribute: mailRoutingAddress
      timeout: 3s
`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	lc, ok := c.Sources[0].Driver().(*ldapsrc.Config)
	if !ok {
		t.Fatalf("driver config %#v", c.Sources[0].Driver())
	}
	want := ldapsrc.Config{URL: "ldap://ldap.example.org", StartTLS: true, BindDN: "cn=portico,ou=system,dc=example,dc=org",
		BindPasswordFile: filepath.Join(dir, "ldap.pw"), Base: "ou=people,dc=example,dc=org", Filter: "(objectClass=inetOrgPerson)",
		UserAttribute: "uid", TargetAttribute: "mailHost", LoginAttribute: "mailRoutingAddress", PageSize: ldapsrc.DefaultPageSize,
		Timeout: 3 * time.Second, ChangesOverlap: ldapsrc.DefaultChangesOverlap}
	if *lc != want {
		t.Fatalf("ldap config\n got %+v\nwant %+v", *lc, want)
	}
	f, err := c.Sources[0].Open(nil)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	f.Close()

	// The README's example is valid.
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, ex, _ := strings.Cut(string(raw), "**LDAP** (`type: ldap`)")
	_, ex, _ = strings.Cut(ex, "```yaml\n")
	ex, _, _ = strings.Cut(ex, "```")
	if c, err := Parse([]byte(sourcesBase + ex)); err != nil || len(c.Sources) != 1 || c.Sources[0].Type != "ldap" {
		t.Fatalf("README's LDAP example: %v\n%s", err, ex)
	}

	for in, want := range map[string]string{
		"    ldap: {url: ldap://h, base: dc=x, bind_pw: y}\n":             "field bind_pw not found",
		"    ldap: {base: dc=x}\n":                                        "sources[0].ldap (line 8): url: required",
		"    ldap: {url: ldaps://h, base: dc=x, start_tls: true}\n":       "start_tls: only with an ldap:// url",
		"    ldap: {url: ldap://h, base: dc=x, filter: \"uid=*\"}\n":      "must be in parentheses",
		"    ldap: {url: ldap://h, base: dc=x, bind_dn: \"cn=a,dc=x\"}\n": "bind_password or bind_password_file: required",
	} {
		_, err := Parse([]byte(sourcesBase + "sources:\n  - name: a\n    type: ldap\n" + in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s  error %v\n  want %q", in, err, want)
		}
	}
}

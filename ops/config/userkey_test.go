package config

import (
	"strings"
	"testing"

	"github.com/portico-mail/portico/routing"
)

func TestRoutesHashKeyAndMasterSeparator(t *testing.T) {
	with := func(extra string) string {
		return strings.Replace(good, "  default_pool: main\n", "  default_pool: main\n"+extra, 1)
	}
	c, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if c.RoutingSpec().HashKey != "" || len(c.SameOnEveryNode()) != 0 {
		t.Errorf("defaults: hash key %q, notes %q", c.RoutingSpec().HashKey, c.SameOnEveryNode())
	}
	c, err = Parse([]byte(with("  hash_key: domain\n  master_user_separator: \"*\"\n")))
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := routing.NewTable(c.RoutingSpec())
	if err != nil || tbl.HashKey() != routing.HashDomain {
		t.Fatalf("table from the file: %v %v", tbl, err)
	}
	notes := strings.Join(c.SameOnEveryNode(), "\n")
	if !strings.Contains(notes, "routes.hash_key domain") || !strings.Contains(notes, "replicated") ||
		!strings.Contains(notes, `routes.master_user_separator "*"`) {
		t.Errorf("check-config notes:\n%s", notes)
	}

	for _, bad := range []struct{ extra, want string }{
		{"  hash_key: realm\n", `routes.hash_key (line 28): "realm" is not one of address, local, domain`},
		{"  hash_key: Domain\n", `"Domain" is not one of`},
		{"  master_user_separator: \"**\"\n", "routes.master_user_separator"},
		{"  master_user_separator: \"@\"\n", "other than '@'"},
		{"  master_user_separator: \"x\"\n", "one ASCII punctuation character"},
		{"  master_user_separator: \" \"\n", "one ASCII punctuation character"},
		{"  master_user_separator: \"é\"\n", "one ASCII punctuation character"},
	} {
		_, err := Parse([]byte(with(bad.extra)))
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v, want %q", bad.extra, err, bad.want)
		}
	}
	for _, sep := range []string{"*", "%", "#", "+"} {
		if _, err := Parse([]byte(with("  master_user_separator: \"" + sep + "\"\n"))); err != nil {
			t.Errorf("separator %q: %v", sep, err)
		}
	}
}

// Two rules for one user (or domain) spelt two ways would fight over one
// key: the file is refused, naming both.
func TestRoutesSameUserTwice(t *testing.T) {
	for _, c := range []struct{ from, to, want string }{
		{"    vip@example.com: {backend: b1}\n", "    vip@example.com: {backend: b1}\n    VIP@Example.COM: {pool: main}\n",
			`the same as "VIP@Example.COM" (both are "vip@example.com"`},
		{"    vip@example.com: {backend: b1}\n", "    bücher@exämple.org: {backend: b1}\n    \"bu\\u0308cher@xn--exmple-cua.org\": {pool: main}\n",
			`(both are "bücher@xn--exmple-cua.org"`},
		{"    example.com: main\n", "    example.com: main\n    \"@EXAMPLE.com\": main\n", `routes.domains.example.com`},
		{"    example.com: main\n", "    exämple.org: main\n    xn--exmple-cua.org: main\n", `(both are "xn--exmple-cua.org"`},
	} {
		_, err := Parse([]byte(strings.Replace(good, c.from, c.to, 1)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.to, err, c.want)
		}
	}
}

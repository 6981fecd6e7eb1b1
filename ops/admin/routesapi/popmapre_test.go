package routesapi

import (
	"bytes"
	"encoding/json"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/portico-mail/portico/routing"
)

// Perdition's documented popmap.re syntax, its own examples included.
func TestParsePopmapRE(t *testing.T) {
	in := `# Example popmap.re
^[a-k]: localhost
^[^a-k]: localhost:110   # a comment
^user: user2@localhost
(.*)@(.*): $1_$2@localhost

  ^a\ b\#c	b1
'^x y#z':  pool:p
"^q'r"   b2
^john\.smith$ \
   b1
^two::  b1
`
	got, err := parsePopmapRE([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []routing.RegexRule{
		{Pattern: "^[a-k]", Replace: "localhost"},
		{Pattern: "^[^a-k]", Replace: "localhost:110"},
		{Pattern: "^user", Replace: "user2@localhost"},
		{Pattern: "(.*)@(.*)", Replace: "$1_$2@localhost"},
		{Pattern: "^a b#c", Replace: "b1"},
		{Pattern: "^x y#z", Replace: "pool:p"},
		{Pattern: "^q'r", Replace: "b2"},
		{Pattern: `^john\.smith$`, Replace: "b1"},
		{Pattern: "^two:", Replace: "b1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	for in, msg := range map[string]string{"^a\n": "line 1: want", "^x b1\n'^a b\n": "line 2: unterminated"} {
		if _, err := parsePopmapRE([]byte(in)); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want %q", in, err, msg)
		}
	}
	var buf bytes.Buffer
	if err := writePopmapRE(&buf, got); err != nil {
		t.Fatal(err)
	}
	back, err := parsePopmapRE(buf.Bytes())
	if err != nil || !reflect.DeepEqual(back, got) {
		t.Fatalf("round trip: %q %v\n%s", back, err, buf.String())
	}
}

func FuzzParsePopmapRE(f *testing.F) {
	for _, s := range []string{"^[a-k]: localhost\n", "(.*)@(.*): $1_$2@h\n", "'a b': c # x\n", "a\\\nb c\n", "\"x\\\" y\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rules, err := parsePopmapRE(b)
		if err != nil {
			return
		}
		for _, r := range rules {
			if r.Pattern == "" || r.Replace == "" {
				t.Fatalf("empty field in %+v", r)
			}
		}
		var buf bytes.Buffer
		if writePopmapRE(&buf, rules) != nil {
			return // a pattern no popmap.re can hold (both quotes and specials)
		}
		back, err := parsePopmapRE(buf.Bytes())
		if err != nil || !reflect.DeepEqual(back, rules) {
			t.Fatalf("round trip of %q: %q %v\n%s", rules, back, err, buf.String())
		}
	})
}

// A regex popmap import replaces its source's rules (a dry run shows them
// and writes nothing), logins route by it, and its export reads back as
// no change.
func TestImportRegexMapAPI(t *testing.T) {
	nd, base := bulkNode(t)
	data := "^[a-k]: 10.0.0.1\n(.*)@(example\\.org): $1_x@b2\n"
	res := doImport(t, base, ImportRequest{Format: "popmap.re", Source: "popmap.re", Data: data, DryRun: true})
	if res.Added != 2 || len(res.RegexAfter) != 2 || len(nd.fsm.Table().RegexMap()) != 0 {
		t.Fatalf("dry run: %+v", res)
	}
	doImport(t, base, ImportRequest{Format: "popmap.re", Source: "popmap.re", Data: data})
	r, err := nd.fsm.Table().Lookup(routing.Request{User: "zoe@example.org", Protocol: routing.IMAP}, nil)
	if err != nil || r.Backend.ID != "b2" || r.Login != "zoe_x" || r.Rule != "regex" {
		t.Fatalf("zoe: %+v %v", r, err)
	}
	if r, err := nd.fsm.Table().Lookup(routing.Request{User: "bob", Protocol: routing.IMAP}, nil); err != nil || r.Backend.ID != "b1" {
		t.Fatalf("bob: %+v %v", r, err)
	}
	code, body := call(t, base, "GET", "/v1/export?format=popmap.re&source="+url.QueryEscape("popmap.re"), "")
	if code != 200 {
		t.Fatal(code, body)
	}
	before := nd.fsm.Table()
	res = doImport(t, base, ImportRequest{Format: "popmap.re", Source: "popmap.re", Data: body})
	if res.Unchanged != 2 || res.Added+res.Removed+res.Changed != 0 || nd.fsm.Table() != before {
		t.Fatalf("re-import of the export: %+v\n%s", res, body)
	}
	res = doImport(t, base, ImportRequest{Format: "popmap.re", Source: "popmap.re", Data: "^z: b1\n"})
	if res.Added != 1 || res.Removed != 2 || len(nd.fsm.Table().RegexMap()) != 1 {
		t.Fatalf("replace: %+v", res)
	}
	for _, bad := range []ImportRequest{
		{Format: "popmap.re", Data: "^a: b1\n"},                // no source
		{Format: "popmap.re", Source: "x", Data: "(: b1\n"},    // bad regex
		{Format: "popmap.re", Source: "x", Data: "^a b1 b2\n"}, // white space in the substitution
	} {
		b, _ := json.Marshal(bad)
		if code, body := call(t, base, "POST", "/v1/import", string(b)); code != 400 {
			t.Errorf("%+v: %d %s", bad, code, body)
		}
	}
}

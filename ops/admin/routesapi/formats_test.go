package routesapi

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source"
)

// Perdition's popmap: comments, blank lines, renames ("newname@server",
// split at the last '@' since a name may hold one), host[:port] servers;
// pool:NAME is Portico's own.
func TestParsePopmapFull(t *testing.T) {
	tbl := testTable(t)
	in := `# Perdition popmap
horms: 10.0.0.1            # a comment after white space
tymm:b2

alice@example.com: alice.smith@10.0.0.2:1143
bob: bob@corp.example@b1
carol#x: pool:p
dave: robert@pool:p
`
	got, err := parsePopmap([]byte(in), tbl)
	if err != nil {
		t.Fatal(err)
	}
	want := []routing.UserRoute{
		{User: "horms", Target: routing.Target{Backend: "b1"}},
		{User: "tymm", Target: routing.Target{Backend: "b2"}},
		{User: "alice@example.com", Target: routing.Target{Backend: "b3", Login: "alice.smith"}},
		{User: "bob", Target: routing.Target{Backend: "b1", Login: "bob@corp.example"}},
		{User: "carol#x", Target: routing.Target{Pool: "p"}},
		{User: "dave", Target: routing.Target{Pool: "p", Login: "robert"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	for in, msg := range map[string]string{
		"a: @b1\n":       "empty name before '@'",
		"a: pool:nope\n": `unknown pool "nope"`,
		": b1\n":         "line 1: want",
		"a:\n":           "line 1: want",
		"a: " + strings.Repeat("x", source.MaxPopmapLine+1) + "\n": "longer than",
	} {
		if _, err := parsePopmap([]byte(in), tbl); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%.40q: %v, want %q", in, err, msg)
		}
	}
}

func TestParseCSVAndJSON(t *testing.T) {
	tbl := testTable(t)
	got, err := parseCSV([]byte("user,target,login,source\n# c\nalice,10.0.0.2:1143,alice.smith,x.csv\nbob,pool:p,,\ncarol,b1\n"), tbl)
	if err != nil {
		t.Fatal(err)
	}
	want := []routing.UserRoute{
		{User: "alice", Target: routing.Target{Backend: "b3", Login: "alice.smith"}},
		{User: "bob", Target: routing.Target{Pool: "p"}},
		{User: "carol", Target: routing.Target{Backend: "b1"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("csv: got %+v", got)
	}
	got, err = parseJSON([]byte(`[{"user":"alice","server":"10.0.0.2:1143","login":"alice.smith"},{"user":"bob","pool":"p","source":"x"},{"user":"carol","backend":"b1"}]`), tbl)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("json: got %+v", got)
	}
	for _, in := range []string{`{}`, `[{"user":"a"}]`, `[{"user":"a","backend":"b1","pool":"p"}]`, `[{"user":"a","backend":"b1","x":1}]`, `[] []`, `[{"user":"a","server":"nope"}]`} {
		if _, err := parseJSON([]byte(in), tbl); err == nil {
			t.Errorf("json %s: accepted", in)
		}
	}
}

// Each format writes what it reads back, renames and pools included.
func TestWriteRulesRoundTrip(t *testing.T) {
	tbl := testTable(t)
	rules := []routing.UserRoute{
		{User: "alice@example.com", Target: routing.Target{Backend: "b3", Login: "alice.smith@corp"}},
		{User: "bob", Target: routing.Target{Pool: "p"}},
		{User: "carol", Target: routing.Target{Pool: "p", Login: "c"}},
	}
	for _, f := range []string{"popmap", "csv", "json"} {
		var buf bytes.Buffer
		if err := writeRules(&buf, f, rules); err != nil {
			t.Fatal(f, err)
		}
		got, err := parseRules(f, buf.Bytes(), tbl)
		if err != nil || !reflect.DeepEqual(got, rules) {
			t.Errorf("%s: %+v %v\n%s", f, got, err, buf.String())
		}
	}
	var buf bytes.Buffer
	if err := writeRules(&buf, "popmap", []routing.UserRoute{{User: "a:b", Target: routing.Target{Backend: "b1"}}}); err == nil {
		t.Error("popmap wrote a user with ':'")
	}
}

func fuzzTable(f *testing.F) *routing.Table {
	tbl, err := routing.NewTable(routing.TableSpec{
		Backends: []routing.Backend{{ID: "b1", Host: "10.0.0.1", IMAPPort: 143}, {ID: "b2", Host: "h", IMAPPort: 143, POP3Port: 110}},
		Pools:    []routing.Pool{{Name: "p", Backends: []string{"b1"}}},
	})
	if err != nil {
		f.Fatal(err)
	}
	return tbl
}

// checkParsed holds for every format: whatever is accepted names known
// targets, and writing it as JSON (which holds any name) reads back alike.
func checkParsed(t *testing.T, tbl *routing.Table, routes []routing.UserRoute) {
	for _, r := range routes {
		if (r.Backend == "") == (r.Pool == "") {
			t.Fatalf("rule %+v: not exactly one of backend and pool", r)
		}
		if r.Backend != "" && tbl.Backend(r.Backend) == nil || r.Pool != "" && tbl.Pool(r.Pool) == nil {
			t.Fatalf("rule %+v: unknown target", r)
		}
	}
	var buf bytes.Buffer
	if err := writeRules(&buf, "json", routes); err != nil {
		t.Fatal(err)
	}
	back, err := parseJSON(buf.Bytes(), tbl)
	if err != nil {
		t.Fatalf("json of accepted rules does not read back: %v", err)
	}
	if len(back) != len(routes) {
		t.Fatalf("json round trip: %d rules, want %d", len(back), len(routes))
	}
}

func FuzzParsePopmap(f *testing.F) {
	tbl := fuzzTable(f)
	for _, s := range []string{"a: b1\n", "# c\nx@y: z@h:110\n", "u: pool:p # c\n", "a:b:c\n", "\xff: b1"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		routes, err := parsePopmap(b, tbl)
		if err == nil {
			checkParsed(t, tbl, routes)
		}
	})
}

func FuzzParseCSV(f *testing.F) {
	tbl := fuzzTable(f)
	for _, s := range []string{"user,target\na,b1\n", "a,pool:p,x,y\n", "\"a\"\"b\",h:110\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		routes, err := parseCSV(b, tbl)
		if err == nil {
			checkParsed(t, tbl, routes)
		}
	})
}

func FuzzParseJSON(f *testing.F) {
	tbl := fuzzTable(f)
	for _, s := range []string{`[{"user":"a","backend":"b1"}]`, `[{"user":"a","server":"h:143","login":"x"}]`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		routes, err := parseJSON(b, tbl)
		if err == nil {
			checkParsed(t, tbl, routes)
		}
	})
}

package routesapi

import (
	"strings"
	"testing"

	"github.com/portico-mail/portico/routing"
)

func testTable(t *testing.T) *routing.Table {
	t.Helper()
	tbl, err := routing.NewTable(routing.TableSpec{
		Backends: []routing.Backend{
			{ID: "b1", Host: "10.0.0.1", IMAPPort: 143, POP3Port: 110},
			{ID: "b2", Host: "10.0.0.2", IMAPPort: 143},
			{ID: "b3", Host: "10.0.0.2", IMAPPort: 1143},
		},
		Pools: []routing.Pool{{Name: "p", Backends: []string{"b1", "b2"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

// A popmap or CSV server is a backend id, or a host or host:port that
// names exactly one backend.
func TestImportFormats(t *testing.T) {
	tbl := testTable(t)
	routes, err := parsePopmap([]byte("# comment\nalice: b2\n\nbob : 10.0.0.1\ncarol: 10.0.0.2:1143\ndave: 10.0.0.1:110\n"), tbl)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"alice": "b2", "bob": "b1", "carol": "b3", "dave": "b1"}
	if len(routes) != len(want) {
		t.Fatalf("popmap: %+v", routes)
	}
	for _, r := range routes {
		if want[r.User] != r.Target.Backend {
			t.Errorf("popmap %s -> %+v, want %s", r.User, r.Target, want[r.User])
		}
	}
	routes, err = parseCSV([]byte("user,target\nalice,pool:p\nbob, b1\n"), tbl)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 2 || routes[0].Target.Pool != "p" || routes[1].Target.Backend != "b1" {
		t.Fatalf("csv: %+v", routes)
	}
	for _, x := range []struct {
		popmap, csv bool
		in, msg     string
	}{
		{popmap: true, in: "alice b1\n", msg: `line 1: want "user: [newname@]server"`},
		{popmap: true, in: "alice: 10.0.0.2\n", msg: "matches several backends (b2, b3)"},
		{popmap: true, in: "ok: b1\nalice: 10.9.9.9\n", msg: "line 2: unknown server"},
		{csv: true, in: "alice,b1,x,y,z\n", msg: "want 2 to 4 fields"},
		{csv: true, in: "alice,nope\n", msg: "csv line 1: unknown server"},
	} {
		var err error
		if x.popmap {
			_, err = parsePopmap([]byte(x.in), tbl)
		} else {
			_, err = parseCSV([]byte(x.in), tbl)
		}
		if err == nil || !strings.Contains(err.Error(), x.msg) {
			t.Errorf("%q: %v, want %q", x.in, err, x.msg)
		}
	}
}

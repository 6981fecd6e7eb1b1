package routesapi

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/portico-mail/portico/routing"
)

func bulkNode(t *testing.T) (*fakeNode, string) {
	t.Helper()
	net := &fakeNet{}
	nd := net.add("n1")
	base := serveAPI(t, nd)
	for _, c := range []routing.Command{
		{Type: routing.CmdPutBackend, Backend: &routing.Backend{ID: "b1", Host: "10.0.0.1", IMAPPort: 143}},
		{Type: routing.CmdPutBackend, Backend: &routing.Backend{ID: "b2", Host: "10.0.0.2", IMAPPort: 143}},
		{Type: routing.CmdPutPool, Pool: &routing.Pool{Name: "p", Backends: []string{"b1", "b2"}}},
	} {
		if err := nd.Apply(t.Context(), c); err != nil {
			t.Fatal(err)
		}
	}
	return nd, base
}

func doImport(t *testing.T, base string, req ImportRequest) ImportResult {
	t.Helper()
	b, _ := json.Marshal(req)
	code, body := call(t, base, "POST", "/v1/import", string(b))
	var res ImportResult
	if code != 200 || json.Unmarshal([]byte(body), &res) != nil {
		t.Fatalf("import %+v: %d %s", req, code, body)
	}
	return res
}

func rules(t *testing.T, nd *fakeNode) map[string]routing.Target {
	out := map[string]routing.Target{}
	for _, r := range nd.fsm.Table().UserRoutes("", "", 0) {
		out[r.User] = r.Target
	}
	return out
}

// --replace prunes only the rules its own source wrote; --dry-run reports
// the same difference and writes nothing.
func TestImportReplaceAndDryRun(t *testing.T) {
	nd, base := bulkNode(t)
	res := doImport(t, base, ImportRequest{Source: "a.map", Data: "alice: alice.smith@b1\nbob: b2\ncarol: pool:p\ndave: b1\n"})
	if res.Added != 4 || res.Imported != 4 {
		t.Fatalf("%+v", res)
	}
	if tg := rules(t, nd)["alice"]; tg != (routing.Target{Backend: "b1", Login: "alice.smith", Source: "a.map"}) {
		t.Fatalf("alice %+v", tg)
	}
	// Others write too: the API re-pins bob, another file takes carol,
	// the API adds erin.
	if code, body := call(t, base, "PUT", "/v1/routes/users/bob", `{"backend":"b1"}`); code != 200 {
		t.Fatal(body)
	}
	doImport(t, base, ImportRequest{Source: "b.map", Data: "carol: b2\n"})
	if code, body := call(t, base, "PUT", "/v1/routes/users/erin", `{"pool":"p","login":"erin2"}`); code != 200 {
		t.Fatal(body)
	}
	if tg := rules(t, nd)["erin"]; tg != (routing.Target{Pool: "p", Login: "erin2"}) {
		t.Fatalf("erin %+v", tg)
	}
	before := nd.fsm.Table()
	smaller := ImportRequest{Source: "a.map", Data: "alice: b2\n", Replace: true, DryRun: true}
	res = doImport(t, base, smaller)
	if nd.fsm.Table() != before {
		t.Fatal("a dry run wrote")
	}
	if res.Changed != 1 || res.Removed != 1 || res.Added != 0 || len(res.RemovedList) != 1 || res.RemovedList[0].User != "dave" ||
		res.ChangedList[0].From.Login != "alice.smith" || res.ChangedList[0].To != (routing.Target{Backend: "b2", Source: "a.map"}) {
		t.Fatalf("dry run: %+v", res)
	}
	smaller.DryRun = false
	res = doImport(t, base, smaller)
	got := rules(t, nd)
	want := map[string]routing.Target{
		"alice": {Backend: "b2", Source: "a.map"},
		"bob":   {Backend: "b1"},
		"carol": {Backend: "b2", Source: "b.map"},
		"erin":  {Pool: "p", Login: "erin2"},
	}
	if len(got) != len(want) {
		t.Fatalf("after replace: %+v", got)
	}
	for u, tg := range want {
		if got[u] != tg {
			t.Errorf("%s: %+v, want %+v", u, got[u], tg)
		}
	}
	for _, bad := range []string{`{"data":"a: b1","replace":true}`, `{"data":"a: b1","source":"x\ny"}`, `{"data":"a: b1","format":"xml"}`} {
		if code, body := call(t, base, "POST", "/v1/import", bad); code != 400 {
			t.Errorf("%s: %d %s", bad, code, body)
		}
	}
	if code, _ := call(t, base, "PUT", "/v1/routes/users/x", `{"backend":"b1","source":"a.map"}`); code != 400 {
		t.Errorf("PUT with a source: %d", code)
	}
}

// An export of a source, imported again with --replace, changes nothing,
// in every format.
func TestExportImportRoundTrip(t *testing.T) {
	nd, base := bulkNode(t)
	doImport(t, base, ImportRequest{Source: "a.map", Data: "alice@example.com: alice.smith@corp@b1\nbob: pool:p\ncarol: robert@pool:p\n"})
	doImport(t, base, ImportRequest{Source: "other", Format: "csv", Data: "zed,b2\n"})
	for _, f := range []string{"popmap", "csv", "json"} {
		code, body := call(t, base, "GET", "/v1/export?format="+f+"&source="+url.QueryEscape("a.map"), "")
		if code != 200 || strings.Contains(body, "zed") || !strings.Contains(body, "alice.smith@corp") {
			t.Fatalf("export %s: %d %s", f, code, body)
		}
		before := nd.fsm.Table()
		res := doImport(t, base, ImportRequest{Source: "a.map", Format: f, Data: body, Replace: true})
		if res.Added+res.Changed+res.Removed != 0 || res.Unchanged != 3 || nd.fsm.Table() != before {
			t.Fatalf("%s: re-import of the export changed something: %+v\n%s", f, res, body)
		}
	}
	code, body := call(t, base, "GET", "/v1/export?format=csv", "")
	if code != 200 || strings.Count(body, "\n") != 5 || !strings.Contains(body, "zed,b2,,other") {
		t.Fatalf("export all: %d %s", code, body)
	}
	if code, _ := call(t, base, "GET", "/v1/export?format=xml", ""); code != 400 {
		t.Fatalf("format xml: %d", code)
	}
}

package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// `backend set` sends exactly the flags given (PATCH); a backend the API
// does not know is added with PUT, every field, the others at their
// defaults; enable and disable send the state alone.
func TestBackendSetSendsOnlyTheFlagsGiven(t *testing.T) {
	type req struct {
		method, path string
		body         map[string]any
	}
	var mu sync.Mutex
	var got []req
	known := map[string]bool{"imap1": true}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var body map[string]any
		_ = json.Unmarshal(b, &body)
		mu.Lock()
		got = append(got, req{r.Method, r.URL.Path, body})
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if r.Method == "PATCH" && !known[strings.TrimPrefix(r.URL.Path, "/v1/backends/")] {
			w.WriteHeader(404)
			w.Write([]byte(`{"error": "not found: no backend"}`))
			return
		}
		w.Write([]byte(`{"ok": true, "applied_index": 7}`))
	}))
	defer srv.Close()
	run := func(args ...string) []req {
		t.Helper()
		mu.Lock()
		got = nil
		mu.Unlock()
		code, _, errOut := runCLI(t, append(args, "--admin", srv.URL)...)
		if code != 0 {
			t.Fatalf("%q: exit %d: %s", args, code, errOut)
		}
		mu.Lock()
		defer mu.Unlock()
		return got
	}

	for _, c := range []struct {
		args []string
		want map[string]any
	}{
		{[]string{"backend", "set", "imap1", "--weight", "3"}, map[string]any{"weight": 3.0}},
		{[]string{"backend", "set", "imap1", "--state", "draining"}, map[string]any{"state": "draining"}},
		{[]string{"backend", "set", "imap1", "--host", "10.0.0.9", "--imap-port", "1143"}, map[string]any{"host": "10.0.0.9", "imap_port": 1143.0}},
		{[]string{"backend", "set", "imap1", "--tls-server-name", "", "--tls-insecure-skip-verify=false"},
			map[string]any{"tls_server_name": "", "tls_insecure_skip_verify": false}},
		{[]string{"backend", "enable", "imap1"}, map[string]any{"state": "active"}},
		{[]string{"backend", "disable", "imap1"}, map[string]any{"state": "disabled"}},
	} {
		rs := run(c.args...)
		if len(rs) != 1 || rs[0].method != "PATCH" || rs[0].path != "/v1/backends/imap1" || !reflect.DeepEqual(rs[0].body, c.want) {
			t.Errorf("%q sent %+v, want one PATCH of %v", c.args, rs, c.want)
		}
	}

	rs := run("backend", "set", "imap2", "--host", "10.0.0.2", "--pop3-port", "110", "--forward", "id")
	if len(rs) != 2 || rs[0].method != "PATCH" || rs[1].method != "PUT" || rs[1].path != "/v1/backends/imap2" {
		t.Fatalf("a new backend: %+v", rs)
	}
	want := map[string]any{"id": "imap2", "host": "10.0.0.2", "pop3_port": 110.0, "forward": "id", "tls": "", "state": "", "weight": 0.0}
	if !reflect.DeepEqual(rs[1].body, want) {
		t.Fatalf("PUT of a new backend: %v, want %v", rs[1].body, want)
	}
	// A new backend needs an address.
	code, _, errOut := runCLI(t, "backend", "set", "imap3", "--weight", "2", "--admin", srv.URL)
	if code != 1 || !strings.Contains(errOut, "backend imap3 does not exist; to add it, give --host") {
		t.Fatalf("a new backend without --host: exit %d: %s", code, errOut)
	}
}

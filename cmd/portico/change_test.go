package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// change sends the method, path and JSON body, and reports the outcome
// as done does: the raft index, or the answer as it came with --json; an
// error answer is returned, nothing printed.
func TestAPIChange(t *testing.T) {
	var method, path, body string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		method, path, body = r.Method, r.URL.Path, string(b)
		if strings.HasSuffix(r.URL.Path, "/missing") {
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error": "no pool \"missing\""}`))
			return
		}
		w.Write([]byte(`{"ok": true, "applied_index": 42}`))
	}))
	defer srv.Close()
	c := &apiClient{base: srv.URL, http: srv.Client()}

	out := captureStdout(t, func(io.Writer) {
		if err := c.change("PUT", "/v1/routes/default", map[string]string{"pool": "main"}); err != nil {
			t.Error(err)
		}
	})
	var sent map[string]string
	if method != "PUT" || path != "/v1/routes/default" || json.Unmarshal([]byte(body), &sent) != nil || sent["pool"] != "main" {
		t.Errorf("sent %s %s %s", method, path, body)
	}
	if out != "ok (raft index 42)\n" {
		t.Errorf("printed %q", out)
	}

	c.json = true
	out = captureStdout(t, func(io.Writer) {
		if err := c.change("DELETE", "/v1/pools/p", nil); err != nil {
			t.Error(err)
		}
	})
	if method != "DELETE" || path != "/v1/pools/p" || body != "" || !strings.Contains(out, `"applied_index": 42`) {
		t.Errorf("sent %s %s %q, printed %q", method, path, body, out)
	}

	out = captureStdout(t, func(io.Writer) {
		if err := c.change("DELETE", "/v1/pools/missing", nil); err == nil || !strings.Contains(err.Error(), `no pool`) {
			t.Errorf("error %v", err)
		}
	})
	if out != "" {
		t.Errorf("printed %q after an error", out)
	}
}

package throttleapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/throttle"
	"github.com/portico-mail/portico/ops/admin"
)

// Against a real limiter: a block shows in the list (with the user's
// name only when the request named it), bad filters are refused, and an
// unblock lifts it.
func TestListAndUnblock(t *testing.T) {
	cfg := throttle.DefaultConfig()
	cfg.Trusted = nil
	cfg.UserIPLimit = 2
	l := throttle.New(cfg, nil)
	ip := netip.MustParseAddr("198.51.100.7")
	l.Failed(ip, "alice")
	l.Failed(ip, "alice")
	if l.Blocked(ip, "alice") == "" {
		t.Fatal("not blocked")
	}
	a, err := admin.New(admin.Config{Address: "127.0.0.1:0"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	Register(a, l, nil)
	if err := a.Listen(); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Shutdown(context.Background()) })
	base := "http://" + a.Addr().String()
	call := func(method, path, body string, out any) int {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, bytes.NewReader([]byte(body)))
		if method != "GET" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if out != nil {
			_ = json.NewDecoder(resp.Body).Decode(out)
		}
		return resp.StatusCode
	}
	var es []Entry
	if code := call("GET", "/v1/throttle", "", &es); code != 200 || len(es) != 3 || !es[0].Blocked || es[0].User != "" || es[0].UserHash != throttle.UserHash("alice") {
		t.Fatalf("list: %d %+v", code, es)
	}
	if code := call("GET", "/v1/throttle?user=Alice&ip=198.51.100.7", "", &es); code != 200 || len(es) != 1 || es[0].User != "Alice" || es[0].Scope != throttle.ScopeUserIP {
		t.Fatalf("list alice: %d %+v", code, es)
	}
	for _, bad := range []string{"/v1/throttle?ip=nope", "/v1/throttle?ip=198.51.100.7/24"} {
		if code := call("GET", bad, "", nil); code != 400 {
			t.Errorf("%s: %d", bad, code)
		}
	}
	for _, bad := range []string{`{}`, `{"ip": "x"}`, `{"user": ""}`, `[]`} {
		if code := call("POST", "/v1/throttle/unblock", bad, nil); code != 400 {
			t.Errorf("unblock %s: %d", bad, code)
		}
	}
	var res map[string]int
	if code := call("POST", "/v1/throttle/unblock", `{"user": "ALICE"}`, &res); code != 200 || res["reset"] != 2 {
		t.Fatalf("unblock: %d %v", code, res)
	}
	if s := l.Blocked(ip, "alice"); s != "" {
		t.Fatalf("still blocked: %s", s)
	}
}

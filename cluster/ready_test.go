package cluster

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A node catching up parses the leader's answer strictly and boundedly;
// a leader of an older version (no endpoint) is recognised, so that the
// node falls back instead of waiting forever during a rolling upgrade.
func TestGetReadIndex(t *testing.T) {
	var status int
	var body string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != ReadIndexPath || r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	api := strings.TrimPrefix(srv.URL, "http://")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hc := &http.Client{Timeout: 5 * time.Second}

	status, body = 200, `{"index":42,"raft_index":45,"exact":true}`
	ri, err := getReadIndex(ctx, hc, api, "tok")
	if err != nil || ri != (ReadIndex{Index: 42, RaftIndex: 45, Exact: true}) {
		t.Fatalf("%+v %v", ri, err)
	}
	if _, err := getReadIndex(ctx, hc, api, "wrong"); err == nil || errors.Is(err, errReadIndexUnsupported) {
		t.Fatalf("wrong token: %v", err)
	}
	for _, code := range []int{http.StatusNotFound, http.StatusMethodNotAllowed} {
		status, body = code, "404 page not found"
		if _, err := getReadIndex(ctx, hc, api, "tok"); !errors.Is(err, errReadIndexUnsupported) {
			t.Fatalf("HTTP %d: %v, want errReadIndexUnsupported", code, err)
		}
	}
	status, body = 503, `{"error":"no raft leader"}`
	if _, err := getReadIndex(ctx, hc, api, "tok"); err == nil || errors.Is(err, errReadIndexUnsupported) {
		t.Fatalf("503: %v", err)
	}
	for _, b := range []string{"", "garbage", `{"index":"x"}`, `{"index":1,` + strings.Repeat(" ", 8192) + `"exact":true}`} {
		status, body = 200, b
		if _, err := getReadIndex(ctx, hc, api, "tok"); err == nil {
			t.Fatalf("body %.40q accepted", b)
		}
	}
}

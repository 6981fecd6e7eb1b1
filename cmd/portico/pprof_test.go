package main

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// lockedLog is a log sink safe for the server's goroutines.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// pprofGet fetches path from the listener at addr with the Host header
// and headers given, and returns the status and body.
func pprofGet(t *testing.T, addr, host, path string, hdr map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s (Host %s): %v", path, host, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The profiling listener answers only requests whose Host is its own
// address (or localhost, on loopback): a page whose name was rebound to
// 127.0.0.1 is refused with 421, and logged; a request a browser marks
// as cross-site is refused with 403; tools are served.
func TestPprofHostGuard(t *testing.T) {
	var logs lockedLog
	log := slog.New(slog.NewTextHandler(&logs, nil))
	addr, stop, err := startPprof("127.0.0.1:0", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	_, port, _ := net.SplitHostPort(addr)

	for _, tc := range []struct {
		host string
		hdr  map[string]string
		want int
	}{
		{addr, nil, http.StatusOK},
		{"localhost:" + port, nil, http.StatusOK},
		{"localhost", nil, http.StatusOK},
		{"127.0.0.1", nil, http.StatusOK},
		{addr, map[string]string{"Sec-Fetch-Site": "same-origin"}, http.StatusOK}, // the index page's links
		{addr, map[string]string{"Sec-Fetch-Site": "none"}, http.StatusOK},        // typed in the address bar
		{"attacker.example:" + port, nil, http.StatusMisdirectedRequest},
		{"attacker.example", nil, http.StatusMisdirectedRequest},
		{"127.0.0.2:" + port, nil, http.StatusMisdirectedRequest}, // not the address reached
		{"localhost.attacker.example:" + port, nil, http.StatusMisdirectedRequest},
		{"127.0.0.1:1", nil, http.StatusMisdirectedRequest}, // another port
		{addr, map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{addr, map[string]string{"Sec-Fetch-Site": "same-site"}, http.StatusForbidden},
	} {
		status, body := pprofGet(t, addr, tc.host, "/debug/pprof/", tc.hdr)
		if status != tc.want {
			t.Errorf("Host %q %v: %d, want %d (%.200s)", tc.host, tc.hdr, status, tc.want, body)
		}
		if status == http.StatusOK && !strings.Contains(body, "goroutine") {
			t.Errorf("Host %q: not the profile index: %.200s", tc.host, body)
		}
	}
	// A profile, not only the index.
	if status, body := pprofGet(t, addr, addr, "/debug/pprof/goroutine?debug=1", nil); status != http.StatusOK || !strings.Contains(body, "goroutine profile:") {
		t.Errorf("goroutine profile: %d %.200s", status, body)
	}
	if status, _ := pprofGet(t, addr, "attacker.example:"+port, "/debug/pprof/goroutine?debug=1", nil); status != http.StatusMisdirectedRequest {
		t.Errorf("goroutine profile under a foreign Host: %d", status)
	}
	out := logs.String()
	if !strings.Contains(out, "level=WARN msg=\"pprof request refused\"") || !strings.Contains(out, "attacker.example") {
		t.Errorf("refusal not logged:\n%s", out)
	}
	if strings.Contains(out, "not a loopback") {
		t.Errorf("a warning about a loopback address:\n%s", out)
	}
}

// On an address that is not a loopback one the listener serves, and says
// loudly in the log that it should not.
func TestPprofWarnsOffLoopback(t *testing.T) {
	var wild, lo lockedLog
	_, stop, err := startPprof("0.0.0.0:0", slog.New(slog.NewTextHandler(&wild, nil)))
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if out := wild.String(); !strings.Contains(out, "level=WARN") || !strings.Contains(out, "not a loopback one") {
		t.Fatalf("no warning for a wildcard address:\n%s", out)
	}
	_, stop, err = startPprof("127.0.0.1:0", slog.New(slog.NewTextHandler(&lo, nil)))
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if out := lo.String(); strings.Contains(out, "level=WARN") || !strings.Contains(out, "profiling endpoints listening") {
		t.Fatalf("loopback address:\n%s", out)
	}
}

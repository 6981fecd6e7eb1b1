package admin

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/portico-mail/portico/integration/testcert"
)

// Servers, their connections and the refusal paths leave no goroutine
// behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testServer is an admin server on 127.0.0.1:0 with a state-changing
// endpoint that counts the calls that reached it.
type testServer struct {
	*Server
	addr    string // 127.0.0.1:port
	port    int
	changed atomic.Int64
	client  *http.Client
	scheme  string
}

func start(t *testing.T, c Config) *testServer {
	t.Helper()
	if c.Address == "" {
		c.Address = "127.0.0.1:0"
	}
	s, err := New(c, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: s, client: &http.Client{Timeout: 10 * time.Second}, scheme: "http"}
	change := func(w http.ResponseWriter, r *http.Request) {
		ts.changed.Add(1)
		JSON(w, http.StatusOK, map[string]bool{"ok": true})
	}
	s.HandleFunc("POST /v1/drain", change)
	s.HandleFunc("PUT /v1/backends/{id}", change)
	s.HandleFunc("DELETE /v1/backends/{id}", change)
	s.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		JSON(w, http.StatusOK, map[string]string{"node": "n1"})
	})
	s.HandlePublic("GET /metrics", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "portico_up 1\n")
	}))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(t.Context()) })
	ts.addr = s.Addr().String()
	ts.port = s.Addr().(*net.TCPAddr).Port
	if s.TLS() {
		ts.scheme = "https"
	}
	return ts
}

type call struct {
	method, path string
	host         string            // Host header ("" leaves the URL's)
	header       map[string]string // more headers
	body         string
}

// do sends c and returns the status and the decoded error message (if the
// answer is an error).
func (ts *testServer) do(t *testing.T, c call) (int, string) {
	t.Helper()
	var body io.Reader
	if c.body != "" {
		body = strings.NewReader(c.body)
	}
	req, err := http.NewRequest(c.method, ts.scheme+"://"+ts.addr+c.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if c.host != "" {
		req.Host = c.host
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 && resp.StatusCode != 404 && resp.StatusCode != 405 { // the mux's own are text
		var e ErrorBody
		if err := json.Unmarshal(raw, &e); err != nil || e.Error == "" {
			t.Errorf("%s %s: %d answer is not a JSON error: %q", c.method, c.path, resp.StatusCode, raw)
		}
		return resp.StatusCode, e.Error
	}
	return resp.StatusCode, ""
}

func jsonCT(extra ...string) map[string]string {
	h := map[string]string{"Content-Type": "application/json"}
	for i := 0; i+1 < len(extra); i += 2 {
		h[extra[i]] = extra[i+1]
	}
	return h
}

// A browser page whose name was rebound to the admin address sends its own
// name as Host: refused on every path, public ones included, before the
// handler runs. The listener's own addresses and configured names pass.
func TestHostCheck(t *testing.T) {
	ts := start(t, Config{AllowedHosts: []string{"admin.example.com", "Proxy.Example.NET:8443", "[2001:db8::7]"}})
	p := strconv.Itoa(ts.port)
	for _, c := range []struct {
		host string
		want int
	}{
		{"127.0.0.1:" + p, 200},
		{"127.0.0.1", 200}, // port omitted, as for a default port
		{"localhost:" + p, 200},
		{"LocalHost:" + p, 200},
		{"[::ffff:127.0.0.1]:" + p, 200},
		{"admin.example.com", 200},
		{"admin.example.com:" + p, 200},
		{"admin.example.com:1", 200},    // a name entry without port: any port
		{"proxy.example.net:8443", 200}, // name:port entry
		{"[2001:db8::7]:" + p, 200},     // IPv6 entry
		{"attacker.example", 421},       // DNS rebinding
		{"attacker.example:" + p, 421},  // with the right port
		{"admin.example.com.attacker.net", 421},
		{"proxy.example.net", 421}, // entry with a port: only that port
		{"proxy.example.net:" + p, 421},
		{"127.0.0.1:1", 421},   // another port of this address
		{"10.9.8.7:" + p, 421}, // an IP this connection did not reach
		{"[::1]:" + p, 421},    // loopback, but not the one reached
		{"localhost.:" + p, 421},
		{"127.0.0.1:" + p + ":" + p, 421},
		{"127.0.0.1:0", 421},
		{"*.example.com", 421},
	} {
		for _, path := range []string{"/v1/status", "/metrics", "/nope"} {
			code, msg := ts.do(t, call{method: "GET", path: path, host: c.host})
			if c.want == 200 && code == 421 || c.want == 421 && code != 421 {
				t.Errorf("GET %s Host %q: %d %s, want %d", path, c.host, code, msg, c.want)
			}
			if code == 421 && !strings.Contains(msg, "admin.allowed_hosts") {
				t.Errorf("Host %q: refusal does not say what to do: %q", c.host, msg)
			}
		}
		code, _ := ts.do(t, call{method: "POST", path: "/v1/drain", host: c.host, header: jsonCT()})
		if (c.want == 200) != (code == 200) {
			t.Errorf("POST /v1/drain Host %q: %d, want %d", c.host, code, c.want)
		}
	}
	// Written by hand: HTTP/1.0 without Host (old load balancer health
	// checks) passes; Host values Go's client would not send are refused.
	for req, want := range map[string]int{
		"GET /metrics HTTP/1.0\r\n\r\n":                                   200,
		"GET /metrics HTTP/1.0\r\nHost: attacker.example\r\n\r\n":         421,
		"GET /metrics HTTP/1.1\r\nHost: *.localhost:" + p + "\r\n\r\n":    421,
		"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:" + p + "/x\r\n\r\n":    400, // Go refuses it first
		"GET /metrics HTTP/1.1\r\nHost: user@127.0.0.1:" + p + "\r\n\r\n": 400,
	} {
		conn, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(conn, req)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		conn.Close()
		if err != nil || resp.StatusCode != want {
			t.Errorf("%q: %v %v, want %d", req, resp, err, want)
		}
	}
}

// The listener's configured name passes, on the bound port.
func TestHostCheckConfiguredName(t *testing.T) {
	ts := start(t, Config{Address: "localhost:0"})
	if code, msg := ts.do(t, call{method: "GET", path: "/v1/status", host: "localhost:" + strconv.Itoa(ts.port)}); code != 200 {
		t.Fatalf("configured name: %d %s", code, msg)
	}
}

// Cross-site request forgery: a browser can POST forms and text/plain to
// any address without a preflight. Every state-changing method needs
// Content-Type application/json and no foreign Origin or cross-site
// Sec-Fetch-Site; a refusal changes nothing. Reads stay open.
func TestCrossSiteRefused(t *testing.T) {
	ts := start(t, Config{})
	own := "http://127.0.0.1:" + strconv.Itoa(ts.port)
	for _, c := range []struct {
		name   string
		method string
		path   string
		header map[string]string
		body   string
		want   int
	}{
		{"form", "POST", "/v1/drain", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, "a=b", 415},
		{"multipart", "POST", "/v1/drain", map[string]string{"Content-Type": "multipart/form-data; boundary=x"}, "--x--", 415},
		{"text/plain", "POST", "/v1/drain", map[string]string{"Content-Type": "text/plain"}, `{"x":1}`, 415},
		{"text/plain with a JSON-looking type parameter", "POST", "/v1/drain", map[string]string{"Content-Type": "text/plain; a=application/json"}, "", 415},
		{"no content type", "POST", "/v1/drain", nil, "", 415},
		{"no content type, body", "POST", "/v1/drain", nil, "{}", 415},
		{"malformed content type", "POST", "/v1/drain", map[string]string{"Content-Type": "application/json;;;="}, "", 415},
		{"json lookalike", "POST", "/v1/drain", map[string]string{"Content-Type": "application/jsonx"}, "", 415},
		{"octet-stream", "POST", "/v1/drain", map[string]string{"Content-Type": "application/octet-stream"}, "", 415},
		{"PUT form", "PUT", "/v1/backends/x", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, "", 415},
		{"DELETE without type", "DELETE", "/v1/backends/x", nil, "", 415},
		{"foreign Origin", "POST", "/v1/drain", jsonCT("Origin", "http://attacker.example"), "", 403},
		{"Origin null", "POST", "/v1/drain", jsonCT("Origin", "null"), "", 403},
		{"Origin other port", "POST", "/v1/drain", jsonCT("Origin", "http://127.0.0.1:1"), "", 403},
		{"Origin other scheme", "POST", "/v1/drain", jsonCT("Origin", "https://127.0.0.1:"+strconv.Itoa(ts.port)), "", 403},
		{"Origin with a path", "POST", "/v1/drain", jsonCT("Origin", own+"/x"), "", 403},
		{"Sec-Fetch-Site cross-site", "POST", "/v1/drain", jsonCT("Sec-Fetch-Site", "cross-site"), "", 403},
		{"Sec-Fetch-Site same-site", "POST", "/v1/drain", jsonCT("Sec-Fetch-Site", "same-site"), "", 403},
		{"Sec-Fetch-Site cross-site, own Origin", "POST", "/v1/drain", jsonCT("Sec-Fetch-Site", "cross-site", "Origin", own), "", 403},
		{"JSON", "POST", "/v1/drain", jsonCT(), "", 200},
		{"JSON with charset", "POST", "/v1/drain", map[string]string{"Content-Type": "application/json; charset=utf-8"}, "{}", 200},
		{"JSON upper case", "POST", "/v1/drain", map[string]string{"Content-Type": "Application/JSON"}, "", 200},
		{"own Origin", "POST", "/v1/drain", jsonCT("Origin", own), "", 200},
		{"Sec-Fetch-Site same-origin", "POST", "/v1/drain", jsonCT("Sec-Fetch-Site", "same-origin"), "", 200},
		{"Sec-Fetch-Site none", "POST", "/v1/drain", jsonCT("Sec-Fetch-Site", "none"), "", 200},
		{"PUT JSON", "PUT", "/v1/backends/x", jsonCT(), "{}", 200},
		{"DELETE JSON", "DELETE", "/v1/backends/x", jsonCT(), "", 200},
		{"GET with foreign Origin", "GET", "/v1/status", map[string]string{"Origin": "http://attacker.example", "Sec-Fetch-Site": "cross-site"}, "", 200},
	} {
		before := ts.changed.Load()
		code, msg := ts.do(t, call{method: c.method, path: c.path, header: c.header, body: c.body})
		if code != c.want {
			t.Errorf("%s: %s %s: %d %s, want %d", c.name, c.method, c.path, code, msg, c.want)
		}
		changed := ts.changed.Load() != before
		if c.method != "GET" && changed != (c.want == 200) {
			t.Errorf("%s: handler ran: %v, want %v", c.name, changed, c.want == 200)
		}
	}
}

// The token still applies behind the guard, and a token does not exempt a
// request from the guard.
func TestTokenStillRequired(t *testing.T) {
	ts := start(t, Config{Token: "s3cret"})
	bearer := func(h map[string]string) map[string]string { h["Authorization"] = "Bearer s3cret"; return h }
	for _, c := range []struct {
		name string
		c    call
		want int
	}{
		{"no token", call{method: "POST", path: "/v1/drain", header: jsonCT()}, 401},
		{"wrong token", call{method: "POST", path: "/v1/drain", header: jsonCT("Authorization", "Bearer nope")}, 401},
		{"token", call{method: "POST", path: "/v1/drain", header: bearer(jsonCT())}, 200},
		{"token, form", call{method: "POST", path: "/v1/drain", header: bearer(map[string]string{"Content-Type": "application/x-www-form-urlencoded"})}, 415},
		{"token, foreign Origin", call{method: "POST", path: "/v1/drain", header: bearer(jsonCT("Origin", "http://evil.example"))}, 403},
		{"token, rebound Host", call{method: "POST", path: "/v1/drain", host: "evil.example", header: bearer(jsonCT())}, 421},
		{"GET without token", call{method: "GET", path: "/v1/status"}, 401},
		{"metrics without token", call{method: "GET", path: "/metrics"}, 200},
	} {
		before := ts.changed.Load()
		if code, msg := ts.do(t, c.c); code != c.want {
			t.Errorf("%s: %d %s, want %d", c.name, code, msg, c.want)
		}
		if c.want != 200 && ts.changed.Load() != before {
			t.Errorf("%s: refused, but the handler ran", c.name)
		}
	}
}

// allowed_hosts change in place (reload); AllowHost entries stay.
func TestSetAllowedHosts(t *testing.T) {
	ts := start(t, Config{AllowedHosts: []string{"old.example"}})
	if err := ts.AllowHost("203.0.113.5:7143"); err != nil {
		t.Fatal(err)
	}
	get := func(host string) int {
		code, _ := ts.do(t, call{method: "GET", path: "/metrics", host: host})
		return code
	}
	if get("old.example") != 200 || get("203.0.113.5:7143") != 200 || get("new.example") != 421 {
		t.Fatal("before the change")
	}
	if err := ts.SetAllowedHosts([]string{"new.example"}); err != nil {
		t.Fatal(err)
	}
	if get("old.example") != 421 || get("new.example") != 200 || get("203.0.113.5:7143") != 200 || get("203.0.113.5:1") != 421 {
		t.Fatal("after the change")
	}
	if err := ts.SetAllowedHosts([]string{"bad host"}); err == nil || get("new.example") != 200 {
		t.Fatalf("a bad list was taken or changed the running one: %v", err)
	}
	if _, err := New(Config{Address: "127.0.0.1:0", AllowedHosts: []string{"https://x"}}, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("New took a malformed allowed host")
	}
}

func TestParseHost(t *testing.T) {
	for _, c := range []struct {
		in   string
		host string
		port int
		ok   bool
	}{
		{"example.com", "example.com", 0, true},
		{"Example.COM:8443", "example.com", 8443, true},
		{"10.0.0.1", "10.0.0.1", 0, true},
		{"10.0.0.1:7143", "10.0.0.1", 7143, true},
		{"::1", "::1", 0, true},
		{"[::1]", "::1", 0, true},
		{"[::1]:7143", "::1", 7143, true},
		{"[::ffff:10.0.0.1]:1", "10.0.0.1", 1, true},
		{"my_host-1.local", "my_host-1.local", 0, true},
		{"", "", 0, false},
		{"http://example.com", "", 0, false},
		{"example.com/x", "", 0, false},
		{"*.example.com", "", 0, false},
		{"user@example.com", "", 0, false},
		{"example.com:", "", 0, false},
		{"example.com:0", "", 0, false},
		{"example.com:65536", "", 0, false},
		{"example.com:+80", "", 0, false},
		{"example.com:80:80", "", 0, false},
		{"[::1", "", 0, false},
		{"[::1]x", "", 0, false},
		{"[10.0.0.1]:80", "", 0, false},
		{":80", "", 0, false},
		{"exa mple.com", "", 0, false},
		{"ex\x00ample.com", "", 0, false},
	} {
		host, port, err := ParseHost(c.in)
		if (err == nil) != c.ok || host != c.host || port != c.port {
			t.Errorf("ParseHost(%q) = %q, %d, %v; want %q, %d, ok %v", c.in, host, port, err, c.host, c.port, c.ok)
		}
	}
}

// FuzzParseHost: any Host header parses without panicking, and what it
// accepts is a clean name or IP and a port in range.
func FuzzParseHost(f *testing.F) {
	for _, s := range []string{"example.com:80", "[::1]:7143", "10.0.0.1", "::1", "[", "a:b:c", "[::1]:", "%", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		host, port, err := ParseHost(s)
		if err != nil {
			return
		}
		if host == "" || port < 0 || port > 65535 || strings.ContainsAny(host, "[]/@ *") || host != strings.ToLower(host) {
			t.Fatalf("ParseHost(%q) = %q, %d", s, host, port)
		}
	})
}

// FuzzGuard: any Host, Origin, Sec-Fetch-Site and Content-Type reach a
// state-changing handler only when the Host names the listener, the
// Origin (if any) is its own, Sec-Fetch-Site (if any) is same-origin or
// none, and the body is declared JSON.
func FuzzGuard(f *testing.F) {
	s, err := New(Config{Address: "127.0.0.1:7143", AllowedHosts: []string{"admin.example.com"}}, slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	var ran bool
	s.HandleFunc("POST /v1/drain", func(w http.ResponseWriter, r *http.Request) { ran = true })
	h := s.srv.Handler
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7143}
	f.Add("127.0.0.1:7143", "", "", "application/json")
	f.Add("attacker.example", "http://attacker.example", "cross-site", "text/plain")
	f.Add("admin.example.com", "http://admin.example.com", "same-origin", "application/json; charset=utf-8")
	f.Add("localhost:7143", "null", "none", "application/x-www-form-urlencoded")
	f.Fuzz(func(t *testing.T, host, origin, site, ctype string) {
		req, err := http.NewRequest("POST", "http://127.0.0.1:7143/v1/drain", nil)
		if err != nil {
			t.Skip()
		}
		req = req.WithContext(contextWithLocal(req, local))
		req.Host = host
		for k, v := range map[string]string{"Origin": origin, "Sec-Fetch-Site": site, "Content-Type": ctype} {
			if v != "" {
				req.Header.Set(k, v)
			}
		}
		ran = false
		w := &discardWriter{h: http.Header{}}
		h.ServeHTTP(w, req)
		if !ran {
			return
		}
		hn, hp, herr := ParseHost(host)
		hostOK := host == "" || herr == nil && (hn == "admin.example.com" ||
			(hn == "127.0.0.1" || hn == "localhost") && (hp == 0 || hp == 7143))
		if !hostOK {
			t.Fatalf("handler ran for Host %q", host)
		}
		if site != "" && site != "same-origin" && site != "none" {
			t.Fatalf("handler ran with Sec-Fetch-Site %q", site)
		}
		if origin != "" {
			u, err := url.Parse(origin)
			if err != nil || u.Scheme != "http" {
				t.Fatalf("handler ran with Origin %q", origin)
			}
			on, op, err := ParseHost(u.Host)
			effective := func(p int) int {
				if p == 0 {
					return 80
				}
				return p
			}
			if err != nil || on != hn || effective(op) != effective(hp) {
				t.Fatalf("handler ran with Origin %q for Host %q", origin, host)
			}
		}
		if !strings.HasPrefix(strings.ToLower(strings.TrimSpace(ctype)), "application/json") {
			t.Fatalf("handler ran with Content-Type %q", ctype)
		}
	})
}

func contextWithLocal(r *http.Request, a net.Addr) context.Context {
	return context.WithValue(r.Context(), http.LocalAddrContextKey, a)
}

type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }

// TLS: the listener serves HTTPS only, at TLS 1.2 or later; a client that
// trusts the certificate gets through the same guard; a plain-HTTP client
// gets an error, never the API; the certificate can be replaced in place.
func TestTLSListener(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, _, _ := testcert.Generate(t, filepath.Join(dir, "a"), "127.0.0.1", "localhost")
	ts := start(t, Config{Token: "s3cret", CertFile: certFile, KeyFile: keyFile})
	if !ts.TLS() || ts.Scheme() != "https" {
		t.Fatal("not TLS")
	}
	tc, err := ClientTLS("", certFile)
	if err != nil {
		t.Fatal(err)
	}
	ts.client.Transport = &http.Transport{TLSClientConfig: tc}
	own := "https://127.0.0.1:" + strconv.Itoa(ts.port)
	auth := "Bearer s3cret"
	if code, msg := ts.do(t, call{method: "POST", path: "/v1/drain", header: jsonCT("Authorization", auth, "Origin", own)}); code != 200 {
		t.Fatalf("HTTPS POST: %d %s", code, msg)
	}
	if code, _ := ts.do(t, call{method: "POST", path: "/v1/drain", header: jsonCT("Authorization", auth, "Origin", "http://127.0.0.1:"+strconv.Itoa(ts.port))}); code != 403 {
		t.Fatalf("http Origin on an HTTPS listener: %d", code)
	}
	if code, _ := ts.do(t, call{method: "GET", path: "/metrics", host: "attacker.example"}); code != 421 {
		t.Fatalf("rebound Host over TLS: %d", code)
	}

	// Plain HTTP on the TLS port: no API answer (Go answers 400).
	resp, err := http.Get("http://" + ts.addr + "/metrics")
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || strings.Contains(string(b), "portico_up") {
			t.Fatalf("plain HTTP to the TLS listener: %d %s", resp.StatusCode, b)
		}
	}
	// TLS 1.1 is refused.
	old := tc.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	if c, err := tls.Dial("tcp", ts.addr, old); err == nil {
		c.Close()
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
	// A client that does not trust the certificate fails verification.
	otherCert, _, _, _ := testcert.Generate(t, filepath.Join(dir, "other"), "127.0.0.1")
	wrong, err := ClientTLS(otherCert, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = (&http.Client{Transport: &http.Transport{TLSClientConfig: wrong}}).Get("https://" + ts.addr + "/metrics")
	var ve *tls.CertificateVerificationError
	if !errors.As(err, &ve) {
		t.Fatalf("untrusted certificate: %v", err)
	}

	// Replace the certificate: new handshakes present the new one.
	cert2, key2, _, _ := testcert.Generate(t, filepath.Join(dir, "b"), "127.0.0.1")
	kp, err := LoadKeyPair(cert2, key2)
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.SetCertificate(kp); err != nil {
		t.Fatal(err)
	}
	tc2, _ := ClientTLS(cert2, "")
	c, err := tls.Dial("tcp", ts.addr, tc2)
	if err != nil {
		t.Fatalf("after replacing the certificate: %v", err)
	}
	got := c.ConnectionState().PeerCertificates[0]
	c.Close()
	if !got.Equal(kp.Leaf) {
		t.Fatal("the old certificate is still served")
	}

	// A plain listener cannot switch TLS on in place.
	plain := start(t, Config{})
	if err := plain.SetCertificate(kp); err == nil {
		t.Fatal("SetCertificate on a plain listener")
	}
	if _, err := LoadKeyPair(certFile, ""); err == nil {
		t.Fatal("a pair without key loaded")
	}
	if _, err := LoadKeyPair(certFile, cert2); err == nil {
		t.Fatal("a certificate as key loaded")
	}
}

// ClientTLS without a CA file pins the listener's own certificate: this
// works for a CA-signed leaf too, not only a self-signed one.
func TestClientTLSPinsLeaf(t *testing.T) {
	dir := t.TempDir()
	ca, err := testcert.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := ca.Issue(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := ca.WriteCA(caFile); err != nil {
		t.Fatal(err)
	}
	ts := start(t, Config{CertFile: certFile, KeyFile: keyFile})
	for name, files := range map[string][2]string{"pinned leaf": {"", certFile}, "CA": {caFile, ""}} {
		tc, err := ClientTLS(files[0], files[1])
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.Dial("tcp", ts.addr, tc)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c.Close()
	}
	if _, err := ClientTLS(keyFile, ""); err == nil {
		t.Fatal("a key file taken as CA")
	}
	if _, err := ClientTLS(filepath.Join(dir, "missing"), ""); err == nil {
		t.Fatal("a missing CA file")
	}
}

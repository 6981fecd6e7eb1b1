package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/portico-mail/portico/integration/testcert"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// writeNodeConfig writes a node configuration with the given admin section
// (and cluster.advertise) and returns its path.
func writeNodeConfig(t *testing.T, adminYAML, advertise string) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "admin.token"), []byte("file-token\n"), 0o600)
	y := "listeners: [{protocol: imap, address: 127.0.0.1:1143}]\nadmin: " + adminYAML + "\n"
	if advertise != "" {
		y += "cluster: {advertise: " + advertise + "}\n"
	}
	p := filepath.Join(dir, "portico.yaml")
	if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Where the address, token and scheme come from: flags, then the
// environment, then --config, then the default; https when the address
// says so or TLS is known to be on.
func TestClientSettings(t *testing.T) {
	dir := t.TempDir()
	cert, _, _, _ := testcert.Generate(t, dir, "127.0.0.1")
	tlsCfg := writeNodeConfig(t, `{address: "0.0.0.0:7150", token_file: admin.token, tls: {cert_file: `+cert+`, key_file: k.pem}}`, "192.0.2.11")
	plainCfg := writeNodeConfig(t, `{address: "127.0.0.2:7151"}`, "")
	v6Cfg := writeNodeConfig(t, `{address: "[::]:7152", token: t6}`, "")
	for _, c := range []struct {
		name  string
		o     clientOptions
		env   map[string]string
		base  string
		token string
		roots bool // trusts given certificates, not only the system's
	}{
		{"default", clientOptions{}, nil, "http://127.0.0.1:7143", "", false},
		{"env", clientOptions{}, map[string]string{"PORTICO_ADMIN": "127.0.0.9:1", "PORTICO_TOKEN": "e"}, "http://127.0.0.9:1", "e", false},
		{"flag over env", clientOptions{addr: "localhost:2", token: "f"}, map[string]string{"PORTICO_ADMIN": "127.0.0.9:1", "PORTICO_TOKEN": "e"}, "http://localhost:2", "f", false},
		{"https address", clientOptions{addr: "https://10.0.0.1:7143", token: "x"}, nil, "https://10.0.0.1:7143", "x", false},
		{"bare address with a CA", clientOptions{addr: "10.0.0.1:7143", token: "x", ca: cert}, nil, "https://10.0.0.1:7143", "x", true},
		{"bare address with PORTICO_CA", clientOptions{}, map[string]string{"PORTICO_ADMIN": "10.0.0.1:7143", "PORTICO_CA": cert}, "https://10.0.0.1:7143", "", true},
		{"config with TLS, wildcard address: advertised", clientOptions{config: tlsCfg}, nil, "https://192.0.2.11:7150", "file-token", true},
		{"PORTICO_CONFIG", clientOptions{}, map[string]string{"PORTICO_CONFIG": tlsCfg}, "https://192.0.2.11:7150", "file-token", true},
		{"config, address and token overridden", clientOptions{config: tlsCfg, addr: "10.0.0.2:7150", token: "f"}, nil, "https://10.0.0.2:7150", "f", true},
		{"config, env token over file", clientOptions{config: tlsCfg}, map[string]string{"PORTICO_TOKEN": "e"}, "https://192.0.2.11:7150", "e", true},
		{"plain config", clientOptions{config: plainCfg}, nil, "http://127.0.0.2:7151", "", false},
		{"IPv6 wildcard: loopback", clientOptions{config: v6Cfg}, nil, "http://[::1]:7152", "t6", false},
		{"path prefix", clientOptions{addr: "https://proxy.example/portico/"}, nil, "https://proxy.example/portico", "", false},
		{"token to a non-loopback address, allowed", clientOptions{addr: "10.0.0.1:7143", token: "x", insecureHTTP: true}, nil, "http://10.0.0.1:7143", "x", false},
		{"no token, non-loopback http", clientOptions{addr: "10.0.0.1:7143"}, nil, "http://10.0.0.1:7143", "", false},
	} {
		cl, err := newAPIClient(c.o, env(c.env))
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		tc := cl.http.Transport.(*http.Transport).TLSClientConfig
		roots := tc != nil && tc.RootCAs != nil
		if cl.base != c.base || cl.token != c.token || roots != c.roots {
			t.Errorf("%s: base %q token %q roots %v", c.name, cl.base, cl.token, roots)
		}
	}
	off := writeNodeConfig(t, "{address: off}", "")
	for _, c := range []struct {
		name string
		o    clientOptions
		env  map[string]string
		want string
	}{
		{"token in cleartext", clientOptions{addr: "10.0.0.1:7143", token: "x"}, nil, "--insecure-http"},
		{"token in cleartext from env", clientOptions{}, map[string]string{"PORTICO_ADMIN": "http://mail.example.com:7143", "PORTICO_TOKEN": "x"}, "cleartext"},
		{"CA with http", clientOptions{addr: "http://10.0.0.1:7143", ca: cert}, nil, "plain http"},
		{"scheme", clientOptions{addr: "ftp://10.0.0.1:7143"}, nil, "scheme"},
		{"query", clientOptions{addr: "http://127.0.0.1:1/?x=1"}, nil, "want host:port"},
		{"admin off", clientOptions{config: off}, nil, "admin API is off"},
		{"missing config", clientOptions{config: filepath.Join(dir, "none.yaml")}, nil, "none.yaml"},
		{"CA not PEM", clientOptions{addr: "https://10.0.0.1:1", ca: off}, nil, "no PEM certificate"},
	} {
		if _, err := newAPIClient(c.o, env(c.env)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
}

// The client sends Content-Type application/json on every state-changing
// request (body or not) and none on reads, and follows no redirect (which
// would carry the token elsewhere).
func TestClientRequests(t *testing.T) {
	var redirected atomic.Bool
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { redirected.Store(true) }))
	defer other.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/redirect" {
			http.Redirect(w, r, other.URL, http.StatusFound)
			return
		}
		ct := r.Header.Get("Content-Type")
		if (r.Method == "GET") != (ct == "") || r.Method != "GET" && ct != "application/json" {
			http.Error(w, `{"error": "content type `+ct+`"}`, http.StatusUnsupportedMediaType)
			return
		}
		w.Write([]byte(`{"ok": true}`))
	}))
	defer srv.Close()
	cl, err := newAPIClient(clientOptions{addr: srv.URL, token: "t"}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"GET", "POST", "PUT", "DELETE"} {
		if _, err := cl.do(m, "/v1/x", nil, nil); err != nil {
			t.Errorf("%s without body: %v", m, err)
		}
	}
	if _, err := cl.do("PUT", "/v1/x", map[string]int{"a": 1}, nil); err != nil {
		t.Errorf("PUT with body: %v", err)
	}
	if _, err := cl.do("GET", "/v1/redirect", nil, nil); err == nil || redirected.Load() {
		t.Errorf("redirect followed: %v", err)
	}
}

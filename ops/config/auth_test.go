package config

import (
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/auth"
)

const authBase = `
listeners:
  - name: imap
    protocol: imap
    address: 127.0.0.1:1143
  - name: pop3
    protocol: pop3
    address: 127.0.0.1:1110
`

func TestAuthHTTP(t *testing.T) {
	c, err := Parse([]byte(authBase + `
auth:
  mode: http
  url: http://127.0.0.1:9000/auth
  headers:
    X-Auth-Key: "secret"
    A-First: one
  cache: {positive_ttl: 30s}
`))
	if err != nil {
		t.Fatal(err)
	}
	a := c.ListenerAuth(0)
	if !a.IsHTTP() || a.Timeout.D() != 60*time.Second || a.MaxResponse != 1024 || a.BackendForward != "none" {
		t.Fatalf("defaults: %+v", a)
	}
	if len(a.Headers) != 2 || a.Headers[0].Name != "X-Auth-Key" || a.Headers[1].Value != "one" {
		t.Fatalf("headers (order matters): %+v", a.Headers)
	}
	cc := a.CacheConfig()
	if cc.PositiveTTL != 30*time.Second || cc.NegativeTTL != auth.DefaultCacheConfig().NegativeTTL {
		t.Fatalf("cache %+v", cc)
	}
	if a.ClientConfig().URL != "http://127.0.0.1:9000/auth" {
		t.Fatal("client config")
	}
}

func TestAuthPerListener(t *testing.T) {
	c, err := Parse([]byte(`
listeners:
  - name: imap
    protocol: imap
    address: 127.0.0.1:1143
    auth: {mode: http, url: "unix:/run/auth.sock:/imap", relaxed_limits: true, cache: {negative_ttl: 0s}}
  - name: pop3
    protocol: pop3
    address: 127.0.0.1:1110
`))
	if err != nil {
		t.Fatal(err)
	}
	if a := c.ListenerAuth(0); !a.IsHTTP() || a.MaxResponse != 16384 || a.CacheConfig().NegativeTTL != 0 {
		t.Fatalf("%+v", a)
	}
	if a := c.ListenerAuth(1); a.IsHTTP() {
		t.Fatal("pop3 listener got auth_http")
	}
}

func TestAuthErrors(t *testing.T) {
	c, err := Parse([]byte(authBase + `
auth:
  mode: http
  url: 127.0.0.1:9000/auth
  headers: {"Bad Name": x}
  timeout: 1h
  max_response: 4096
  backend_forward: xclient
  cache: {max_entries: -1, positive_ttl: 2h}
`))
	if err == nil {
		t.Fatalf("accepted: %+v", c.Auth)
	}
	for _, want := range []string{
		"auth.url (line 12)", "auth.headers (line 13)", "auth.timeout (line 14)", "auth.max_response (line 15): nginx reads at most 1024 bytes",
		"auth.backend_forward (line 16)", "auth.cache.max_entries", "auth.cache.positive_ttl",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
	for yaml, want := range map[string]string{
		"auth: {mode: ldap}":                               `auth.mode (line 9): "ldap" is not one of passthrough, http`,
		"auth: {mode: http}":                               "auth.url (line 9): required with mode http",
		"auth: {url: http://x/}":                           "auth (line 9): mode passthrough takes no other settings",
		"auth: {mode: http, url: http://x/, z: 1}":         "field z not found",
		"auth: {mode: http, url: http://x/, headers: [a]}": "headers: want a mapping",
	} {
		_, err := Parse([]byte(authBase + yaml + "\n"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", yaml, err, want)
		}
	}
}

func TestAuthHeadersRoundTrip(t *testing.T) {
	c, err := Parse([]byte(authBase + "auth: {mode: http, url: http://x/, headers: {B: 2, A: 1}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "B: \"2\"\n") || strings.Index(string(out), "B: ") > strings.Index(string(out), "A: ") {
		t.Fatalf("%s", out)
	}
}

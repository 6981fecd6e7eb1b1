package config

import (
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/submission"
	"github.com/portico-mail/portico/routing"
)

// Submission listeners (STARTTLS on 587, implicit TLS on 465) routed to a
// pool of submission servers, with their own settings.
func TestSubmissionListenerAndBackend(t *testing.T) {
	y := `
standalone: true
tls: {certificates: [{cert: c.pem, key: k.pem}]}
listeners:
  - {protocol: submission, address: "127.0.0.1:587", tls: starttls, pool: relay,
     submission: {hostname: smtp.example.com, max_message_size: 52428800, extensions: [PIPELINING, 8BITMIME, DSN]}}
  - {name: smtps, protocol: submission, address: "127.0.0.1:465", tls: implicit, pool: relay,
     auth: {mode: http, url: "http://127.0.0.1:9000/auth"}, submission: {xclient_login: true}}
limits:
  submission_idle_timeout: 2m
backends:
  - {id: imap1, host: 127.0.0.1, imap_port: 143}
  - {id: mx1, host: 127.0.0.1, submission_port: 10587, forward: id}
pools:
  - {name: main, backends: [imap1]}
  - {name: relay, backends: [mx1]}
routes:
  default_pool: main
`
	c, err := Parse([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	nc := c.NodeConfig()
	l := nc.Listeners[0]
	if c.Listeners[0].Name != "submission-0" || l.Protocol != routing.Submission || l.Pool != "relay" {
		t.Errorf("listener %+v", l)
	}
	o, ok := l.Extra.(*submission.ListenerOptions)
	if !ok || o.Hostname != "smtp.example.com" || o.MaxMessageSize != 52428800 || len(o.Extensions) != 3 || o.XCLIENTLogin {
		t.Errorf("submission options %+v", l.Extra)
	}
	if o, ok := nc.Listeners[1].Extra.(*submission.ListenerOptions); !ok || !o.XCLIENTLogin {
		t.Errorf("smtps options %+v", nc.Listeners[1].Extra)
	}
	if c.EffectiveLimits(0).IdleTimeout != 2*time.Minute {
		t.Errorf("submission idle timeout %v", c.EffectiveLimits(0).IdleTimeout)
	}
	if d := (&Config{Listeners: []Listener{{Protocol: "submission"}}}).EffectiveLimits(0).IdleTimeout; d != 5*time.Minute {
		t.Errorf("default submission idle timeout %v", d)
	}
	tbl, err := routing.NewTable(c.RoutingSpec())
	if err != nil {
		t.Fatal(err)
	}
	r, err := tbl.Lookup(routing.Request{User: "alice", Protocol: routing.Submission, Pool: l.Pool}, nil)
	if err != nil || r.Backend.Addr(routing.Submission) != "127.0.0.1:10587" {
		t.Fatalf("lookup: %+v %v", r, err)
	}

	for _, tc := range []struct{ name, yaml, want string }{
		{"xclient_login without auth_http", strings.Replace(y, "auth: {mode: http, url: \"http://127.0.0.1:9000/auth\"}, ", "", 1), "listeners[1].submission.xclient_login (line 8): needs auth mode http"},
		{"section on imap", strings.Replace(y, "protocol: submission, address: \"127.0.0.1:587\"", "protocol: imap, address: \"127.0.0.1:587\"", 1), "only a listener with protocol submission"},
		{"own extension", strings.Replace(y, "DSN]", "AUTH PLAIN]", 1), "AUTH is the proxy's own"},
		{"bad hostname", strings.Replace(y, "smtp.example.com", `"a b"`, 1), `"a b" is not a host name`},
		{"unknown pool", strings.Replace(y, "pool: relay,\n     submission", "pool: nope,\n     submission", 1), `unknown pool "nope"`},
		{"imap alpn", strings.Replace(y, "tls: implicit,", "tls: implicit, alpn: [imap],", 1), `"imap" is another protocol's ALPN id`},
		{"negative size", strings.Replace(y, "52428800", "-1", 1), "max_message_size"},
	} {
		if _, err := Parse([]byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}

	// portico proxy: submission:// (587, STARTTLS with a certificate) and
	// submissions:// (465, implicit TLS).
	c, err = FromProxyFlags(ProxyFlags{From: []string{"submission://127.0.0.1", "submissions://127.0.0.1"},
		To: []string{"submission://127.0.0.1:10587"}, Cert: "c.pem", Key: "k.pem"})
	if err != nil || c.Backends[0].SubmissionPort != 10587 || c.Listeners[0].Address != "127.0.0.1:587" || c.Listeners[0].TLS != "starttls" ||
		c.Listeners[1].Address != "127.0.0.1:465" || c.Listeners[1].TLS != "implicit" || c.Listeners[1].Protocol != "submission" {
		t.Fatalf("submission proxy flags: %v %+v %+v", err, c.Backends, c.Listeners)
	}
}

// A submission backend without forwarding is warned about.
func TestSubmissionForwardWarning(t *testing.T) {
	c, err := Parse([]byte(`
listeners:
  - {protocol: submission, address: "127.0.0.1:587"}
backends:
  - {id: mx1, host: 127.0.0.1, submission_port: 10587}
  - {id: mx2, host: 127.0.0.1, submission_port: 10588, forward: id}
pools:
  - {name: relay, backends: [mx1, mx2]}
routes:
  default_pool: relay
`))
	if err != nil {
		t.Fatal(err)
	}
	w := c.Warnings()
	if len(w) != 1 || !strings.Contains(w[0], "backends[0].forward (line 5): backend mx1 takes submission with forward: none") {
		t.Fatalf("warnings %q", w)
	}
}

package config

import (
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/routing"
)

const good = `
log:
  level: debug
listeners:
  - name: imap
    protocol: imap
    address: 127.0.0.1:1143
  - protocol: pop3
    address: 127.0.0.1:1110
limits:
  max_connections: 100
  auth_failure_delay: 500ms
backends:
  - id: b1
    host: 127.0.0.1
    imap_port: 10143
    pop3_port: 10110
    forward: id
pools:
  - name: main
    backends: [b1]
routes:
  users:
    vip@example.com: {backend: b1}
  domains:
    example.com: main
  default_pool: main
`

func TestParseGood(t *testing.T) {
	c, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listeners[1].Name != "pop3-1" || c.Listeners[0].TLS != "none" || !*c.Listeners[0].AllowPlaintextAuth {
		t.Errorf("defaults not applied: %+v", c.Listeners)
	}
	lim := c.EffectiveLimits(0)
	if lim.AuthFailureDelay != 500*time.Millisecond || lim.MaxErrors != 5 || lim.IdleTimeout != 30*time.Minute {
		t.Errorf("limits %+v", lim)
	}
	if c.EffectiveLimits(1).IdleTimeout != 10*time.Minute {
		t.Error("pop3 idle timeout default")
	}
	nc := c.NodeConfig()
	if nc.MaxConnections != 100 || len(nc.Listeners) != 2 || nc.Listeners[1].Protocol != routing.POP3 {
		t.Errorf("node config %+v", nc)
	}
	if _, err := routing.NewTable(c.RoutingSpec()); err != nil {
		t.Error(err)
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"unknown key", "listeners:\n  - protocol: imap\n    adress: x\n", "line 3: field adress not found"},
		{"bad enum with line", strings.Replace(good, "forward: id", "forward: maybe", 1), `backends[0].forward (line 18): "maybe" is not one of none, id, proxy`},
		{"bad duration", strings.Replace(good, "500ms", "soon", 1), `"soon" is not a duration`},
		{"tls without cert", strings.Replace(good, "address: 127.0.0.1:1143", "address: 127.0.0.1:1143\n    tls: implicit", 1), "needs at least one certificate"},
		{"unknown pool", strings.Replace(good, "default_pool: main", "default_pool: nope", 1), `routes.default_pool (line 27): unknown pool "nope"`},
		{"dup address", strings.Replace(good, "127.0.0.1:1110", "127.0.0.1:1143", 1), "also used by listener imap"},
		{"no listeners", "backends: []\n", "at least one listener"},
		{"plaintext refused on none", strings.Replace(good, "address: 127.0.0.1:1143", "address: 127.0.0.1:1143\n    allow_plaintext_auth: false", 1), "would refuse every login"},
		{"short imap idle", strings.Replace(good, "max_connections: 100", "max_connections: 100\n  imap_idle_timeout: 5m", 1), "30m autologout"},
		{"empty", "", "empty configuration"},
		{"unknown oauth mechanism", strings.Replace(good, "name: imap", "name: imap\n    oauth_mechanisms: [oauthbearer, scram-sha-1]", 1), `listeners[0].oauth_mechanisms[1] (line 6): "scram-sha-1" is not one of oauthbearer, xoauth2`},
		{"oauth mechanism twice", strings.Replace(good, "name: imap", "name: imap\n    oauth_mechanisms: [XOAUTH2, xoauth2]", 1), `"xoauth2" is listed twice`},
		{"proxy protocol without trust", strings.Replace(good, "name: imap", "name: imap\n    proxy_protocol: true", 1), "trusted_proxies"},
		{"leader hold too short", good + "upgrade: {leader_hold: 1s}\n", "upgrade.leader_hold"},
		{"relative upgrade binary", good + "upgrade: {binary: bin/portico}\n", "must be an absolute path"},
		{"negative drain spread", good + "drain: {spread: -1s}\n", `"-1s" is not a duration`},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
}

func TestDrainAndUpgradeDefaults(t *testing.T) {
	c, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if *c.Drain.Spread != Duration(10*time.Second) || c.Drain.BoundaryTimeout != Duration(10*time.Second) ||
		*c.Upgrade.LeaderHold != Duration(10*time.Second) || c.Upgrade.SessionGrace != Duration(time.Hour) {
		t.Fatalf("defaults: drain %+v upgrade %+v", c.Drain, c.Upgrade)
	}
	c, err = Parse([]byte(good + "drain: {spread: 0s}\nupgrade: {leader_hold: 0s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if *c.Drain.Spread != 0 || *c.Upgrade.LeaderHold != 0 {
		t.Fatal("explicit 0s must be kept (all at once / no hold)")
	}
}

func TestProxyFlags(t *testing.T) {
	c, err := FromProxyFlags(ProxyFlags{
		From: []string{"imap://127.0.0.1:1143", "imaps://127.0.0.1:1993", "pop3://127.0.0.1:1110"},
		To:   []string{"imap://127.0.0.1:10143", "pop3://127.0.0.1:10110"},
		Cert: "c.pem", Key: "k.pem",
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Backends) != 1 || c.Backends[0].IMAPPort != 10143 || c.Backends[0].POP3Port != 10110 {
		t.Errorf("backends %+v", c.Backends)
	}
	if c.Listeners[0].TLS != "starttls" || *c.Listeners[0].AllowPlaintextAuth || c.Listeners[1].TLS != "implicit" {
		t.Errorf("listeners %+v", c.Listeners)
	}
	// ManageSieve (sieve://, default port 4190) beside IMAP on one host.
	c, err = FromProxyFlags(ProxyFlags{From: []string{"sieve://127.0.0.1", "imap://127.0.0.1:1143"},
		To: []string{"sieve://127.0.0.1", "imap://127.0.0.1:10143"}, Cert: "c.pem", Key: "k.pem"})
	if err != nil || len(c.Backends) != 1 || c.Backends[0].SievePort != 4190 ||
		c.Listeners[0].Protocol != "sieve" || c.Listeners[0].Address != "127.0.0.1:4190" || c.Listeners[0].TLS != "starttls" {
		t.Fatalf("sieve proxy flags: %v %+v %+v", err, c.Backends, c.Listeners)
	}
	if _, err := FromProxyFlags(ProxyFlags{From: []string{"sieve://127.0.0.1:4190"}, To: []string{"imap://h:143"}}); err == nil ||
		!strings.Contains(err.Error(), "no --to sieve:// backend") {
		t.Errorf("sieve without a sieve backend: %v", err)
	}
	// Without a certificate: plaintext listeners, no TLS.
	c, err = FromProxyFlags(ProxyFlags{From: []string{"imap://127.0.0.1:1143"}, To: []string{"imap://mail.example:143"}})
	if err != nil || c.Listeners[0].TLS != "none" {
		t.Fatalf("%v %+v", err, c)
	}
	// The connection limits: -1 lifts them; what the node enforces is
	// what the flags said.
	c, err = FromProxyFlags(ProxyFlags{From: []string{"imap://127.0.0.1:1143"}, To: []string{"imap://mail.example:143"},
		MaxConnections: -1, MaxConnectionsPerIP: 7})
	if err != nil {
		t.Fatal(err)
	}
	if l := c.NodeConfig(); l.MaxConnections != 0 || l.MaxConnectionsPerIP != 7 {
		t.Errorf("node limits from --max-connections -1 --max-connections-per-ip 7: %+v", l)
	}
	// The admin API: none unless asked for (so that proxies run side by
	// side on a host), the default address, another.
	for flag, want := range map[string]string{"": "off", admin.DefaultConfig().Address: admin.DefaultConfig().Address, "127.0.0.1:0": "127.0.0.1:0", "off": "off"} {
		c, err = FromProxyFlags(ProxyFlags{From: []string{"imap://127.0.0.1:1143"}, To: []string{"imap://mail.example:143"}, Admin: flag})
		if err != nil || c.Validate() != nil || c.Admin.Address != want {
			t.Errorf("--admin %q: admin.address %q, want %q (%v)", flag, c.Admin.Address, want, err)
		}
	}
	bad := []ProxyFlags{
		{From: []string{"imap://x:1"}, To: []string{"imap://h:143"}, MaxConnectionsPerIP: -2},
		{From: []string{"imaps://127.0.0.1:1993"}, To: []string{"imap://h:143"}},
		{From: []string{"pop3://127.0.0.1:1110"}, To: []string{"imap://h:143"}},
		{From: []string{"http://x:1"}, To: []string{"imap://h:143"}},
		{From: []string{"imap://x:1"}, To: []string{"imap://h:143/path"}},
		{From: []string{"imap://x:1"}},
	}
	for i, f := range bad {
		if _, err := FromProxyFlags(f); err == nil {
			t.Errorf("case %d: no error", i)
		}
	}
}

// A ManageSieve listener and a backend serving only ManageSieve.
func TestSieveListenerAndBackend(t *testing.T) {
	y := `
listeners:
  - {protocol: sieve, address: "127.0.0.1:4190"}
limits:
  sieve_idle_timeout: 5m
backends:
  - {id: s1, host: 127.0.0.1, sieve_port: 14190, forward: id}
pools:
  - {name: main, backends: [s1]}
routes:
  default_pool: main
`
	c, err := Parse([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listeners[0].Name != "sieve-0" || c.NodeConfig().Listeners[0].Protocol != routing.Sieve {
		t.Errorf("listener %+v", c.Listeners[0])
	}
	if c.EffectiveLimits(0).IdleTimeout != 5*time.Minute {
		t.Errorf("sieve idle timeout %v", c.EffectiveLimits(0).IdleTimeout)
	}
	tbl, err := routing.NewTable(c.RoutingSpec())
	if err != nil {
		t.Fatal(err)
	}
	r, err := tbl.Lookup(routing.Request{User: "alice", Protocol: routing.Sieve}, nil)
	if err != nil || r.Backend.Addr(routing.Sieve) != "127.0.0.1:14190" {
		t.Fatalf("lookup: %+v %v", r, err)
	}

	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown protocol", strings.Replace(y, "protocol: sieve", "protocol: smtp", 1), `"smtp" is not one of imap, pop3, sieve, submission`},
		{"no port", strings.Replace(y, "sieve_port: 14190", "weight: 1", 1), "needs imap_port, pop3_port, sieve_port or submission_port"},
		{"bad port", strings.Replace(y, "sieve_port: 14190", "sieve_port: 70000", 1), "sieve_port (line 7): 70000 is not a port"},
		{"imap alpn on sieve", strings.Replace(y, `address: "127.0.0.1:4190"}`, `address: "127.0.0.1:4190", tls: implicit, alpn: [imap, managesieve]}`, 1) +
			"tls: {certificates: [{cert: c.pem, key: k.pem}]}\n", `"imap" is another protocol's ALPN id`},
		{"sieve alpn missing", strings.Replace(y, `address: "127.0.0.1:4190"}`, `address: "127.0.0.1:4190", tls: implicit, alpn: [x-sieve]}`, 1) +
			"tls: {certificates: [{cert: c.pem, key: k.pem}]}\n", `must include "managesieve"`},
	} {
		if _, err := Parse([]byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}

// oauth_mechanisms reach the node as the SASL names, in the order they
// are advertised; a listener without it offers none.
func TestOAuthMechanisms(t *testing.T) {
	c, err := Parse([]byte(strings.Replace(good, "name: imap", "name: imap\n    oauth_mechanisms: [xoauth2, OAuthBearer]", 1)))
	if err != nil {
		t.Fatal(err)
	}
	nc := c.NodeConfig()
	if got := strings.Join(nc.Listeners[0].BearerMechanisms, " "); got != "OAUTHBEARER XOAUTH2" {
		t.Errorf("imap listener offers %q", got)
	}
	if len(nc.Listeners[1].BearerMechanisms) != 0 {
		t.Errorf("pop3 listener offers %q", nc.Listeners[1].BearerMechanisms)
	}
}

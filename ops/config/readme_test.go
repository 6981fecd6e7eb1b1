package config

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/node"
	"github.com/portico-mail/portico/node/affinity"
	"github.com/portico-mail/portico/node/auth"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/node/submission"
	"github.com/portico-mail/portico/node/throttle"
	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source/ldapsrc"
	"github.com/portico-mail/portico/routing/source/sqlsrc"
	"github.com/portico-mail/portico/routing/source/syncer"
	"github.com/portico-mail/portico/vip"
)

// readmeDefaults returns every table of the README that has a "default"
// column, by the heading it is under: key -> the default cell. A cell that
// names several keys (`delay`, `max_delay`) gives each its part of the
// default ("1s, 15s"), or the whole cell when it has no part per key; a
// key written relative to the first (`cluster.health.interval`,
// `timeout`) is made absolute.
func readmeDefaults(t *testing.T) map[string]map[string]string {
	t.Helper()
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	tables := map[string]map[string]string{}
	heading, inTable := "", false
	var rows map[string]string
	keyRE := regexp.MustCompile("`([^`]+)`")
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "#") {
			heading = line
		}
		if !strings.HasPrefix(line, "|") {
			inTable, rows = false, nil
			continue
		}
		cells := strings.Split(line, "|")
		if !inTable {
			inTable = true
			if len(cells) >= 4 && strings.TrimSpace(cells[2]) == "default" {
				if tables[heading] != nil {
					t.Fatalf("README: two tables of defaults under %q", heading)
				}
				rows = map[string]string{}
				tables[heading] = rows
			}
			continue
		}
		if rows == nil || strings.HasPrefix(strings.TrimSpace(cells[1]), "---") {
			continue
		}
		var keys []string
		for _, m := range keyRE.FindAllStringSubmatch(cells[1], -1) {
			k := m[1]
			if len(keys) > 0 && !strings.Contains(k, ".") {
				if i := strings.LastIndex(keys[0], "."); i >= 0 {
					k = keys[0][:i+1] + k
				}
			}
			keys = append(keys, k)
		}
		if len(keys) == 0 {
			t.Errorf("README %s: a row without a key: %s", heading, line)
			continue
		}
		cell := strings.TrimSpace(cells[2])
		parts := strings.Split(cell, ", ")
		for i, k := range keys {
			if _, dup := rows[k]; dup {
				t.Errorf("README %s: %s twice", heading, k)
			}
			rows[k] = cell
			if len(keys) > 1 && len(parts) == len(keys) {
				rows[k] = parts[i]
			}
		}
	}
	return tables
}

// plain is a cell without its Markdown: backticks and quotes.
func plain(cell string) string {
	return strings.TrimSpace(strings.NewReplacer("`", "", `"`, "").Replace(cell))
}

// short writes a duration as the README does: 10m, 1h, 72h, 250ms.
func short(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// readmeWant is, for each table of defaults in the README, what each key's
// default is in the code: the value of the package's DefaultConfig (or of
// ops/config for the sections no package takes), or, where the README
// describes the default in words, those words (TestUnsetKeysTakePackageDefaults
// checks what they describe).
func readmeWant() map[string]map[string]any {
	nd, cd, hd, vd := node.DefaultConfig(), cluster.DefaultConfig(), cluster.DefaultHealthConfig(), vip.DefaultConfig()
	imap, pop3, sieve, sub := session.DefaultLimits(routing.IMAP), session.DefaultLimits(routing.POP3), session.DefaultLimits(routing.Sieve), session.DefaultLimits(routing.Submission)
	td, ac, cc, ud, ld := throttle.DefaultConfig(), auth.DefaultClientConfig(), auth.DefaultCacheConfig(), DefaultUpgrade(), DefaultLog()
	tm := cd.Timing
	timing := fmt.Sprintf("%s heartbeat and election, %s leader lease, %s probe interval, %s probe timeout, suspicion ×%d, %s gossip",
		short(tm.HeartbeatTimeout), short(tm.LeaderLeaseTimeout), short(tm.ProbeInterval), short(tm.ProbeTimeout), tm.SuspicionMult, short(tm.GossipInterval))
	if tm.ElectionTimeout != tm.HeartbeatTimeout {
		timing = "heartbeat and election timeouts differ"
	}
	var trusted []string
	for _, p := range td.Trusted {
		if p.IsSingleIP() {
			trusted = append(trusted, p.Addr().String())
		} else {
			trusted = append(trusted, p.String())
		}
	}
	minTLS := ""
	for _, v := range node.TLSVersions {
		if v.ID == node.DefaultMinTLSVersion {
			minTLS = v.Name
		}
	}
	return map[string]map[string]any{
		"### Node and cluster": {
			"node_name":                "host name",
			"standalone":               "false",
			"data_dir":                 cd.DataDir,
			"admin.address":            admin.DefaultConfig().Address,
			"admin.token":              "",
			"admin.token_file":         "",
			"admin.allowed_hosts":      "",
			"admin.tls.cert_file":      "",
			"admin.tls.key_file":       "",
			"admin.tls.ca_file":        "",
			"cluster.raft_address":     cd.RaftBind,
			"cluster.gossip_address":   cd.GossipBind,
			"cluster.advertise":        "listen addresses",
			"cluster.join":             "",
			"cluster.bootstrap_expect": cd.BootstrapExpect,
			"cluster.max_voters":       cd.MaxVoters,
			"cluster.dead_node_reap":   cd.DeadNodeReap,
			"cluster.encrypt_key":      "",
			"cluster.encrypt_key_file": "",
			"cluster.tls.ca_file":      "",
			"cluster.tls.cert_file":    "",
			"cluster.tls.key_file":     "",
			"cluster.timing.*":         timing,
			"cluster.health.interval":  hd.Interval,
			"cluster.health.timeout":   hd.Timeout,
			"cluster.health.fall":      hd.Fall,
			"cluster.health.rise":      hd.Rise,
		},
		"### `vip`": {
			"vip.addresses":       "",
			"vip.preferred":       "none",
			"vip.preempt_delay":   vip.DefaultPreemptDelay,
			"vip.burst_count":     vd.BurstCount,
			"vip.burst_interval":  vd.BurstInterval,
			"vip.refresh":         vd.Refresh,
			"vip.reconcile":       vd.Reconcile,
			"vip.move_drain":      vip.DefaultMoveDrain,
			"vip.mode":            "leader",
			"vip.lease":           vip.DefaultLease,
			"vip.rebalance":       false,
			"vip.rebalance_delay": vip.DefaultRebalanceDelay,
			"vip.notify":          "none",
			"vip.notify_timeout":  vip.DefaultNotifyTimeout,
		},
		"### Drain and upgrade": {
			"shutdown_grace":         nd.ShutdownGrace,
			"drain.spread":           nd.EndSpread,
			"drain.boundary_timeout": nd.EndTimeout,
			"upgrade.binary":         "the running binary's path",
			"upgrade.timeout":        ud.Timeout.D(),
			"upgrade.session_grace":  ud.SessionGrace.D(),
			"upgrade.leader_hold":    ud.LeaderHold.D(),
		},
		"### `log`": {
			"level":  ld.Level,
			"format": ld.Format,
		},
		"### `tls`": {
			"certificates":            "",
			"min_version":             minTLS,
			"cipher_suites":           "Go's secure default set",
			"session_tickets":         "on",
			"session_ticket_rotation": DefaultTicketRotation,
		},
		"### `listeners` (list, at least one)": {
			"name":                 "<protocol>-<index>",
			"protocol":             "required",
			"address":              "required",
			"tls":                  string(routing.TLSNone),
			"allow_plaintext_auth": "true for tls: none, else false",
			"oauth_mechanisms":     "none",
			"proxy_protocol":       false,
			"trusted_proxies":      "",
			"tls_min_version":      "tls.min_version",
			"tls_cipher_suites":    "tls.cipher_suites",
			"alpn": fmt.Sprintf("[%s], [%s], [%s] or [%s]", node.ALPNProtocol(routing.IMAP), node.ALPNProtocol(routing.POP3),
				node.ALPNProtocol(routing.Sieve), node.ALPNProtocol(routing.Submission)),
			"limits":                      "",
			"auth":                        "global auth",
			"pool":                        "",
			"event_loop":                  false,
			"submission.hostname":         "the host name",
			"submission.max_message_size": "0 (SIZE without a number)",
			"submission.extensions":       "[" + strings.Join(submission.DefaultExtensions, ", ") + "]",
			"submission.xclient_login":    false,
		},
		"### `limits`": {
			"max_connections":         "from the descriptor limit",
			"max_connections_per_ip":  nd.MaxConnectionsPerIP,
			"max_line":                imap.MaxLine,
			"max_literal":             imap.MaxLiteral,
			"preauth_timeout":         imap.PreAuthTimeout,
			"preauth_lifetime":        imap.PreAuthLifetime,
			"tls_handshake_timeout":   imap.TLSHandshakeTimeout,
			"max_errors":              imap.MaxErrors,
			"max_auth_failures":       imap.MaxAuthFailures,
			"auth_failure_delay":      imap.AuthFailureDelay,
			"backend_timeout":         imap.BackendTimeout,
			"imap_idle_timeout":       imap.IdleTimeout,
			"pop3_idle_timeout":       pop3.IdleTimeout,
			"sieve_idle_timeout":      sieve.IdleTimeout,
			"submission_idle_timeout": sub.IdleTimeout,
		},
		"### `throttle`": {
			"enabled":            td.Enabled,
			"window":             td.Window,
			"block_for":          td.BlockFor,
			"delay":              td.Delay,
			"max_delay":          td.MaxDelay,
			"ip_limit":           td.IPLimit,
			"user_ip_limit":      td.UserIPLimit,
			"user_limit":         td.UserLimit,
			"under_attack_limit": td.UnderAttackLimit,
			"ipv4_prefix":        td.IPv4Prefix,
			"ipv6_prefix":        td.IPv6Prefix,
			"trusted_networks":   "[" + strings.Join(trusted, ", ") + "]",
			"max_entries":        td.MaxEntries,
		},
		"### `sources` (list)": {
			"name": "required", "type": "required", "popmap.path": "required",
			"ldap.url": "required", "ldap.start_tls": false, "ldap.ca_file": "system roots", "ldap.insecure_skip_verify": false,
			"ldap.bind_dn": "anonymous", "ldap.bind_password": "required with bind_dn", "ldap.bind_password_file": "required with bind_dn",
			"ldap.base": "required", "ldap.filter": "(<target_attribute>=*)", "ldap.user_attribute": ldapsrc.DefaultUserAttribute,
			"ldap.target_attribute": ldapsrc.DefaultTargetAttribute, "ldap.login_attribute": "none", "ldap.page_size": ldapsrc.DefaultPageSize,
			"ldap.timeout": ldapsrc.DefaultTimeout, "ldap.changes_overlap": ldapsrc.DefaultChangesOverlap,
			"interval": DefaultSourceInterval, "full_interval": DefaultSourceFullInterval,
			"max_delete_share": fmt.Sprint(syncer.DefaultMaxDeleteShare), "overwrite": false,
			"work_share":      fmt.Sprint(syncer.DefaultWorkShare),
			"on_miss.enabled": false, "on_miss.timeout": DefaultOnMissTimeout,
			"on_miss.positive_ttl": DefaultOnMissPositiveTTL, "on_miss.negative_ttl": DefaultOnMissNegativeTTL,
			"new_backends.create": true, "new_backends.imap_port": syncer.DefaultNewBackends().IMAPPort,
			"new_backends.pop3_port": syncer.DefaultNewBackends().POP3Port, "new_backends.sieve_port": syncer.DefaultNewBackends().SievePort,
			"new_backends.port_protocol": string(syncer.DefaultNewBackends().PortProtocol),
			"new_backends.tls":           string(syncer.DefaultNewBackends().TLS), "new_backends.forward": string(syncer.DefaultNewBackends().Forward),
			"sql.driver": "required", "sql.dsn": "required", "sql.dsn_file": "", "sql.query": "required",
			"sql.changes_query": "", "sql.watermark_query": "", "sql.lookup_query": "",
			"sql.timeout": sqlsrc.DefaultTimeout, "sql.sync_timeout": sqlsrc.DefaultSyncTimeout,
			"sql.max_open_conns": sqlsrc.DefaultMaxOpenConns, "sql.max_idle_conns": sqlsrc.DefaultMaxIdleConns,
			"sql.conn_max_lifetime": sqlsrc.DefaultConnMaxLifetime,
		},
		"### `affinity`": {
			"expire":      affinity.DefaultConfig().Expire,
			"max_entries": affinity.DefaultConfig().MaxEntries,
		},
		"### `backends` (list)": {
			"id":                       "required",
			"host":                     "required",
			"imap_port":                "0 (not served)",
			"pop3_port":                "0 (not served)",
			"sieve_port":               "0 (not served)",
			"submission_port":          "0 (not served)",
			"tls":                      string(routing.TLSNone),
			"tls_server_name":          "host",
			"tls_ca_file":              "system roots",
			"tls_insecure_skip_verify": false,
			"forward":                  string(routing.ForwardNone),
			"weight":                   1,
			"state":                    string(routing.StateActive),
		},
		"## Authentication: passthrough and auth_http": {
			"mode":               "passthrough",
			"url":                "required",
			"headers":            "",
			"timeout":            ac.Timeout,
			"keepalive":          ac.KeepAlive,
			"relaxed_limits":     false,
			"max_response":       fmt.Sprintf("%d (%d relaxed)", ac.MaxResponse, auth.RelaxedMaxResponse),
			"backend_forward":    string(routing.ForwardNone),
			"cache.positive_ttl": short(cc.PositiveTTL) + " (off)",
			"cache.negative_ttl": cc.NegativeTTL,
			"cache.max_entries":  cc.MaxEntries,
		},
	}
}

// Every table of defaults in the README states the code's defaults, and
// every key of such a table is checked: a key, or a table, without a check
// here fails.
func TestReadmeDefaults(t *testing.T) {
	tables, want := readmeDefaults(t), readmeWant()
	for heading, rows := range tables {
		w, ok := want[heading]
		if !ok {
			t.Errorf("README: the table of defaults under %q is not checked (add it to readmeWant)", heading)
			continue
		}
		for key, cell := range rows {
			exp, ok := w[key]
			if !ok {
				t.Errorf("README %s: %s is not checked (add it to readmeWant)", heading, key)
				continue
			}
			got := plain(cell)
			good := false
			switch exp := exp.(type) {
			case int:
				n, err := strconv.Atoi(got)
				good = err == nil && n == exp
			case time.Duration:
				d, err := time.ParseDuration(got)
				good = err == nil && d == exp
			case bool:
				b, err := strconv.ParseBool(got)
				good = err == nil && b == exp
			case string:
				good = got == exp
			default:
				t.Fatalf("%s: no comparison for %T", key, exp)
			}
			if !good {
				t.Errorf("README %s: %s defaults to %q, the code to %v", heading, key, cell, exp)
			}
		}
	}
	for heading, w := range want {
		for key := range w {
			if _, ok := tables[heading][key]; !ok {
				t.Errorf("README %s: no default for %s", heading, key)
			}
		}
	}
}

// A file that sets nothing but what is required runs with the packages'
// defaults: what it translates to is each package's DefaultConfig (or a
// zero the package fills with it), and the defaults the README describes
// in words hold.
func TestUnsetKeysTakePackageDefaults(t *testing.T) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "portico"
	}
	c, err := Parse([]byte(`
listeners:
  - {protocol: imap, address: 127.0.0.1:1143}
  - {protocol: pop3, address: 127.0.0.1:1110, auth: {mode: http, url: "http://127.0.0.1:9000/auth"}}
backends: [{id: b, host: mail.example, imap_port: 143}]
vip: {addresses: [{address: 198.18.0.100/24, interface: eth0}]}
`))
	if err != nil {
		t.Fatal(err)
	}

	nd, nc := node.DefaultConfig(), c.NodeConfig()
	if nc.MaxConnections != nd.MaxConnections || nc.MaxConnectionsPerIP != nd.MaxConnectionsPerIP ||
		nc.ShutdownGrace != nd.ShutdownGrace || nc.EndSpread != nd.EndSpread || nc.EndTimeout != nd.EndTimeout {
		t.Errorf("node: %+v, want node.DefaultConfig %+v", nc, nd)
	}
	if nd.MaxConnections != node.DefaultMaxConnections() {
		t.Errorf("max_connections: %d, not from the descriptor limit (%d)", nd.MaxConnections, node.DefaultMaxConnections())
	}
	for i, l := range nc.Listeners {
		if want := session.DefaultLimits(l.Protocol); l.Limits != want {
			t.Errorf("listener %d limits %+v, want %+v", i, l.Limits, want)
		}
		if !reflect.DeepEqual(l.TLSPolicy, node.TLSPolicy{}) {
			t.Errorf("listener %d TLS policy %+v, want the zero (default) policy", i, l.TLSPolicy)
		}
		if want := fmt.Sprintf("%s-%d", l.Protocol, i); l.Name != want || l.TLS != routing.TLSNone || !l.AllowPlaintextAuth || l.ProxyProtocol {
			t.Errorf("listener %d: %+v, want name %s, tls none, plaintext logins, no PROXY header", i, l, want)
		}
	}
	if p := (node.TLSPolicy{}); (&node.CertStore{}).ServerConfig(routing.IMAP, p).MinVersion != node.DefaultMinTLSVersion {
		t.Error("the zero TLS policy does not take DefaultMinTLSVersion")
	}
	if got := c.Throttle.LimiterConfig(); !reflect.DeepEqual(got, throttle.DefaultConfig()) {
		t.Errorf("throttle %+v, want %+v", got, throttle.DefaultConfig())
	}
	if got := c.Affinity.TableConfig(); got != affinity.DefaultConfig() {
		t.Errorf("affinity %+v, want %+v", got, affinity.DefaultConfig())
	}

	cd, cc := cluster.DefaultConfig(), c.ClusterConfig()
	if cc.NodeName != host || cc.DataDir != cd.DataDir || cc.RaftBind != cd.RaftBind || cc.GossipBind != cd.GossipBind ||
		cc.MaxVoters != cd.MaxVoters || cc.DeadNodeReap != cd.DeadNodeReap || cc.BootstrapExpect != cd.BootstrapExpect {
		t.Errorf("cluster %+v, want cluster.DefaultConfig %+v and node name %q", cc, cd, host)
	}
	if cc.RaftAdvertise != "" || cc.GossipAdvert != "" || cc.Timing != (cluster.Timing{}) {
		t.Errorf("cluster: advertise %q/%q and timing %+v, want none set (cluster uses the listen addresses and its default timing)",
			cc.RaftAdvertise, cc.GossipAdvert, cc.Timing)
	}
	if h := c.HealthConfig(); h.Interval != 0 || h.Timeout != 0 || h.Fall != 0 || h.Rise != 0 {
		t.Errorf("health %+v, want zeros (cluster.DefaultHealthConfig applies)", h)
	}
	if vc := c.VIPConfig(); len(vc.Addresses) != 1 || vc.BurstCount != 0 || vc.BurstInterval != 0 || vc.Refresh != 0 || vc.Reconcile != 0 {
		t.Errorf("vip %+v, want one address and zeros (vip.DefaultConfig applies)", vc)
	}
	if c.VIP.PreemptDelay.D() != vip.DefaultPreemptDelay || c.VIP.MoveDrain.D() != vip.DefaultMoveDrain || len(c.VIP.Preferred) != 0 {
		t.Errorf("vip policy: preempt_delay %v, move_drain %v, preferred %v", c.VIP.PreemptDelay, c.VIP.MoveDrain, c.VIP.Preferred)
	}
	if a := c.Admin.AdminConfig(); !reflect.DeepEqual(a, admin.DefaultConfig()) {
		t.Errorf("admin %+v, want %+v", a, admin.DefaultConfig())
	}
	if c.Log != DefaultLog() {
		t.Errorf("log %+v", c.Log)
	}
	if u, d := c.Upgrade, DefaultUpgrade(); u.Binary != "" || u.Timeout != d.Timeout || u.SessionGrace != d.SessionGrace || *u.LeaderHold != *d.LeaderHold {
		t.Errorf("upgrade %+v", u)
	}

	if a := c.ListenerAuth(0); a != nil {
		t.Errorf("auth: %+v, want passthrough (nil) without an auth section", a)
	}
	a := c.ListenerAuth(1)
	if got, want := a.ClientConfig(), auth.DefaultClientConfig(); got.Timeout != want.Timeout || got.MaxResponse != want.MaxResponse || got.KeepAlive {
		t.Errorf("auth_http client %+v, want %+v", got, want)
	}
	if got, want := a.CacheConfig(), auth.DefaultCacheConfig(); got.PositiveTTL != want.PositiveTTL || got.NegativeTTL != want.NegativeTTL || got.MaxEntries != 0 {
		t.Errorf("auth_http cache %+v, want %+v (max_entries left to the cache)", got, want)
	}
	if a.BackendForward != string(routing.ForwardNone) {
		t.Errorf("auth backend_forward %q", a.BackendForward)
	}

	b := c.Backends[0]
	if b.TLS != string(routing.TLSNone) || b.Forward != string(routing.ForwardNone) || b.State != string(routing.StateActive) || b.POP3Port != 0 {
		t.Errorf("backend %+v", b)
	}
	tab, err := routing.NewTable(c.RoutingSpec())
	if err != nil {
		t.Fatal(err)
	}
	if rb := tab.Backend("b"); rb.Weight != 1 || rb.Port(routing.POP3) != 0 {
		t.Errorf("routing backend %+v: weight %d, want 1; no POP3 port", rb, rb.Weight)
	}
}

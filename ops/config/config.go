// Package config reads, validates and translates Portico's YAML
// configuration file.
//
// Decoding is strict: an unknown key is an error naming the key and its
// line. Validation runs before anything starts and reports every problem
// with its path and line (e.g. `listeners[1].tls (line 14): ...`). A config
// that fails validation changes nothing, which is what reload relies on.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/portico-mail/portico/node"
	"github.com/portico-mail/portico/routing"
)

// Config is the whole file.
type Config struct {
	// NodeName identifies this node in logs, metrics and the cluster;
	// default: the host name.
	NodeName string `yaml:"node_name"`
	// DataDir holds the node's durable state (the replicated routing
	// table's log and snapshots); default /var/lib/portico.
	DataDir       string     `yaml:"data_dir"`
	Cluster       Cluster    `yaml:"cluster"`
	Log           Log        `yaml:"log"`
	TLS           TLS        `yaml:"tls"`
	Listeners     []Listener `yaml:"listeners"`
	Limits        Limits     `yaml:"limits"`
	ShutdownGrace Duration   `yaml:"shutdown_grace"`
	Drain         Drain      `yaml:"drain"`
	Upgrade       Upgrade    `yaml:"upgrade"`
	Backends      []Backend  `yaml:"backends"`
	Pools         []Pool     `yaml:"pools"`
	Routes        Routes     `yaml:"routes"`
	Admin         Admin      `yaml:"admin"`
	VIP           VIP        `yaml:"vip"`
	// Auth: how logins are decided (passthrough or an nginx auth_http
	// server); listeners may override it.
	Auth *Auth `yaml:"auth"`
	// Throttle: failed-login delays and blocks (brute-force protection).
	Throttle Throttle `yaml:"throttle"`
	// Affinity: users of shared_storage pools stay on the backend their
	// sessions use.
	Affinity Affinity `yaml:"affinity"`
	// Sources: directory sources (LDAP, SQL, popmap files) the raft
	// leader mirrors into the replicated routing table (sources.go).
	Sources []Source `yaml:"sources"`

	// Standalone: a node without a cluster. Routes come only from this
	// file and are not replicated: no raft, no gossip, no data directory,
	// nothing kept on disk. `portico proxy` runs this way, and so does
	// `serve` on the file `portico proxy --print-config` prints.
	Standalone bool `yaml:"standalone"`

	root *yaml.Node // for line numbers in validation errors
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text, json
}

// DefaultLog is the log section's default: info, as text.
func DefaultLog() Log { return Log{Level: "info", Format: "text"} }

// TLS holds the server certificates, chosen by SNI, and the listeners'
// default TLS policy (tlspolicy.go).
type TLS struct {
	Certificates []Certificate `yaml:"certificates"`
	// Policy defaults: min_version, cipher_suites (tlspolicy.go).
	TLSDefaults `yaml:",inline"`
	// SessionTickets: "on" (default) resumes clients' TLS sessions from
	// tickets sealed with keys the cluster shares (the raft leader
	// rotates them) and an in-place upgrade hands on; "off" issues none.
	SessionTickets string `yaml:"session_tickets,omitempty"`
	// SessionTicketRotation: how often the raft leader (a standalone
	// node: the node itself) rotates the session-ticket keys; default
	// DefaultTicketRotation.
	SessionTicketRotation Duration `yaml:"session_ticket_rotation,omitempty"`
}

// DefaultTicketRotation is tls.session_ticket_rotation's default.
const DefaultTicketRotation = 12 * time.Hour

// TicketKeysKept is how many session-ticket keys the ring keeps: the
// pending key, the sealing one and two previous ones, so that a ticket
// is accepted for two to three rotation periods after it was issued.
const TicketKeysKept = 4

// SessionTicketsOn reports whether session tickets are on.
func (t TLS) SessionTicketsOn() bool { return t.SessionTickets != "off" }

// Certificate is a PEM certificate chain and key.
type Certificate struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Listener is one listening socket.
type Listener struct {
	Name               string `yaml:"name"`
	Protocol           string `yaml:"protocol"`
	Address            string `yaml:"address"`
	TLS                string `yaml:"tls"`
	AllowPlaintextAuth *bool  `yaml:"allow_plaintext_auth"`
	// OAuthMechanisms: the OAuth bearer SASL mechanisms the listener
	// offers besides PLAIN and LOGIN, oauthbearer (RFC 7628) and xoauth2;
	// none by default.
	OAuthMechanisms []string `yaml:"oauth_mechanisms,omitempty"`
	ProxyProtocol   bool     `yaml:"proxy_protocol"`
	TrustedProxies  []string `yaml:"trusted_proxies"`
	Limits          *Limits  `yaml:"limits"` // overrides the global limits for this listener
	Auth            *Auth    `yaml:"auth"`   // replaces the global auth section for this listener
	// Pool routes every login on this listener inside this pool,
	// whatever the user's rules say (submission listeners whose mail goes
	// to the submission servers rather than to the mailbox servers).
	Pool string `yaml:"pool"`
	// Submission: settings of a submission listener.
	Submission *SubmissionListener `yaml:"submission"`
	// EventLoop: sessions run on the node's event loops until they log
	// in (node/DESIGN.md, "What the goroutine costs").
	EventLoop bool `yaml:"event_loop"`

	// TLS policy: tls_min_version, tls_cipher_suites, alpn (tlspolicy.go).
	ListenerTLS `yaml:",inline"`
}

// Limits bound resource use; zero values take defaults.
type Limits struct {
	// MaxConnections: client connections on the node; default what the
	// file-descriptor limit holds (node.DefaultMaxConnections); -1: none.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP: per client address (IPv6: per /64), except
	// throttle.trusted_networks; default node.DefaultConfig's; -1: none.
	MaxConnectionsPerIP   int      `yaml:"max_connections_per_ip"`
	MaxLine               int      `yaml:"max_line"`
	MaxLiteral            int      `yaml:"max_literal"`
	PreAuthTimeout        Duration `yaml:"preauth_timeout"`
	PreAuthLifetime       Duration `yaml:"preauth_lifetime"`
	TLSHandshakeTimeout   Duration `yaml:"tls_handshake_timeout"`
	MaxErrors             int      `yaml:"max_errors"`
	MaxAuthFailures       int      `yaml:"max_auth_failures"`
	AuthFailureDelay      Duration `yaml:"auth_failure_delay"`
	BackendTimeout        Duration `yaml:"backend_timeout"`
	IMAPIdleTimeout       Duration `yaml:"imap_idle_timeout"`
	POP3IdleTimeout       Duration `yaml:"pop3_idle_timeout"`
	SieveIdleTimeout      Duration `yaml:"sieve_idle_timeout"`
	SubmissionIdleTimeout Duration `yaml:"submission_idle_timeout"`
}

// SubmissionListener configures a submission listener
// (submission.ListenerOptions).
type SubmissionListener struct {
	// Hostname names the proxy in its greeting and EHLO reply, and to the
	// backends in EHLO; default the node's host name.
	Hostname string `yaml:"hostname"`
	// MaxMessageSize is advertised with SIZE; 0: SIZE without a number
	// (the backend enforces its own limit).
	MaxMessageSize int64 `yaml:"max_message_size"`
	// Extensions replace the extensions advertised before login (default
	// PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES, CHUNKING).
	Extensions []string `yaml:"extensions"`
	// XCLIENTLogin: log in at the backend with XCLIENT LOGIN instead of
	// AUTH, for logins the listener's auth_http server verified.
	XCLIENTLogin bool `yaml:"xclient_login"`
}

// Backend is one IMAP/POP3 server.
type Backend struct {
	ID                 string `yaml:"id"`
	Host               string `yaml:"host"`
	IMAPPort           int    `yaml:"imap_port"`
	POP3Port           int    `yaml:"pop3_port"`
	SievePort          int    `yaml:"sieve_port"`
	SubmissionPort     int    `yaml:"submission_port"`
	TLS                string `yaml:"tls"`
	TLSServerName      string `yaml:"tls_server_name"`
	TLSCAFile          string `yaml:"tls_ca_file"`
	InsecureSkipVerify bool   `yaml:"tls_insecure_skip_verify"`
	Forward            string `yaml:"forward"`
	Weight             int    `yaml:"weight"`
	State              string `yaml:"state"`
}

// Pool is a named set of backends.
type Pool struct {
	Name          string   `yaml:"name"`
	Backends      []string `yaml:"backends"`
	SharedStorage bool     `yaml:"shared_storage"`
}

// Routes map users and domains to backends and pools.
type Routes struct {
	Users       map[string]RouteTarget `yaml:"users"`
	Domains     map[string]string      `yaml:"domains"` // domain -> pool
	DefaultPool string                 `yaml:"default_pool"`
	// HashKey: the part of a user's name a pool's hashing uses, address
	// (default), local or domain (routing.HashKey). In a cluster it is a
	// setting of the replicated table, written when a node starts or
	// reloads with it set; unset leaves the table's as it is.
	HashKey string `yaml:"hash_key"`
	// MasterUserSeparator: a login "user*master" (with "*") is routed to
	// user's backend (Dovecot's auth_master_user_separator); "" (default):
	// no master logins. Every node's file should say the same.
	MasterUserSeparator string `yaml:"master_user_separator"`
}

// RouteTarget names exactly one of a backend or a pool.
type RouteTarget struct {
	Backend string `yaml:"backend"`
	Pool    string `yaml:"pool"`
}

// Duration is a time.Duration written as "30s", "10m".
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %q is not a duration (examples: 500ms, 30s, 10m)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Load reads and validates a file.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := parse(b, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes and validates YAML. Relative file names in it are taken
// relative to the current directory (Load takes them relative to the
// file's own directory).
func Parse(b []byte) (*Config, error) { return parse(b, "") }

func parse(b []byte, base string) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty configuration")
		}
		return nil, cleanYAMLError(err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err == nil {
		c.root = &root
	}
	c.resolvePaths(base)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// resolvePaths makes relative file names relative to base.
func (c *Config) resolvePaths(base string) {
	if base == "" || base == "." {
		return
	}
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	for i := range c.TLS.Certificates {
		abs(&c.TLS.Certificates[i].Cert)
		abs(&c.TLS.Certificates[i].Key)
	}
	for i := range c.Backends {
		abs(&c.Backends[i].TLSCAFile)
	}
	abs(&c.Admin.TokenFile)
	if t := c.Admin.TLS; t != nil {
		abs(&t.CertFile)
		abs(&t.KeyFile)
		abs(&t.CAFile)
	}
	abs(&c.Cluster.EncryptKeyFile)
	abs(&c.DataDir)
	c.resolveSourcePaths(base)
}

func cleanYAMLError(err error) error {
	s := err.Error()
	s = strings.TrimPrefix(s, "yaml: unmarshal errors:\n")
	s = strings.ReplaceAll(s, "\n  ", "; ")
	s = strings.TrimSpace(strings.ReplaceAll(s, "in type config.", "in "))
	return errors.New(s)
}

// Errors is a list of validation problems.
type Errors []string

func (e Errors) Error() string {
	if len(e) == 1 {
		return e[0]
	}
	return fmt.Sprintf("%d problems:\n  %s", len(e), strings.Join(e, "\n  "))
}

type validator struct {
	c    *Config
	errs Errors
}

// at formats a path with the line it is on, when known.
func (v *validator) errf(path string, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if line := v.c.line(path); line > 0 {
		v.errs = append(v.errs, fmt.Sprintf("%s (line %d): %s", path, line, msg))
		return
	}
	v.errs = append(v.errs, fmt.Sprintf("%s: %s", path, msg))
}

// line finds the line of a path like "listeners[1].tls" in the source.
func (c *Config) line(path string) int {
	if c.root == nil || len(c.root.Content) == 0 {
		return 0
	}
	n := c.root.Content[0]
	line := 0
	for _, part := range strings.Split(path, ".") {
		key, idx := part, -1
		if i := strings.IndexByte(part, '['); i >= 0 && strings.HasSuffix(part, "]") {
			key = part[:i]
			idx, _ = strconv.Atoi(part[i+1 : len(part)-1])
		}
		if n.Kind != yaml.MappingNode {
			return line
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				line = n.Content[i].Line
				next = n.Content[i+1]
				break
			}
		}
		if next == nil {
			return line
		}
		n = next
		if idx >= 0 {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line
			}
			n = n.Content[idx]
			line = n.Line
		}
	}
	return line
}

// choice checks an enumerated setting: an empty one becomes dflt, and any
// other value must be one of allowed, or path gets the error "%q is not
// one of a, b, c". It reports whether the value is allowed.
func (v *validator) choice(path string, value *string, dflt string, allowed ...string) bool {
	if *value == "" {
		*value = dflt
	}
	if oneOf(*value, allowed...) {
		return true
	}
	v.errf(path, "%q is not one of %s", *value, strings.Join(allowed, ", "))
	return false
}

func oneOf(v string, allowed ...string) bool {
	for _, a := range allowed {
		if v == a {
			return true
		}
	}
	return false
}

// Validate fills defaults and checks everything; it reports all problems.
func (c *Config) Validate() error {
	v := &validator{c: c}
	v.choice("log.level", &c.Log.Level, DefaultLog().Level, "debug", "info", "warn", "error")
	v.choice("log.format", &c.Log.Format, DefaultLog().Format, "text", "json")
	for i, cert := range c.TLS.Certificates {
		p := fmt.Sprintf("tls.certificates[%d]", i)
		if cert.Cert == "" || cert.Key == "" {
			v.errf(p, "both cert and key are required")
		}
	}
	v.limits("limits", &c.Limits)
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = Duration(node.DefaultConfig().ShutdownGrace)
	}

	if len(c.Listeners) == 0 {
		v.errf("listeners", "at least one listener is required")
	}
	names := map[string]bool{}
	addrs := map[string]string{}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		p := fmt.Sprintf("listeners[%d]", i)
		if l.Protocol == "" {
			v.errf(p+".protocol", "required (imap, pop3, sieve or submission)")
		} else if !oneOf(l.Protocol, "imap", "pop3", "sieve", "submission") {
			v.errf(p+".protocol", "%q is not one of imap, pop3, sieve, submission", l.Protocol)
		}
		tlsOK := v.choice(p+".tls", &l.TLS, "none", "none", "starttls", "implicit")
		if tlsOK && l.TLS != "none" && len(c.TLS.Certificates) == 0 {
			v.errf(p+".tls", "tls %s needs at least one certificate under tls.certificates", l.TLS)
		}
		if l.Name == "" {
			l.Name = fmt.Sprintf("%s-%d", l.Protocol, i)
		}
		if names[l.Name] {
			v.errf(p+".name", "%q is used by another listener", l.Name)
		}
		names[l.Name] = true
		if l.Address == "" {
			v.errf(p+".address", "required (host:port)")
		} else if _, port, err := net.SplitHostPort(l.Address); err != nil {
			v.errf(p+".address", "%q is not host:port: %v", l.Address, err)
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			v.errf(p+".address", "%q: bad port", l.Address)
		} else if other, dup := addrs[l.Address]; dup && n != 0 {
			v.errf(p+".address", "%s is also used by listener %s", l.Address, other)
		} else {
			addrs[l.Address] = l.Name
		}
		if l.AllowPlaintextAuth == nil {
			// A listener without TLS must allow it, or nobody could log in.
			allow := l.TLS == "none"
			l.AllowPlaintextAuth = &allow
		} else if !*l.AllowPlaintextAuth && l.TLS == "none" {
			v.errf(p+".allow_plaintext_auth", "false on a listener with tls none would refuse every login")
		}
		seen := map[string]bool{}
		for j, m := range l.OAuthMechanisms {
			lm := strings.ToLower(m)
			switch {
			case lm != "oauthbearer" && lm != "xoauth2":
				v.errf(fmt.Sprintf("%s.oauth_mechanisms[%d]", p, j), "%q is not one of oauthbearer, xoauth2", m)
			case seen[lm]:
				v.errf(fmt.Sprintf("%s.oauth_mechanisms[%d]", p, j), "%q is listed twice", m)
			}
			seen[lm] = true
		}
		for j, cidr := range l.TrustedProxies {
			if _, err := parsePrefix(cidr); err != nil {
				v.errf(fmt.Sprintf("%s.trusted_proxies[%d]", p, j), "%v", err)
			}
		}
		if l.ProxyProtocol && len(l.TrustedProxies) == 0 {
			v.errf(p+".trusted_proxies", "proxy_protocol needs the load balancers' addresses (CIDRs) here")
		}
		if l.Limits != nil {
			v.limits(p+".limits", l.Limits)
		}
		v.submissionListener(i)
	}
	v.tlsPolicies()
	v.routing()
	v.admin()
	v.cluster()
	v.vip()
	v.authSections()
	v.drain()
	v.upgrade()
	v.throttle()
	v.affinity()
	v.sources()
	if len(v.errs) > 0 {
		return v.errs
	}
	return nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (v *validator) limits(p string, l *Limits) {
	nonNeg := func(name string, n int) {
		if n < 0 {
			v.errf(p+"."+name, "must not be negative")
		}
	}
	for name, n := range map[string]int{"max_connections": l.MaxConnections, "max_connections_per_ip": l.MaxConnectionsPerIP} {
		if n < -1 {
			v.errf(p+"."+name, "%d: use -1 for no limit", n)
		}
	}
	if l.PreAuthLifetime != 0 && l.PreAuthLifetime.D() < time.Second {
		v.errf(p+".preauth_lifetime", "%s is below 1s", l.PreAuthLifetime.D())
	}
	nonNeg("max_errors", l.MaxErrors)
	nonNeg("max_auth_failures", l.MaxAuthFailures)
	if l.MaxLine != 0 && (l.MaxLine < 512 || l.MaxLine > 1<<20) {
		v.errf(p+".max_line", "%d is outside 512..1048576", l.MaxLine)
	}
	if l.MaxLiteral != 0 && (l.MaxLiteral < 512 || l.MaxLiteral > 1<<20) {
		v.errf(p+".max_literal", "%d is outside 512..1048576", l.MaxLiteral)
	}
	if l.IMAPIdleTimeout != 0 && l.IMAPIdleTimeout.D() < 30*time.Minute {
		v.errf(p+".imap_idle_timeout", "%s is below the 30m autologout minimum of RFC 9051 section 5.4", l.IMAPIdleTimeout.D())
	}
}

func (v *validator) routing() {
	c := v.c
	ids := map[string]bool{}
	for i := range c.Backends {
		b := &c.Backends[i]
		p := fmt.Sprintf("backends[%d]", i)
		if b.ID == "" {
			v.errf(p+".id", "required")
		} else if ids[b.ID] {
			v.errf(p+".id", "%q is defined twice", b.ID)
		}
		ids[b.ID] = true
		if b.Host == "" {
			v.errf(p+".host", "required")
		}
		if b.IMAPPort == 0 && b.POP3Port == 0 && b.SievePort == 0 && b.SubmissionPort == 0 {
			v.errf(p, "needs imap_port, pop3_port, sieve_port or submission_port")
		}
		for name, port := range map[string]int{"imap_port": b.IMAPPort, "pop3_port": b.POP3Port, "sieve_port": b.SievePort, "submission_port": b.SubmissionPort} {
			if port < 0 || port > 65535 {
				v.errf(p+"."+name, "%d is not a port", port)
			}
		}
		v.choice(p+".tls", &b.TLS, "none", "none", "starttls", "implicit")
		v.choice(p+".forward", &b.Forward, "none", "none", "id", "proxy")
		v.choice(p+".state", &b.State, "active", "active", "draining", "disabled")
		if b.Weight < 0 {
			v.errf(p+".weight", "must not be negative")
		}
		if b.TLSCAFile != "" {
			if _, err := os.Stat(b.TLSCAFile); err != nil {
				v.errf(p+".tls_ca_file", "%v", err)
			}
		}
	}
	pools := map[string]bool{}
	for i, pl := range c.Pools {
		p := fmt.Sprintf("pools[%d]", i)
		if pl.Name == "" {
			v.errf(p+".name", "required")
		} else if pools[pl.Name] {
			v.errf(p+".name", "%q is defined twice", pl.Name)
		}
		pools[pl.Name] = true
		if len(pl.Backends) == 0 {
			v.errf(p+".backends", "a pool needs at least one backend")
		}
		for j, id := range pl.Backends {
			if !ids[id] {
				v.errf(fmt.Sprintf("%s.backends[%d]", p, j), "unknown backend %q", id)
			}
		}
	}
	for u, t := range c.Routes.Users {
		p := "routes.users." + u
		switch {
		case (t.Backend == "") == (t.Pool == ""):
			v.errf(p, "set exactly one of backend or pool")
		case t.Backend != "" && !ids[t.Backend]:
			v.errf(p, "unknown backend %q", t.Backend)
		case t.Pool != "" && !pools[t.Pool]:
			v.errf(p, "unknown pool %q", t.Pool)
		}
	}
	for d, pool := range c.Routes.Domains {
		if !pools[pool] {
			v.errf("routes.domains."+d, "unknown pool %q", pool)
		}
	}
	if c.Routes.DefaultPool != "" && !pools[c.Routes.DefaultPool] {
		v.errf("routes.default_pool", "unknown pool %q", c.Routes.DefaultPool)
	}
	for i, l := range c.Listeners {
		// In a cluster the pool may come from the replicated table
		// instead; a standalone node has only this file's.
		if l.Pool != "" && c.Standalone && !pools[l.Pool] {
			v.errf(fmt.Sprintf("listeners[%d].pool", i), "unknown pool %q", l.Pool)
		}
	}
	v.userKeys()
	if c.Standalone && len(c.Routes.Users) == 0 && len(c.Routes.Domains) == 0 && c.Routes.DefaultPool == "" {
		v.errf("routes", "no routes: set routes.default_pool, routes.domains or routes.users")
	}
}

// userKeys checks what decides users' keys: the hash key, the master-user
// separator, and that no two rules name one user (or domain) spelt two
// ways ("Bücher@x" and "bücher@x": the rules would fight over one key).
func (v *validator) userKeys() {
	r := &v.c.Routes
	if _, err := routing.ParseHashKey(r.HashKey); err != nil {
		v.errf("routes.hash_key", "%q is not one of address, local, domain", r.HashKey)
	}
	if sep := r.MasterUserSeparator; sep != "" {
		if len(sep) != 1 || sep[0] <= ' ' || sep[0] >= 0x7f || sep[0] == '@' ||
			'a' <= sep[0] && sep[0] <= 'z' || 'A' <= sep[0] && sep[0] <= 'Z' || '0' <= sep[0] && sep[0] <= '9' {
			v.errf("routes.master_user_separator", "%q: use one ASCII punctuation character other than '@' (Dovecot's default is \"*\")", sep)
		}
	}
	same := func(what string, names []string, normalize func(string) string) {
		seen := map[string]string{}
		for _, n := range names {
			k := normalize(n)
			if prev, dup := seen[k]; dup {
				a, b := prev, n
				if b < a {
					a, b = b, a
				}
				v.errf("routes."+what+"."+b, "the same as %q (both are %q once case, Unicode form and IDNA are made canonical): keep one", a, k)
				continue
			}
			seen[k] = n
		}
	}
	users := make([]string, 0, len(r.Users))
	for u := range r.Users {
		users = append(users, u)
	}
	domains := make([]string, 0, len(r.Domains))
	for d := range r.Domains {
		domains = append(domains, d)
	}
	sort.Strings(users)
	sort.Strings(domains)
	same("users", users, routing.NormalizeUser)
	same("domains", domains, func(d string) string { return routing.NormalizeDomain(strings.TrimPrefix(d, "@")) })
}

// SameOnEveryNode lists, for check-config, the settings of this file that
// decide where users land and so must agree between the nodes of a
// cluster, each with what keeps them agreeing.
func (c *Config) SameOnEveryNode() []string {
	var out []string
	if k := c.Routes.HashKey; k != "" {
		how := "a setting of the replicated table: this node writes it when it starts or reloads, and every node hashes by it; a node whose file says otherwise writes its own when it starts"
		if c.Standalone {
			how = "this standalone node hashes by it; other nodes in front of the same backends must say the same"
		}
		out = append(out, fmt.Sprintf("routes.hash_key %s: pools hash on the %s of user names (%s)", k, map[string]string{"address": "whole address", "local": "local part", "domain": "domain"}[k], how))
	}
	if len(c.Sources) > 0 && !c.Standalone {
		names := make([]string, len(c.Sources))
		for i, s := range c.Sources {
			names[i] = s.Name
		}
		out = append(out, fmt.Sprintf("sources %s: synced by whichever node leads the cluster, and asked on a miss by every node; every node's file must list the same sources, reading the same data", strings.Join(names, ", ")))
	}
	if sep := c.Routes.MasterUserSeparator; sep != "" {
		out = append(out, fmt.Sprintf("routes.master_user_separator %q: \"user%smaster\" is routed as user; every node's file must say the same, or a master login lands on different backends through different nodes", sep, sep))
	}
	return out
}

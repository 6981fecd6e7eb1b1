package config

// Translation of the validated file into the configurations of the
// packages that run it, all in this file. Each package owns its defaults
// (node.DefaultConfig, session.DefaultLimits, throttle.DefaultConfig,
// affinity.DefaultConfig, auth.DefaultClientConfig and DefaultCacheConfig,
// cluster.DefaultConfig and DefaultHealthConfig, vip.DefaultConfig,
// admin.DefaultConfig);
// validation fills an unset key from them where the file's "unset" and the
// package's zero mean different things (shutdown_grace unset is 30 s, a
// node's zero ShutdownGrace is none), and leaves the zero otherwise, for
// the package to fill. readme_test.go holds the README's tables of defaults
// to these functions.

import (
	"net"
	"net/netip"
	"slices"
	"strings"
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
	"github.com/portico-mail/portico/vip"
)

// EffectiveLimits returns listener i's limits: defaults, then the global
// section, then the listener's own section.
func (c *Config) EffectiveLimits(i int) session.Limits {
	l := c.Listeners[i]
	proto := routing.Protocol(l.Protocol)
	lim := session.DefaultLimits(proto)
	apply := func(s *Limits) {
		if s == nil {
			return
		}
		setInt(&lim.MaxLine, s.MaxLine)
		setInt(&lim.MaxLiteral, s.MaxLiteral)
		setDur(&lim.PreAuthTimeout, s.PreAuthTimeout)
		setDur(&lim.PreAuthLifetime, s.PreAuthLifetime)
		setDur(&lim.TLSHandshakeTimeout, s.TLSHandshakeTimeout)
		setInt(&lim.MaxErrors, s.MaxErrors)
		setInt(&lim.MaxAuthFailures, s.MaxAuthFailures)
		setDur(&lim.AuthFailureDelay, s.AuthFailureDelay)
		setDur(&lim.BackendTimeout, s.BackendTimeout)
		switch proto {
		case routing.IMAP:
			setDur(&lim.IdleTimeout, s.IMAPIdleTimeout)
		case routing.POP3:
			setDur(&lim.IdleTimeout, s.POP3IdleTimeout)
		case routing.Sieve:
			setDur(&lim.IdleTimeout, s.SieveIdleTimeout)
		case routing.Submission:
			setDur(&lim.IdleTimeout, s.SubmissionIdleTimeout)
		}
	}
	apply(&c.Limits)
	apply(l.Limits)
	return lim
}

// connLimit turns a configured connection limit into the node's: 0 takes
// the default, -1 is no limit (0 for the node).
func connLimit(n, dflt int) int {
	switch {
	case n == 0:
		return dflt
	case n < 0:
		return 0
	}
	return n
}

func setInt(dst *int, v int) {
	if v != 0 {
		*dst = v
	}
}

func setDur(dst *time.Duration, v Duration) {
	if v != 0 {
		*dst = v.D()
	}
}

// NodeConfig translates the file into the node's serving configuration.
// The connection limits take node.DefaultConfig's when not set (-1 is no
// limit); shutdown_grace and drain have theirs from validation; addresses
// in throttle.trusted_networks are exempt from the per-address limit.
func (c *Config) NodeConfig() node.Config {
	def := node.DefaultConfig()
	nc := node.Config{
		MaxConnections:      connLimit(c.Limits.MaxConnections, def.MaxConnections),
		MaxConnectionsPerIP: connLimit(c.Limits.MaxConnectionsPerIP, def.MaxConnectionsPerIP),
		PerIPExempt:         append([]netip.Prefix(nil), c.Throttle.trusted...),
		ShutdownGrace:       c.ShutdownGrace.D(),
		EndTimeout:          c.Drain.BoundaryTimeout.D(),
	}
	if c.Drain.Spread != nil {
		nc.EndSpread = c.Drain.Spread.D()
	}
	for i, l := range c.Listeners {
		lc := node.ListenerConfig{
			Name:               l.Name,
			Protocol:           routing.Protocol(l.Protocol),
			Address:            l.Address,
			TLS:                routing.TLSMode(l.TLS),
			AllowPlaintextAuth: l.AllowPlaintextAuth != nil && *l.AllowPlaintextAuth,
			BearerMechanisms:   bearerMechanisms(l.OAuthMechanisms),
			ProxyProtocol:      l.ProxyProtocol,
			Limits:             c.EffectiveLimits(i),
			TLSPolicy:          c.listenerTLSPolicy(i),
			Pool:               l.Pool,
			EventLoop:          l.EventLoop,
		}
		if s := l.Submission; s != nil {
			lc.Extra = &submission.ListenerOptions{Hostname: s.Hostname, MaxMessageSize: s.MaxMessageSize,
				Extensions: append([]string(nil), s.Extensions...), XCLIENTLogin: s.XCLIENTLogin}
		}
		for _, s := range l.TrustedProxies {
			if p, err := parsePrefix(s); err == nil {
				lc.TrustedProxies = append(lc.TrustedProxies, p)
			}
		}
		nc.Listeners = append(nc.Listeners, lc)
	}
	return nc
}

// bearerMechanisms turns a listener's oauth_mechanisms into the SASL
// names the node offers (session.BearerMechanisms' order).
func bearerMechanisms(names []string) []string {
	var out []string
	for _, m := range session.BearerMechanisms {
		for _, n := range names {
			if strings.EqualFold(n, m) {
				out = append(out, m)
				break
			}
		}
	}
	return out
}

// CertPairs returns the configured certificates.
func (c *Config) CertPairs() []node.CertPair {
	var out []node.CertPair
	for _, cert := range c.TLS.Certificates {
		out = append(out, node.CertPair{CertFile: cert.Cert, KeyFile: cert.Key})
	}
	return out
}

// RoutingSpec translates backends, pools and routes.
func (c *Config) RoutingSpec() routing.TableSpec {
	var spec routing.TableSpec
	for _, b := range c.Backends {
		spec.Backends = append(spec.Backends, routing.Backend{
			ID: b.ID, Host: b.Host, IMAPPort: b.IMAPPort, POP3Port: b.POP3Port, SievePort: b.SievePort, SubmissionPort: b.SubmissionPort,
			TLS: routing.TLSMode(b.TLS), TLSServerName: b.TLSServerName, TLSCAFile: b.TLSCAFile,
			InsecureSkipVerify: b.InsecureSkipVerify, Forward: routing.ForwardMode(b.Forward),
			Weight: b.Weight, State: routing.BackendState(b.State),
		})
	}
	for _, p := range c.Pools {
		spec.Pools = append(spec.Pools, routing.Pool{Name: p.Name, Backends: p.Backends, SharedStorage: p.SharedStorage})
	}
	spec.Users = make(map[string]routing.Target, len(c.Routes.Users))
	for u, t := range c.Routes.Users {
		spec.Users[u] = routing.Target{Backend: t.Backend, Pool: t.Pool}
	}
	spec.Domains = c.Routes.Domains
	spec.DefaultPool = c.Routes.DefaultPool
	spec.HashKey = routing.HashKey(c.Routes.HashKey)
	return spec
}

// LimiterConfig translates the validated section.
func (t *Throttle) LimiterConfig() throttle.Config {
	c := throttle.Config{
		Enabled: t.Enabled == nil || *t.Enabled,
		Window:  t.Window.D(), BlockFor: t.BlockFor.D(), MaxDelay: t.MaxDelay.D(),
		UnderAttackLimit: t.UnderAttackLimit, IPv4Prefix: t.IPv4Prefix, IPv6Prefix: t.IPv6Prefix,
		Trusted: append([]netip.Prefix(nil), t.trusted...), MaxEntries: t.MaxEntries,
	}
	if t.Delay != nil {
		c.Delay = t.Delay.D()
	}
	for _, x := range []struct {
		dst *int
		src *int
	}{{&c.IPLimit, t.IPLimit}, {&c.UserIPLimit, t.UserIPLimit}, {&c.UserLimit, t.UserLimit}} {
		if x.src != nil {
			*x.dst = *x.src
		}
	}
	return c
}

// TableConfig translates the validated affinity section.
func (a *Affinity) TableConfig() affinity.Config {
	return affinity.Config{Expire: a.Expire.D(), MaxEntries: a.MaxEntries}
}

// ClientConfig translates an http section for node/auth (validation has
// filled timeout and max_response).
func (a *Auth) ClientConfig() auth.ClientConfig {
	return auth.ClientConfig{
		URL: a.URL, Headers: a.Headers, Timeout: a.Timeout.D(),
		MaxResponse: a.MaxResponse, KeepAlive: a.KeepAlive,
	}
}

// CacheConfig translates the cache section: an unset negative_ttl takes
// auth.DefaultCacheConfig's (a zero turns that half off), an unset
// max_entries the cache's own default.
func (a *Auth) CacheConfig() auth.CacheConfig {
	cc := auth.CacheConfig{PositiveTTL: a.Cache.PositiveTTL.D(), NegativeTTL: auth.DefaultCacheConfig().NegativeTTL, MaxEntries: a.Cache.MaxEntries}
	if a.Cache.NegativeTTL != nil {
		cc.NegativeTTL = a.Cache.NegativeTTL.D()
	}
	return cc
}

// listenerTLSPolicy translates listener i's effective policy (the
// configuration has been validated).
func (c *Config) listenerTLSPolicy(i int) node.TLSPolicy {
	l := c.Listeners[i]
	var p node.TLSPolicy
	min := c.TLS.MinVersion
	if l.TLSMinVersion != "" {
		min = l.TLSMinVersion
	}
	if min != "" {
		p.MinVersion, _ = node.ParseTLSVersion(min)
	}
	suites := c.TLS.CipherSuites
	if len(l.TLSCipherSuites) > 0 {
		suites = l.TLSCipherSuites
	}
	for _, n := range suites {
		if id, _, err := node.CipherSuiteID(n); err == nil {
			p.CipherSuites = append(p.CipherSuites, id)
		}
	}
	p.ALPN = slices.Clone(l.ALPN)
	p.SessionTicketsOff = !c.TLS.SessionTicketsOn()
	return p
}

// AdminConfig translates the admin section (not "off").
func (a *Admin) AdminConfig() admin.Config {
	ac := admin.Config{Address: a.Address, Token: a.Token, AllowedHosts: a.AllowedHosts}
	if a.TLS != nil {
		ac.CertFile, ac.KeyFile = a.TLS.CertFile, a.TLS.KeyFile
	}
	return ac
}

// ClusterConfig translates node_name, data_dir and the cluster section
// (timings left zero take cluster.DefaultConfig's in cluster.New). The
// caller adds what is not in the file: Version, APIAddr, Log, Lock.
func (c *Config) ClusterConfig() cluster.Config {
	cl := c.Cluster
	cc := cluster.Config{
		NodeName: c.NodeName, DataDir: c.DataDir,
		RaftBind: cl.RaftAddress, GossipBind: cl.GossipAddress,
		TLS:  cl.Material,
		Join: cl.Join, BootstrapExpect: cl.BootstrapExpect, MaxVoters: cl.MaxVoters,
		DeadNodeReap: cl.DeadNodeReap.D(), EncryptKey: cl.Key,
		Timing: cluster.Timing{
			HeartbeatTimeout: cl.Timing.HeartbeatTimeout.D(), ElectionTimeout: cl.Timing.ElectionTimeout.D(),
			LeaderLeaseTimeout: cl.Timing.LeaderLeaseTimeout.D(), ProbeInterval: cl.Timing.ProbeInterval.D(),
			ProbeTimeout: cl.Timing.ProbeTimeout.D(), SuspicionMult: cl.Timing.SuspicionMult,
			GossipInterval: cl.Timing.GossipInterval.D(),
		},
	}
	if cl.Advertise != "" {
		cc.RaftAdvertise = withHost(cl.RaftAddress, cl.Advertise)
		cc.GossipAdvert = withHost(cl.GossipAddress, cl.Advertise)
	}
	return cc
}

// withHost is addr with its host replaced.
func withHost(addr, host string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return net.JoinHostPort(host, port)
}

// HealthConfig translates cluster.health (zeros take
// cluster.DefaultHealthConfig's); the caller adds the probe.
func (c *Config) HealthConfig() cluster.HealthConfig {
	h := c.Cluster.Health
	return cluster.HealthConfig{Interval: h.Interval.D(), Timeout: h.Timeout.D(), Fall: h.Fall, Rise: h.Rise}
}

// VIPConfig translates the vip section's addresses and announcement
// settings (zeros take vip.DefaultConfig's); the caller adds the
// callbacks. preferred, preempt_delay and move_drain are the ownership
// policy's, read from the section itself.
func (c *Config) VIPConfig() vip.Config {
	x := c.VIP
	vc := vip.Config{BurstCount: x.BurstCount, BurstInterval: x.BurstInterval.D(), Refresh: x.Refresh.D(), Reconcile: x.Reconcile.D()}
	for _, a := range x.Addresses {
		vc.Addresses = append(vc.Addresses, vip.Address{Prefix: a.Prefix, Interface: a.Interface})
	}
	return vc
}

package config

import (
	"crypto/tls"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/portico-mail/portico/node"
	"github.com/portico-mail/portico/routing"
)

// TLSDefaults are the client-facing TLS policy of every listener, inlined
// in the tls section; a listener may override each (ListenerTLS).
type TLSDefaults struct {
	// MinVersion: "1.0", "1.1", "1.2" (default) or "1.3". 1.0 and 1.1 are
	// deprecated (RFC 8996): allowed when set explicitly, with a warning.
	MinVersion string `yaml:"min_version,omitempty"`
	// CipherSuites: TLS 1.0-1.2 suites by their IANA (= Go) names; default
	// Go's secure set. TLS 1.3 suites cannot be configured in Go.
	CipherSuites []string `yaml:"cipher_suites,omitempty"`
}

// ListenerTLS is a listener's own TLS policy, inlined in its section.
type ListenerTLS struct {
	TLSMinVersion   string   `yaml:"tls_min_version,omitempty"`   // overrides tls.min_version
	TLSCipherSuites []string `yaml:"tls_cipher_suites,omitempty"` // overrides tls.cipher_suites
	// ALPN: the application protocol ids (RFC 7301) accepted; default the
	// listener's protocol alone (imap, pop3). Clients sending none are
	// always served; others are refused with no_application_protocol.
	ALPN []string `yaml:"alpn,omitempty"`
}

// foreignALPN are IANA-registered ALPN ids of protocols other than IMAP
// and POP3. A mail listener that accepted one would talk to a client that
// expects another protocol: the cross-protocol (ALPACA) attack that ALPN
// enforcement exists to stop. The other mail protocol's id is added per
// listener.
var foreignALPN = []string{
	"http/0.9", "http/1.0", "http/1.1", "spdy/1", "spdy/2", "spdy/3", "h2", "h2c", "h3",
	"stun.turn", "stun.nat-discovery", "webrtc", "c-webrtc", "ftp", "managesieve",
	"coap", "xmpp-client", "xmpp-server", "acme-tls/1", "mqtt", "dot", "doq",
	"ntske/1", "sunrpc", "irc", "nntp", "nnsp", "sip/2", "tds/8.0", "dicom", "postgresql",
}

// tlsPolicies checks the tls section's policy defaults and each
// listener's own; it runs after the listeners' protocol and tls mode have
// their defaults.
func (v *validator) tlsPolicies() {
	c := v.c
	v.tlsVersion("tls.min_version", c.TLS.MinVersion)
	v.cipherSuites("tls.cipher_suites", c.TLS.CipherSuites)
	v.choice("tls.session_tickets", &c.TLS.SessionTickets, "on", "on", "off")
	switch r := c.TLS.SessionTicketRotation.D(); {
	case r == 0:
		c.TLS.SessionTicketRotation = Duration(DefaultTicketRotation)
	case r < time.Second || r > 7*24*time.Hour/(TicketKeysKept-1):
		// Past that, crypto/tls's own bound (tickets are refused 7 days
		// after they were issued) would expire tickets before their keys.
		v.errf("tls.session_ticket_rotation", "between 1s and %v", 7*24*time.Hour/(TicketKeysKept-1))
	}
	seen := map[string]bool{} // consistency errors already reported
	for i := range c.Listeners {
		l := &c.Listeners[i]
		p := fmt.Sprintf("listeners[%d]", i)
		if l.TLS == "none" {
			for _, k := range []struct {
				key string
				set bool
			}{{"tls_min_version", l.TLSMinVersion != ""}, {"tls_cipher_suites", len(l.TLSCipherSuites) > 0}, {"alpn", len(l.ALPN) > 0}} {
				if k.set {
					v.errf(p+"."+k.key, "has no effect on a listener with tls none")
				}
			}
			continue
		}
		v.tlsVersion(p+".tls_min_version", l.TLSMinVersion)
		v.cipherSuites(p+".tls_cipher_suites", l.TLSCipherSuites)
		v.alpn(p+".alpn", l.Protocol, l.ALPN)

		// The effective version and suites must make sense together.
		min, minPath := c.TLS.MinVersion, "tls.min_version"
		if l.TLSMinVersion != "" {
			min, minPath = l.TLSMinVersion, p+".tls_min_version"
		}
		suites, suitesPath := c.TLS.CipherSuites, "tls.cipher_suites"
		if len(l.TLSCipherSuites) > 0 {
			suites, suitesPath = l.TLSCipherSuites, p+".tls_cipher_suites"
		}
		vmin, err := node.ParseTLSVersion(min)
		if min == "" || err != nil || len(suites) == 0 {
			continue
		}
		var msg string
		switch {
		case vmin == tls.VersionTLS13:
			msg = fmt.Sprintf("no effect with %s 1.3: TLS 1.3 suites are not configurable", minPath)
		case vmin < tls.VersionTLS12 && !slices.ContainsFunc(suites, func(n string) bool {
			_, vers, err := node.CipherSuiteID(n)
			return err == nil && slices.Contains(vers, vmin)
		}):
			msg = fmt.Sprintf("none works with TLS %s (%s): add a CBC_SHA suite or raise the minimum", min, minPath)
		default:
			continue
		}
		if !seen[suitesPath+msg] {
			seen[suitesPath+msg] = true
			v.errf(suitesPath, "%s", msg)
		}
	}
}

func (v *validator) tlsVersion(path, s string) {
	if s == "" {
		return
	}
	if _, err := node.ParseTLSVersion(s); err != nil {
		v.errf(path, "%v", err)
	}
}

func (v *validator) cipherSuites(path string, names []string) {
	seen := map[string]bool{}
	for i, n := range names {
		p := fmt.Sprintf("%s[%d]", path, i)
		if _, _, err := node.CipherSuiteID(n); err != nil {
			v.errf(p, "%v", err)
		} else if seen[n] {
			v.errf(p, "%s is listed twice", n)
		}
		seen[n] = true
	}
}

func (v *validator) alpn(path, protocol string, ids []string) {
	if len(ids) == 0 || !oneOf(protocol, "imap", "pop3", "sieve", "submission") {
		return
	}
	own := node.ALPNProtocol(routing.Protocol(protocol))
	// The other mail protocols' ids are foreign too.
	var others []string
	for _, p := range []routing.Protocol{routing.IMAP, routing.POP3, routing.Sieve, routing.Submission} {
		if id := node.ALPNProtocol(p); id != own {
			others = append(others, id)
		}
	}
	seen := map[string]bool{}
	for i, id := range ids {
		p := fmt.Sprintf("%s[%d]", path, i)
		switch {
		case len(id) == 0 || len(id) > 255:
			v.errf(p, "an ALPN protocol id is 1 to 255 bytes (RFC 7301)")
		case strings.IndexFunc(id, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0:
			v.errf(p, "%q: only printable ASCII without spaces is accepted", id)
		case slices.Contains(others, strings.ToLower(id)) || (strings.ToLower(id) != own && slices.Contains(foreignALPN, strings.ToLower(id))):
			v.errf(p, "%q is another protocol's ALPN id: accepting it would let cross-protocol (ALPACA) connections in", id)
		case seen[id]:
			v.errf(p, "%q is listed twice", id)
		}
		seen[id] = true
	}
	if !seen[own] {
		v.errf(path, "must include %q, or clients that announce %s would be refused", own, strings.ToUpper(protocol))
	}
}

// Warnings lists settings that are valid but weaken security, with their
// path and line: a listener accepting TLS 1.0 or 1.1. The daemon logs them
// at start and at each reload; check-config prints them.
func (c *Config) Warnings() []string {
	var out []string
	for i, l := range c.Listeners {
		if l.TLS == "" || l.TLS == "none" {
			continue
		}
		min, path := c.TLS.MinVersion, "tls.min_version"
		if l.TLSMinVersion != "" {
			min, path = l.TLSMinVersion, fmt.Sprintf("listeners[%d].tls_min_version", i)
		}
		if v, err := node.ParseTLSVersion(min); min == "" || err != nil || v >= tls.VersionTLS12 {
			continue
		}
		if line := c.line(path); line > 0 {
			path = fmt.Sprintf("%s (line %d)", path, line)
		}
		out = append(out, fmt.Sprintf("%s: listener %s accepts TLS %s, which is deprecated (RFC 8996) and weaker than TLS 1.2; raise it once no client needs it", path, l.Name, min))
	}
	return append(out, c.submissionWarnings()...)
}

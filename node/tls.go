package node

import (
	"crypto/tls"
	"fmt"
	"slices"
	"strings"

	"github.com/portico-mail/portico/routing"
)

// TLSPolicy is a listener's client-facing TLS policy, for implicit TLS and
// STARTTLS/STLS alike. The zero value is the default policy.
type TLSPolicy struct {
	// MinVersion is the oldest protocol version accepted (tls.VersionTLS10
	// ...); 0 means DefaultMinTLSVersion.
	MinVersion uint16
	// CipherSuites are the TLS 1.0-1.2 suites offered; nil means Go's
	// default (secure) set. TLS 1.3 suites are not configurable in Go:
	// all three are always enabled.
	CipherSuites []uint16
	// ALPN lists the application protocols (RFC 7301) accepted; nil means
	// the listener protocol's IANA id alone ("imap", "pop3"). A client
	// offering none of them is refused with the no_application_protocol
	// alert, so that a connection meant for another protocol (HTTPS
	// redirected by an attacker: the ALPACA attack) never reaches the
	// IMAP or POP3 dialogue; a client that sends no ALPN is served.
	ALPN []string
	// SessionTicketsOff: no session tickets are issued or accepted
	// (tls.session_tickets: off), so every handshake is a full one.
	SessionTicketsOff bool
}

// DefaultMinTLSVersion is the oldest protocol version a listener accepts
// when its policy sets none: TLS 1.2 (RFC 8996 deprecates 1.0 and 1.1).
const DefaultMinTLSVersion = tls.VersionTLS12

// ServerConfig returns the TLS server configuration of a listener serving
// proto under policy p, with certificates chosen by SNI from s.
func (s *CertStore) ServerConfig(proto routing.Protocol, p TLSPolicy) *tls.Config {
	cfg := &tls.Config{
		MinVersion:     p.MinVersion,
		CipherSuites:   slices.Clone(p.CipherSuites),
		NextProtos:     slices.Clone(p.ALPN),
		GetCertificate: s.GetCertificate,

		SessionTicketsDisabled: p.SessionTicketsOff,
	}
	if cfg.MinVersion == 0 {
		cfg.MinVersion = DefaultMinTLSVersion
	}
	if len(cfg.NextProtos) == 0 {
		cfg.NextProtos = []string{ALPNProtocol(proto)}
	}
	return cfg
}

// ALPNProtocol returns the IANA ALPN protocol id of a mail protocol: "imap",
// "pop3" (the registry's ids equal routing's protocol names),
// "managesieve", or for submission "smtp" (no id is registered for SMTP;
// "smtp" is the one nginx's mail module uses).
func ALPNProtocol(p routing.Protocol) string {
	switch p {
	case routing.Sieve:
		return "managesieve"
	case routing.Submission:
		return "smtp"
	}
	return string(p)
}

// TLSVersions names the protocol versions a policy may set, oldest first.
var TLSVersions = []struct {
	Name string
	ID   uint16
}{
	{"1.0", tls.VersionTLS10},
	{"1.1", tls.VersionTLS11},
	{"1.2", tls.VersionTLS12},
	{"1.3", tls.VersionTLS13},
}

// ParseTLSVersion turns "1.0" ... "1.3" into a tls.VersionTLS* constant.
func ParseTLSVersion(s string) (uint16, error) {
	var names []string
	for _, v := range TLSVersions {
		if v.Name == s {
			return v.ID, nil
		}
		names = append(names, v.Name)
	}
	return 0, fmt.Errorf("%q is not one of %s", s, strings.Join(names, ", "))
}

// CipherSuiteID returns the ID of a TLS 1.0-1.2 cipher suite by its
// IANA name (which is also Go's, e.g.
// TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256), and the versions it works with.
// Suites Go considers insecure (RC4, 3DES, RSA key exchange, CBC with
// SHA-256), TLS 1.3 suites (not configurable) and unknown names are
// errors that say which.
func CipherSuiteID(name string) (id uint16, versions []uint16, err error) {
	for _, cs := range tls.CipherSuites() {
		if cs.Name != name {
			continue
		}
		if !slices.ContainsFunc(cs.SupportedVersions, func(v uint16) bool { return v <= tls.VersionTLS12 }) {
			return 0, nil, fmt.Errorf("%s is a TLS 1.3 suite: TLS 1.3 suites are not configurable (all three are always enabled)", name)
		}
		return cs.ID, cs.SupportedVersions, nil
	}
	for _, cs := range tls.InsecureCipherSuites() {
		if cs.Name == name {
			return 0, nil, fmt.Errorf("%s is insecure and not allowed", name)
		}
	}
	return 0, nil, fmt.Errorf("%q is not a TLS 1.2 cipher suite name (examples: TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256)", name)
}

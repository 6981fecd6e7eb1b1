// Package auth is a client for nginx's mail auth_http protocol
// (https://nginx.org/en/docs/mail/ngx_mail_auth_http_module.html), so that
// an authentication daemon written for nginx's mail proxy works unchanged
// behind Portico, and a session.Director that uses it.
//
// The request is what nginx 1.22 sends, byte for byte where Portico has
// the same information (integration/authhttp_test.go runs both against one
// recording server and compares): one GET per attempt over a new
// connection, HTTP/1.0, headers in nginx's order, Auth-User and Auth-Pass
// escaped as nginx escapes them. The response is read as nginx reads it:
// the status line and code are ignored, only the headers matter, the body
// is never read, and the headers must fit in 1,024 bytes.
package auth

import (
	"crypto/tls"
	"net/netip"
	"strconv"

	"github.com/portico-mail/portico/routing"
)

// Request describes one login attempt, as the auth server sees it.
type Request struct {
	// Method is "plain" for every password mechanism Portico accepts
	// (LOGIN, USER/PASS, AUTHENTICATE PLAIN and LOGIN), as in nginx;
	// "oauthbearer" or "xoauth2" for a bearer-token login, as nginx's
	// OAUTHBEARER/XOAUTH2 patch sends them, with the user the message
	// names as User and the bare token (after "Bearer ") as Pass.
	Method   string
	User     string // the authentication identity (never the SASL authorization identity, as nginx)
	Pass     string
	Protocol string // "imap", "pop3", "sieve" or "smtp" (ProtocolName)
	// Attempt is 1 for the session's first login attempt, +1 for each new
	// one; a WAIT re-poll repeats it.
	Attempt  int
	ClientIP netip.Addr
	// ClientHost is the client's host name, sent as Client-Host when set:
	// nginx sends it for SMTP only, "[UNAVAILABLE]" without a resolver;
	// Portico looks no name up, so it is that for submission, else "".
	ClientHost string
	// Proxy is set when the client's address came in a PROXY header.
	Proxy *ProxyInfo
	// TLS is set on a TLS connection (implicit or after STARTTLS/STLS).
	TLS *TLSInfo
}

// ProxyInfo is what a PROXY protocol header said.
type ProxyInfo struct {
	Addr       netip.AddrPort // the client
	ServerAddr netip.AddrPort // the address the client connected to
}

// TLSInfo describes the client's TLS connection in OpenSSL's terms.
type TLSInfo struct {
	Protocol string // "TLSv1.2", "TLSv1.3"
	Cipher   string // "ECDHE-ECDSA-AES128-GCM-SHA256", "TLS_AES_128_GCM_SHA256"
}

// ProtocolName is a listener protocol's Auth-Protocol value: nginx's
// "imap", "pop3" and "smtp" (for submission), and "sieve" for ManageSieve.
func ProtocolName(p routing.Protocol) string {
	if p == routing.Submission {
		return "smtp"
	}
	return string(p)
}

// Header is one configured extra header (nginx's auth_http_header).
type Header struct{ Name, Value string }

// TLSInfoOf describes a TLS connection state as nginx (OpenSSL) would.
func TLSInfoOf(st *tls.ConnectionState) *TLSInfo {
	if st == nil {
		return nil
	}
	return &TLSInfo{Protocol: tlsVersionName(st.Version), Cipher: cipherName(st.CipherSuite)}
}

// appendRequest writes the request. nginx's order is: Host, Auth-Method,
// Auth-User, Auth-Pass, Auth-Protocol, Auth-Login-Attempt, Client-IP,
// [Client-Host], [Proxy-Protocol-Addr, -Port, -Server-Addr, -Server-Port],
// [Auth-SSL, Auth-SSL-Protocol, Auth-SSL-Cipher], the configured headers.
//
// Not sent, and why: Client-Host but for SMTP (nginx sends it only
// there); Auth-Salt (APOP and CRAM-MD5 are not offered: the backend
// checks the password, so Portico must have it); Auth-SMTP-Helo, -From
// and -To (nginx sends them only for SMTP without authentication, which a
// submission listener never accepts); and
// Auth-SSL-Verify/Subject/Issuer/Serial/Fingerprint/Cert (nginx sends them
// only when ssl_verify_client is on; Portico does not request client
// certificates).
func appendRequest(b []byte, http11 bool, host, uri string, r *Request, extra []Header) []byte {
	b = append(b, "GET "...)
	b = append(b, uri...)
	if http11 {
		b = append(b, " HTTP/1.1\r\n"...)
	} else {
		b = append(b, " HTTP/1.0\r\n"...)
	}
	b = line(b, "Host", host)
	b = line(b, "Auth-Method", r.Method)
	b = append(b, "Auth-User: "...)
	b = appendEscaped(b, r.User)
	b = append(b, "\r\nAuth-Pass: "...)
	b = appendEscaped(b, r.Pass)
	b = append(b, "\r\n"...)
	b = line(b, "Auth-Protocol", r.Protocol)
	b = append(b, "Auth-Login-Attempt: "...)
	b = strconv.AppendInt(b, int64(r.Attempt), 10)
	b = append(b, "\r\n"...)
	b = line(b, "Client-IP", r.ClientIP.Unmap().String())
	if r.ClientHost != "" {
		b = line(b, "Client-Host", r.ClientHost)
	}
	if p := r.Proxy; p != nil {
		b = line(b, "Proxy-Protocol-Addr", p.Addr.Addr().Unmap().String())
		b = append(b, "Proxy-Protocol-Port: "...)
		b = strconv.AppendUint(b, uint64(p.Addr.Port()), 10)
		b = append(b, "\r\n"...)
		b = line(b, "Proxy-Protocol-Server-Addr", p.ServerAddr.Addr().Unmap().String())
		b = append(b, "Proxy-Protocol-Server-Port: "...)
		b = strconv.AppendUint(b, uint64(p.ServerAddr.Port()), 10)
		b = append(b, "\r\n"...)
	}
	if t := r.TLS; t != nil {
		b = append(b, "Auth-SSL: on\r\n"...)
		b = line(b, "Auth-SSL-Protocol", t.Protocol)
		b = line(b, "Auth-SSL-Cipher", t.Cipher)
	}
	for _, h := range extra {
		b = line(b, h.Name, h.Value)
	}
	return append(b, "\r\n"...)
}

func line(b []byte, name, value string) []byte {
	b = append(b, name...)
	b = append(b, ": "...)
	b = append(b, value...)
	return append(b, "\r\n"...)
}

const upperHex = "0123456789ABCDEF"

// appendEscaped escapes as nginx's NGX_ESCAPE_MAIL_AUTH: bytes below 0x20,
// space and '%' become %XX (upper-case hex); everything else, DEL and
// non-ASCII bytes included, is sent as is. CR and LF are below 0x20, so a
// credential can never end the header line.
func appendEscaped(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == ' ' || c == '%' {
			b = append(b, '%', upperHex[c>>4], upperHex[c&15])
			continue
		}
		b = append(b, c)
	}
	return b
}

func tlsVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "TLSv1"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return "unknown"
}

// cipherName returns OpenSSL's name for a suite Go can negotiate (what
// nginx puts in Auth-SSL-Cipher). TLS 1.3 suites have the same name in
// both; for anything unlisted, Go's (IANA) name.
func cipherName(id uint16) string {
	switch id {
	case tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256:
		return "ECDHE-ECDSA-AES128-GCM-SHA256"
	case tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384:
		return "ECDHE-ECDSA-AES256-GCM-SHA384"
	case tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256:
		return "ECDHE-RSA-AES128-GCM-SHA256"
	case tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384:
		return "ECDHE-RSA-AES256-GCM-SHA384"
	case tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256:
		return "ECDHE-ECDSA-CHACHA20-POLY1305"
	case tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256:
		return "ECDHE-RSA-CHACHA20-POLY1305"
	case tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA:
		return "ECDHE-ECDSA-AES128-SHA"
	case tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA:
		return "ECDHE-ECDSA-AES256-SHA"
	case tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA:
		return "ECDHE-RSA-AES128-SHA"
	case tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA:
		return "ECDHE-RSA-AES256-SHA"
	case tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256:
		return "ECDHE-ECDSA-AES128-SHA256"
	case tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256:
		return "ECDHE-RSA-AES128-SHA256"
	case tls.TLS_RSA_WITH_AES_128_GCM_SHA256:
		return "AES128-GCM-SHA256"
	case tls.TLS_RSA_WITH_AES_256_GCM_SHA384:
		return "AES256-GCM-SHA384"
	case tls.TLS_RSA_WITH_AES_128_CBC_SHA:
		return "AES128-SHA"
	case tls.TLS_RSA_WITH_AES_256_CBC_SHA:
		return "AES256-SHA"
	case tls.TLS_RSA_WITH_AES_128_CBC_SHA256:
		return "AES128-SHA256"
	case tls.TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA:
		return "ECDHE-RSA-DES-CBC3-SHA"
	case tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA:
		return "DES-CBC3-SHA"
	}
	return tls.CipherSuiteName(id)
}

package session

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"syscall"
)

// Why a session ended before login (for metrics and logs). The set is
// fixed: these are label values, never free text.
const (
	EndLogout              = "logout"                 // LOGOUT / QUIT
	EndClientClosed        = "client_closed"          // the client hung up or reset
	EndTimeout             = "timeout"                // preauth_timeout
	EndPreauthLifetime     = "preauth_lifetime"       // preauth_lifetime: too long without logging in
	EndTooManyErrors       = "too_many_errors"        // max_errors invalid commands
	EndTooManyAuthFailures = "too_many_auth_failures" // max_auth_failures failed logins
	EndTLSHandshake        = "tls_handshake_failed"   // implicit TLS, STARTTLS or STLS
	EndProtocolError       = "protocol_error"         // the stream cannot be resynchronised
	EndShutdown            = "shutdown"               // the node stopped or is draining
	EndError               = "error"                  // anything else (write errors, ...)
	EndAuthRefused         = "auth_refused"           // the authentication source refused and ended the session (auth_http without Auth-Wait)
	EndAuthError           = "auth_error"             // the authentication source failed (auth_http internal error)
)

// Classes of failed TLS handshakes with clients (End.TLSFailure).
const (
	TLSFailTimeout = "timeout" // tls_handshake_timeout
	TLSFailClosed  = "closed"  // the client hung up mid-handshake (port scanners, health checks)
	TLSFailVersion = "version" // the client offered only versions below the listener's minimum
	TLSFailCipher  = "cipher"  // no cipher suite in common (TLS 1.2 and older)
	TLSFailALPN    = "alpn"    // the client offered only other application protocols (ALPN)
	TLSFailError   = "error"   // any other protocol failure: bad record, alert, certificate
)

// TLSFailures lists every TLSFail* class (label values set up front).
var TLSFailures = []string{TLSFailTimeout, TLSFailClosed, TLSFailVersion, TLSFailCipher, TLSFailALPN, TLSFailError}

// tlsFailure classifies a failed server-side handshake.
func tlsFailure(err error) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return TLSFailTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return TLSFailClosed
	}
	// crypto/tls returns these refusals as plain errors; its wording is
	// pinned by TestStartTLSFailureClassified, and anything unrecognised
	// stays "error".
	switch msg := err.Error(); {
	case strings.Contains(msg, "tls: client offered only unsupported versions"):
		return TLSFailVersion
	case strings.Contains(msg, "tls: no cipher suite supported by both client and server"):
		return TLSFailCipher
	case strings.Contains(msg, "tls: client requested unsupported application protocols"):
		return TLSFailALPN
	}
	return TLSFailError
}

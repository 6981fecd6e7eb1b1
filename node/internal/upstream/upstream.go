// Package upstream holds what the POP3, ManageSieve and submission
// backend clients (each front end's backend.go) share before login: the
// STARTTLS upgrade once the backend has accepted it, Dovecot's XCLIENT
// command, the checks on what may be sent (a session ID, credentials),
// and the quoting of a backend's words in errors. Each protocol's commands and replies stay with it.
package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/session"
)

// Bounds.
const (
	// MaxSessionID: Dovecot ignores longer XCLIENT SESSION values.
	MaxSessionID = 64
	// MaxShownReply is how many bytes of a backend line an error quotes.
	MaxShownReply = 200
	// handshakeTimeout bounds a handshake when the dialogue has no
	// deadline.
	handshakeTimeout = 10 * time.Second
)

// StartTLS upgrades the connection to the backend after the backend
// accepted STARTTLS (STLS) with okReply ("+OK", "OK", "220"). Bytes the
// backend sent after that reply are refused, as they would be injected
// plaintext. The handshake is bounded by ctx's deadline, which the
// connection gets back afterwards (the upgrade clears it). Errors are
// not labelled with the phase: the caller does that.
func StartTLS(ctx context.Context, s *netx.Stream, tlsConfig func() (*tls.Config, error), okReply string) error {
	if s.R.Buffered() > 0 {
		return errors.New("backend sent data after " + okReply)
	}
	cfg, err := tlsConfig()
	if err != nil {
		return err
	}
	timeout := handshakeTimeout
	dl, hasDL := ctx.Deadline()
	if hasDL {
		if timeout = time.Until(dl); timeout <= 0 {
			return context.DeadlineExceeded
		}
	}
	if err := s.StartTLSClient(ctx, cfg, timeout); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	if hasDL {
		_ = s.SetDeadline(dl)
	}
	return ctx.Err()
}

// Send writes one command line to the backend, CRLF added, and flushes
// it.
func Send(w *bufio.Writer, line string) error {
	if _, err := w.WriteString(line + "\r\n"); err != nil {
		return err
	}
	return w.Flush()
}

// DovecotXCLIENT returns the XCLIENT command that passes the client's
// address (remote) and the session ID to Dovecot's pop3-login and
// managesieve-login: ADDR (an IPv4-mapped address as IPv4, no zone),
// PORT, and SESSION when the ID is valid (ValidSessionID). Postfix's
// XCLIENT, which submission speaks, has other attributes and encodes
// their values.
func DovecotXCLIENT(remote netip.AddrPort, sessionID string) string {
	cmd := "XCLIENT ADDR=" + remote.Addr().Unmap().WithZone("").String() +
		" PORT=" + strconv.Itoa(int(remote.Port()))
	if ValidSessionID(sessionID) {
		cmd += " SESSION=" + sessionID
	}
	return cmd
}

// ValidSessionID reports whether a session ID can be passed in XCLIENT's
// SESSION: 1 to MaxSessionID printable ASCII bytes, no space.
func ValidSessionID(id string) bool {
	if id == "" || len(id) > MaxSessionID {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// Unrepresentable refuses credentials that a backend could not receive
// intact in a SASL PLAIN response (RFC 4616: an empty user, or a NUL that
// would shift its fields), without sending them: as bad credentials, the
// client getting reply (nil: the protocol's usual reply to a refusal). It
// returns nil for credentials that can be sent.
func Unrepresentable(c session.Credentials, reply []byte) *session.BackendRejected {
	if c.User != "" && strings.IndexByte(c.User, 0) < 0 && strings.IndexByte(c.AuthzID, 0) < 0 && strings.IndexByte(c.Password, 0) < 0 {
		return nil
	}
	return &session.BackendRejected{Reply: reply, Text: "credentials not representable (empty user or NUL byte); not sent"}
}

// HasWord reports whether the space-separated list (a capability's
// value: "PLAIN LOGIN") holds w, ignoring case.
func HasWord(list, w string) bool {
	for _, f := range strings.Fields(list) {
		if strings.EqualFold(f, w) {
			return true
		}
	}
	return false
}

// OneLine makes a backend's or an authentication server's text safe as
// (part of) one line for the client: CR, LF and NUL become spaces; other
// bytes are kept as they are.
func OneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n\x00") {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if c == '\r' || c == '\n' || c == 0 {
			b[i] = ' '
		}
	}
	return string(b)
}

// Shorten cuts a backend line to MaxShownReply bytes for errors and logs.
func Shorten(s string) string {
	if len(s) > MaxShownReply {
		return s[:MaxShownReply] + "..."
	}
	return s
}

// Trunc is Shorten for a backend response as read, its final CRLF
// dropped.
func Trunc(b []byte) string { return Shorten(strings.TrimRight(string(b), "\r\n")) }

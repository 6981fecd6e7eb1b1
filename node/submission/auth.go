package submission

import (
	"errors"
	"strings"

	"github.com/portico-mail/portico/node/internal/saslauth"
	"github.com/portico-mail/portico/node/session"
)

// The SASL mechanisms offered to clients are the listener's
// (session.Listener.Mechanisms): PLAIN and LOGIN, then OAUTHBEARER and
// XOAUTH2 where oauth_mechanisms enables them, in that order in the EHLO
// reply's AUTH line. Each carries a secret (a password or a bearer token)
// in the clear, so all follow the listener's plaintext authentication
// policy (advertised and accepted only over TLS unless
// allow_plaintext_auth). A bearer login is replayed to the backend with
// the client's mechanism and message (backend.go).

// Replies to AUTH (RFC 4954 §6). The answers to a login attempt are not
// refused commands: a failed login does not count toward max_errors
// (max_auth_failures bounds it).
const (
	replyAuthOK     = "235 2.7.0 Authentication successful\r\n"
	replyAuthFailed = "535 5.7.8 Authentication credentials invalid\r\n"
	// replyUnavailable: no backend could be used. A temporary failure,
	// never 535: the password may well be right.
	replyUnavailable = "454 4.7.0 Temporary authentication failure, try again later\r\n"
	replyThrottled   = "454 4.7.0 Too many failed logins, try again later\r\n"
	replyTooManyAuth = "421 4.7.0 Too many authentication failures, closing connection\r\n"
	// replyInternalError is nginx's answer when its auth_http server
	// fails; the session ends.
	replyInternalError = "451 4.3.0 Internal server error, closing connection\r\n"
	// defaultRefusalCode goes with an auth_http server's Auth-Status
	// text when it sends no Auth-Error-Code (nginx's default).
	defaultRefusalCode = "535 5.7.0"
)

// Refused AUTH commands.
var (
	errAuthSyntax    = invalid("501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n")
	errHeloFirst     = invalid("503 5.5.1 Error: send HELO/EHLO first\r\n")
	errEncryptionReq = invalid("538 5.7.11 Encryption required for requested authentication mechanism\r\n")
	errUnknownMech   = invalid("504 5.5.4 Unrecognized authentication type\r\n")
	errCancelled     = invalid("501 5.7.0 Authentication cancelled\r\n")
	errBadBase64     = invalid("501 5.5.2 Cannot decode response\r\n")
	errBadAuthData   = invalid("501 5.5.2 Invalid authentication data\r\n")
	errAuthLineLong  = invalid("500 5.5.6 Authentication exchange line is too long\r\n")
	errCredsTooLong  = invalid("500 5.5.6 Credentials too long\r\n")
	errAuthBadChars  = invalid("501 5.5.2 Invalid characters in response\r\n")
	errBearerNoUser  = invalid("501 5.5.2 The bearer token login must name the user (OAUTHBEARER a=, XOAUTH2 user=)\r\n")
)

// auth runs AUTH mechanism [initial-response] (RFC 4954 §4). Challenges
// are "334 " and base64; each client response is one line of base64, "*"
// cancelling, "=" an empty initial response.
func (s *conn) auth(cmd Command) (*session.Handoff, error) {
	name, ir, hasIR := strings.Cut(cmd.Arg, " ")
	if name == "" || strings.ContainsAny(ir, " \t") {
		return nil, errAuthSyntax
	}
	if s.helo == "" {
		return nil, errHeloFirst
	}
	if !s.c.Listener.PlaintextAuthOK(s.c.IsTLS()) {
		return nil, errEncryptionReq
	}
	m := s.c.Listener.NewSASL(name)
	if m == nil {
		return nil, errUnknownMech
	}
	creds, err := exchange(m, ir, hasIR, s.respond)
	if err != nil {
		return nil, err
	}
	return s.login(creds)
}

// respond sends a server challenge ("334 " and base64) and reads the
// client's answer line; a line over the limit is refused (and skipped).
func (s *conn) respond(challenge []byte) ([]byte, error) {
	if err := saslauth.Prompt(s.d, s.write, "334 "+session.EncodeChallenge(challenge)+"\r\n"); err != nil {
		return nil, err
	}
	line, err := s.w.line()
	if errors.Is(err, ErrLineTooLong) {
		return nil, errAuthLineLong
	}
	return line, err
}

// exchange runs a SASL exchange (saslauth.Exchange): the initial response
// ir if hasIR, then for each challenge the client's answer line from next
// (which sends the challenge and reads the line). A line with a NUL or a
// CR is refused; an empty line is an empty response (RFC 4954 §4 allows
// "=" only for the initial one; clients send both). Its errors are
// refused commands (*session.ProtocolError) or next's.
func exchange(mech session.SASL, ir string, hasIR bool, next func(challenge []byte) ([]byte, error)) (session.Credentials, error) {
	return saslauth.Exchange(mech, []byte(ir), hasIR, func(challenge []byte) ([]byte, error) {
		line, err := next(challenge)
		switch {
		case errors.Is(err, ErrLineTooLong):
			return nil, errAuthLineLong
		case err != nil:
			return nil, err
		case strings.ContainsAny(string(line), "\x00\r"):
			return nil, errAuthBadChars
		}
		return line, nil
	}, &refusals)
}

// refusals are the refused AUTH exchanges.
var refusals = saslauth.Refusals{
	Cancelled: errCancelled, BadBase64: errBadBase64, BearerNoUser: errBearerNoUser, BadAuthData: errBadAuthData,
}

// replies answer a failed login; an auth_http refusal's text goes with its
// Auth-Error-Code (default 535 5.7.0), as nginx.
var replies = saslauth.Replies{
	AuthFailed: replyAuthFailed, Unavailable: replyUnavailable, Throttled: replyThrottled,
	TooManyAuth: replyTooManyAuth, InternalError: replyInternalError,
	Refusal: func(r *session.Refusal) string {
		code := defaultRefusalCode
		if c, ok := replyCode(r.Code); ok {
			code = c
		}
		return code + " " + sanitize(r.Reply) + "\r\n"
	},
}

// login runs one attempt through the session orchestration and answers the
// client:
//
//   - success: the backend's 235 reply (or the proxy's with XCLIENT LOGIN),
//     then the hand-off;
//   - the backend refused the credentials: its 535 reply, passed through;
//   - the backend refused for its own reasons (4xx): replyUnavailable, not
//     counted;
//   - anything else as saslauth.Fail says, in SMTP's words (replies); a
//     failed bearer login's error challenge is a 334 reply, the dummy
//     response a line.
func (s *conn) login(creds session.Credentials) (*session.Handoff, error) {
	if creds.Len() > s.d.Limits().MaxLiteral {
		return nil, errCredsTooLong
	}
	s.chunking = false
	out := s.d.Login(creds, s.backendLogin)
	if out.Result == session.ResultOK {
		s.write(string(out.Reply))
		out.Handoff.Framer = NewFramer(s.chunking)
		return out.Handoff, nil
	}
	return nil, saslauth.Fail(out, &replies, s.write, s.respond, &refusals)
}

// replyCode checks an auth_http Auth-Error-Code: a 4xx or 5xx reply code,
// optionally followed by an enhanced status code ("535 5.7.8").
func replyCode(code string) (string, bool) {
	code = strings.TrimSpace(code)
	if len(code) < 3 || (code[0] != '4' && code[0] != '5') || !isDigit(code[1]) || !isDigit(code[2]) {
		return "", false
	}
	if len(code) == 3 {
		return code, true
	}
	if code[3] != ' ' || len(code) > 3+1+11 {
		return "", false
	}
	for _, c := range []byte(code[4:]) {
		if !isDigit(c) && c != '.' {
			return "", false
		}
	}
	return code, true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// sanitize makes an auth server's text safe in a reply line.
func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c == 0x7f {
			b[i] = '?'
		}
	}
	if len(b) > 400 {
		b = b[:400]
	}
	return string(b)
}

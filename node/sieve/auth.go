package sieve

import (
	"github.com/portico-mail/portico/node/internal/saslauth"
	"github.com/portico-mail/portico/node/internal/upstream"
	"github.com/portico-mail/portico/node/session"
)

// Replies to a login attempt: answers, not refused commands (a failed
// login does not count toward max_errors; max_auth_failures bounds it).
const (
	replyAuthFailed  = "NO \"Authentication failed.\"\r\n"
	replyUnavailable = "NO (TRYLATER) \"Backend server unavailable, try again later.\"\r\n"
	replyTooManyAuth = "BYE \"Too many authentication failures.\"\r\n"
	// replyThrottled answers an attempt the throttle blocked: TRYLATER,
	// since the password was not checked and may well be right.
	replyThrottled = "NO (TRYLATER) \"Too many failed logins, try again later.\"\r\n"
	// replyInternalError is nginx's answer when its auth_http server
	// fails; the session ends.
	replyInternalError = "BYE \"Internal server error.\"\r\n"
)

// authenticate runs AUTHENTICATE mechanism [initial-response] (RFC 5804
// §2.1). Challenges are sent as quoted strings of base64; each client
// response is one string on its own line, "*" cancelling. The mechanisms
// are PLAIN and LOGIN, and OAUTHBEARER and XOAUTH2 where the listener
// enables them (session.Listener.NewSASL), whose refusal relays the
// server's error challenge (login).
func (s *conn) authenticate(cmd Command) (*session.Handoff, error) {
	if len(cmd.Args) < 1 || len(cmd.Args) > 2 || (len(cmd.Args) == 2 && !cmd.Args[1].String) {
		return nil, errSyntax
	}
	if !s.c.Listener.PlaintextAuthOK(s.c.IsTLS()) {
		return nil, errPlaintext
	}
	mech := s.c.Listener.NewSASL(cmd.Args[0].Value)
	if mech == nil {
		return nil, errUnsupported
	}
	var ir []byte
	if len(cmd.Args) == 2 {
		ir = []byte(cmd.Args[1].Value)
	}
	creds, err := saslauth.Exchange(mech, ir, len(cmd.Args) == 2, s.respond, &refusals)
	if err != nil {
		return nil, err
	}
	return s.login(creds)
}

// respond sends a challenge (a quoted string of base64) and reads the
// response, one string on its own line ("" is an empty response).
func (s *conn) respond(challenge []byte) ([]byte, error) {
	if err := saslauth.Prompt(s.d, s.write, quote(session.EncodeChallenge(challenge))+"\r\n"); err != nil {
		return nil, err
	}
	str, err := s.w.readString()
	if err != nil {
		return nil, wireError(err)
	}
	return []byte(str), nil
}

// refusals are the refused AUTHENTICATE exchanges.
var refusals = saslauth.Refusals{
	Cancelled: errCancelled, BadBase64: errBadBase64, BearerNoUser: errBearerNoUser, BadAuthData: errBadAuthData,
}

// replies answer a failed login.
var replies = saslauth.Replies{
	AuthFailed: replyAuthFailed, Unavailable: replyUnavailable, Throttled: replyThrottled,
	TooManyAuth: replyTooManyAuth, InternalError: replyInternalError,
	Refusal: func(r *session.Refusal) string { return "NO " + quote(upstream.OneLine(r.Reply)) + "\r\n" },
}

// login runs one attempt through the session orchestration and answers the
// client, as node/pop3 does:
//
//   - success: the backend's OK response, then the hand-off;
//   - the backend refused: its NO response, passed through (TRYLATER is
//     replaced by replyUnavailable and not counted);
//   - anything else as saslauth.Fail says, in ManageSieve's words
//     (replies); a failed bearer login's error challenge is a base64
//     string (§2.1), the dummy response a string.
func (s *conn) login(creds session.Credentials) (*session.Handoff, error) {
	if creds.Len() > s.d.Limits().MaxLiteral {
		return nil, errCredsTooLong
	}
	out := s.d.Login(creds, s.backendLogin)
	if out.Result == session.ResultOK {
		s.write(string(out.Reply))
		return out.Handoff, nil
	}
	return nil, saslauth.Fail(out, &replies, s.write, s.respond, &refusals)
}

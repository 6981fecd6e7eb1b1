package sieve

import (
	"errors"

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
// response is one string on its own line, "*" cancelling.
//
// OAUTHBEARER and XOAUTH2 are not offered yet: they come in as further
// session.NewSASL mechanisms (advertised through session.Mechanisms) and
// need here only a way to relay the backend's error challenge, which this
// loop does not do for PLAIN and LOGIN because their failures have none.
func (s *conn) authenticate(cmd Command) (*session.Handoff, error) {
	if len(cmd.Args) < 1 || len(cmd.Args) > 2 || (len(cmd.Args) == 2 && !cmd.Args[1].String) {
		return nil, errSyntax
	}
	if !s.c.Listener.PlaintextAuthOK(s.c.IsTLS()) {
		return nil, errPlaintext
	}
	mech := session.NewSASL(cmd.Args[0].Value)
	if mech == nil {
		return nil, errUnsupported
	}
	var resp []byte
	present := len(cmd.Args) == 2
	if present {
		var err error
		if resp, err = decode(cmd.Args[1].Value); err != nil {
			return nil, saslError(err)
		}
	}
	for {
		challenge, done, err := mech.Next(resp, present)
		if err != nil {
			return nil, saslError(err)
		}
		if done {
			break
		}
		s.write(quote(session.EncodeChallenge(challenge)) + "\r\n")
		if err := s.d.Flush(); err != nil {
			return nil, err
		}
		if err := s.d.Await(session.StateSASL); err != nil {
			return nil, err
		}
		str, err := s.w.readString()
		if err != nil {
			return nil, wireError(err)
		}
		if resp, err = decode(str); err != nil {
			return nil, saslError(err)
		}
		present = true
	}
	return s.login(mech.Creds())
}

// decode decodes a base64 SASL response string; "*" cancels, and "" is an
// empty response.
func decode(s string) ([]byte, error) {
	if s == "" {
		return []byte{}, nil
	}
	return session.DecodeResponse([]byte(s))
}

func saslError(err error) error {
	switch {
	case errors.Is(err, session.ErrSASLCancelled):
		// Counted like an error: otherwise AUTHENTICATE and "*" could be
		// repeated for as long as the session lives.
		return errCancelled
	case errors.Is(err, session.ErrSASLBadBase64):
		return errBadBase64
	default:
		return errBadAuthData
	}
}

// login runs one attempt through the session orchestration and answers the
// client, as node/pop3 does:
//
//   - success: the backend's OK response, then the hand-off;
//   - the backend refused: its NO response, passed through (TRYLATER is
//     replaced by replyUnavailable and not counted);
//   - refused before the backend (no route...): replyAuthFailed, the same
//     as a wrong password, so that user names cannot be probed;
//   - no backend could be used: replyUnavailable, the session stays open;
//   - blocked by the failed-login throttle: replyThrottled.
//
// After MaxAuthFailures the reply is followed by replyTooManyAuth and the
// session ends.
func (s *conn) login(creds session.Credentials) (*session.Handoff, error) {
	if creds.Len() > s.d.Limits().MaxLiteral {
		return nil, errCredsTooLong
	}
	out := s.d.Login(creds, s.backendLogin)
	switch {
	case out.Result == session.ResultOK:
		s.write(string(out.Reply))
		return out.Handoff, nil
	case out.Reply != nil:
		s.write(string(out.Reply))
	case out.Refusal != nil && out.Refusal.Kind == session.RefuseInternal:
		s.write(replyInternalError)
		return nil, session.Ending(session.EndAuthError, nil)
	case out.Result == session.ResultLimit:
		s.write(replyThrottled)
	case out.Refusal != nil && out.Refusal.Reply != "":
		s.write("NO " + quote(sanitize(out.Refusal.Reply)) + "\r\n")
	case out.Result == session.ResultBadCreds:
		s.write(replyAuthFailed)
	default:
		s.write(replyUnavailable)
	}
	if out.Refusal != nil && out.Refusal.Close {
		return nil, session.Ending(session.EndAuthRefused, nil)
	}
	if out.Close {
		s.write(replyTooManyAuth)
		return nil, session.Ending(session.EndTooManyAuthFailures, nil)
	}
	return nil, nil
}

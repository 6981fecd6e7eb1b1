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
	case errors.Is(err, session.ErrBearerNoUser):
		return errBearerNoUser
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
	if out.Result == session.ResultOK {
		s.write(string(out.Reply))
		return out.Handoff, nil
	}
	badAnswer := false
	if out.Challenge != nil {
		// A failed bearer login: the server's error challenge, the
		// client's dummy response, then the failure (RFC 7628 §3.2.3).
		var err error
		if badAnswer, err = s.bearerChallenge(out.Challenge); err != nil {
			return nil, err
		}
	}
	switch {
	case badAnswer:
		// Its NO was written in place of the reply.
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

// bearerChallenge sends a failed bearer login's error challenge (a
// base64 string, §2.1) and reads the client's response (RFC 7628 §3.2.3: a
// dummy string, whose content does not matter; the exchange with the
// backend is over). A response that is not one ("*", bad base64, not a
// string) is answered with its NO in place of the login's reply, and
// badAnswer reports it. Errors are read errors and the fatal refusals
// (line or literal too long), the Dialogue's.
func (s *conn) bearerChallenge(challenge []byte) (badAnswer bool, err error) {
	s.write(quote(session.EncodeChallenge(challenge)) + "\r\n")
	if err := s.d.Flush(); err != nil {
		return false, err
	}
	if err := s.d.Await(session.StateSASL); err != nil {
		return false, err
	}
	str, err := s.w.readString()
	if err != nil {
		err = wireError(err)
		var pe *session.ProtocolError
		if errors.As(err, &pe) && !pe.Fatal {
			s.write(pe.Reply)
			return true, nil
		}
		return false, err
	}
	if _, err := decode(str); err != nil {
		s.write(saslError(err).(*session.ProtocolError).Reply)
		return true, nil
	}
	return false, nil
}

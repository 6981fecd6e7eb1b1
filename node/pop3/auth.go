package pop3

import (
	"errors"
	"strings"

	"github.com/portico-mail/portico/node/session"
)

// defaultMaxCredentials applies when Limits.MaxLiteral is not set.
const defaultMaxCredentials = 8192

const (
	replyPlaintext   = "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.\r\n"
	replyAuthFailed  = "-ERR [AUTH] Authentication failed.\r\n"
	replyUnavailable = "-ERR [SYS/TEMP] Backend server unavailable, try again later.\r\n"
	replyTooManyAuth = "-ERR Too many authentication failures.\r\n"
	// replyThrottled answers an attempt the throttle blocked. [SYS/TEMP]
	// (RFC 3206), not [AUTH]: the password was not checked and may well be
	// right, and [AUTH] makes clients ask the user for a new one, while
	// the condition is temporary (the IMAP side says NO [UNAVAILABLE]).
	// [LOGIN-DELAY] (RFC 2449) means the user logged in too recently.
	replyThrottled   = "-ERR [SYS/TEMP] Too many failed logins, try again later.\r\n"
	replyCancelled   = "-ERR Authentication cancelled.\r\n"
	replyBadBase64   = "-ERR Invalid base64 data.\r\n"
	replyBadAuthData = "-ERR Invalid authentication data.\r\n"
	replyUnsupported = "-ERR Unsupported authentication mechanism.\r\n"
	replyUserOK      = "+OK\r\n"
	replyNoUserName  = "-ERR USER needs a user name.\r\n"
	replyNoUser      = "-ERR USER first.\r\n"
	replyCredsLong   = "-ERR Credentials too long.\r\n"
	// replyInternalError is nginx's reply when its auth_http server fails.
	replyInternalError = "-ERR internal server error\r\n"
)

// errAuthSource ends a session the authentication source ended (an
// auth_http refusal without Auth-Wait, or its internal error).
var errAuthSource = errors.New("session ended by the authentication source")

// plaintextOK enforces the listener's plaintext-authentication policy:
// every mechanism offered here carries the password in the clear.
func (s *conn) plaintextOK() bool {
	if s.c.Listener.PlaintextAuthOK(s.c.IsTLS()) {
		return true
	}
	s.errors++
	s.write(replyPlaintext)
	return false
}

// userCmd: USER name (RFC 1939 §7). The name is the rest of the line.
func (s *conn) userCmd(cmd Command) {
	if !s.plaintextOK() {
		return
	}
	if cmd.Arg == "" || strings.IndexByte(cmd.Arg, 0) >= 0 {
		s.errors++
		s.user = ""
		s.write(replyNoUserName)
		return
	}
	s.user = cmd.Arg
	s.write(replyUserOK)
}

// passCmd: PASS password. The password is the whole rest of the line after
// one space, spaces included.
func (s *conn) passCmd(cmd Command) (*session.Handoff, bool, error) {
	if !s.plaintextOK() {
		return nil, false, nil
	}
	if s.user == "" {
		s.errors++
		s.write(replyNoUser)
		return nil, false, nil
	}
	user := s.user
	s.user = "" // USER must be given again after any PASS
	return s.login(session.Credentials{Mechanism: "USER", User: user, Password: cmd.Arg})
}

// authCmd: AUTH (RFC 5034). Without an argument it lists the mechanisms
// (the form of RFC 1734 that clients still use).
func (s *conn) authCmd(cmd Command) (*session.Handoff, bool, error) {
	if !s.plaintextOK() {
		return nil, false, nil
	}
	s.user = ""
	if cmd.Arg == "" {
		s.write("+OK\r\n" + strings.Join(session.Mechanisms, "\r\n") + "\r\n.\r\n")
		return nil, false, nil
	}
	mechName, ir, hasIR := strings.Cut(cmd.Arg, " ")
	mech := session.NewSASL(mechName)
	if mech == nil {
		s.errors++
		s.write(replyUnsupported)
		return nil, false, nil
	}
	var resp []byte
	if hasIR {
		var err error
		if resp, err = session.DecodeResponse([]byte(ir)); err != nil {
			return s.saslError(err)
		}
	}
	present := hasIR
	for {
		challenge, done, err := mech.Next(resp, present)
		if err != nil {
			return s.saslError(err)
		}
		if done {
			break
		}
		// RFC 5034 §4: "+" and a space, then the base64 challenge (nothing
		// for an empty one).
		s.write("+ " + session.EncodeChallenge(challenge) + "\r\n")
		if err := s.flush(); err != nil {
			return nil, true, err
		}
		line, err := s.readLine()
		if errors.Is(err, ErrLineTooLong) {
			s.errors++
			s.write(replyLineTooLong)
			return nil, false, nil
		}
		if err != nil {
			return nil, true, s.readError(err)
		}
		if resp, err = session.DecodeResponse(line); err != nil {
			return s.saslError(err)
		}
		present = true
	}
	return s.login(mech.Creds())
}

func (s *conn) saslError(err error) (*session.Handoff, bool, error) {
	switch {
	case errors.Is(err, session.ErrSASLCancelled):
		// Counted like an error: otherwise AUTH and "*" could be
		// repeated for as long as the session lives.
		s.errors++
		s.write(replyCancelled)
	case errors.Is(err, session.ErrSASLBadBase64):
		s.errors++
		s.write(replyBadBase64)
	default:
		s.errors++
		s.write(replyBadAuthData)
	}
	return nil, false, nil
}

// login runs one attempt through the session orchestration and answers the
// client. Replies:
//
//   - success: the backend's +OK line, then the hand-off;
//   - the backend refused: its -ERR line, passed through (see
//     backendReject for the codes that are replaced or not counted);
//   - refused before the backend (no route...): replyAuthFailed, the same
//     as a wrong password, so that user names cannot be probed;
//   - no backend could be used (down, timeout, protocol error): the
//     session stays open after replyUnavailable;
//   - blocked by the failed-login throttle: replyThrottled.
//
// After MaxAuthFailures the reply is followed by replyTooManyAuth and the
// session ends.
func (s *conn) login(creds session.Credentials) (*session.Handoff, bool, error) {
	max := s.c.Listener.Limits.MaxLiteral
	if max <= 0 {
		max = defaultMaxCredentials
	}
	if len(creds.User)+len(creds.Password)+len(creds.AuthzID) > max {
		s.errors++
		s.write(replyCredsLong)
		return nil, false, nil
	}
	out := s.c.Login(s.ctx, creds, s.backendLogin)
	switch {
	case out.Result == session.ResultOK:
		s.write(string(out.Reply))
		if err := s.flush(); err != nil {
			_ = out.Handoff.Backend.Close()
			return nil, true, err
		}
		s.handoff()
		return out.Handoff, false, nil
	case out.Reply != nil:
		s.write(string(out.Reply))
	case out.Refusal != nil && out.Refusal.Kind == session.RefuseInternal:
		// As nginx: the authentication source failed; end the session.
		s.write(replyInternalError)
		s.c.EndReason = session.EndAuthError
		return nil, true, errAuthSource
	case out.Result == session.ResultLimit:
		s.write(replyThrottled)
	case out.Refusal != nil && out.Refusal.Reply != "":
		s.write("-ERR " + out.Refusal.Reply + "\r\n")
	case out.Result == session.ResultBadCreds:
		s.write(replyAuthFailed)
	default:
		s.write(replyUnavailable)
	}
	if out.Refusal != nil && out.Refusal.Close {
		s.c.EndReason = session.EndAuthRefused
		return nil, true, errAuthSource
	}
	if out.Close {
		s.write(replyTooManyAuth)
		s.c.EndReason = session.EndTooManyAuthFailures
		return nil, true, errTooManyAuthFailures
	}
	if err := s.ctx.Err(); err != nil {
		s.write(replyShutdown)
		return nil, true, err
	}
	return nil, false, nil
}

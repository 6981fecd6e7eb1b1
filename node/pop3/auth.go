package pop3

import (
	"errors"
	"strings"

	"github.com/portico-mail/portico/node/session"
)

// Replies to a login attempt: answers, not refused commands (a failed
// login does not count toward max_errors; max_auth_failures bounds it).
const (
	replyAuthFailed  = "-ERR [AUTH] Authentication failed.\r\n"
	replyUnavailable = "-ERR [SYS/TEMP] Backend server unavailable, try again later.\r\n"
	replyTooManyAuth = "-ERR Too many authentication failures.\r\n"
	// replyThrottled answers an attempt the throttle blocked. [SYS/TEMP]
	// (RFC 3206), not [AUTH]: the password was not checked and may well be
	// right, and [AUTH] makes clients ask the user for a new one, while
	// the condition is temporary (the IMAP side says NO [UNAVAILABLE]).
	// [LOGIN-DELAY] (RFC 2449) means the user logged in too recently.
	replyThrottled = "-ERR [SYS/TEMP] Too many failed logins, try again later.\r\n"
	replyUserOK    = "+OK\r\n"
	// replyInternalError is nginx's reply when its auth_http server fails.
	replyInternalError = "-ERR internal server error\r\n"
)

// plaintext enforces the listener's plaintext-authentication policy:
// every mechanism offered here carries the password, or a bearer token as
// good as one, in the clear.
func (s *conn) plaintext() error {
	if s.c.Listener.PlaintextAuthOK(s.c.IsTLS()) {
		return nil
	}
	return errPlaintext
}

// userCmd: USER name (RFC 1939 §7). The name is the rest of the line.
func (s *conn) userCmd(cmd Command) error {
	if err := s.plaintext(); err != nil {
		return err
	}
	if cmd.Arg == "" || strings.IndexByte(cmd.Arg, 0) >= 0 {
		s.user = ""
		return errNoUserName
	}
	s.user = cmd.Arg
	s.write(replyUserOK)
	return nil
}

// passCmd: PASS password. The password is the whole rest of the line after
// one space, spaces included.
func (s *conn) passCmd(cmd Command) (*session.Handoff, error) {
	if err := s.plaintext(); err != nil {
		return nil, err
	}
	if s.user == "" {
		return nil, errNoUser
	}
	user := s.user
	s.user = "" // USER must be given again after any PASS
	return s.login(session.Credentials{Mechanism: "USER", User: user, Password: cmd.Arg})
}

// authCmd: AUTH (RFC 5034). Without an argument it lists the mechanisms
// (the form of RFC 1734 that clients still use).
func (s *conn) authCmd(cmd Command) (*session.Handoff, error) {
	if err := s.plaintext(); err != nil {
		return nil, err
	}
	s.user = ""
	if cmd.Arg == "" {
		s.write("+OK\r\n" + strings.Join(s.c.Listener.Mechanisms(), "\r\n") + "\r\n.\r\n")
		return nil, nil
	}
	mechName, ir, hasIR := strings.Cut(cmd.Arg, " ")
	mech := s.c.Listener.NewSASL(mechName)
	if mech == nil {
		return nil, errUnsupported
	}
	var resp []byte
	if hasIR {
		var err error
		if resp, err = session.DecodeResponse([]byte(ir)); err != nil {
			return nil, saslError(err)
		}
	}
	present := hasIR
	for {
		challenge, done, err := mech.Next(resp, present)
		if err != nil {
			return nil, saslError(err)
		}
		if done {
			break
		}
		// RFC 5034 §4: "+" and a space, then the base64 challenge (nothing
		// for an empty one).
		s.write("+ " + session.EncodeChallenge(challenge) + "\r\n")
		if err := s.d.Flush(); err != nil {
			return nil, err
		}
		if err := s.d.Await(session.StateSASL); err != nil {
			return nil, err
		}
		line, err := s.readLine()
		if err != nil {
			return nil, err
		}
		if resp, err = session.DecodeResponse(line); err != nil {
			return nil, saslError(err)
		}
		present = true
	}
	return s.login(mech.Creds())
}

func saslError(err error) error {
	switch {
	case errors.Is(err, session.ErrSASLCancelled):
		// Counted like an error: otherwise AUTH and "*" could be
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
		// Its -ERR was written in place of the reply.
	case out.Reply != nil:
		s.write(string(out.Reply))
	case out.Refusal != nil && out.Refusal.Kind == session.RefuseInternal:
		// As nginx: the authentication source failed; end the session.
		s.write(replyInternalError)
		return nil, session.Ending(session.EndAuthError, nil)
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
		return nil, session.Ending(session.EndAuthRefused, nil)
	}
	if out.Close {
		s.write(replyTooManyAuth)
		return nil, session.Ending(session.EndTooManyAuthFailures, nil)
	}
	// A shutdown that came during the attempt is seen before the next
	// read (session.Dialogue.Await), which says goodbye.
	return nil, nil
}

// bearerChallenge sends a failed bearer login's error challenge (RFC 5034
// §4: "+ " and the base64 data) and reads the client's response (RFC 7628
// §3.2.3: a dummy, whose content does not matter; the exchange with the
// backend is over). A response that is not one ("*", bad base64, too long)
// is answered with its -ERR in place of the login's reply, and badAnswer
// reports it. Errors are read errors, the Dialogue's.
func (s *conn) bearerChallenge(challenge []byte) (badAnswer bool, err error) {
	s.write("+ " + session.EncodeChallenge(challenge) + "\r\n")
	if err := s.d.Flush(); err != nil {
		return false, err
	}
	if err := s.d.Await(session.StateSASL); err != nil {
		return false, err
	}
	line, err := s.readLine()
	var pe *session.ProtocolError
	switch {
	case errors.As(err, &pe):
		s.write(pe.Reply)
		return true, nil
	case err != nil:
		return false, err
	}
	if _, err := session.DecodeResponse(line); err != nil {
		s.write(saslError(err).(*session.ProtocolError).Reply)
		return true, nil
	}
	return false, nil
}

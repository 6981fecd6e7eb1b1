package pop3

import (
	"strings"

	"github.com/portico-mail/portico/node/internal/saslauth"
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
	creds, err := saslauth.Exchange(mech, []byte(ir), hasIR, s.respond, &refusals)
	if err != nil {
		return nil, err
	}
	return s.login(creds)
}

// respond sends a challenge (RFC 5034 §4: "+" and a space, then the
// base64 challenge, nothing for an empty one) and reads the response line.
func (s *conn) respond(challenge []byte) ([]byte, error) {
	if err := saslauth.Prompt(s.d, s.write, "+ "+session.EncodeChallenge(challenge)+"\r\n"); err != nil {
		return nil, err
	}
	return s.readLine()
}

// refusals are the refused AUTH exchanges.
var refusals = saslauth.Refusals{
	Cancelled: errCancelled, BadBase64: errBadBase64, BearerNoUser: errBearerNoUser, BadAuthData: errBadAuthData,
}

// replies answer a failed login.
var replies = saslauth.Replies{
	AuthFailed: replyAuthFailed, Unavailable: replyUnavailable, Throttled: replyThrottled,
	TooManyAuth: replyTooManyAuth, InternalError: replyInternalError,
	Refusal: func(r *session.Refusal) string { return "-ERR " + r.Reply + "\r\n" },
}

// login runs one attempt through the session orchestration and answers the
// client. Replies:
//
//   - success: the backend's +OK line, then the hand-off;
//   - the backend refused: its -ERR line, passed through (see
//     backendReject for the codes that are replaced or not counted);
//   - anything else as saslauth.Fail says, in POP3's words (replies);
//     a failed bearer login's error challenge is "+ " and the base64 data
//     (RFC 5034 §4), the dummy response a line.
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

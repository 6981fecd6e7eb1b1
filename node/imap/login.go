package imap

import (
	"context"
	"errors"

	"github.com/portico-mail/portico/node/imap/imapwire"
	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/session"
)

// loginCommand implements LOGIN (RFC 9051 §6.2.3).
func (s *conn) loginCommand(cmd *imapwire.Command) (*session.Handoff, error) {
	if len(cmd.Args) != 2 || !isAstring(cmd.Args[0]) || !isAstring(cmd.Args[1]) {
		return nil, bad(cmd.Tag, "LOGIN takes a user name and a password.")
	}
	if !s.c.Listener.PlaintextAuthOK(s.c.IsTLS()) {
		return nil, privacyRequired(cmd.Tag)
	}
	creds := session.Credentials{Mechanism: "LOGIN", User: cmd.Args[0].Value, Password: cmd.Args[1].Value}
	if creds.User == "" {
		return nil, bad(cmd.Tag, "Empty user name.")
	}
	return s.login(cmd.Tag, creds)
}

func isAstring(a imapwire.Arg) bool { return a.IsString() || a.Kind == imapwire.NIL }

func privacyRequired(tag string) error {
	return no(tag, "[PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections; use STARTTLS.")
}

// authenticate implements AUTHENTICATE (RFC 9051 §6.2.2) with an optional
// initial response (RFC 4959).
func (s *conn) authenticate(cmd *imapwire.Command) (*session.Handoff, error) {
	if len(cmd.Args) < 1 || len(cmd.Args) > 2 || cmd.Args[0].Kind != imapwire.Atom {
		return nil, bad(cmd.Tag, "AUTHENTICATE takes a mechanism and an optional initial response.")
	}
	if !s.c.Listener.PlaintextAuthOK(s.c.IsTLS()) {
		return nil, privacyRequired(cmd.Tag)
	}
	mech := s.c.Listener.NewSASL(cmd.Args[0].Value)
	if mech == nil {
		return nil, no(cmd.Tag, "Unsupported authentication mechanism.")
	}
	var resp []byte
	present := false
	if len(cmd.Args) == 2 {
		if cmd.Args[1].Kind != imapwire.Atom {
			return nil, bad(cmd.Tag, "Invalid initial response.")
		}
		var err error
		if resp, err = session.DecodeResponse([]byte(cmd.Args[1].Value)); err != nil {
			return nil, saslError(cmd.Tag, err)
		}
		present = true
	}
	for {
		challenge, done, err := mech.Next(resp, present)
		if err != nil {
			return nil, saslError(cmd.Tag, err)
		}
		if done {
			break
		}
		s.writef("+ %s\r\n", session.EncodeChallenge(challenge))
		if err := s.d.Flush(); err != nil {
			return nil, err
		}
		if err := s.d.Await(session.StateSASL); err != nil {
			return nil, err
		}
		line, err := s.rd.ReadLine()
		if errors.Is(err, imapwire.ErrLineTooLong) {
			return nil, bad(cmd.Tag, "[TOOBIG] Authentication data too long.")
		}
		if err != nil {
			return nil, err
		}
		if resp, err = session.DecodeResponse(line); err != nil {
			return nil, saslError(cmd.Tag, err)
		}
		present = true
	}
	return s.login(cmd.Tag, mech.Creds())
}

func saslError(tag string, err error) error {
	switch {
	case errors.Is(err, session.ErrSASLCancelled):
		// RFC 9051 §6.2.2: a cancelled exchange is answered with BAD. It
		// counts toward max_errors: otherwise AUTHENTICATE and "*" could
		// be repeated for as long as the session lives.
		return bad(tag, "Authentication cancelled.")
	case errors.Is(err, session.ErrSASLBadBase64):
		return bad(tag, "Invalid base64 data.")
	case errors.Is(err, session.ErrBearerNoUser):
		// RFC 7628 lets the token alone name the user; the proxy must
		// know it to find the mailbox.
		return bad(tag, "The bearer token login must name the user (OAUTHBEARER a=, XOAUTH2 user=).")
	default:
		return bad(tag, "Invalid authentication data.")
	}
}

// login logs in at the backend and answers the client. A failed login is
// answered NO and does not count toward max_errors (max_auth_failures
// bounds it).
func (s *conn) login(tag string, creds session.Credentials) (*session.Handoff, error) {
	if creds.Len() > s.d.Limits().MaxLiteral {
		return nil, bad(tag, "Credentials too long.")
	}
	out := s.d.Login(creds, func(ctx context.Context, be *netx.Stream, t *session.Target) ([]byte, error) {
		return s.backendLogin(ctx, be, t, tag)
	})
	if out.Result == session.ResultOK {
		_, _ = s.c.Stream.Write(out.Reply)
		return out.Handoff, nil
	}
	badAnswer := false
	if out.Challenge != nil {
		// A failed bearer login: the server's error challenge, the
		// client's dummy response, then the failure (RFC 7628 §3.2.3).
		var err error
		if badAnswer, err = s.bearerChallenge(tag, out.Challenge); err != nil {
			return nil, err
		}
	}
	switch {
	case badAnswer:
		// The client's answer to the challenge was not a response: its
		// BAD was written in place of the reply.
	case out.Reply != nil:
		_, _ = s.c.Stream.Write(out.Reply)
	case out.Refusal != nil && out.Refusal.Kind == session.RefuseInternal:
		// As nginx: the authentication source failed; end the session.
		s.writef("* BAD internal server error\r\n")
		return nil, session.Ending(session.EndAuthError, nil)
	case out.Result == session.ResultLimit:
		// Blocked by the throttle: a temporary condition, not a verdict on
		// the password (which was not checked), so UNAVAILABLE (RFC 5530).
		s.writef("%s NO [UNAVAILABLE] Too many failed logins, try again later.\r\n", tag)
	case out.Refusal != nil && out.Refusal.Reply != "":
		s.writef("%s NO %s\r\n", tag, out.Refusal.Reply)
	case out.Result == session.ResultBadCreds:
		s.writef("%s NO [AUTHENTICATIONFAILED] Authentication failed.\r\n", tag)
	default:
		s.writef("%s NO [UNAVAILABLE] Backend server unavailable, try again later.\r\n", tag)
	}
	if out.Refusal != nil && out.Refusal.Close {
		// The authentication source ended the session (nginx closes
		// without a BYE; so do we).
		return nil, session.Ending(session.EndAuthRefused, nil)
	}
	if out.Close {
		s.writef("* BYE Too many authentication failures.\r\n")
		return nil, session.Ending(session.EndTooManyAuthFailures, nil)
	}
	// A shutdown that came during the attempt is seen before the next
	// read (session.Dialogue.Await), which says goodbye.
	return nil, nil
}

// bearerChallenge sends a failed bearer login's error challenge and reads
// the client's response (RFC 7628 §3.2.3: a dummy, whose content does not
// matter; the exchange with the backend is over). A response that is not
// one ("*", bad base64, too long) is answered BAD in place of the login's
// reply, as a cancelled AUTHENTICATE is, and badAnswer reports it. Errors
// are read errors, the Dialogue's.
func (s *conn) bearerChallenge(tag string, challenge []byte) (badAnswer bool, err error) {
	s.writef("+ %s\r\n", session.EncodeChallenge(challenge))
	if err := s.d.Flush(); err != nil {
		return false, err
	}
	if err := s.d.Await(session.StateSASL); err != nil {
		return false, err
	}
	line, err := s.rd.ReadLine()
	switch {
	case errors.Is(err, imapwire.ErrLineTooLong):
		s.writef("%s BAD [TOOBIG] Authentication data too long.\r\n", tag)
		return true, nil
	case err != nil:
		return false, err
	}
	if _, err := session.DecodeResponse(line); err != nil {
		if errors.Is(err, session.ErrSASLCancelled) {
			s.writef("%s BAD Authentication cancelled.\r\n", tag)
		} else {
			s.writef("%s BAD Invalid base64 data.\r\n", tag)
		}
		return true, nil
	}
	return false, nil
}

package imap

import (
	"context"
	"errors"

	"github.com/portico-mail/portico/node/imap/imapwire"
	"github.com/portico-mail/portico/node/session"
)

// loginCommand implements LOGIN (RFC 9051 §6.2.3).
func (s *conn) loginCommand(ctx context.Context, cmd *imapwire.Command) (*session.Handoff, bool, error) {
	if len(cmd.Args) != 2 || !isAstring(cmd.Args[0]) || !isAstring(cmd.Args[1]) {
		return s.bad(cmd.Tag, "LOGIN takes a user name and a password.")
	}
	if !s.c.Listener.PlaintextAuthOK(s.c.IsTLS()) {
		return s.privacyRequired(cmd.Tag)
	}
	creds := session.Credentials{Mechanism: "LOGIN", User: cmd.Args[0].Value, Password: cmd.Args[1].Value}
	if creds.User == "" {
		return s.bad(cmd.Tag, "Empty user name.")
	}
	return s.login(ctx, cmd.Tag, creds)
}

func isAstring(a imapwire.Arg) bool { return a.IsString() || a.Kind == imapwire.NIL }

func (s *conn) privacyRequired(tag string) (*session.Handoff, bool, error) {
	s.errors++
	s.writef("%s NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections; use STARTTLS.\r\n", tag)
	return nil, false, nil
}

// authenticate implements AUTHENTICATE (RFC 9051 §6.2.2) with an optional
// initial response (RFC 4959).
func (s *conn) authenticate(ctx context.Context, cmd *imapwire.Command) (*session.Handoff, bool, error) {
	if len(cmd.Args) < 1 || len(cmd.Args) > 2 || cmd.Args[0].Kind != imapwire.Atom {
		return s.bad(cmd.Tag, "AUTHENTICATE takes a mechanism and an optional initial response.")
	}
	if !s.c.Listener.PlaintextAuthOK(s.c.IsTLS()) {
		return s.privacyRequired(cmd.Tag)
	}
	mech := session.NewSASL(cmd.Args[0].Value)
	if mech == nil {
		s.errors++
		s.writef("%s NO Unsupported authentication mechanism.\r\n", cmd.Tag)
		return nil, false, nil
	}
	var resp []byte
	present := false
	if len(cmd.Args) == 2 {
		if cmd.Args[1].Kind != imapwire.Atom {
			return s.bad(cmd.Tag, "Invalid initial response.")
		}
		var err error
		if resp, err = session.DecodeResponse([]byte(cmd.Args[1].Value)); err != nil {
			return s.saslError(cmd.Tag, err)
		}
		present = true
	}
	for {
		challenge, done, err := mech.Next(resp, present)
		if err != nil {
			return s.saslError(cmd.Tag, err)
		}
		if done {
			break
		}
		s.writef("+ %s\r\n", session.EncodeChallenge(challenge))
		if err := s.flush(); err != nil {
			return nil, true, err
		}
		s.c.ArmReadDeadline()
		line, err := s.rd.ReadLine()
		if err != nil {
			if errors.Is(err, imapwire.ErrLineTooLong) {
				s.errors++
				s.writef("%s BAD [TOOBIG] Authentication data too long.\r\n", cmd.Tag)
				return nil, false, nil
			}
			end, err := s.readError(ctx, err)
			return nil, end, err
		}
		if resp, err = session.DecodeResponse(line); err != nil {
			return s.saslError(cmd.Tag, err)
		}
		present = true
	}
	return s.login(ctx, cmd.Tag, mech.Creds())
}

func (s *conn) saslError(tag string, err error) (*session.Handoff, bool, error) {
	switch {
	case errors.Is(err, session.ErrSASLCancelled):
		// RFC 9051 §6.2.2: a cancelled exchange is answered with BAD. It
		// counts toward max_errors: otherwise AUTHENTICATE and "*" could
		// be repeated for as long as the session lives.
		return s.bad(tag, "Authentication cancelled.")
	case errors.Is(err, session.ErrSASLBadBase64):
		return s.bad(tag, "Invalid base64 data.")
	default:
		return s.bad(tag, "Invalid authentication data.")
	}
}

// login logs in at the backend and answers the client.
func (s *conn) login(ctx context.Context, tag string, creds session.Credentials) (*session.Handoff, bool, error) {
	if len(creds.User)+len(creds.Password)+len(creds.AuthzID) > s.c.Listener.Limits.MaxLiteral {
		return s.bad(tag, "Credentials too long.")
	}
	out := s.c.Login(ctx, creds, func(ctx context.Context, be *netxStream, t *session.Target) ([]byte, error) {
		return s.backendLogin(ctx, be, t, tag)
	})
	switch {
	case out.Result == session.ResultOK:
		_, _ = s.c.Stream.Write(out.Reply)
		if err := s.flush(); err != nil {
			_ = out.Handoff.Backend.Close()
			return nil, true, err
		}
		s.c.HandOff()
		return out.Handoff, false, nil
	case out.Reply != nil:
		_, _ = s.c.Stream.Write(out.Reply)
	case out.Refusal != nil && out.Refusal.Kind == session.RefuseInternal:
		// As nginx: the authentication source failed; end the session.
		s.writef("* BAD internal server error\r\n")
		s.c.EndReason = session.EndAuthError
		return nil, true, nil
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
		s.c.EndReason = session.EndAuthRefused
		return nil, true, nil
	}
	if out.Close {
		s.writef("* BYE Too many authentication failures.\r\n")
		s.c.EndReason = session.EndTooManyAuthFailures
		return nil, true, nil
	}
	if ctx.Err() != nil {
		s.writef("* BYE [UNAVAILABLE] Server shutting down.\r\n")
		return nil, true, nil
	}
	return nil, false, nil
}

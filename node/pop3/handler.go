// Package pop3 is Portico's POP3 front end: the AUTHORIZATION state of
// RFC 1939 spoken with the client, and the proxy's own login at the
// backend.
//
// Implemented before login: USER/PASS and QUIT (RFC 1939 §4, §7), CAPA and
// the RESP-CODES / AUTH-RESP-CODE extended response codes (RFC 2449), AUTH
// with SASL PLAIN and LOGIN, with and without initial response (RFC 5034),
// and STLS (RFC 2595 §4; bytes pipelined after it feed the TLS handshake).
// After a successful login the client gets the backend's +OK and the
// session is handed to the relay.
package pop3

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"

	"github.com/portico-mail/portico/node/session"
)

// Options configure the POP3 front end.
type Options struct {
	Greeting string // default "Portico POP3 ready."
}

// Handler serves POP3 clients until login.
type Handler struct{ greeting string }

// New returns a Handler.
func New(o Options) *Handler {
	if o.Greeting == "" {
		o.Greeting = "Portico POP3 ready."
	}
	return &Handler{greeting: o.Greeting}
}

// Replies. RFC 2449 response codes in brackets.
const (
	replyUnknown      = "-ERR Unknown command.\r\n"
	replyTooMany      = "-ERR Too many invalid commands.\r\n"
	replyPlaintext    = "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections; use STLS.\r\n"
	replyAuthFailed   = "-ERR [AUTH] Authentication failed.\r\n"
	replyUnavailable  = "-ERR [SYS/TEMP] Backend server unavailable, try again later.\r\n"
	replyTooManyAuth  = "-ERR [AUTH] Too many authentication failures.\r\n"
	replyShutdown     = "-ERR [SYS/TEMP] Server shutting down.\r\n"
	replyInactivity   = "-ERR Disconnected for inactivity.\r\n"
	replyLineTooLong  = "-ERR Line too long.\r\n"
	replyCancelled    = "-ERR Authentication cancelled.\r\n"
	replyBadBase64    = "-ERR Invalid base64 data.\r\n"
	replyBadAuthData  = "-ERR Invalid authentication data.\r\n"
	replyUnsupported  = "-ERR Unsupported authentication mechanism.\r\n"
	replyNoUser       = "-ERR USER first.\r\n"
	replySTLSNotAvail = "-ERR STLS not available.\r\n"
)

type conn struct {
	h       *Handler
	c       *session.Client
	scratch []byte
	errors  int
	user    string // from USER, waiting for PASS
}

// Serve implements session.Handler.
func (h *Handler) Serve(ctx context.Context, c *session.Client) (*session.Handoff, error) {
	s := &conn{h: h, c: c}
	s.write("+OK " + h.greeting + "\r\n")
	if err := s.flush(); err != nil {
		return nil, err
	}
	for {
		line, err := s.readLine()
		if err != nil {
			if errors.Is(err, ErrLineTooLong) {
				s.errors++
				s.write(replyLineTooLong)
			} else {
				return nil, s.readError(ctx, err)
			}
		} else if cmd, ok := parseCommand(line); !ok {
			s.errors++
			s.write(replyUnknown)
		} else {
			ho, end, err := s.dispatch(ctx, cmd)
			if ferr := s.flush(); ferr != nil && err == nil {
				err, end = ferr, true
			}
			if ho != nil || end {
				return ho, err
			}
		}
		if max := c.Listener.Limits.MaxErrors; max > 0 && s.errors >= max {
			s.write(replyTooMany)
			_ = s.flush()
			return nil, errors.New("too many invalid commands")
		}
		if err := s.flush(); err != nil {
			return nil, err
		}
	}
}

func (s *conn) readLine() ([]byte, error) {
	s.c.ArmReadDeadline()
	return readLine(s.c.Stream.R, s.c.Listener.Limits.MaxLine, &s.scratch)
}

// readError says goodbye as appropriate for a failed read.
func (s *conn) readError(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		s.write(replyShutdown)
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.write(replyInactivity)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return nil
	default:
		return err
	}
	_ = s.flush()
	return err
}

func (s *conn) dispatch(ctx context.Context, cmd Command) (*session.Handoff, bool, error) {
	switch cmd.Name {
	case "CAPA":
		s.capa()
	case "QUIT":
		s.write("+OK Logging out.\r\n")
		return nil, true, nil
	case "NOOP":
		// Valid only in TRANSACTION state (RFC 1939 §5).
		s.errors++
		s.write("-ERR Not logged in.\r\n")
	case "STLS":
		return s.stls(ctx, cmd)
	case "USER":
		if !s.plaintextOK() {
			return nil, false, nil
		}
		if cmd.Arg == "" || hasBadBytes(cmd.Arg) {
			s.errors++
			s.write("-ERR USER needs a user name.\r\n")
			return nil, false, nil
		}
		s.user = cmd.Arg
		s.write("+OK\r\n")
	case "PASS":
		if !s.plaintextOK() {
			return nil, false, nil
		}
		if s.user == "" {
			s.errors++
			s.write(replyNoUser)
			return nil, false, nil
		}
		user := s.user
		s.user = ""
		return s.login(ctx, session.Credentials{Mechanism: "USER", User: user, Password: cmd.Arg})
	case "AUTH":
		return s.auth(ctx, cmd)
	case "APOP":
		s.errors++
		s.write("-ERR APOP is not supported.\r\n")
	default:
		s.errors++
		s.write(replyUnknown)
	}
	return nil, false, nil
}

// plaintextOK enforces the listener's plaintext-authentication policy.
func (s *conn) plaintextOK() bool {
	if s.c.Listener.PlaintextAuthOK(s.c.IsTLS()) {
		return true
	}
	s.errors++
	s.write(replyPlaintext)
	return false
}

func (s *conn) capa() {
	var b strings.Builder
	b.WriteString("+OK Capability list follows\r\n")
	isTLS := s.c.IsTLS()
	if s.c.Listener.PlaintextAuthOK(isTLS) {
		b.WriteString("USER\r\nSASL " + strings.Join(session.Mechanisms, " ") + "\r\n")
	}
	if s.c.Listener.StartTLSOffered(isTLS) {
		b.WriteString("STLS\r\n")
	}
	b.WriteString("RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nIMPLEMENTATION Portico\r\n.\r\n")
	s.write(b.String())
}

func (s *conn) stls(ctx context.Context, cmd Command) (*session.Handoff, bool, error) {
	if cmd.Arg != "" || !s.c.Listener.StartTLSOffered(s.c.IsTLS()) {
		s.errors++
		s.write(replySTLSNotAvail)
		return nil, false, nil
	}
	s.write("+OK Begin TLS negotiation.\r\n")
	if err := s.flush(); err != nil {
		return nil, true, err
	}
	if err := s.c.StartTLS(ctx); err != nil {
		return nil, true, err
	}
	s.user = ""
	return nil, false, nil
}

// auth implements AUTH (RFC 5034, RFC 1734 listing form without argument).
func (s *conn) auth(ctx context.Context, cmd Command) (*session.Handoff, bool, error) {
	if cmd.Arg == "" {
		s.write("+OK\r\n" + strings.Join(session.Mechanisms, "\r\n") + "\r\n.\r\n")
		return nil, false, nil
	}
	if !s.plaintextOK() {
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
			return nil, true, s.readError(ctx, err)
		}
		if resp, err = session.DecodeResponse(line); err != nil {
			return s.saslError(err)
		}
		present = true
	}
	return s.login(ctx, mech.Creds())
}

func (s *conn) saslError(err error) (*session.Handoff, bool, error) {
	switch {
	case errors.Is(err, session.ErrSASLCancelled):
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

func (s *conn) login(ctx context.Context, creds session.Credentials) (*session.Handoff, bool, error) {
	if len(creds.User)+len(creds.Password)+len(creds.AuthzID) > s.c.Listener.Limits.MaxLiteral {
		s.errors++
		s.write("-ERR Credentials too long.\r\n")
		return nil, false, nil
	}
	out := s.c.Login(ctx, creds, s.backendLogin)
	switch {
	case out.Result == session.ResultOK:
		s.write(string(out.Reply))
		if err := s.flush(); err != nil {
			_ = out.Handoff.Backend.Close()
			return nil, true, err
		}
		return out.Handoff, false, nil
	case out.Reply != nil:
		s.write(string(out.Reply))
	case out.Result == session.ResultBadCreds:
		s.write(replyAuthFailed)
	default:
		s.write(replyUnavailable)
	}
	if out.Close {
		s.write(replyTooManyAuth)
		return nil, true, nil
	}
	if ctx.Err() != nil {
		s.write(replyShutdown)
		return nil, true, nil
	}
	return nil, false, nil
}

func (s *conn) write(str string) { _, _ = s.c.Stream.WriteString(str) }
func (s *conn) flush() error     { return s.c.Stream.Flush() }

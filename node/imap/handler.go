// Package imap is Portico's IMAP front end: the not-authenticated state of
// RFC 9051 / RFC 3501 spoken with the client, and the proxy's own login at
// the backend.
//
// Implemented before login (RFC 9051 §6.1, §6.2): CAPABILITY, NOOP,
// LOGOUT, STARTTLS (§6.2.1; bytes pipelined after it feed the TLS
// handshake), AUTHENTICATE PLAIN and LOGIN (§6.2.2, RFC 4616, with SASL-IR
// RFC 4959), LOGIN (§6.2.3), ID (RFC 2971). Non-synchronizing literals per
// RFC 7888 LITERAL-. Parsing is in imapwire.
//
// After a successful login at the backend the client receives the
// backend's tagged OK, with the client's tag and the backend's post-login
// capabilities as a response code, and the session is handed to the relay.
package imap

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"

	"github.com/portico-mail/portico/node/imap/imapwire"
	"github.com/portico-mail/portico/node/session"
)

// Options configure the IMAP front end.
type Options struct {
	// Greeting text after the capability code; default "Portico ready.".
	Greeting string
	// Capabilities are advertised before login besides the ones the proxy
	// implements itself (default "IMAP4rev1"); e.g. add "IMAP4rev2" when
	// every backend supports it.
	Capabilities []string
}

// Handler serves IMAP clients until login.
type Handler struct {
	greeting string
	base     []string
}

// New returns a Handler.
func New(o Options) *Handler {
	h := &Handler{greeting: o.Greeting, base: o.Capabilities}
	if h.greeting == "" {
		h.greeting = "Portico ready."
	}
	if len(h.base) == 0 {
		h.base = []string{"IMAP4rev1"}
	}
	return h
}

// conn is the state of one client before login.
type conn struct {
	h      *Handler
	c      *session.Client
	rd     *imapwire.Reader
	errors int
	id     []idParam // the client's ID parameters, forwarded to the backend
}

// Serve implements session.Handler.
func (h *Handler) Serve(ctx context.Context, c *session.Client) (*session.Handoff, error) {
	s := &conn{h: h, c: c}
	defer func() { c.ProtocolErrors = s.errors }()
	s.newReader()
	s.writef("* OK [CAPABILITY %s] %s\r\n", s.capabilities(), h.greeting)
	if err := s.flush(); err != nil {
		return nil, err
	}
	for {
		c.ArmReadDeadline()
		cmd, err := s.rd.ReadCommand()
		if err != nil {
			if end, err := s.readError(ctx, err); end {
				return nil, err
			}
		} else {
			ho, end, err := s.dispatch(ctx, cmd)
			if ferr := s.flush(); ferr != nil && err == nil {
				err = ferr
				end = true
			}
			if ho != nil || end {
				return ho, err
			}
		}
		if max := c.Listener.Limits.MaxErrors; max > 0 && s.errors >= max {
			s.writef("* BYE Too many invalid IMAP commands.\r\n")
			_ = s.flush()
			c.EndReason = session.EndTooManyErrors
			return nil, errors.New("too many invalid commands")
		}
	}
}

func (s *conn) newReader() {
	lim := s.c.Listener.Limits
	s.rd = imapwire.NewReader(s.c.Stream.R, imapwire.Limits{MaxLine: lim.MaxLine, MaxLiteral: lim.MaxLiteral}, func() error {
		s.writef("+ Ready for literal data\r\n")
		return s.flush()
	})
}

// readError answers a failed read; end reports whether the session is over.
func (s *conn) readError(ctx context.Context, err error) (end bool, _ error) {
	tag := imapwire.ErrorTag(err)
	if tag == "" {
		tag = "*"
	}
	var se *imapwire.SyntaxError
	var tl *imapwire.LiteralTooLargeError
	switch {
	case ctx.Err() != nil:
		s.writef("* BYE [UNAVAILABLE] Server shutting down.\r\n")
	case errors.As(err, &se):
		s.errors++
		s.writef("%s BAD %s\r\n", tag, sanitize(se.Msg))
		return false, s.flush()
	case errors.Is(err, imapwire.ErrLineTooLong):
		s.errors++
		s.writef("%s BAD [TOOBIG] Line too long.\r\n", tag)
		return false, s.flush()
	case errors.As(err, &tl):
		s.errors++
		s.writef("%s BAD [TOOBIG] Literal too large.\r\n", tag)
		if !tl.NonSync {
			return false, s.flush()
		}
		s.writef("* BYE Non-synchronizing literal too large.\r\n")
		s.c.EndReason = session.EndProtocolError
	case errors.Is(err, os.ErrDeadlineExceeded) && s.c.LifetimeOver():
		s.writef("* BYE Login time limit exceeded.\r\n")
		s.c.EndReason = session.EndPreauthLifetime
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.writef("* BYE Disconnected for inactivity.\r\n")
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true, nil
	default:
		return true, err
	}
	_ = s.flush()
	return true, err
}

// dispatch runs one command. It returns a hand-off after a login, or
// end=true when the session is over.
func (s *conn) dispatch(ctx context.Context, cmd *imapwire.Command) (*session.Handoff, bool, error) {
	switch cmd.Name {
	case "CAPABILITY":
		if len(cmd.Args) != 0 {
			return s.bad(cmd.Tag, "CAPABILITY takes no arguments.")
		}
		s.writef("* CAPABILITY %s\r\n%s OK Capability completed.\r\n", s.capabilities(), cmd.Tag)
	case "NOOP":
		s.writef("%s OK NOOP completed.\r\n", cmd.Tag)
	case "LOGOUT":
		s.writef("* BYE Logging out.\r\n%s OK Logout completed.\r\n", cmd.Tag)
		s.c.EndReason = session.EndLogout
		return nil, true, nil
	case "STARTTLS":
		return s.starttls(ctx, cmd)
	case "ID":
		return s.idCommand(cmd)
	case "LOGIN":
		return s.loginCommand(ctx, cmd)
	case "AUTHENTICATE":
		return s.authenticate(ctx, cmd)
	case "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
		"LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND", "IDLE", "ENABLE", "CHECK", "CLOSE",
		"UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID", "GETQUOTA",
		"GETQUOTAROOT", "GETACL", "MYRIGHTS", "GETMETADATA", "COMPRESS":
		return s.bad(cmd.Tag, "Command not permitted before login.")
	default:
		return s.bad(cmd.Tag, "Unknown command.")
	}
	return nil, false, nil
}

// bad answers BAD and counts a protocol error.
func (s *conn) bad(tag, text string) (*session.Handoff, bool, error) {
	s.errors++
	s.writef("%s BAD %s\r\n", tag, text)
	return nil, false, nil
}

// capabilities lists what the proxy offers in the current state.
func (s *conn) capabilities() string {
	caps := append([]string(nil), s.h.base...)
	isTLS := s.c.IsTLS()
	if s.c.Listener.StartTLSOffered(isTLS) {
		caps = append(caps, "STARTTLS")
	}
	if s.c.Listener.PlaintextAuthOK(isTLS) {
		caps = append(caps, "SASL-IR", "AUTH=PLAIN", "AUTH=LOGIN")
	} else {
		caps = append(caps, "LOGINDISABLED")
	}
	caps = append(caps, "ID", "LITERAL-")
	return strings.Join(caps, " ")
}

func (s *conn) writef(format string, args ...any) {
	if len(args) == 0 {
		_, _ = s.c.Stream.WriteString(format)
		return
	}
	_, _ = s.c.Stream.WriteString(sprintf(format, args...))
}

// flush sends buffered replies, under the pre-login write deadline: a
// client that does not read its replies cannot hold the session (or a
// shutdown) beyond it. (Replies that overflow the buffer between flushes
// are written under the deadline ArmReadDeadline set.)
func (s *conn) flush() error {
	if s.c.Stream.W.Buffered() == 0 {
		return nil
	}
	s.c.ArmWriteDeadline()
	return s.c.Stream.Flush()
}

// sanitize keeps a text safe for a response line.
func sanitize(t string) string {
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == 0 {
			return ' '
		}
		return r
	}, t)
}

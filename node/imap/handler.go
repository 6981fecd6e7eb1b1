// Package imap is Portico's IMAP front end: the not-authenticated state of
// RFC 9051 / RFC 3501 spoken with the client, and the proxy's own login at
// the backend.
//
// Implemented before login (RFC 9051 §6.1, §6.2): CAPABILITY, NOOP,
// LOGOUT, STARTTLS (§6.2.1; bytes pipelined after it feed the TLS
// handshake), AUTHENTICATE PLAIN and LOGIN (§6.2.2, RFC 4616, with SASL-IR
// RFC 4959), and OAUTHBEARER (RFC 7628) and XOAUTH2 where the listener
// enables them, LOGIN (§6.2.3), ID (RFC 2971). Non-synchronizing literals per
// RFC 7888 LITERAL-. Parsing is in imapwire.
//
// After a successful login at the backend the client receives the
// backend's tagged OK, with the client's tag and the backend's post-login
// capabilities as a response code, and the session is handed to the relay.
package imap

import (
	"context"
	"errors"
	"fmt"
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

// TooManyConnections implements session.Handler.
func (h *Handler) TooManyConnections() string {
	return "* BYE [UNAVAILABLE] Too many connections, try again later.\r\n"
}

// conn is one client before login: the IMAP half of its session.Dialogue.
type conn struct {
	h  *Handler
	c  *session.Client
	d  *session.Dialogue
	rd *imapwire.Reader
	id []idParam // the client's ID parameters, forwarded to the backend
}

// Serve implements session.Handler.
func (h *Handler) Serve(ctx context.Context, c *session.Client) (*session.Handoff, session.End) {
	s := &conn{h: h, c: c, d: session.NewDialogue(ctx, c)}
	s.newReader()
	return s.d.Run(s)
}

// Greet implements session.Protocol.
func (s *conn) Greet() {
	s.writef("* OK [CAPABILITY %s] %s\r\n", s.capabilities(), s.h.greeting)
}

// Bye implements session.Protocol.
func (s *conn) Bye(reason string) {
	switch reason {
	case session.EndShutdown:
		s.writef("* BYE [UNAVAILABLE] Server shutting down.\r\n")
	case session.EndTimeout:
		s.writef("* BYE Disconnected for inactivity.\r\n")
	case session.EndPreauthLifetime:
		s.writef("* BYE Login time limit exceeded.\r\n")
	case session.EndTooManyErrors:
		s.writef("* BYE Too many invalid IMAP commands.\r\n")
	}
}

// Next implements session.Protocol.
func (s *conn) Next() (*session.Handoff, error) {
	cmd, err := s.rd.ReadCommand()
	if err != nil {
		return nil, readError(err)
	}
	return s.dispatch(cmd)
}

func (s *conn) newReader() {
	lim := s.d.Limits()
	s.rd = imapwire.NewReader(s.c.Stream.R, imapwire.Limits{MaxLine: lim.MaxLine, MaxLiteral: lim.MaxLiteral}, func() error {
		s.writef("+ Ready for literal data\r\n")
		return s.d.Flush()
	})
}

// readError answers a command the reader refused (BAD, counted; a
// non-synchronizing literal over the limit also ends the session, as the
// stream cannot be resynchronised: RFC 7888). Any other error is the
// Dialogue's to answer.
func readError(err error) error {
	tag := imapwire.ErrorTag(err)
	if tag == "" {
		tag = "*"
	}
	var se *imapwire.SyntaxError
	var tl *imapwire.LiteralTooLargeError
	switch {
	case errors.As(err, &se):
		return bad(tag, sanitize(se.Msg))
	case errors.Is(err, imapwire.ErrLineTooLong):
		return bad(tag, "[TOOBIG] Line too long.")
	case errors.As(err, &tl) && tl.NonSync:
		return &session.ProtocolError{Fatal: true,
			Reply: tag + " BAD [TOOBIG] Literal too large.\r\n* BYE Non-synchronizing literal too large.\r\n"}
	case errors.As(err, &tl):
		return bad(tag, "[TOOBIG] Literal too large.")
	}
	return err
}

// dispatch runs one command. It returns a hand-off after a login; its
// errors are the Dialogue's (session.Protocol.Next).
func (s *conn) dispatch(cmd *imapwire.Command) (*session.Handoff, error) {
	switch cmd.Name {
	case "CAPABILITY":
		if len(cmd.Args) != 0 {
			return nil, bad(cmd.Tag, "CAPABILITY takes no arguments.")
		}
		s.writef("* CAPABILITY %s\r\n%s OK Capability completed.\r\n", s.capabilities(), cmd.Tag)
	case "NOOP":
		s.writef("%s OK NOOP completed.\r\n", cmd.Tag)
	case "LOGOUT":
		s.writef("* BYE Logging out.\r\n%s OK Logout completed.\r\n", cmd.Tag)
		return nil, session.Ending(session.EndLogout, nil)
	case "STARTTLS":
		return nil, s.starttls(cmd)
	case "ID":
		return nil, s.idCommand(cmd)
	case "LOGIN":
		return s.loginCommand(cmd)
	case "AUTHENTICATE":
		return s.authenticate(cmd)
	case "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
		"LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND", "IDLE", "ENABLE", "CHECK", "CLOSE",
		"UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID", "GETQUOTA",
		"GETQUOTAROOT", "GETACL", "MYRIGHTS", "GETMETADATA", "COMPRESS":
		return nil, bad(cmd.Tag, "Command not permitted before login.")
	default:
		return nil, bad(cmd.Tag, "Unknown command.")
	}
	return nil, nil
}

// bad is a BAD reply; the Dialogue writes it and counts it toward
// max_errors.
func bad(tag, text string) error {
	return &session.ProtocolError{Reply: tag + " BAD " + text + "\r\n"}
}

// no is a NO reply that counts toward max_errors (a refused command, not
// a failed login).
func no(tag, text string) error {
	return &session.ProtocolError{Reply: tag + " NO " + text + "\r\n"}
}

// capabilities lists what the proxy offers in the current state.
func (s *conn) capabilities() string {
	caps := append([]string(nil), s.h.base...)
	isTLS := s.c.IsTLS()
	if s.c.Listener.StartTLSOffered(isTLS) {
		caps = append(caps, "STARTTLS")
	}
	if s.c.Listener.PlaintextAuthOK(isTLS) {
		caps = append(caps, "SASL-IR")
		for _, m := range s.c.Listener.Mechanisms() {
			caps = append(caps, "AUTH="+m)
		}
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
	_, _ = fmt.Fprintf(s.c.Stream.W, format, args...)
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

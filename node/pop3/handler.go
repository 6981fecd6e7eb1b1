// Package pop3 is Portico's POP3 front end: the AUTHORIZATION state of
// RFC 1939 spoken with the client, and the proxy's own login at the
// backend with the client's credentials (the backend checks the password).
//
// Before login the client may use USER/PASS and QUIT (RFC 1939 §4, §7),
// CAPA with the RESP-CODES and AUTH-RESP-CODE extended response codes
// (RFC 2449, RFC 3206), AUTH with the SASL mechanisms PLAIN and LOGIN, and
// OAUTHBEARER and XOAUTH2 where the listener enables them, with or without
// an initial response (RFC 5034), and STLS (RFC 2595 §4: bytes
// pipelined after it feed the TLS handshake and are never run as
// commands). After a successful login the client gets the backend's +OK
// line and the session is handed to the relay; commands pipelined after
// PASS or AUTH stay unread in the client's Stream for the relay to forward.
//
// Toward the backend the proxy is a POP3 client: greeting, CAPA, STLS when
// the backend is configured for it, XCLIENT to pass the client's address
// (Dovecot), then AUTH PLAIN or USER/PASS, or for a bearer login the
// client's mechanism and message.
package pop3

import (
	"context"
	"errors"
	"strings"

	"github.com/portico-mail/portico/node/session"
)

// Options configure the POP3 front end.
type Options struct {
	Greeting string // default "Portico POP3 ready."
}

// Handler serves POP3 clients until login. It is safe for concurrent use.
type Handler struct{ greeting string }

// New returns a Handler.
func New(opts Options) *Handler {
	g := opts.Greeting
	if g == "" || hasLineBreak(g) {
		g = "Portico POP3 ready."
	}
	return &Handler{greeting: g}
}

var _ session.Handler = (*Handler)(nil)

// TooManyConnections implements session.Handler.
func (h *Handler) TooManyConnections() string {
	return "-ERR [SYS/TEMP] Too many connections, try again later.\r\n"
}

// Replies. Extended response codes (RFC 2449 §8, RFC 3206) in brackets.
const (
	replyShutdown   = "-ERR [SYS/TEMP] Server shutting down.\r\n"
	replyInactivity = "-ERR Disconnected for inactivity.\r\n"
	replyLifetime   = "-ERR Login time limit exceeded.\r\n"
	replyTooMany    = "-ERR Too many invalid commands.\r\n"
	replyLogout     = "+OK Logging out.\r\n"
	replySTLSBegin  = "+OK Begin TLS negotiation.\r\n"
)

// Refused commands: the Dialogue writes them and counts them toward
// max_errors.
var (
	errUnknown      = invalid("-ERR Unknown command.\r\n")
	errLineTooLong  = invalid("-ERR Line too long.\r\n")
	errSTLSNotAvail = invalid("-ERR STLS not available.\r\n")
	errAPOP         = invalid("-ERR APOP is not supported.\r\n")
	errPlaintext    = invalid("-ERR [AUTH] Plaintext authentication disallowed on non-secure connections.\r\n")
	errCancelled    = invalid("-ERR Authentication cancelled.\r\n")
	errBadBase64    = invalid("-ERR Invalid base64 data.\r\n")
	errBadAuthData  = invalid("-ERR Invalid authentication data.\r\n")
	errUnsupported  = invalid("-ERR Unsupported authentication mechanism.\r\n")
	errNoUserName   = invalid("-ERR USER needs a user name.\r\n")
	errNoUser       = invalid("-ERR USER first.\r\n")
	errCredsTooLong = invalid("-ERR Credentials too long.\r\n")
	errBearerNoUser = invalid("-ERR The bearer token login must name the user (OAUTHBEARER a=, XOAUTH2 user=).\r\n")
)

func invalid(reply string) error { return &session.ProtocolError{Reply: reply} }

// conn is one client before login: the POP3 half of its session.Dialogue.
type conn struct {
	h       *Handler
	c       *session.Client
	d       *session.Dialogue
	scratch []byte
	user    string // from USER, waiting for PASS
}

// Serve implements session.Handler.
func (h *Handler) Serve(ctx context.Context, c *session.Client) (*session.Handoff, session.End) {
	s := &conn{h: h, c: c, d: session.NewDialogue(ctx, c)}
	return s.d.Run(s)
}

// Greet implements session.Protocol.
func (s *conn) Greet() { s.write("+OK " + s.h.greeting + "\r\n") }

// goodbyes answer the ends the Dialogue decides (Bye).
var goodbyes = session.Goodbyes{Shutdown: replyShutdown, Timeout: replyInactivity, Lifetime: replyLifetime, TooManyErrors: replyTooMany}

// Bye implements session.Protocol.
func (s *conn) Bye(reason string) { s.write(goodbyes.For(reason)) }

// Next implements session.Protocol.
func (s *conn) Next() (*session.Handoff, error) {
	line, err := s.readLine()
	if err != nil {
		return nil, err
	}
	cmd, ok := parseCommand(line)
	if !ok {
		return nil, errUnknown
	}
	return s.dispatch(cmd)
}

// readLine reads one client line (the Dialogue armed its deadline). A line
// over max_line is skipped and refused.
func (s *conn) readLine() ([]byte, error) {
	line, err := readLine(s.c.Stream.R, s.d.Limits().MaxLine, &s.scratch, true)
	if errors.Is(err, ErrLineTooLong) {
		return nil, errLineTooLong
	}
	return line, err
}

// dispatch runs one command. It returns a Handoff after a successful
// login; its errors are the Dialogue's (session.Protocol.Next).
func (s *conn) dispatch(cmd Command) (*session.Handoff, error) {
	s.c.Log.Debug("pop3 command", "command", cmd.Name)
	switch cmd.Name {
	case "CAPA":
		s.capa()
	case "QUIT":
		s.write(replyLogout)
		return nil, session.Ending(session.EndLogout, nil)
	case "STLS":
		return nil, s.stls(cmd)
	case "USER":
		return nil, s.userCmd(cmd)
	case "PASS":
		return s.passCmd(cmd)
	case "AUTH":
		return s.authCmd(cmd)
	case "APOP":
		// APOP needs the password in the proxy, which passthrough
		// authentication does not have.
		return nil, errAPOP
	default:
		// Including NOOP, STAT, RETR...: TRANSACTION state only.
		return nil, errUnknown
	}
	return nil, nil
}

// capa answers CAPA (RFC 2449 §5) for the current state of the connection.
func (s *conn) capa() {
	var b strings.Builder
	b.WriteString("+OK Capability list follows\r\n")
	isTLS := s.c.IsTLS()
	if s.c.Listener.PlaintextAuthOK(isTLS) {
		b.WriteString("USER\r\nSASL " + strings.Join(s.c.Listener.Mechanisms(), " ") + "\r\n")
	}
	if s.c.Listener.StartTLSOffered(isTLS) {
		b.WriteString("STLS\r\n")
	}
	b.WriteString("RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nIMPLEMENTATION Portico\r\n.\r\n")
	s.write(b.String())
}

func (s *conn) write(str string) { _, _ = s.c.Stream.WriteString(str) }

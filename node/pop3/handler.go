// Package pop3 is Portico's POP3 front end: the AUTHORIZATION state of
// RFC 1939 spoken with the client, and the proxy's own login at the
// backend with the client's credentials (the backend checks the password).
//
// Before login the client may use USER/PASS and QUIT (RFC 1939 §4, §7),
// CAPA with the RESP-CODES and AUTH-RESP-CODE extended response codes
// (RFC 2449, RFC 3206), AUTH with the SASL mechanisms PLAIN and LOGIN, with
// or without an initial response (RFC 5034), and STLS (RFC 2595 §4: bytes
// pipelined after it feed the TLS handshake and are never run as
// commands). After a successful login the client gets the backend's +OK
// line and the session is handed to the relay; commands pipelined after
// PASS or AUTH stay unread in the client's Stream for the relay to forward.
//
// Toward the backend the proxy is a POP3 client: greeting, CAPA, STLS when
// the backend is configured for it, XCLIENT to pass the client's address
// (Dovecot), then AUTH PLAIN or USER/PASS.
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

// Replies. Extended response codes (RFC 2449 §8, RFC 3206) in brackets.
const (
	replyUnknown      = "-ERR Unknown command.\r\n"
	replyTooMany      = "-ERR Too many invalid commands.\r\n"
	replyLineTooLong  = "-ERR Line too long.\r\n"
	replyShutdown     = "-ERR [SYS/TEMP] Server shutting down.\r\n"
	replyInactivity   = "-ERR Disconnected for inactivity.\r\n"
	replyLifetime     = "-ERR Login time limit exceeded.\r\n"
	replyLogout       = "+OK Logging out.\r\n"
	replySTLSNotAvail = "-ERR STLS not available.\r\n"
	replySTLSBegin    = "+OK Begin TLS negotiation.\r\n"
	replyAPOP         = "-ERR APOP is not supported.\r\n"
)

// errTooManyErrors ends a session that sent MaxErrors bad commands.
var errTooManyErrors = errors.New("too many invalid commands")

// errTooManyAuthFailures ends a session after MaxAuthFailures failed logins.
var errTooManyAuthFailures = errors.New("too many authentication failures")

// conn is one client session before login.
type conn struct {
	h       *Handler
	c       *session.Client
	ctx     context.Context
	scratch []byte
	errors  int
	user    string // from USER, waiting for PASS

}

// Serve implements session.Handler.
func (h *Handler) Serve(ctx context.Context, c *session.Client) (*session.Handoff, error) {
	s := &conn{h: h, c: c, ctx: ctx}
	defer func() { c.ProtocolErrors = s.errors }()
	// The server interrupts blocked reads and writes at shutdown by
	// itself; do it here too so that the handler does not depend on it
	// (Interrupt does nothing once the session is handed off).
	stop := context.AfterFunc(ctx, c.Interrupt)
	defer stop()

	s.write("+OK " + h.greeting + "\r\n")
	if err := s.flush(); err != nil {
		return nil, err
	}
	for {
		line, err := s.readLine()
		switch {
		case errors.Is(err, ErrLineTooLong):
			s.errors++
			s.write(replyLineTooLong)
		case err != nil:
			return nil, s.readError(err)
		default:
			cmd, ok := parseCommand(line)
			if !ok {
				s.errors++
				s.write(replyUnknown)
				break
			}
			ho, end, err := s.dispatch(cmd)
			if ho != nil {
				return ho, nil
			}
			if ferr := s.flush(); ferr != nil && err == nil {
				err, end = ferr, true
			}
			if end {
				return nil, err
			}
		}
		if max := c.Listener.Limits.MaxErrors; max > 0 && s.errors >= max {
			s.write(replyTooMany)
			_ = s.flush()
			c.EndReason = session.EndTooManyErrors
			return nil, errTooManyErrors
		}
		if err := s.flush(); err != nil {
			return nil, err
		}
	}
}

// readLine reads one client line under the pre-login inactivity deadline.
func (s *conn) readLine() ([]byte, error) {
	// Arm the deadline first, then look at the context: a shutdown that
	// sets the read deadline to "now" after cancelling cannot be undone by
	// this arming.
	s.c.ArmReadDeadline()
	if err := s.ctx.Err(); err != nil {
		return nil, err
	}
	return readLine(s.c.Stream.R, s.c.Listener.Limits.MaxLine, &s.scratch, true)
}

// readError says goodbye as appropriate after a failed read and returns
// the error to report for the session (nil for a client that hung up).
func (s *conn) readError(err error) error {
	switch {
	case s.ctx.Err() != nil:
		s.write(replyShutdown)
		err = s.ctx.Err()
	case errors.Is(err, os.ErrDeadlineExceeded) && s.c.LifetimeOver():
		s.write(replyLifetime)
		s.c.EndReason = session.EndPreauthLifetime
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

// dispatch runs one command. It returns a Handoff after a successful
// login, or end=true when the session is over (err says why, nil for QUIT).
func (s *conn) dispatch(cmd Command) (ho *session.Handoff, end bool, err error) {
	s.c.Log.Debug("pop3 command", "command", cmd.Name)
	switch cmd.Name {
	case "CAPA":
		s.capa()
	case "QUIT":
		s.write(replyLogout)
		s.c.EndReason = session.EndLogout
		return nil, true, nil
	case "STLS":
		end, err := s.stls(cmd)
		return nil, end, err
	case "USER":
		s.userCmd(cmd)
	case "PASS":
		return s.passCmd(cmd)
	case "AUTH":
		return s.authCmd(cmd)
	case "APOP":
		// APOP needs the password in the proxy, which passthrough
		// authentication does not have.
		s.errors++
		s.write(replyAPOP)
	default:
		// Including NOOP, STAT, RETR...: TRANSACTION state only.
		s.errors++
		s.write(replyUnknown)
	}
	return nil, false, nil
}

// capa answers CAPA (RFC 2449 §5) for the current state of the connection.
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

// handoff prepares the client connection for the relay: no pre-login
// deadline may outlive this phase.
func (s *conn) handoff() { s.c.HandOff() }

func (s *conn) write(str string) { _, _ = s.c.Stream.WriteString(str) }

// flush sends buffered replies under the pre-login write deadline: a
// client that does not read its replies cannot hold the session (or a
// shutdown) beyond it.
func (s *conn) flush() error {
	if s.c.Stream.W.Buffered() == 0 {
		return nil
	}
	s.c.ArmWriteDeadline()
	return s.c.Stream.Flush()
}

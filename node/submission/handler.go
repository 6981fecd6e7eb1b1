// Package submission is Portico's SMTP message submission front end (RFC
// 6409; STARTTLS on port 587, RFC 3207, or implicit TLS on port 465, RFC
// 8314): the unauthenticated state spoken with the client, and the proxy's
// own login at the backend submission server with the client's
// credentials (the backend checks the password), or with XCLIENT LOGIN for
// logins an auth_http server verified.
//
// Before authentication the client gets a 220 greeting and may use EHLO
// and HELO (RFC 5321 §4.1.1.1; the EHLO reply lists the listener's
// extensions, STARTTLS when offered and AUTH only where authentication is
// allowed now, as the IMAP listeners do), STARTTLS (RFC 3207 §4: bytes
// pipelined after it feed the TLS handshake and are never run as commands;
// the client must say EHLO again), AUTH (RFC 4954) with the mechanisms
// PLAIN and LOGIN, with or without an initial response, "*" cancelling,
// RSET, NOOP, HELP and QUIT. MAIL, RCPT, DATA, BDAT, VRFY, EXPN and ETRN
// are refused with 530 5.7.0 (BDAT's chunk is read and dropped so that the
// stream stays in step, or the session ends if it is too large). Every
// refusal carries an enhanced status code (RFC 3463); lines are bounded by
// session.Limits.MaxLine; NOOP, RSET, HELP, EHLO and HELO beyond
// maxJunkCommands count as errors, as in Postfix.
//
// After a successful AUTH the client gets the backend's 235 reply (or the
// proxy's, with XCLIENT LOGIN) and the session is handed to the relay;
// commands pipelined after AUTH stay unread in the client's Stream for the
// relay to forward. The relay's Framer follows the session (transactions,
// DATA bodies, BDAT chunks) so that a drain ends it between two messages,
// and refuses what a client must never send through a proxy the backend
// trusts (XCLIENT, XFORWARD, STARTTLS).
//
// Toward the backend the proxy is an SMTP client (backend.go): greeting,
// EHLO, STARTTLS when the backend is configured for it, XCLIENT with the
// client's address (Postfix's XCLIENT_README; nginx's "xclient on") when
// the backend is forward: id and announces it, or a PROXY header (the
// Dialer's, forward: proxy), then AUTH PLAIN with the client's credentials.
package submission

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/portico-mail/portico/node/session"
)

// DefaultExtensions are the ESMTP extensions advertised before login when
// ListenerOptions.Extensions is empty, besides SIZE, STARTTLS and AUTH:
// what every current submission server (Postfix 3.4+, Exim 4.88+,
// Dovecot's submission) offers. The proxy cannot know the backend's before
// the user is known; a backend without one of them is logged when a
// session logs in there (Handler.checkExtensions).
var DefaultExtensions = []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING"}

// maxJunkCommands is how many NOOP, RSET, HELP, EHLO and HELO commands a
// client may send before each further one counts as an error (Postfix's
// smtpd_junk_command_limit).
const maxJunkCommands = 100

// Options configure the submission front end.
type Options struct {
	// Hostname names the proxy in its greeting and EHLO reply, and to the
	// backends in EHLO; default the system's host name.
	Hostname string
}

// ListenerOptions are one listener's own settings
// (session.Listener.Extra).
type ListenerOptions struct {
	// Hostname replaces Options.Hostname on this listener.
	Hostname string
	// MaxMessageSize is advertised with SIZE (RFC 1870); 0 advertises
	// SIZE without a number (no fixed limit: the backend enforces its
	// own).
	MaxMessageSize int64
	// Extensions replace DefaultExtensions (upper-cased keywords, with
	// their parameters if any).
	Extensions []string
	// XCLIENTLogin logs in at the backend with XCLIENT LOGIN=<user>
	// instead of AUTH: the backend trusts the proxy to have checked the
	// password (nginx's "xclient on" without "proxy_smtp_auth"). Only a
	// login the Director verified (session.Target.Verified: an auth_http
	// server) is logged in this way; a backend that does not announce
	// XCLIENT with LOGIN then fails the login.
	XCLIENTLogin bool
}

// Handler serves submission clients until login. It is safe for
// concurrent use.
type Handler struct {
	hostname string

	// warned remembers (listener, backend) pairs already logged for
	// lacking an advertised extension.
	warned sync.Map
}

// New returns a Handler.
func New(opts Options) *Handler {
	return &Handler{hostname: hostnameOr(opts.Hostname)}
}

// hostnameOr returns name if it can be given in EHLO, else the system's
// host name, else "localhost".
func hostnameOr(name string) string {
	if _, ok := heloName(name); ok {
		return name
	}
	if name, _ = os.Hostname(); name != "" {
		if _, ok := heloName(name); ok {
			return name
		}
	}
	return "localhost"
}

var _ session.Handler = (*Handler)(nil)

// TooManyConnections implements session.Handler (RFC 5321 §3.1: a server
// may refuse a connection with 421 instead of its greeting).
func (h *Handler) TooManyConnections() string {
	return "421 4.7.0 Too many connections, try again later\r\n"
}

// Replies. Enhanced status codes from RFC 3463 and RFC 4954 §6.
const (
	replyShutdown   = "421 4.3.2 Service shutting down, try again later\r\n"
	replyInactivity = "421 4.4.2 Timeout exceeded, closing connection\r\n"
	replyLifetime   = "421 4.4.2 Login time limit exceeded, closing connection\r\n"
	replyTooMany    = "421 4.7.0 Too many errors, closing connection\r\n"
	replyQuit       = "221 2.0.0 Bye\r\n"
	replyOK         = "250 2.0.0 OK\r\n"
	replyHelp       = "214 2.0.0 Commands: EHLO HELO STARTTLS AUTH NOOP RSET HELP QUIT\r\n"
	replyTLSBegin   = "220 2.0.0 Ready to start TLS\r\n"
)

// Refused commands: the Dialogue writes them and counts them toward
// max_errors.
var (
	errUnknown      = invalid("500 5.5.2 Error: command not recognized\r\n")
	errSyntax       = invalid("500 5.5.2 Error: bad syntax\r\n")
	errLineTooLong  = invalid("500 5.5.2 Error: line too long\r\n")
	errAuthRequired = invalid("530 5.7.0 Authentication required\r\n")
	errHeloSyntax   = invalid("501 5.5.4 Syntax: EHLO hostname\r\n")
	errNoArgs       = invalid("501 5.5.4 Syntax: command takes no arguments\r\n")
	errTLSNotAvail  = invalid("502 5.5.1 STARTTLS not available\r\n")
	errTLSActive    = invalid("503 5.5.1 TLS already active\r\n")
	errBDATSyntax   = fatal("501 5.5.4 Syntax: BDAT count [LAST]\r\n421 4.7.0 Closing connection\r\n")
	errBDATLarge    = fatal("530 5.7.0 Authentication required\r\n421 4.7.0 Closing connection\r\n")
)

func invalid(reply string) error { return &session.ProtocolError{Reply: reply} }
func fatal(reply string) error   { return &session.ProtocolError{Reply: reply, Fatal: true} }

// conn is one client before login: the submission half of its
// session.Dialogue.
type conn struct {
	h   *Handler
	c   *session.Client
	d   *session.Dialogue
	w   *wire
	opt *ListenerOptions

	helo  string // the client's EHLO/HELO argument; "" before one (and after STARTTLS)
	esmtp bool   // it said EHLO
	junk  int    // NOOP, RSET, HELP, EHLO, HELO so far

	// Set by the backend login, read when it succeeded.
	chunking bool // the backend offers CHUNKING
}

// Serve implements session.Handler.
func (h *Handler) Serve(ctx context.Context, c *session.Client) (*session.Handoff, session.End) {
	s := &conn{h: h, c: c, d: session.NewDialogue(ctx, c), opt: listenerOptions(c.Listener)}
	s.newWire()
	return s.d.Run(s)
}

func listenerOptions(l *session.Listener) *ListenerOptions {
	if o, ok := l.Extra.(*ListenerOptions); ok && o != nil {
		return o
	}
	return &ListenerOptions{}
}

// hostname is the name the proxy gives itself on this listener.
func (s *conn) hostname() string {
	if n, ok := heloName(s.opt.Hostname); ok {
		return n
	}
	return s.h.hostname
}

// newWire (re)binds the command reader to the client's reader, which
// STARTTLS replaces.
func (s *conn) newWire() {
	s.w = newWire(s.c.Stream.R, s.d.Limits().MaxLine)
}

// Greet implements session.Protocol (RFC 5321 §4.2).
func (s *conn) Greet() {
	s.write("220 " + s.hostname() + " ESMTP ready\r\n")
}

// goodbyes answer the ends the Dialogue decides (Bye).
var goodbyes = session.Goodbyes{Shutdown: replyShutdown, Timeout: replyInactivity, Lifetime: replyLifetime, TooManyErrors: replyTooMany}

// Bye implements session.Protocol: 421 closes the channel (RFC 5321
// §3.8).
func (s *conn) Bye(reason string) { s.write(goodbyes.For(reason)) }

// Next implements session.Protocol.
func (s *conn) Next() (*session.Handoff, error) {
	cmd, err := s.w.readCommand()
	switch {
	case errors.Is(err, ErrSyntax):
		return nil, errSyntax
	case errors.Is(err, ErrLineTooLong):
		return nil, errLineTooLong
	case err != nil:
		return nil, err
	}
	return s.dispatch(cmd)
}

// dispatch runs one command. It returns a Handoff after a successful
// login; its errors are the Dialogue's (session.Protocol.Next). The
// command's arguments are never logged: AUTH carries credentials.
func (s *conn) dispatch(cmd Command) (*session.Handoff, error) {
	s.c.Log.Debug("submission command", "command", cmd.Verb)
	switch cmd.Verb {
	case "EHLO", "HELO":
		return nil, s.hello(cmd)
	case "STARTTLS":
		return nil, s.starttls(cmd)
	case "AUTH":
		return s.auth(cmd)
	case "NOOP":
		// RFC 5321 §4.1.1.9: NOOP may carry a string, which is ignored.
		return nil, s.junkReply(replyOK)
	case "RSET":
		if cmd.Arg != "" {
			return nil, errNoArgs
		}
		return nil, s.junkReply(replyOK)
	case "HELP":
		return nil, s.junkReply(replyHelp)
	case "QUIT":
		s.write(replyQuit)
		return nil, session.Ending(session.EndLogout, nil)
	case "MAIL", "RCPT", "DATA", "VRFY", "EXPN", "ETRN", "TURN", "ATRN", "BURL":
		return nil, errAuthRequired
	case "BDAT":
		return nil, s.bdat(cmd)
	default:
		return nil, errUnknown
	}
}

// junkReply answers NOOP, RSET, HELP, EHLO or HELO; beyond
// maxJunkCommands the answer counts as an error.
func (s *conn) junkReply(reply string) error {
	s.junk++
	if s.junk > maxJunkCommands {
		return invalid(reply)
	}
	s.write(reply)
	return nil
}

// hello answers EHLO and HELO (RFC 5321 §4.1.1.1). The EHLO reply lists
// what the client may use now: AUTH only where authentication is allowed
// (else the client knows to say STARTTLS first), STARTTLS only before TLS.
func (s *conn) hello(cmd Command) error {
	name, ok := heloName(cmd.Arg)
	if !ok {
		return errHeloSyntax
	}
	s.helo, s.esmtp = name, cmd.Verb == "EHLO"
	if !s.esmtp {
		return s.junkReply("250 " + s.hostname() + "\r\n")
	}
	lines := []string{s.hostname()}
	lines = append(lines, s.extensions()...)
	isTLS := s.c.IsTLS()
	if s.c.Listener.StartTLSOffered(isTLS) {
		lines = append(lines, "STARTTLS")
	}
	if s.c.Listener.PlaintextAuthOK(isTLS) {
		lines = append(lines, "AUTH "+strings.Join(s.c.Listener.Mechanisms(), " "))
	}
	var b strings.Builder
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		b.WriteString("250" + sep + l + "\r\n")
	}
	return s.junkReply(b.String())
}

// extensions are the service extensions this listener advertises, SIZE
// included.
func (s *conn) extensions() []string {
	ext := s.opt.Extensions
	if len(ext) == 0 {
		ext = DefaultExtensions
	}
	size := "SIZE"
	if s.opt.MaxMessageSize > 0 {
		size += " " + strconv.FormatInt(s.opt.MaxMessageSize, 10)
	}
	out := make([]string, 0, len(ext)+1)
	out = append(out, size)
	for _, e := range ext {
		if k := keyword(e); k != "SIZE" && k != "STARTTLS" && k != "AUTH" && validExtension(e) {
			out = append(out, e)
		}
	}
	return out
}

// validExtension: printable ASCII, nothing that could end the line.
func validExtension(e string) bool {
	if e == "" || len(e) > 200 {
		return false
	}
	for i := 0; i < len(e); i++ {
		if c := e[i]; c < ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// keyword is an EHLO line's keyword, upper-cased.
func keyword(line string) string {
	k, _, _ := strings.Cut(line, " ")
	return strings.ToUpper(k)
}

// bdat refuses BDAT before authentication. Its chunk follows the command
// line at once (RFC 3030 §2), so it is read and dropped to keep the
// stream in step; a chunk over MaxLiteral, or a size that cannot be read,
// ends the session instead.
func (s *conn) bdat(cmd Command) error {
	n, _, ok := parseBDAT(cmd.Arg)
	switch {
	case !ok:
		return errBDATSyntax
	case n > int64(s.d.Limits().MaxLiteral):
		return errBDATLarge
	}
	if _, err := s.c.Stream.R.Discard(int(n)); err != nil {
		return err
	}
	return errAuthRequired
}

func (s *conn) write(str string) { _, _ = s.c.Stream.WriteString(str) }

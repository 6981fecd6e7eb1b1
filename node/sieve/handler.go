// Package sieve is Portico's ManageSieve front end (RFC 5804): the
// non-authenticated state spoken with the client, and the proxy's own login
// at the backend with the client's credentials (the backend checks the
// password).
//
// Before login the client gets the capability greeting (§1.7: IMPLEMENTATION,
// SASL, SIEVE, NOTIFY with enotify, STARTTLS when offered, VERSION) and may use CAPABILITY
// (§2.4), STARTTLS (§2.2: bytes pipelined after it feed the TLS handshake
// and are never run as commands; the capabilities are re-issued over TLS),
// AUTHENTICATE (§2.1) with the SASL mechanisms PLAIN and LOGIN, and
// OAUTHBEARER and XOAUTH2 where the listener enables them, with or
// without an initial response, NOOP (§2.14) and LOGOUT (§2.3). Strings are
// quoted or literals, "{n+}" or "{n}" (§4; a server sends no continuation
// for either, so both are read at once), bounded by session.Limits:
// MaxLine for the text between literals, MaxLiteral for a command's
// literals together.
//
// After a successful login the client gets the backend's OK line and the
// session is handed to the relay; commands pipelined after AUTHENTICATE
// stay unread in the client's Stream for the relay to forward.
//
// Toward the backend (Dovecot Pigeonhole's managesieve-login) the proxy is
// a ManageSieve client: capability greeting, STARTTLS when the backend is
// configured for it (then the re-issued capabilities), XCLIENT to pass the
// client's address when the backend is forward: id and announces it
// (managesieve-login does so for login_trusted_networks), then
// AUTHENTICATE "PLAIN" with the initial response as a literal, or for a
// bearer login the client's mechanism and message.
package sieve

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/portico-mail/portico/node/session"
)

// DefaultExtensions is the SIEVE capability advertised before login when
// Options.Extensions is empty: the extensions Dovecot Pigeonhole 0.5
// enables by default. The proxy cannot know the backend's before the user
// is known; clients that care ask CAPABILITY again after login, which the
// backend answers.
const DefaultExtensions = "fileinto reject envelope encoded-character vacation subaddress " +
	"comparator-i;ascii-numeric relational regex imap4flags copy include variables body " +
	"enotify environment mailbox date index ihave duplicate mime foreverypart extracttext"

// Options configure the ManageSieve front end.
type Options struct {
	Implementation string // default "Portico"
	Extensions     string // SIEVE capability; default DefaultExtensions
}

// Handler serves ManageSieve clients until login. It is safe for
// concurrent use.
type Handler struct {
	implementation string
	extensions     string
	notify         bool // extensions include enotify
}

// New returns a Handler.
func New(opts Options) *Handler {
	h := &Handler{implementation: opts.Implementation, extensions: opts.Extensions}
	if h.implementation == "" || strings.ContainsAny(h.implementation, "\r\n\x00") {
		h.implementation = "Portico"
	}
	if h.extensions == "" || strings.ContainsAny(h.extensions, "\r\n\x00") {
		h.extensions = DefaultExtensions
	}
	h.notify = slices.Contains(strings.Fields(h.extensions), "enotify")
	return h
}

var _ session.Handler = (*Handler)(nil)

// TooManyConnections implements session.Handler.
func (h *Handler) TooManyConnections() string {
	return "BYE (TRYLATER) \"Too many connections, try again later.\"\r\n"
}

// Replies. Response codes (RFC 5804 §1.3) in parentheses.
const (
	replyShutdown   = "BYE (TRYLATER) \"Server shutting down.\"\r\n"
	replyInactivity = "BYE \"Disconnected for inactivity.\"\r\n"
	replyLifetime   = "BYE \"Login time limit exceeded.\"\r\n"
	replyTooMany    = "BYE \"Too many invalid commands.\"\r\n"
	replyLogout     = "OK \"Logout completed.\"\r\n"
	replyNoop       = "OK \"NOOP completed.\"\r\n"
	replyCapability = "OK \"Capability completed.\"\r\n"
	replyTLSBegin   = "OK \"Begin TLS negotiation now.\"\r\n"
)

// Refused commands: the Dialogue writes them and counts them toward
// max_errors.
var (
	errUnknown      = invalid("NO \"Unknown command.\"\r\n")
	errAuthFirst    = invalid("NO \"Authenticate first.\"\r\n")
	errSyntax       = invalid("NO \"Syntax error.\"\r\n")
	errLineTooLong  = fatal("BYE \"Line too long.\"\r\n")
	errLiteralLarge = fatal("BYE \"Literal too large.\"\r\n")
	errTLSNotAvail  = invalid("NO \"STARTTLS not available.\"\r\n")
	errPlaintext    = invalid("NO (ENCRYPT-NEEDED) \"Plaintext authentication disallowed on non-secure connections.\"\r\n")
	errCancelled    = invalid("NO \"Authentication cancelled.\"\r\n")
	errBadBase64    = invalid("NO \"Invalid base64 data.\"\r\n")
	errBadAuthData  = invalid("NO \"Invalid authentication data.\"\r\n")
	errUnsupported  = invalid("NO \"Unsupported authentication mechanism.\"\r\n")
	errCredsTooLong = invalid("NO \"Credentials too long.\"\r\n")
	errBearerNoUser = invalid("NO \"The bearer token login must name the user (OAUTHBEARER a=, XOAUTH2 user=).\"\r\n")
)

func invalid(reply string) error { return &session.ProtocolError{Reply: reply} }
func fatal(reply string) error   { return &session.ProtocolError{Reply: reply, Fatal: true} }

// conn is one client before login: the ManageSieve half of its
// session.Dialogue.
type conn struct {
	h *Handler
	c *session.Client
	d *session.Dialogue
	w *wire
}

// Serve implements session.Handler.
func (h *Handler) Serve(ctx context.Context, c *session.Client) (*session.Handoff, session.End) {
	s := &conn{h: h, c: c, d: session.NewDialogue(ctx, c)}
	s.newWire()
	return s.d.Run(s)
}

// newWire (re)binds the command reader to the client's reader, which
// STARTTLS replaces.
func (s *conn) newWire() {
	lim := s.d.Limits()
	s.w = newWire(s.c.Stream.R, lim.MaxLine, lim.MaxLiteral)
}

// Greet implements session.Protocol: the capabilities, then OK (§1.7).
func (s *conn) Greet() {
	s.write(s.capabilities() + "OK \"" + s.h.implementation + " ManageSieve ready.\"\r\n")
}

// goodbyes answer the ends the Dialogue decides (Bye).
var goodbyes = session.Goodbyes{Shutdown: replyShutdown, Timeout: replyInactivity, Lifetime: replyLifetime, TooManyErrors: replyTooMany}

// Bye implements session.Protocol.
func (s *conn) Bye(reason string) { s.write(goodbyes.For(reason)) }

// Next implements session.Protocol.
func (s *conn) Next() (*session.Handoff, error) {
	cmd, err := s.w.readCommand()
	if err != nil {
		return nil, wireError(err)
	}
	return s.dispatch(cmd)
}

// wireError turns a reader error into the client's reply; read errors
// (deadlines, end of stream) are the Dialogue's.
func wireError(err error) error {
	switch {
	case errors.Is(err, ErrSyntax):
		return errSyntax
	case errors.Is(err, ErrLineTooLong):
		return errLineTooLong
	case errors.Is(err, ErrLiteralTooLarge):
		return errLiteralLarge
	}
	return err
}

// dispatch runs one command. It returns a Handoff after a successful
// login; its errors are the Dialogue's (session.Protocol.Next).
func (s *conn) dispatch(cmd Command) (*session.Handoff, error) {
	s.c.Log.Debug("sieve command", "command", cmd.Name)
	switch cmd.Name {
	case "CAPABILITY":
		if len(cmd.Args) != 0 {
			return nil, errSyntax
		}
		s.write(s.capabilities() + replyCapability)
	case "NOOP":
		return nil, s.noop(cmd)
	case "LOGOUT":
		if len(cmd.Args) != 0 {
			return nil, errSyntax
		}
		s.write(replyLogout)
		return nil, session.Ending(session.EndLogout, nil)
	case "STARTTLS":
		return nil, s.starttls(cmd)
	case "AUTHENTICATE":
		return s.authenticate(cmd)
	case "HAVESPACE", "PUTSCRIPT", "LISTSCRIPTS", "SETACTIVE", "GETSCRIPT",
		"DELETESCRIPT", "RENAMESCRIPT", "CHECKSCRIPT", "UNAUTHENTICATE":
		return nil, errAuthFirst
	default:
		return nil, errUnknown
	}
	return nil, nil
}

// noop answers NOOP [tag] (§2.14), echoing the tag in a TAG response code.
func (s *conn) noop(cmd Command) error {
	switch {
	case len(cmd.Args) == 0:
		s.write(replyNoop)
	case len(cmd.Args) == 1 && cmd.Args[0].String:
		tag := cmd.Args[0].Value
		if strings.ContainsAny(tag, "\r\n\x00") || len(tag) > 256 {
			return errSyntax
		}
		s.write("OK (TAG " + quote(tag) + ") \"Done\"\r\n")
	default:
		return errSyntax
	}
	return nil
}

// capabilities lists the capability lines (§1.7) for the current state of
// the connection. SASL lists nothing while authentication is not allowed.
func (s *conn) capabilities() string {
	var b strings.Builder
	isTLS := s.c.IsTLS()
	b.WriteString("\"IMPLEMENTATION\" " + quote(s.h.implementation) + "\r\n")
	mechs := ""
	if s.c.Listener.PlaintextAuthOK(isTLS) {
		mechs = strings.Join(s.c.Listener.Mechanisms(), " ")
	}
	b.WriteString("\"SASL\" " + quote(mechs) + "\r\n")
	b.WriteString("\"SIEVE\" " + quote(s.h.extensions) + "\r\n")
	if s.h.notify {
		// Required with enotify (§1.7); mailto is the one method
		// Pigeonhole implements.
		b.WriteString("\"NOTIFY\" \"mailto\"\r\n")
	}
	if s.c.Listener.StartTLSOffered(isTLS) {
		b.WriteString("\"STARTTLS\"\r\n")
	}
	b.WriteString("\"VERSION\" \"1.0\"\r\n")
	return b.String()
}

func (s *conn) write(str string) { _, _ = s.c.Stream.WriteString(str) }

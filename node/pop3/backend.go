package pop3

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/portico-mail/portico/node/internal/upstream"
	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// Bounds on what a backend may send before login.
const (
	backendMaxLine  = 4096 // one response line, CRLF included
	backendMaxCapas = 64   // lines of a CAPA response
)

// Phases of the backend dialogue, as they label errors.
const (
	phaseGreeting = "reading greeting"
	phaseCAPA     = "CAPA"
	phaseSTLS     = "STLS"
	phaseXCLIENT  = "XCLIENT"
	phaseAuth     = "AUTH"
)

// backend is the proxy's POP3 client state toward one backend.
type backend struct {
	r       *bufio.Reader
	w       *bufio.Writer
	scratch []byte

	// For STLS and XCLIENT; the fuzz tests leave them zero.
	stream    *netx.Stream
	tlsConfig func() (*tls.Config, error)
	remote    netip.AddrPort
	sessionID string

	caps         map[string]string // CAPA keyword -> arguments
	capaOK       bool              // the backend answered CAPA with +OK
	greetXCLIENT bool              // "+OK [XCLIENT] ..." (Dovecot's announcement)
}

// phaseError labels err with the dialogue phase it happened in.
func phaseError(phase string, err error) error { return fmt.Errorf("%s: %w", phase, err) }

// backendLogin is the session.BackendLogin of this front end: greeting ->
// CAPA -> [STLS -> CAPA] -> [XCLIENT] -> AUTH PLAIN or USER/PASS. It
// returns the backend's +OK line for the client.
func (s *conn) backendLogin(ctx context.Context, be *netx.Stream, t *session.Target) ([]byte, error) {
	b := &backend{
		r: be.R, w: be.W, stream: be,
		tlsConfig: func() (*tls.Config, error) { return s.c.Env.Dialer.TLSConfig(t.Backend) },
		remote:    s.c.Remote, sessionID: s.c.ID,
	}
	return b.run(ctx, t.Backend, t.Creds)
}

func (b *backend) run(ctx context.Context, bk *routing.Backend, creds session.Credentials) ([]byte, error) {
	if err := b.prelude(ctx, bk); err != nil {
		return nil, err
	}
	if bk.Forward == routing.ForwardID && b.hasXCLIENT() && b.remote.IsValid() {
		if err := b.xclient(); err != nil {
			return nil, err
		}
	}
	return b.login(creds)
}

// prelude is what a login and a probe share: greeting -> CAPA -> [STLS
// -> CAPA].
func (b *backend) prelude(ctx context.Context, bk *routing.Backend) error {
	if err := b.greeting(); err != nil {
		return err
	}
	if err := b.capa(); err != nil {
		return err
	}
	if bk.TLS == routing.TLSStartTLS {
		return b.stls(ctx)
	}
	return nil
}

// line reads one bounded response line (without CRLF).
func (b *backend) line() (string, error) {
	l, err := readLine(b.r, backendMaxLine, &b.scratch, false)
	if err != nil {
		return "", err
	}
	return string(l), nil
}

// command sends one line and reads the single-line reply.
func (b *backend) command(cmd string) (string, error) {
	if err := upstream.Send(b.w, cmd); err != nil {
		return "", err
	}
	return b.line()
}

func (b *backend) greeting() error {
	g, err := b.line()
	if err != nil {
		return phaseError(phaseGreeting, err)
	}
	if !isOK(g) {
		return phaseError(phaseGreeting, fmt.Errorf("%w: %q", session.ErrBackendGreeting, upstream.Shorten(g)))
	}
	// Dovecot's pop3-login announces XCLIENT to trusted clients in the
	// greeting only, not in CAPA.
	b.greetXCLIENT = strings.EqualFold(respCode(g), "XCLIENT")
	return nil
}

// capa learns the backend's capabilities (RFC 2449 §5). A backend that
// refuses CAPA is treated as offering USER/PASS only.
func (b *backend) capa() error {
	b.caps = map[string]string{}
	b.capaOK = false
	r, err := b.command("CAPA")
	if err != nil {
		return phaseError(phaseCAPA, err)
	}
	switch {
	case isERR(r):
		return nil
	case !isOK(r):
		return phaseError(phaseCAPA, fmt.Errorf("unexpected reply %q", upstream.Shorten(r)))
	}
	b.capaOK = true
	for n := 0; ; n++ {
		l, err := b.line()
		if err != nil {
			return phaseError(phaseCAPA, err)
		}
		if l == "." {
			return nil
		}
		if n >= backendMaxCapas {
			return phaseError(phaseCAPA, fmt.Errorf("more than %d capabilities", backendMaxCapas))
		}
		l = strings.TrimPrefix(l, ".") // dot-stuffing (RFC 1939 §3)
		k, v, _ := strings.Cut(l, " ")
		b.caps[strings.ToUpper(k)] = v
	}
}

func (b *backend) has(capa string) bool { _, ok := b.caps[capa]; return ok }

func (b *backend) hasXCLIENT() bool { return b.greetXCLIENT || b.has("XCLIENT") }

// stls upgrades the backend connection (RFC 2595 §4) and asks CAPA again:
// capabilities learnt before TLS must be forgotten.
func (b *backend) stls(ctx context.Context) error {
	if b.stream == nil {
		return phaseError(phaseSTLS, errors.New("no connection to upgrade"))
	}
	// A backend without CAPA may still have STLS; one that lists its
	// capabilities without STLS does not.
	if b.capaOK && !b.has("STLS") {
		return phaseError(phaseSTLS, errors.New("backend does not offer STLS"))
	}
	r, err := b.command("STLS")
	if err != nil {
		return phaseError(phaseSTLS, err)
	}
	if !isOK(r) {
		return phaseError(phaseSTLS, fmt.Errorf("backend answered %q", upstream.Shorten(r)))
	}
	if err := upstream.StartTLS(ctx, b.stream, b.tlsConfig, "+OK"); err != nil {
		return phaseError(phaseSTLS, err)
	}
	return b.capa()
}

// xclient passes the client's address and the session ID to the backend.
// Dovecot's pop3-login accepts XCLIENT from login_trusted_networks with
// the attributes ADDR, PORT, SESSION, TTL and FORWARD, answers "+OK" (also
// when it ignores the command), and "-ERR Invalid parameters" for a value
// it cannot parse.
func (b *backend) xclient() error {
	r, err := b.command(upstream.DovecotXCLIENT(b.remote, b.sessionID))
	if err != nil {
		return phaseError(phaseXCLIENT, err)
	}
	if !isOK(r) {
		// Logging in anyway would let the backend see (and rate-limit,
		// log, apply IP rules to) the proxy's address instead of the
		// client's: treat as a misconfigured backend.
		return phaseError(phaseXCLIENT, fmt.Errorf("backend answered %q", upstream.Shorten(r)))
	}
	return nil
}

// login presents the client's credentials: AUTH PLAIN with an initial
// response (RFC 5034) when the backend offers it, else USER/PASS.
func (b *backend) login(c session.Credentials) ([]byte, error) {
	if c.Bearer != nil {
		return b.bearerLogin(c.Bearer)
	}
	// Credentials the backend could not receive intact are refused as bad
	// credentials, without sending them: a NUL would shift the fields of a
	// PLAIN response, and USER/PASS cannot carry CR or LF.
	if rej := upstream.Unrepresentable(c, nil); rej != nil {
		return nil, rej
	}
	var r string
	var err error
	if upstream.HasWord(b.caps["SASL"], "PLAIN") {
		r, err = b.command("AUTH PLAIN " + session.PlainResponse(c))
		if err == nil && (r == "+" || strings.HasPrefix(r, "+ ")) {
			return nil, phaseError(phaseAuth, errors.New("backend asked for more than the PLAIN initial response"))
		}
	} else {
		if c.AuthzID != "" {
			return nil, phaseError(phaseAuth, errors.New("backend does not offer SASL PLAIN, needed to log in with an authorization identity"))
		}
		if hasLineBreak(c.User) || hasLineBreak(c.Password) {
			return nil, &session.BackendRejected{Text: "credentials contain CR or LF, which USER/PASS cannot carry; not sent"}
		}
		r, err = b.command("USER " + c.User)
		if err == nil && isOK(r) {
			r, err = b.command("PASS " + c.Password)
		}
	}
	if err != nil {
		return nil, phaseError(phaseAuth, err)
	}
	switch {
	case isOK(r):
		return []byte(upstream.OneLine(r) + "\r\n"), nil
	case isERR(r):
		return nil, backendReject(r)
	}
	return nil, phaseError(phaseAuth, fmt.Errorf("unexpected reply %q", upstream.Shorten(r)))
}

// maxAuthLine is RFC 2449's bound on a command line (CRLF included); an
// AUTH command whose initial response would exceed it is sent without,
// and the response follows the server's empty challenge (RFC 5034 §4).
const maxAuthLine = 255

// bearerLogin logs in with the client's bearer mechanism and message, as
// it sent them. A refusal comes as an error challenge (RFC 7628 §3.2.2),
// which is answered with the mechanism's dummy response so that the
// backend ends the exchange with -ERR (§3.2.3); the challenge is kept for
// the client (BackendRejected.Challenge).
func (b *backend) bearerLogin(m *session.Bearer) ([]byte, error) {
	if !upstream.HasWord(b.caps["SASL"], m.Mechanism) {
		return nil, phaseError(phaseAuth, fmt.Errorf("backend does not offer SASL %s", m.Mechanism))
	}
	x, cmd := upstream.NewBearer("AUTH", m, maxAuthLine)
	r, err := b.command(cmd)
	for err == nil && (r == "+" || strings.HasPrefix(r, "+ ")) {
		line, ok := x.Next(strings.TrimPrefix(r, "+"))
		if !ok {
			// A third round: cancel, and take the backend as broken.
			_, _ = b.command("*")
			return nil, phaseError(phaseAuth, errors.New("backend asked for more than the bearer message and the dummy response"))
		}
		r, err = b.command(line)
	}
	if err != nil {
		return nil, phaseError(phaseAuth, err)
	}
	switch {
	case isOK(r):
		return []byte(upstream.OneLine(r) + "\r\n"), nil
	case isERR(r):
		rej := backendReject(r)
		rej.Challenge = x.Challenge
		return nil, rej
	}
	return nil, phaseError(phaseAuth, fmt.Errorf("unexpected reply %q", upstream.Shorten(r)))
}

// backendReject turns a backend's -ERR to a login into what the client
// sees. The extended response code (RFC 2449 §8, RFC 3206) decides:
//
//   - [SYS/TEMP], [SYS/PERM]: the backend's own system failed (for
//     Dovecot: its auth service is broken or overloaded). Not the
//     credentials' fault, so it does not count as a failure; the client
//     gets replyUnavailable, not the backend's text, which for Dovecot
//     carries the backend's host name and time.
//   - [IN-USE] (mailbox locked by another session), [LOGIN-DELAY]: the
//     credentials were right; passed through, not counted as a failure.
//   - anything else ([AUTH], no code): a wrong password; passed through.
func backendReject(r string) *session.BackendRejected {
	rej := &session.BackendRejected{Reply: []byte(upstream.OneLine(r) + "\r\n"), Text: upstream.Shorten(r)}
	code := strings.ToUpper(respCode(r))
	switch {
	case strings.HasPrefix(code, "SYS/"):
		rej.Reply = []byte(replyUnavailable)
		rej.Temporary = true
	case code == "IN-USE", code == "LOGIN-DELAY":
		rej.Temporary = true
	}
	return rej
}

// isOK and isERR recognise a status indicator (RFC 1939 §3).
func isOK(r string) bool  { return r == "+OK" || strings.HasPrefix(r, "+OK ") }
func isERR(r string) bool { return r == "-ERR" || strings.HasPrefix(r, "-ERR ") }

// respCode returns the extended response code of a status line ("AUTH" of
// "-ERR [AUTH] ..."), or "".
func respCode(r string) string {
	_, rest, ok := strings.Cut(r, " ")
	if !ok || !strings.HasPrefix(rest, "[") {
		return ""
	}
	code, _, ok := strings.Cut(rest[1:], "]")
	if !ok {
		return ""
	}
	return code
}

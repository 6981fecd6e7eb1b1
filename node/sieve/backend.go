package sieve

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/portico-mail/portico/node/internal/upstream"
	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// Bounds on what a backend may send before login.
const (
	backendMaxLine     = 4096     // one line, CRLF included
	backendMaxLiterals = 16 << 10 // literals of one response together
	backendMaxCaps     = 64       // capability lines before an OK
)

// Phases of the backend dialogue, as they label errors.
const (
	phaseGreeting = "reading greeting"
	phaseSTARTTLS = "STARTTLS"
	phaseXCLIENT  = "XCLIENT"
	phaseAuth     = "AUTHENTICATE"
	phaseLOGOUT   = "LOGOUT"
)

// backend is the proxy's ManageSieve client state toward one backend.
type backend struct {
	r       *bufio.Reader
	w       *bufio.Writer
	scratch []byte

	// For STARTTLS and XCLIENT; the fuzz tests leave them zero.
	stream    *netx.Stream
	tlsConfig func() (*tls.Config, error)
	remote    netip.AddrPort
	sessionID string

	caps map[string]string // capability (upper-cased) -> its value
}

// response is one backend response: a capability line or a status
// response (OK, NO, BYE), literals included.
type response struct {
	raw    []byte // the whole response, CRLFs and literals included
	status string // OK, NO or BYE (upper-cased), else ""
	code   string // the response code's name ("TRYLATER"), upper-cased
	first  []byte // the first line, without CRLF (a capability line)
}

func phaseError(phase string, err error) error { return fmt.Errorf("%s: %w", phase, err) }

// backendLogin is the session.BackendLogin of this front end: capability
// greeting -> [STARTTLS -> capabilities] -> [XCLIENT] -> AUTHENTICATE
// "PLAIN". It returns the backend's OK response for the client.
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
	if bk.Forward == routing.ForwardID && b.remote.IsValid() {
		// Without XCLIENT (a backend that does not trust the proxy's
		// network) the login goes on with the proxy's address, as for
		// IMAP backends without ID; check-config warns about it.
		if _, ok := b.caps["XCLIENT"]; ok {
			if err := b.xclient(); err != nil {
				return nil, err
			}
		}
	}
	return b.login(creds)
}

// prelude is what a login and a probe share: greeting -> [STARTTLS ->
// capabilities].
func (b *backend) prelude(ctx context.Context, bk *routing.Backend) error {
	if err := b.capabilities(phaseGreeting); err != nil {
		return err
	}
	if bk.TLS == routing.TLSStartTLS {
		return b.starttls(ctx)
	}
	return nil
}

// capabilities reads capability lines up to the OK that ends them (the
// greeting, §1.7, or their re-issue after STARTTLS, §2.2).
func (b *backend) capabilities(phase string) error {
	b.caps = map[string]string{}
	for n := 0; ; n++ {
		r, err := b.response()
		if err != nil {
			return phaseError(phase, err)
		}
		switch r.status {
		case "OK":
			return nil
		case "NO", "BYE":
			return phaseError(phase, fmt.Errorf("%w: %q", session.ErrBackendGreeting, upstream.Trunc(r.raw)))
		}
		if n >= backendMaxCaps {
			return phaseError(phase, fmt.Errorf("more than %d capabilities", backendMaxCaps))
		}
		if k, v, ok := capability(r.first); ok {
			b.caps[strings.ToUpper(k)] = v
		}
	}
}

// capability parses a capability line: a string, optionally followed by
// one more (§1.7). Lines in another shape are ignored.
func capability(line []byte) (key, value string, ok bool) {
	tok := func(i int) (string, int, bool) {
		if i < len(line) && line[i] == '"' {
			return quoted(line, i)
		}
		return atom(line, i)
	}
	key, i, ok := tok(0)
	if !ok {
		return "", "", false
	}
	if i < len(line) && line[i] == ' ' {
		if value, _, ok = tok(i + 1); !ok {
			value = ""
		}
	}
	return key, value, true
}

// response reads one response: lines and the literals they announce (a
// line ending in "{n}" or "{n+}" continues after n bytes), each line at
// most backendMaxLine bytes and the literals at most backendMaxLiterals.
func (b *backend) response() (*response, error) {
	r := &response{}
	literals := 0
	for {
		line, err := b.line()
		if err != nil {
			return nil, err
		}
		if r.first == nil {
			r.first = append([]byte{}, line...)
		}
		r.raw = append(r.raw, line...)
		r.raw = append(r.raw, '\r', '\n')
		n, ok := trailingLiteral(line)
		if !ok {
			break
		}
		if n > backendMaxLiterals-literals {
			return nil, fmt.Errorf("literals over %d bytes", backendMaxLiterals)
		}
		literals += n
		start := len(r.raw)
		r.raw = append(r.raw, make([]byte, n)...)
		if _, err := io.ReadFull(b.r, r.raw[start:]); err != nil {
			return nil, netx.Unexpected(err)
		}
	}
	word, rest, _ := strings.Cut(string(r.first), " ")
	if w := strings.ToUpper(word); w == "OK" || w == "NO" || w == "BYE" {
		r.status = w
		if strings.HasPrefix(rest, "(") {
			code := rest[1:]
			if i := strings.IndexAny(code, " )"); i >= 0 {
				code = code[:i]
			}
			r.code = strings.ToUpper(code)
		}
	}
	return r, nil
}

func (b *backend) line() ([]byte, error) {
	w := wire{r: b.r, maxLine: backendMaxLine, scratch: b.scratch}
	l, err := w.line()
	b.scratch = w.scratch
	return l, err
}

// command sends one command and reads responses up to its status
// response.
func (b *backend) command(cmd string) (*response, error) {
	r, err := b.exchange(cmd)
	if err != nil {
		return nil, err
	}
	if r.status == "" {
		return nil, fmt.Errorf("unexpected response %q", upstream.Trunc(r.raw))
	}
	return r, nil
}

// exchange sends one line and reads one response, which may be a SASL
// challenge (no status).
func (b *backend) exchange(cmd string) (*response, error) {
	if err := upstream.Send(b.w, cmd); err != nil {
		return nil, err
	}
	return b.response()
}

// starttls upgrades the backend connection (§2.2) and reads the
// capabilities the backend re-issues over TLS.
func (b *backend) starttls(ctx context.Context) error {
	if b.stream == nil {
		return phaseError(phaseSTARTTLS, errors.New("no connection to upgrade"))
	}
	if _, ok := b.caps["STARTTLS"]; !ok {
		return phaseError(phaseSTARTTLS, errors.New("backend does not offer STARTTLS"))
	}
	r, err := b.command("STARTTLS")
	if err != nil {
		return phaseError(phaseSTARTTLS, err)
	}
	if r.status != "OK" {
		return phaseError(phaseSTARTTLS, fmt.Errorf("backend answered %q", upstream.Trunc(r.raw)))
	}
	if err := upstream.StartTLS(ctx, b.stream, b.tlsConfig, "OK"); err != nil {
		return phaseError(phaseSTARTTLS, err)
	}
	return b.capabilities(phaseSTARTTLS)
}

// xclient passes the client's address and the session ID to the backend.
// Pigeonhole's managesieve-login announces XCLIENT to (and accepts it
// from) login_trusted_networks only, with the attributes ADDR, PORT,
// SESSION and TTL, and answers OK or NO.
func (b *backend) xclient() error {
	r, err := b.command(upstream.DovecotXCLIENT(b.remote, b.sessionID))
	if err != nil {
		return phaseError(phaseXCLIENT, err)
	}
	if r.status != "OK" {
		// Logging in anyway would let the backend see the proxy's
		// address instead of the client's: a misconfigured backend.
		return phaseError(phaseXCLIENT, fmt.Errorf("backend answered %q", upstream.Trunc(r.raw)))
	}
	return nil
}

// login presents the client's credentials with AUTHENTICATE "PLAIN" and
// the initial response as a literal (§2.1), whatever mechanism the client
// used with the proxy.
func (b *backend) login(c session.Credentials) ([]byte, error) {
	if c.Bearer != nil {
		return b.bearerLogin(c.Bearer)
	}
	if rej := upstream.Unrepresentable(c, nil); rej != nil {
		return nil, rej
	}
	if b.caps != nil && !upstream.HasWord(b.caps["SASL"], "PLAIN") {
		return nil, phaseError(phaseAuth, fmt.Errorf("backend does not offer SASL PLAIN (SASL %q)", upstream.Trunc([]byte(b.caps["SASL"]))))
	}
	ir := session.PlainResponse(c)
	r, err := b.command("AUTHENTICATE \"PLAIN\" {" + strconv.Itoa(len(ir)) + "+}\r\n" + ir)
	if err != nil {
		return nil, phaseError(phaseAuth, err)
	}
	switch r.status {
	case "OK":
		return r.raw, nil
	case "NO":
		rej := &session.BackendRejected{Reply: r.raw, Text: upstream.Trunc(r.raw)}
		if r.code == "TRYLATER" {
			// The backend's own condition, not the credentials: not
			// counted, and the client gets the proxy's words (Dovecot's
			// carry its host name).
			rej.Reply = []byte(replyUnavailable)
			rej.Temporary = true
		}
		return nil, rej
	}
	return nil, phaseError(phaseAuth, fmt.Errorf("backend answered %q", upstream.Trunc(r.raw)))
}

// bearerLogin logs in with the client's bearer mechanism and message, as
// it sent them, the message as a literal. A refusal comes as an error
// challenge (a string, RFC 7628 §3.2.2), answered with the mechanism's
// dummy response so that the backend ends the exchange with NO (§3.2.3);
// the challenge is kept for the client (BackendRejected.Challenge).
func (b *backend) bearerLogin(m *session.Bearer) ([]byte, error) {
	if b.caps != nil && !upstream.HasWord(b.caps["SASL"], m.Mechanism) {
		return nil, phaseError(phaseAuth, fmt.Errorf("backend does not offer SASL %s (SASL %q)", m.Mechanism, upstream.Trunc([]byte(b.caps["SASL"]))))
	}
	ir := session.EncodeChallenge(m.Message)
	r, err := b.exchange("AUTHENTICATE " + quote(m.Mechanism) + " {" + strconv.Itoa(len(ir)) + "+}\r\n" + ir)
	var challenge []byte
	if err == nil && r.status == "" {
		str, ok := challengeString(r)
		if !ok {
			return nil, phaseError(phaseAuth, fmt.Errorf("unexpected response %q", upstream.Trunc(r.raw)))
		}
		challenge = session.DecodeBearerChallenge([]byte(str))
		r, err = b.command(quote(session.EncodeChallenge(session.BearerDummyResponse(m.Mechanism))))
	}
	if err != nil {
		return nil, phaseError(phaseAuth, err)
	}
	switch r.status {
	case "OK":
		return r.raw, nil
	case "NO":
		rej := &session.BackendRejected{Reply: r.raw, Text: upstream.Trunc(r.raw), Challenge: challenge}
		if r.code == "TRYLATER" {
			rej.Reply = []byte(replyUnavailable)
			rej.Temporary = true
		}
		return nil, rej
	}
	return nil, phaseError(phaseAuth, fmt.Errorf("backend answered %q", upstream.Trunc(r.raw)))
}

// challengeString returns the string of a server challenge (§2.1: a
// quoted string or a literal alone on its line).
func challengeString(r *response) (string, bool) {
	line := r.first
	if len(line) > 0 && line[0] == '"' {
		s, end, ok := quoted(line, 0)
		return s, ok && end == len(line)
	}
	n, ok := literalAt(line, 0)
	start := len(line) + 2
	if !ok || len(r.raw) != start+n+2 {
		return "", false
	}
	return string(r.raw[start : start+n]), true
}

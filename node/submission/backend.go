package submission

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/portico-mail/portico/node/internal/upstream"
	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// Bounds on what a backend may send before login.
const (
	backendMaxLine  = 2048 // one reply line, CRLF included (RFC 5321 §4.5.3.1.5 says 512)
	backendMaxLines = 128  // lines of one reply (an EHLO reply has a dozen)
	maxXCLIENTValue = 255  // an attribute's value before xtext encoding
)

// Phases of the backend dialogue, as they label errors.
const (
	phaseGreeting = "reading greeting"
	phaseEHLO     = "EHLO"
	phaseSTARTTLS = "STARTTLS"
	phaseXCLIENT  = "XCLIENT"
	phaseAuth     = "AUTH"
	phaseQUIT     = "QUIT"
)

// backend is the proxy's SMTP client state toward one backend.
type backend struct {
	r       *bufio.Reader
	w       *bufio.Writer
	scratch []byte

	// For STARTTLS; the fuzz tests leave them zero.
	stream    *netx.Stream
	tlsConfig func() (*tls.Config, error)

	// ext holds the last EHLO reply's extensions: keyword (upper-cased)
	// -> parameters.
	ext map[string]string
}

// reply is one SMTP reply: one or more lines with the same code, all but
// the last "ddd-", the last "ddd " or "ddd" (RFC 5321 §4.2.1).
type reply struct {
	code  int
	raw   []byte   // the whole reply, CRLFs included
	lines []string // each line's text after the code and its separator
}

func (r *reply) class() int { return r.code / 100 }

func phaseError(phase string, err error) error { return fmt.Errorf("%s: %w", phase, err) }

// clientInfo is what the backend login needs to know of the client.
type clientInfo struct {
	remote, local netip.AddrPort
	helo          string
	esmtp         bool
	sessionID     string
}

// backendLogin is the session.BackendLogin of this front end: greeting ->
// EHLO -> [STARTTLS -> EHLO] -> [XCLIENT -> EHLO] -> AUTH PLAIN (or
// nothing with XCLIENT LOGIN). It returns the reply for the client.
func (s *conn) backendLogin(ctx context.Context, be *netx.Stream, t *session.Target) ([]byte, error) {
	b := &backend{
		r: be.R, w: be.W, stream: be,
		tlsConfig: func() (*tls.Config, error) { return s.c.Env.Dialer.TLSConfig(t.Backend) },
	}
	cl := clientInfo{remote: s.c.Remote, local: s.c.Local, helo: s.helo, esmtp: s.esmtp, sessionID: s.c.ID}
	reply, err := b.login(ctx, t, cl, s.hostname(), s.opt.XCLIENTLogin)
	if err == nil {
		_, s.chunking = b.ext["CHUNKING"]
		s.h.checkExtensions(s, t.Backend, b.ext)
	}
	return reply, err
}

func (b *backend) login(ctx context.Context, t *session.Target, cl clientInfo, hostname string, xclientLogin bool) ([]byte, error) {
	bk := t.Backend
	// The name the proxy gives itself: its own, unless the backend takes
	// the client's address from a PROXY header and so sees the client.
	name := hostname
	if bk.Forward == routing.ForwardProxy && cl.helo != "" {
		name = cl.helo
	}
	if err := b.prelude(ctx, bk, name); err != nil {
		return nil, err
	}
	_, hasXCLIENT := b.ext["XCLIENT"]
	loggedIn := false
	switch {
	case xclientLogin && !t.Verified:
		// Passthrough: only the backend can check the password, so it
		// must get it.
	case xclientLogin && (bk.Forward != routing.ForwardID || !hasXCLIENT || !b.xclientAttr("LOGIN")):
		return nil, phaseError(phaseXCLIENT, errors.New("xclient_login needs a forward: id backend announcing XCLIENT with LOGIN"))
	case xclientLogin:
		loggedIn = true
	}
	if bk.Forward == routing.ForwardID && hasXCLIENT && cl.remote.IsValid() {
		login := ""
		if loggedIn {
			login = t.Creds.User
		}
		if err := b.xclient(cl, login); err != nil {
			return nil, err
		}
		if err := b.ehlo(cl.helo, phaseXCLIENT); err != nil {
			return nil, err
		}
	}
	// Without XCLIENT (a backend that does not trust the proxy's
	// network) the login goes on with the proxy's address, as for IMAP
	// backends without ID; check-config warns about it.
	if loggedIn {
		return []byte(replyAuthOK), nil
	}
	return b.auth(t.Creds)
}

// prelude is what a login and a probe share: greeting -> EHLO ->
// [STARTTLS -> EHLO].
func (b *backend) prelude(ctx context.Context, bk *routing.Backend, name string) error {
	r, err := b.reply()
	if err != nil {
		return phaseError(phaseGreeting, err)
	}
	if r.code != 220 {
		return phaseError(phaseGreeting, fmt.Errorf("%w: %q", session.ErrBackendGreeting, upstream.Trunc(r.raw)))
	}
	if err := b.ehlo(name, phaseEHLO); err != nil {
		return err
	}
	if bk.TLS == routing.TLSStartTLS {
		if err := b.starttls(ctx); err != nil {
			return err
		}
		return b.ehlo(name, phaseSTARTTLS)
	}
	return nil
}

// ehlo sends EHLO and records the extensions of its reply.
func (b *backend) ehlo(name, phase string) error {
	r, err := b.command("EHLO " + name)
	if err != nil {
		return phaseError(phase, err)
	}
	if r.code != 250 {
		return phaseError(phase, fmt.Errorf("EHLO answered %q", upstream.Trunc(r.raw)))
	}
	b.ext = map[string]string{}
	for _, l := range r.lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		if k != "" {
			b.ext[strings.ToUpper(k)] = v
		}
	}
	return nil
}

// reply reads one reply: lines of at most backendMaxLine bytes, at most
// backendMaxLines of them, all with the same code.
func (b *backend) reply() (*reply, error) {
	r := &reply{}
	for n := 0; ; n++ {
		if n >= backendMaxLines {
			return nil, fmt.Errorf("reply of more than %d lines", backendMaxLines)
		}
		l, err := netx.ReadLine(b.r, backendMaxLine, &b.scratch, false)
		if err != nil {
			return nil, netx.Unexpected(err)
		}
		if len(l) < 3 || !isDigit(l[0]) || !isDigit(l[1]) || !isDigit(l[2]) || l[0] < '2' || l[0] > '5' ||
			(len(l) > 3 && l[3] != ' ' && l[3] != '-') {
			return nil, fmt.Errorf("malformed reply line %q", upstream.Trunc(l))
		}
		code, _ := strconv.Atoi(string(l[:3]))
		if n > 0 && code != r.code {
			return nil, fmt.Errorf("reply code changed from %d to %d", r.code, code)
		}
		r.code = code
		r.raw = append(append(r.raw, l...), '\r', '\n')
		text := ""
		if len(l) > 4 {
			text = string(l[4:])
		}
		r.lines = append(r.lines, text)
		if len(l) == 3 || l[3] == ' ' {
			return r, nil
		}
	}
}

// command sends one command line and reads its reply.
func (b *backend) command(cmd string) (*reply, error) {
	if err := upstream.Send(b.w, cmd); err != nil {
		return nil, err
	}
	return b.reply()
}

// starttls upgrades the backend connection (RFC 3207); the caller says
// EHLO again over TLS.
func (b *backend) starttls(ctx context.Context) error {
	if b.stream == nil {
		return phaseError(phaseSTARTTLS, errors.New("no connection to upgrade"))
	}
	if _, ok := b.ext["STARTTLS"]; !ok {
		return phaseError(phaseSTARTTLS, errors.New("backend does not offer STARTTLS"))
	}
	r, err := b.command("STARTTLS")
	if err != nil {
		return phaseError(phaseSTARTTLS, err)
	}
	if r.code != 220 {
		return phaseError(phaseSTARTTLS, fmt.Errorf("backend answered %q", upstream.Trunc(r.raw)))
	}
	if err := upstream.StartTLS(ctx, b.stream, b.tlsConfig, "220"); err != nil {
		return phaseError(phaseSTARTTLS, err)
	}
	return nil
}

// xclientAttr reports whether the backend's XCLIENT announcement lists
// attr (Postfix lists the attributes it takes: "XCLIENT NAME ADDR PORT
// PROTO HELO LOGIN ...").
func (b *backend) xclientAttr(attr string) bool {
	return slices.ContainsFunc(strings.Fields(b.ext["XCLIENT"]), func(a string) bool { return strings.EqualFold(a, attr) })
}

// xclient passes the client's address and what the backend would have
// learnt from it directly (Postfix's XCLIENT_README): ADDR, PORT, NAME
// (the proxy does not look names up: [UNAVAILABLE]), HELO, PROTO, the
// address it connected to (DESTADDR, DESTPORT), the session ID (Dovecot's
// SESSION) and, when the proxy verified the login, LOGIN. Only the
// attributes the backend announces are sent, ADDR always. The backend
// answers with a new greeting (220), after which the proxy says EHLO with
// the client's name.
func (b *backend) xclient(cl clientInfo, login string) error {
	addr := cl.remote.Addr().Unmap().WithZone("")
	a := "ADDR=" + addr.String()
	if addr.Is6() {
		a = "ADDR=IPV6:" + addr.String()
	}
	attrs := []string{a}
	add := func(name, value string) {
		if value != "" && len(value) <= maxXCLIENTValue && b.xclientAttr(name) {
			attrs = append(attrs, name+"="+xtext(value))
		}
	}
	add("PORT", strconv.Itoa(int(cl.remote.Port())))
	add("NAME", "[UNAVAILABLE]")
	add("HELO", cl.helo)
	proto := "SMTP"
	if cl.esmtp {
		proto = "ESMTP"
	}
	add("PROTO", proto)
	if cl.local.IsValid() {
		add("DESTADDR", cl.local.Addr().Unmap().WithZone("").String())
		add("DESTPORT", strconv.Itoa(int(cl.local.Port())))
	}
	if upstream.ValidSessionID(cl.sessionID) {
		add("SESSION", cl.sessionID)
	}
	if login != "" {
		if !b.xclientAttr("LOGIN") || len(login) > maxXCLIENTValue {
			return phaseError(phaseXCLIENT, errors.New("cannot pass LOGIN"))
		}
		add("LOGIN", login)
	}
	r, err := b.command("XCLIENT " + strings.Join(attrs, " "))
	if err != nil {
		return phaseError(phaseXCLIENT, err)
	}
	if r.class() != 2 {
		// Logging in anyway would let the backend see the proxy's
		// address instead of the client's: a misconfigured backend.
		return phaseError(phaseXCLIENT, fmt.Errorf("backend answered %q", upstream.Trunc(r.raw)))
	}
	return nil
}

// xtext encodes an XCLIENT attribute value (RFC 1891 §5 xtext): "+",
// "=", and bytes outside "!".."~" become "+XX".
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '!' || c > '~' || c == '+' || c == '=' {
			b.WriteString("+" + strings.ToUpper(strconv.FormatUint(uint64(c)|0x100, 16)[1:]))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// auth presents the client's credentials with AUTH PLAIN and an initial
// response (RFC 4954, RFC 4616), whatever mechanism the client used with
// the proxy. 235 is passed to the client; 535 is a refusal of the
// credentials, passed on as it is; a 4xx is the backend's own trouble
// (not counted as a failed login); any other answer means the backend is
// not set up for this (no AUTH over this connection, TLS required...), a
// failure of the backend, never the client's wrong password.
func (b *backend) auth(c session.Credentials) ([]byte, error) {
	if c.Bearer != nil {
		return b.bearerAuth(c.Bearer)
	}
	if rej := upstream.Unrepresentable(c, []byte(replyAuthFailed)); rej != nil {
		return nil, rej
	}
	mechs, ok := b.ext["AUTH"]
	if !ok || !upstream.HasWord(mechs, "PLAIN") {
		return nil, phaseError(phaseAuth, fmt.Errorf("backend does not offer AUTH PLAIN here (AUTH %q)", upstream.Trunc([]byte(mechs))))
	}
	r, err := b.command("AUTH PLAIN " + session.PlainResponse(c))
	if err != nil {
		return nil, phaseError(phaseAuth, err)
	}
	switch {
	case r.code == 235:
		return r.raw, nil
	case r.code == 535:
		return nil, &session.BackendRejected{Reply: r.raw, Text: upstream.Trunc(r.raw)}
	case r.code == 334:
		// A challenge after an initial response: cancel, and give up.
		_, _ = b.command("*")
		return nil, phaseError(phaseAuth, fmt.Errorf("backend answered %q", upstream.Trunc(r.raw)))
	case r.class() == 4:
		return nil, &session.BackendRejected{Reply: []byte(replyUnavailable), Text: upstream.Trunc(r.raw), Temporary: true}
	}
	return nil, phaseError(phaseAuth, fmt.Errorf("backend answered %q", upstream.Trunc(r.raw)))
}

// maxAuthLine is RFC 4954 §4's bound on an AUTH command line with its
// initial response (CRLF included); a longer message is sent after the
// server's empty challenge.
const maxAuthLine = 12288

// bearerAuth logs in with the client's bearer mechanism and message, as it
// sent them. A refusal comes as a 334 error challenge (RFC 7628 §3.2.2),
// answered with the mechanism's dummy response so that the backend ends
// the exchange with 535 (§3.2.3); the challenge is kept for the client
// (BackendRejected.Challenge).
func (b *backend) bearerAuth(m *session.Bearer) ([]byte, error) {
	mechs, ok := b.ext["AUTH"]
	if !ok || !upstream.HasWord(mechs, m.Mechanism) {
		return nil, phaseError(phaseAuth, fmt.Errorf("backend does not offer AUTH %s here (AUTH %q)", m.Mechanism, upstream.Trunc([]byte(mechs))))
	}
	x, cmd := upstream.NewBearer("AUTH", m, maxAuthLine)
	r, err := b.command(cmd)
	for err == nil && r.code == 334 {
		text := ""
		if len(r.lines) > 0 {
			text = r.lines[0]
		}
		line, ok := x.Next(text)
		if !ok {
			_, _ = b.command("*")
			return nil, phaseError(phaseAuth, fmt.Errorf("backend asked for more than the bearer message and the dummy response: %q", upstream.Trunc(r.raw)))
		}
		r, err = b.command(line)
	}
	if err != nil {
		return nil, phaseError(phaseAuth, err)
	}
	switch {
	case r.code == 235:
		return r.raw, nil
	case r.code == 535:
		return nil, &session.BackendRejected{Reply: r.raw, Text: upstream.Trunc(r.raw), Challenge: x.Challenge}
	case r.class() == 4:
		return nil, &session.BackendRejected{Reply: []byte(replyUnavailable), Text: upstream.Trunc(r.raw), Temporary: true}
	}
	return nil, phaseError(phaseAuth, fmt.Errorf("backend answered %q", upstream.Trunc(r.raw)))
}

// checkExtensions logs, once per listener and backend, the extensions
// the listener advertised before login that the backend does not offer: a
// client relying on them (CHUNKING, SIZE over the backend's limit) fails
// there.
func (h *Handler) checkExtensions(s *conn, bk *routing.Backend, ext map[string]string) {
	var missing []string
	for _, e := range s.extensions() {
		k, v, _ := strings.Cut(e, " ")
		k = strings.ToUpper(k)
		have, ok := ext[k]
		switch {
		case !ok:
			missing = append(missing, k)
		case k == "SIZE" && v != "" && have != "" && have != "0":
			want, err1 := strconv.ParseInt(v, 10, 64)
			got, err2 := strconv.ParseInt(have, 10, 64)
			if err1 == nil && err2 == nil && got < want {
				missing = append(missing, "SIZE "+v+" (backend: "+have+")")
			}
		}
	}
	if len(missing) == 0 {
		return
	}
	if _, seen := h.warned.LoadOrStore(s.c.Listener.Name+"\x00"+bk.ID, true); seen {
		return
	}
	s.c.Log.Warn("backend does not offer extensions the listener advertises", "listener", s.c.Listener.Name,
		"backend", bk.ID, "missing", strings.Join(missing, ", "))
}

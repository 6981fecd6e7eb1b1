package pop3

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// Bounds on what a backend may send before login.
const (
	backendMaxLine  = 4096
	backendMaxCapas = 64
)

// backend is the proxy's POP3 client state toward one backend.
type backend struct {
	s       *conn
	be      *netx.Stream
	scratch []byte
	caps    map[string]string // CAPA keyword -> arguments
}

func phaseError(phase string, err error) error { return fmt.Errorf("%s: %w", phase, err) }

// backendLogin runs greeting -> CAPA -> [STLS -> CAPA] -> [XCLIENT] ->
// AUTH PLAIN or USER/PASS and returns the backend's +OK line for the client.
func (s *conn) backendLogin(ctx context.Context, be *netx.Stream, t *session.Target) ([]byte, error) {
	b := &backend{s: s, be: be}
	g, err := b.line()
	if err != nil {
		return nil, phaseError("reading greeting", err)
	}
	if !strings.HasPrefix(g, "+OK") {
		return nil, phaseError("reading greeting", fmt.Errorf("%w: %q", session.ErrBackendGreeting, trunc(g)))
	}
	if err := b.capa(); err != nil {
		return nil, err
	}
	if t.Backend.TLS == routing.TLSStartTLS {
		if err := b.stls(ctx, t.Backend); err != nil {
			return nil, err
		}
	}
	if t.Backend.Forward == routing.ForwardID {
		if _, ok := b.caps["XCLIENT"]; ok {
			if err := b.xclient(); err != nil {
				return nil, err
			}
		}
	}
	return b.login(t.Creds)
}

// line reads one bounded response line (without CRLF).
func (b *backend) line() (string, error) {
	l, err := readLine(b.be.R, backendMaxLine, &b.scratch)
	if err != nil {
		return "", err
	}
	return string(l), nil
}

// command sends one line and reads the single-line reply.
func (b *backend) command(cmd string) (string, error) {
	if _, err := b.be.WriteString(cmd + "\r\n"); err != nil {
		return "", err
	}
	if err := b.be.Flush(); err != nil {
		return "", err
	}
	return b.line()
}

// capa learns the backend's capabilities (RFC 2449). A backend without
// CAPA is treated as offering only USER/PASS.
func (b *backend) capa() error {
	b.caps = map[string]string{}
	r, err := b.command("CAPA")
	if err != nil {
		return phaseError("CAPA", err)
	}
	if !strings.HasPrefix(r, "+OK") {
		return nil
	}
	for n := 0; ; n++ {
		l, err := b.line()
		if err != nil {
			return phaseError("CAPA", err)
		}
		if l == "." {
			return nil
		}
		if n >= backendMaxCapas {
			return phaseError("CAPA", errors.New("capability list too long"))
		}
		k, v, _ := strings.Cut(l, " ")
		b.caps[strings.ToUpper(k)] = v
	}
}

func (b *backend) stls(ctx context.Context, bk *routing.Backend) error {
	if _, ok := b.caps["STLS"]; !ok {
		return phaseError("STLS", errors.New("backend does not offer STLS"))
	}
	r, err := b.command("STLS")
	if err != nil {
		return phaseError("STLS", err)
	}
	if !strings.HasPrefix(r, "+OK") {
		return phaseError("STLS", fmt.Errorf("backend answered %q", trunc(r)))
	}
	cfg, err := b.s.c.Env.Dialer.TLSConfig(bk)
	if err != nil {
		return phaseError("STLS", err)
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if err := b.be.StartTLSClient(ctx, cfg, timeout); err != nil {
		return phaseError("STLS handshake", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = b.be.SetDeadline(dl)
	}
	// Capabilities learnt before TLS must be discarded (RFC 2595 §4).
	return b.capa()
}

// xclient passes the client's address (Dovecot pop3-login accepts XCLIENT
// from login_trusted_networks: ADDR, PORT, SESSION, TTL, FORWARD).
func (b *backend) xclient() error {
	c := b.s.c
	cmd := fmt.Sprintf("XCLIENT ADDR=%s PORT=%s SESSION=%s", c.Remote.Addr(), strconv.Itoa(int(c.Remote.Port())), c.ID)
	r, err := b.command(cmd)
	if err != nil {
		return phaseError("XCLIENT", err)
	}
	if !strings.HasPrefix(r, "+OK") {
		// Advisory: log and go on without it.
		c.Log.Warn("backend refused XCLIENT", "reply", string(trunc(r)))
	}
	return nil
}

func (b *backend) login(c session.Credentials) ([]byte, error) {
	var r string
	var err error
	if sasl, ok := b.caps["SASL"]; ok && hasWord(sasl, "PLAIN") {
		r, err = b.command("AUTH PLAIN " + session.PlainResponse(c))
		if err == nil && strings.HasPrefix(r, "+ ") {
			// A backend that wants more than PLAIN's single response.
			r, err = b.command("*")
		}
	} else {
		if c.AuthzID != "" {
			return nil, phaseError("AUTH", errors.New("backend lacks SASL PLAIN, needed for an authorization identity"))
		}
		if hasBadBytes(c.User) || hasBadBytes(c.Password) || strings.Contains(c.User, " ") {
			// USER/PASS cannot carry these bytes: treat as a wrong password.
			return nil, &session.BackendRejected{Text: "credentials not representable in USER/PASS"}
		}
		r, err = b.command("USER " + c.User)
		if err == nil && strings.HasPrefix(r, "+OK") {
			r, err = b.command("PASS " + c.Password)
		}
	}
	if err != nil {
		return nil, phaseError("AUTH", err)
	}
	switch {
	case strings.HasPrefix(r, "+OK"):
		return []byte(r + "\r\n"), nil
	case strings.HasPrefix(r, "-ERR"):
		rej := &session.BackendRejected{Reply: []byte(sanitize(r) + "\r\n"), Text: string(trunc(r))}
		// [SYS/TEMP], [SYS/PERM] and [IN-USE] (RFC 2449, 3206) are not the
		// credentials' fault: show them, but do not count a failure.
		up := strings.ToUpper(r)
		if strings.HasPrefix(up, "-ERR [SYS/") || strings.HasPrefix(up, "-ERR [IN-USE]") {
			rej.Temporary = true
		}
		return nil, rej
	}
	return nil, phaseError("AUTH", fmt.Errorf("unexpected reply %q", trunc(r)))
}

func hasWord(list, w string) bool {
	for _, f := range strings.Fields(list) {
		if strings.EqualFold(f, w) {
			return true
		}
	}
	return false
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == 0 {
			return ' '
		}
		return r
	}, s)
}

func trunc(s string) []byte {
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return []byte(s)
}

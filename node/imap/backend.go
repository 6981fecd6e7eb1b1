package imap

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/portico-mail/portico/node/imap/imapwire"
	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// Bounds on what a backend may send before login.
const (
	backendMaxLine     = 16 << 10
	backendMaxLiterals = 64 << 10
	backendMaxUntagged = 64 // untagged responses to one command
)

// Tags of the proxy's own commands at the backend.
const (
	tagStartTLS = "P1"
	tagCapa     = "P2"
	tagID       = "P3"
	tagLogin    = "P4"
)

// errIDRefused: the backend did not accept the ID command that forwards the
// client's address; the login is not used.
var errIDRefused = errors.New("forwarded client address not accepted")

// backend is the proxy's IMAP client state toward one backend.
type backend struct {
	s    *conn // the client's session (ID forwarding); nil for a probe
	be   *netx.Stream
	rr   *imapwire.ResponseReader
	caps []string
	// tlsConfig verifies the backend for STARTTLS (session.Dialer.TLSConfig).
	tlsConfig func(*routing.Backend) (*tls.Config, error)
	// challenge is the backend's error challenge to a bearer login
	// (decoded), answered with the dummy response; nil if none came.
	challenge  []byte
	challenged bool
}

func newBackend(s *conn, be *netx.Stream, tlsConfig func(*routing.Backend) (*tls.Config, error)) *backend {
	return &backend{s: s, be: be, tlsConfig: tlsConfig,
		rr: imapwire.NewResponseReader(be.R, backendMaxLine, backendMaxLiterals)}
}

// phaseError labels an error with the login phase it happened in.
func phaseError(phase string, err error) error { return fmt.Errorf("%s: %w", phase, err) }

// backendLogin runs greeting -> [STARTTLS] -> [ID] -> login at the backend
// and returns the reply for the client (with its tag) on success.
func (s *conn) backendLogin(ctx context.Context, be *netx.Stream, t *session.Target, clientTag string) ([]byte, error) {
	b := newBackend(s, be, s.c.Env.Dialer.TLSConfig)
	if err := b.greeting(); err != nil {
		return nil, err
	}
	if t.Backend.TLS == routing.TLSStartTLS {
		if err := b.starttls(ctx, t.Backend); err != nil {
			return nil, err
		}
	}

	// Pipeline ID (when forwarding the client address) with the login.
	var out bytes.Buffer
	out.Grow(512) // the ID and the login, mostly: one allocation
	sentID := false
	if t.Backend.Forward == routing.ForwardID && imapwire.HasCapability(b.caps, "ID") {
		b.writeID(&out)
		sentID = true
	}
	chunks, err := b.loginChunks(t.Creds)
	if err != nil {
		return nil, err
	}
	out.WriteString(chunks[0])
	chunks = chunks[1:]
	if _, err := be.Write(out.Bytes()); err != nil {
		return nil, phaseError("sending login", err)
	}
	if err := be.Flush(); err != nil {
		return nil, phaseError("sending login", err)
	}
	if sentID {
		// Two pipelined commands, two replies: a backend that writes them
		// as two small segments with Nagle's algorithm on (Cyrus) holds
		// the login reply until its ID reply is acknowledged, which a
		// delayed ACK made ~40 ms on every login. Acknowledge at once
		// what came before waiting for the rest (one setsockopt, and only
		// then: a backend that answers both in one segment, as Dovecot
		// does, needs none; no round trip added, unlike waiting for the
		// ID reply before sending the login).
		_ = be.Base().QuickAckOnWait()
	}

	var untagged [][]byte
	var postCaps []string
	for n := 0; ; n++ {
		if n > backendMaxUntagged+4 {
			return nil, phaseError("login", errors.New("too many untagged responses"))
		}
		r, err := b.rr.Read()
		if err != nil {
			return nil, phaseError("login", err)
		}
		switch {
		case r.Tag == "+":
			// The backend asks for the next piece (synchronizing literal or
			// SASL response). Anything beyond what we have cancels, except
			// the error challenge to a bearer login, which is answered with
			// the dummy response so that the backend fails the exchange
			// (RFC 7628 §3.2.3); the client gets the challenge afterwards.
			next := "*\r\n"
			switch {
			case len(chunks) > 0:
				next, chunks = chunks[0], chunks[1:]
			case t.Creds.Bearer != nil && !b.challenged:
				b.challenged = true
				b.challenge = session.DecodeBearerChallenge([]byte(r.Text))
				next = session.EncodeChallenge(session.BearerDummyResponse(t.Creds.Bearer.Mechanism)) + "\r\n"
			}
			if _, err := be.WriteString(next); err != nil {
				return nil, phaseError("login", err)
			}
			if err := be.Flush(); err != nil {
				return nil, phaseError("login", err)
			}
		case r.Tag == "*":
			switch {
			case sentID && r.Data == "ID":
			case r.Data == "CAPABILITY":
				postCaps = imapwire.ParseCapabilities(r.DataArgs)
				untagged = append(untagged, r.Raw)
			case r.Status == "BYE":
				return nil, phaseError("login", fmt.Errorf("backend said %q", trunc(r.Raw)))
			default:
				untagged = append(untagged, r.Raw)
			}
		case r.Tag == tagID:
			// The ID carries the client's address, which the backend logs
			// and may check access against (Dovecot's allow_nets): if the
			// backend did not take it, the pipelined login must not be
			// used as the proxy's own. Fail closed.
			if r.Status != "OK" {
				return nil, phaseError("ID", fmt.Errorf("%w: backend answered %q", errIDRefused, trunc(r.Raw)))
			}
			sentID = false
			untagged = untagged[:0]
		case r.Tag == tagLogin:
			if sentID {
				return nil, phaseError("ID", fmt.Errorf("%w: login answered before ID", errIDRefused))
			}
			return b.loginResult(r, untagged, postCaps, clientTag)
		default:
			return nil, phaseError("login", fmt.Errorf("unexpected response %q", trunc(r.Raw)))
		}
	}
}

// greeting reads the backend's greeting, which must be "* OK", and learns
// its capabilities (from the greeting, else with CAPABILITY).
func (b *backend) greeting() error {
	g, err := b.rr.Read()
	if err != nil {
		return phaseError("reading greeting", err)
	}
	if g.Tag != "*" || g.Status != "OK" {
		return phaseError("reading greeting", fmt.Errorf("%w: %q", session.ErrBackendGreeting, trunc(g.Raw)))
	}
	if g.Code == "CAPABILITY" {
		b.caps = imapwire.ParseCapabilities(g.CodeArgs)
		return nil
	}
	return b.capability()
}

// loginResult turns the backend's tagged response into the client's reply.
func (b *backend) loginResult(r *imapwire.Response, untagged [][]byte, postCaps []string, clientTag string) ([]byte, error) {
	var reply bytes.Buffer
	for _, u := range untagged {
		reply.Write(u)
	}
	switch r.Status {
	case "OK":
		switch {
		case r.Code == "CAPABILITY":
			// Byte-exact, with the client's tag.
			reply.WriteString(clientTag)
			reply.Write(r.Raw[len(tagLogin):])
		default:
			if postCaps == nil {
				var err error
				if postCaps, err = b.capabilityAfterLogin(); err != nil {
					return nil, err
				}
			}
			text := r.Text
			if r.Code != "" {
				// Keep the backend's own code out of the way of CAPABILITY.
				text = strings.TrimSpace(text)
			}
			if text == "" {
				text = "Logged in"
			}
			fmt.Fprintf(&reply, "%s OK [CAPABILITY %s] %s\r\n", clientTag, strings.Join(postCaps, " "), sanitize(text))
		}
		return reply.Bytes(), nil
	case "NO", "BAD":
		code := ""
		if r.Code != "" {
			code = "[" + r.Code
			if r.CodeArgs != "" {
				code += " " + r.CodeArgs
			}
			code += "] "
		}
		text := sanitize(r.Text)
		if text == "" {
			text = "Authentication failed."
		}
		fmt.Fprintf(&reply, "%s NO %s%s\r\n", clientTag, code, text)
		rej := &session.BackendRejected{Reply: reply.Bytes(), Text: strings.TrimSpace(string(trunc(r.Raw))), Challenge: b.challenge}
		switch r.Code {
		case "UNAVAILABLE", "SERVERBUG", "LIMIT", "INUSE", "CONTACTADMIN":
			// Not the credentials' fault (RFC 5530): do not count it.
			rej.Temporary = true
		}
		return nil, rej
	}
	return nil, phaseError("login", fmt.Errorf("unexpected response %q", trunc(r.Raw)))
}

// capability runs CAPABILITY and stores the result.
func (b *backend) capability() error {
	caps, err := b.simple(tagCapa, "CAPABILITY")
	if err != nil {
		return phaseError("CAPABILITY", err)
	}
	b.caps = caps
	return nil
}

func (b *backend) capabilityAfterLogin() ([]string, error) {
	caps, err := b.simple(tagCapa, "CAPABILITY")
	if err != nil {
		return nil, phaseError("CAPABILITY after login", err)
	}
	if caps == nil {
		return nil, phaseError("CAPABILITY after login", errors.New("no capabilities"))
	}
	return caps, nil
}

// simple sends "tag CMD" and reads to its tagged OK, collecting any
// capabilities seen on the way.
func (b *backend) simple(tag, cmd string) ([]string, error) {
	if _, err := b.be.WriteString(tag + " " + cmd + "\r\n"); err != nil {
		return nil, err
	}
	if err := b.be.Flush(); err != nil {
		return nil, err
	}
	var caps []string
	for n := 0; n <= backendMaxUntagged; n++ {
		r, err := b.rr.Read()
		if err != nil {
			return nil, err
		}
		switch {
		case r.Tag == "*" && r.Data == "CAPABILITY":
			caps = imapwire.ParseCapabilities(r.DataArgs)
		case r.Tag == "*" && r.Status == "BYE":
			return nil, fmt.Errorf("backend said %q", trunc(r.Raw))
		case r.Tag == "*":
		case r.Tag == tag && r.Status == "OK":
			if r.Code == "CAPABILITY" {
				caps = imapwire.ParseCapabilities(r.CodeArgs)
			}
			return caps, nil
		case r.Tag == tag:
			return nil, fmt.Errorf("backend answered %q", trunc(r.Raw))
		default:
			return nil, fmt.Errorf("unexpected response %q", trunc(r.Raw))
		}
	}
	return nil, errors.New("too many untagged responses")
}

// starttls upgrades the backend connection and refreshes capabilities.
func (b *backend) starttls(ctx context.Context, bk *routing.Backend) error {
	if !imapwire.HasCapability(b.caps, "STARTTLS") {
		return phaseError("STARTTLS", errors.New("backend does not offer STARTTLS"))
	}
	if _, err := b.simple(tagStartTLS, "STARTTLS"); err != nil {
		return phaseError("STARTTLS", err)
	}
	cfg, err := b.tlsConfig(bk)
	if err != nil {
		return phaseError("STARTTLS", err)
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if err := b.be.StartTLSClient(ctx, cfg, timeout); err != nil {
		return phaseError("STARTTLS handshake", err)
	}
	// Restore the deadline the handshake cleared.
	if dl, ok := ctx.Deadline(); ok {
		_ = b.be.SetDeadline(dl)
	}
	// Capabilities learnt before TLS must be discarded.
	b.rr = imapwire.NewResponseReader(b.be.R, backendMaxLine, backendMaxLiterals)
	return b.capability()
}

// writeID writes the ID command carrying the client's address (Dovecot's
// x-originating-ip convention; honoured when the proxy is in the backend's
// login_trusted_networks) and the client's own ID fields.
//
// Each pair is written whole or not at all (appendIDPair), and a client
// pair is checked again here (forwardableIDPair), so that whatever idCommand
// let through, the list cannot shift into client values read as keys, and
// no reserved key carries a client's value.
func (b *backend) writeID(out *bytes.Buffer) {
	c := b.s.c
	appendID(out, c.Remote, c.Local, c.ID, b.s.id)
}

// appendID appends the ID command for the backend: the proxy's fields
// (the client's address and port, the address and port it connected to,
// the session id), then the client's forwardable fields.
func appendID(out *bytes.Buffer, remote, local netip.AddrPort, sessionID string, client []idParam) {
	out.WriteString(tagID + " ID (")
	n := 0
	pair := func(p idParam) {
		if n > 0 {
			out.WriteByte(' ')
		}
		if appendIDPair(out, p) {
			n++
		} else if n > 0 {
			out.Truncate(out.Len() - 1)
		}
	}
	pair(idParam{key: "x-originating-ip", value: remote.Addr().String()})
	pair(idParam{key: "x-originating-port", value: strconv.Itoa(int(remote.Port()))})
	pair(idParam{key: "x-connected-ip", value: local.Addr().String()})
	pair(idParam{key: "x-connected-port", value: strconv.Itoa(int(local.Port()))})
	pair(idParam{key: "x-session-id", value: sessionID})
	for i, p := range client {
		if i >= maxClientIDPairs {
			break
		}
		if forwardableIDPair(p) {
			pair(p)
		}
	}
	out.WriteString(")\r\n")
}

// appendIDPair appends `"key" "value"` (or `"key" NIL`) to out if both can
// be written as quoted strings, and reports whether it did; out is
// unchanged otherwise.
func appendIDPair(out *bytes.Buffer, p idParam) bool {
	// Quoted straight into out's spare room: no string per key and value.
	b, ok := imapwire.AppendQuote(out.AvailableBuffer(), p.key)
	if !ok || p.key == "" {
		return false
	}
	b = append(b, ' ')
	if p.nilValue {
		b = append(b, "NIL"...)
	} else if b, ok = imapwire.AppendQuote(b, p.value); !ok {
		return false
	}
	out.Write(b)
	return true
}

// loginChunks returns the login command split at the points where the
// backend must answer "+" first (synchronizing literals, SASL without
// SASL-IR).
func (b *backend) loginChunks(c session.Credentials) ([]string, error) {
	if c.Bearer != nil {
		// The client's mechanism and message, as it sent them.
		mech := c.Bearer.Mechanism
		if !imapwire.HasCapability(b.caps, "AUTH="+mech) {
			return nil, phaseError("login", fmt.Errorf("backend does not offer AUTH=%s", mech))
		}
		ir := session.EncodeChallenge(c.Bearer.Message)
		if imapwire.HasCapability(b.caps, "SASL-IR") {
			return []string{tagLogin + " AUTHENTICATE " + mech + " " + ir + "\r\n"}, nil
		}
		return []string{tagLogin + " AUTHENTICATE " + mech + "\r\n", ir + "\r\n"}, nil
	}
	if imapwire.HasCapability(b.caps, "AUTH=PLAIN") {
		ir := session.PlainResponse(c)
		if imapwire.HasCapability(b.caps, "SASL-IR") {
			return []string{tagLogin + " AUTHENTICATE PLAIN " + ir + "\r\n"}, nil
		}
		return []string{tagLogin + " AUTHENTICATE PLAIN\r\n", ir + "\r\n"}, nil
	}
	if imapwire.HasCapability(b.caps, "LOGINDISABLED") {
		return nil, phaseError("login", errors.New("backend offers neither AUTH=PLAIN nor LOGIN"))
	}
	if c.AuthzID != "" {
		return nil, phaseError("login", errors.New("backend lacks AUTH=PLAIN, needed for an authorization identity"))
	}
	if strings.ContainsRune(c.User, 0) || strings.ContainsRune(c.Password, 0) {
		return nil, &session.BackendRejected{Reply: nil, Text: "NUL in credentials"}
	}
	// Literals carry any byte safely (nginx does the same).
	if imapwire.HasCapability(b.caps, "LITERAL+") {
		return []string{fmt.Sprintf("%s LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n", tagLogin, len(c.User), c.User, len(c.Password), c.Password)}, nil
	}
	return []string{
		fmt.Sprintf("%s LOGIN {%d}\r\n", tagLogin, len(c.User)),
		fmt.Sprintf("%s {%d}\r\n", c.User, len(c.Password)),
		c.Password + "\r\n",
	}, nil
}

// trunc shortens backend text quoted in errors and logs.
func trunc(b []byte) []byte {
	b = bytes.TrimRight(b, "\r\n")
	if len(b) > 200 {
		return append(b[:200:200], "..."...)
	}
	return b
}

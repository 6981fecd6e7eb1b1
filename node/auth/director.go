package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// maxWaitPolls bounds WAIT re-polls of one attempt (nginx has no bound).
const maxWaitPolls = 20

// defaultMaxWait bounds an Auth-Wait when the listener has no
// preauth_timeout.
const defaultMaxWait = 60 * time.Second

// Director decides logins with an auth_http server: it implements
// session.Director.
type Director struct {
	Client  *Client
	Cache   *Cache   // nil: no cache
	Metrics *Metrics // nil: none
	Log     *slog.Logger

	// Backend returns the routing table's backend with the given id, or
	// nil. When Auth-Server names one, that backend is used with its own
	// port, TLS and forwarding settings (Auth-Port is then ignored).
	Backend func(id string) *routing.Backend
	// Forward is how the client's address reaches a backend the auth
	// server gave as an address (nginx passes none).
	Forward routing.ForwardMode
	// Relaxed lifts nginx's limits: Auth-Server may be a host name.
	Relaxed bool
}

// Direct implements session.Director.
func (d *Director) Direct(ctx context.Context, a *session.Attempt) (*session.Target, error) {
	c := a.Client
	req := &Request{
		Method: method(a.Creds), User: a.Creds.User, Pass: a.Creds.Password,
		Protocol: ProtocolName(c.Listener.Protocol), Attempt: a.Number,
		ClientIP: c.Remote.Addr(), TLS: TLSInfoOf(c.TLSState()),
	}
	if c.Listener.Protocol == routing.Submission {
		req.ClientHost = "[UNAVAILABLE]"
	}
	if !req.ClientIP.IsValid() {
		req.ClientIP = c.Peer.Addr()
	}
	if c.Proxied {
		req.Proxy = &ProxyInfo{Addr: c.Remote, ServerAddr: c.Local}
	}
	var key cacheKey
	if d.Cache != nil {
		scope := req.Protocol + "\x00" + c.Listener.Name + "\x00" + req.Method
		if req.TLS != nil {
			scope += "\x00tls"
		}
		key = d.Cache.key(scope, a.Creds.AuthzID, a.Creds.User, a.Creds.Password)
		hit := d.Cache.get(key)
		d.Metrics.cache(hit)
		if hit != nil {
			return d.decide(c, a, hit)
		}
	}
	for poll := 0; ; poll++ {
		start := time.Now()
		var resp *Response
		var err error
		netx.Block(ctx, func() { resp, err = d.Client.Do(ctx, req) })
		if err != nil {
			d.Metrics.request("error", time.Since(start))
			return nil, d.internal(c, err)
		}
		if resp.Wait && !resp.HasErr {
			d.Metrics.request("wait", time.Since(start))
			if poll+1 >= maxWaitPolls {
				return nil, d.internal(c, &Error{ErrKindInvalid, fmt.Errorf("still WAIT after %d polls", maxWaitPolls)})
			}
			var err error
			netx.Block(ctx, func() { err = sleep(ctx, d.waitFor(c, resp)) })
			if err != nil {
				return nil, &session.Refusal{Kind: session.RefuseUnavailable, Text: "auth_http: " + err.Error()}
			}
			continue
		}
		if resp.HasErr {
			d.Metrics.request("refused", time.Since(start))
		} else {
			d.Metrics.request("ok", time.Since(start))
		}
		t, err := d.decide(c, a, resp)
		if d.Cache != nil && (err == nil || resp.HasErr) {
			d.Cache.put(key, resp)
		}
		return t, err
	}
}

// decide turns a final answer into a target or a refusal.
func (d *Director) decide(c *session.Client, a *session.Attempt, r *Response) (*session.Target, error) {
	if r.HasErr {
		ref := &session.Refusal{Kind: session.RefuseAuth, Text: "auth_http: " + r.Err, Reply: clientText(r.Err), Code: clientText(r.ErrCode)}
		if a.Creds.IsBearer() && r.ErrorSASL != "" {
			// Not base64 or too long: the client gets the failure alone.
			ref.Challenge = session.DecodeBearerChallenge([]byte(r.ErrorSASL))
		}
		if r.WaitSecs > 0 {
			ref.Wait = d.waitFor(c, r)
		} else {
			ref.Close = true
		}
		return nil, ref
	}
	if r.Server == "" || r.Port == "" {
		if r.Server == "" || d.Backend == nil || d.Backend(r.Server) == nil {
			return nil, d.internal(c, &Error{ErrKindInvalid, errors.New("did not send server or port")})
		}
	}
	be, err := d.backend(c.Listener.Protocol, r)
	if err != nil {
		return nil, d.internal(c, err)
	}
	if be.State == routing.StateDisabled {
		return nil, &session.Refusal{Kind: session.RefuseUnavailable, Text: "auth_http: backend " + be.ID + " is disabled"}
	}
	creds := a.Creds
	// As nginx: the backend login is for the identity the auth server
	// approved; a SASL authorization identity it never saw is dropped.
	creds.AuthzID = ""
	if r.HasUser {
		creds.User = r.User
	}
	if r.HasPass {
		creds.Password = r.Pass
	}
	if creds.Bearer != nil {
		if r.HasPass {
			// As nginx with its bearer patch: the auth server checked the
			// token and gave the password to log in with at the backend.
			creds.Mechanism, creds.Bearer = "PLAIN", nil
		} else {
			// The backend checks the token: the client's message, for the
			// user the auth server names.
			if !session.ValidBearerUser(creds.User) {
				return nil, d.internal(c, &Error{ErrKindInvalid, errors.New("sent an Auth-User unfit for a bearer token login")})
			}
			creds.Password = a.Creds.Password
			creds.Bearer = creds.Bearer.WithUser(creds.User)
		}
	}
	// The auth server approved the login: a submission backend that trusts
	// the proxy may be told who logged in (XCLIENT LOGIN) instead.
	return &session.Target{Backend: be, Creds: creds, Verified: true}, nil
}

// method is Auth-Method for credentials: nginx's "plain" for every
// password mechanism, the bearer mechanism's name in lower case.
func method(c session.Credentials) string {
	if c.IsBearer() {
		return strings.ToLower(c.Mechanism)
	}
	return "plain"
}

// backend resolves Auth-Server and Auth-Port.
func (d *Director) backend(p routing.Protocol, r *Response) (*routing.Backend, error) {
	if _, err := netip.ParseAddr(r.Server); err != nil && d.Backend != nil {
		if b := d.Backend(r.Server); b != nil {
			if b.Port(p) == 0 {
				return nil, &Error{ErrKindInvalid, fmt.Errorf("backend %q does not serve %s", r.Server, p)}
			}
			cp := *b
			return &cp, nil
		}
	}
	port, ok := atoi([]byte(r.Port))
	if !ok || port < 1 || port > 65535 {
		return nil, &Error{ErrKindInvalid, fmt.Errorf("sent invalid server port %q", r.Port)}
	}
	addr, err := netip.ParseAddr(r.Server)
	switch {
	case err == nil && addr.Zone() == "":
	case d.Relaxed && validHostname(r.Server):
	default:
		return nil, &Error{ErrKindInvalid, fmt.Errorf("sent invalid server address %q", r.Server)}
	}
	b := &routing.Backend{
		ID:   net.JoinHostPort(r.Server, strconv.Itoa(port)),
		Host: r.Server, TLS: routing.TLSNone, Forward: d.Forward, State: routing.StateActive,
	}
	switch p {
	case routing.POP3:
		b.POP3Port = port
	case routing.Sieve:
		b.SievePort = port
	case routing.Submission:
		b.SubmissionPort = port
	default:
		b.IMAPPort = port
	}
	return b, nil
}

func validHostname(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !alnum(c) && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

// internal logs a failed exchange (with the server's address, never the
// request) and returns the refusal that gives the client nginx's
// internal-error reply.
func (d *Director) internal(c *session.Client, err error) error {
	kind := ErrKindIO
	var e *Error
	if errors.As(err, &e) {
		kind = e.Kind
	}
	d.Metrics.failed(kind)
	log := d.Log
	if log == nil {
		log = c.Log
	}
	if log != nil {
		log.Warn("auth_http server failed", "session", c.ID, "auth_server", d.Client.Server(), "kind", kind, "error", err.Error())
	}
	return &session.Refusal{Kind: session.RefuseInternal, Text: "auth_http server " + d.Client.Server() + ": " + err.Error()}
}

// waitFor returns Auth-Wait as a duration, capped by the listener's
// preauth_timeout: the client waits idle meanwhile.
func (d *Director) waitFor(c *session.Client, r *Response) time.Duration {
	if r.WaitSecs <= 0 {
		return 0
	}
	limit := c.Listener.Limits.PreAuthTimeout
	if limit <= 0 {
		limit = defaultMaxWait
	}
	return min(time.Duration(r.WaitSecs)*time.Second, limit)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// clientText makes an Auth-Status text safe in a protocol line: control
// characters (which the parser lets through, as nginx's does) become '?'.
func clientText(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c == 0x7f {
			b[i] = '?'
		}
	}
	return string(b)
}

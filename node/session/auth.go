package session

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/routing"
)

// Credentials the client presented. Password is never logged.
type Credentials struct {
	// Mechanism: "LOGIN" (IMAP LOGIN), "USER" (POP3 USER/PASS), "PLAIN",
	// "LOGIN-SASL", or a bearer mechanism (MechOAuthBearer, MechXOAuth2).
	Mechanism string
	AuthzID   string // SASL authorization identity; "" if none
	User      string // authentication identity; for a bearer login, the user the message names
	Password  string // for a bearer login, the token (never logged either)
	// Bearer is set for an OAUTHBEARER or XOAUTH2 login: the client's
	// message, replayed to the backend as it is (Bearer.Message). Such a
	// login has no master-user form: the token authenticates the user it
	// names.
	Bearer *Bearer
}

// Len is how many bytes the credentials take; Limits.MaxLiteral bounds it.
func (c Credentials) Len() int {
	if c.Bearer != nil {
		return len(c.Bearer.Message)
	}
	return len(c.AuthzID) + len(c.User) + len(c.Password)
}

// IsBearer reports whether the credentials are an OAuth bearer login.
func (c Credentials) IsBearer() bool { return c.Bearer != nil }

// RouteUser is the user whose mailbox the session will open, which the
// routing table is asked about: the SASL authorization identity when one
// was given (a master user or an administrator logging in as someone
// else), else, with a master-user separator (masterSep, Dovecot's
// auth_master_user_separator; "" for none), the part of "user*master"
// before it, else the login name. The backend is still sent the
// credentials as the client gave them: it checks the master's password.
func (c Credentials) RouteUser(masterSep string) string {
	if c.Bearer != nil {
		return c.User
	}
	if c.AuthzID != "" {
		return c.AuthzID
	}
	if user, _, ok := splitMaster(c.User, masterSep); ok {
		return user
	}
	return c.User
}

// AuthUser is the identity whose password the backend checks: the master
// user of "user*master" (with masterSep), else the authentication
// identity (with a SASL authorization identity too, the authentication
// identity is the one that logs in). The failed-login throttle counts per
// AuthUser, so that guesses at a master's password are counted together
// whatever user they name.
func (c Credentials) AuthUser(masterSep string) string {
	if c.AuthzID == "" && c.Bearer == nil {
		if _, master, ok := splitMaster(c.User, masterSep); ok {
			return master
		}
	}
	return c.User
}

// splitMaster splits "user*master" at the first sep (as Dovecot does). A
// name without sep, or with nothing on one side of it, is no master login.
func splitMaster(name, sep string) (user, master string, ok bool) {
	if sep == "" {
		return "", "", false
	}
	i := strings.Index(name, sep)
	if i <= 0 || i+len(sep) >= len(name) {
		return "", "", false
	}
	return name[:i], name[i+len(sep):], true
}

// Attempt is one login attempt, as seen by a Director.
type Attempt struct {
	Client *Client
	Creds  Credentials
	Number int // 1 for the first attempt of the session
}

// Target is where a login goes and with which credentials.
type Target struct {
	Backend *routing.Backend
	Creds   Credentials
	// SharedStorage: the backend was chosen from a shared_storage pool, so
	// the session binds the user's affinity to it (Env.Affinity).
	SharedStorage bool
	// Steered: the user's affinity chose the backend, not the hash.
	Steered bool
	// Verified: the Director checked the credentials itself (an auth_http
	// server answered OK), so a backend that trusts the proxy may be told
	// who logged in instead of being given the password (SMTP XCLIENT
	// LOGIN). Passthrough never sets it: there only the backend checks.
	Verified bool
}

// Refusal is a login refused before reaching a backend.
type Refusal struct {
	Kind RefusalKind
	Text string // why, for the log; clients get the protocol's fixed reply
	// Reply, if set, replaces the fixed reply's text: IMAP "<tag> NO
	// <Reply>", POP3 "-ERR <Reply>" (e.g. an auth_http server's
	// Auth-Status). It must not contain CR or LF.
	Reply string
	// Wait delays the reply; the session is kept meanwhile (at least the
	// listener's auth_failure_delay still applies to RefuseAuth).
	Wait time.Duration
	// Close ends the session after the reply.
	Close bool
	// Challenge, for a bearer login, is the SASL error challenge the
	// client is sent before the reply (auth_http's Auth-Error-SASL,
	// decoded: an RFC 7628 §3.2.2 JSON status); see Outcome.Challenge.
	Challenge []byte
	// Code, if set, is the SMTP reply code and enhanced status code to
	// send with Reply ("535 5.7.8", an auth_http server's
	// Auth-Error-Code); only submission uses it.
	Code string
}

// RefusalKind classifies a refusal.
type RefusalKind int

const (
	RefuseAuth        RefusalKind = iota // as if the password were wrong
	RefuseUnavailable                    // try again later
	// RefuseInternal: the authentication source failed (e.g. an
	// auth_http server that cannot be reached or answers garbage). The
	// client gets "* BAD internal server error" / "-ERR internal server
	// error" and the session ends, as with nginx.
	RefuseInternal
)

func (r *Refusal) Error() string { return fmt.Sprintf("login refused: %s", r.Text) }

// Throttle limits failed logins (node/throttle). It is keyed by the
// client's address and the authentication identity (Credentials.User).
type Throttle interface {
	// Begin is asked before the Director. A non-empty scope (why: "ip",
	// "user_ip", "user") refuses the attempt with ResultLimit without
	// contacting the backend or the authentication source. Otherwise the
	// attempt is counted as in flight until the returned ThrottleAttempt is
	// ended, so that parallel attempts are held to the limits; Begin may
	// wait (until ctx is done) for attempts in flight to end.
	Begin(ctx context.Context, client netip.Addr, user string) (ThrottleAttempt, string)
}

// ThrottleAttempt is an attempt in flight (node/throttle's Pending: an
// unnamed interface type, the same in both packages). Exactly one method
// ends it; later calls do nothing.
type ThrottleAttempt = interface {
	// Failed records a failed login (ResultBadCreds) and returns how long
	// its reply should wait (at least the listener's AuthFailureDelay
	// applies anyway).
	Failed() time.Duration
	// Succeeded records a successful login.
	Succeeded()
	// Release ends an attempt whose outcome says nothing about the
	// password (backend unavailable, timeout, cancelled, temporary).
	Release()
}

// Director decides where a login goes.
type Director interface {
	Direct(ctx context.Context, a *Attempt) (*Target, error)
}

// RouteDirector is the default "passthrough" director: the route comes
// from the routing table and the backend checks the password.
type RouteDirector struct {
	Router routing.Router
	// Lookup, if set, routes instead of Router: a router that may ask a
	// directory source about a user the table holds no rule for (the
	// on-miss lookup, routing/source/syncer.OnMiss), waiting at most its
	// own timeout. It answers routing.ErrUnavailable when the source
	// cannot answer: the client is told to try later, never that the
	// password was wrong.
	Lookup ContextRouter
}

// ContextRouter is a router whose lookup may wait on I/O, bounded by ctx
// and its own timeout.
type ContextRouter interface {
	RouteContext(ctx context.Context, req routing.Request) (routing.Route, error)
}

// Direct implements Director.
func (d RouteDirector) Direct(ctx context.Context, a *Attempt) (*Target, error) {
	req := routing.Request{User: a.Creds.RouteUser(a.Client.Env.MasterSeparator()), Protocol: a.Client.Listener.Protocol, Pool: a.Client.Listener.Pool}
	var r routing.Route
	var err error
	if d.Lookup != nil {
		if a, ok := d.Lookup.(interface{ Answers(routing.Request) bool }); ok && a.Answers(req) {
			r, err = d.Lookup.RouteContext(ctx, req)
		} else {
			// It may ask a directory source: not on an event loop's
			// goroutine (netx.Block).
			netx.Block(ctx, func() { r, err = d.Lookup.RouteContext(ctx, req) })
		}
	} else {
		r, err = d.Router.Route(req)
	}
	switch {
	case errors.Is(err, routing.ErrNoRoute):
		// Do not tell the client the user does not exist.
		return nil, &Refusal{Kind: RefuseAuth, Text: err.Error()}
	case errors.Is(err, routing.ErrUnavailable), errors.Is(err, routing.ErrNotReady):
		// The table not caught up yet (a node starting) is the proxy's
		// condition, never a wrong password: "try again later".
		return nil, &Refusal{Kind: RefuseUnavailable, Text: err.Error()}
	case err != nil:
		return nil, err
	}
	return &Target{Backend: r.Backend, Creds: renamed(a.Creds, r.Login, a.Client.Env.MasterSeparator()), SharedStorage: r.SharedStorage, Steered: r.Steered}, nil
}

// renamed returns the credentials to log in to the backend with when the
// user's rule renames the user (routing.Target.Login, Perdition's popmap
// "user: newname@host"): the name of the mailbox the session opens
// (RouteUser: the authorization identity if one was given, else the user
// part of a master login "user*master", else the user) becomes login; a
// master's name and the password stay the client's. The session is still
// the client's user for routing, affinity and logs.
func renamed(c Credentials, login, masterSep string) Credentials {
	if login == "" {
		return c
	}
	if c.Bearer != nil {
		c.User = login
		c.Bearer = c.Bearer.WithUser(login)
		return c
	}
	if c.AuthzID != "" {
		c.AuthzID = login
	} else if _, master, ok := splitMaster(c.User, masterSep); ok {
		c.User = login + masterSep + master
	} else {
		c.User = login
	}
	return c
}

// Result of a login attempt.
type Result string

const (
	ResultOK          Result = "ok"
	ResultBadCreds    Result = "bad_credentials"
	ResultUnavailable Result = "backend_unavailable"
	ResultTimeout     Result = "timeout"
	ResultLimit       Result = "limit" // refused by the failed-login throttle (Env.Throttle)
	ResultError       Result = "error"
)

// LoginEvent describes a finished attempt (for logs and metrics).
type LoginEvent struct {
	User string // whose mailbox (Credentials.RouteUser)
	// Login is the name that logged in when it is not User (a master
	// user, a SASL authentication identity acting for User); "" else.
	Login string
	// Mechanism is the bearer mechanism of an OAuth login (MechOAuthBearer,
	// MechXOAuth2), "" for a password login.
	Mechanism string
	BackendID string
	Result    Result
	Latency   time.Duration
	// Connect is how long connecting to the backend took (TCP, PROXY
	// header, implicit TLS); 0 when no connection was made.
	Connect time.Duration
	Err     error
}

// BackendLogin performs the protocol's login on a connected backend.
// It returns the reply for the client on success. A *BackendRejected error
// means the backend refused the credentials; any other error means the
// backend could not be used.
type BackendLogin func(ctx context.Context, be *netx.Stream, t *Target) (reply []byte, err error)

// BackendRejected is a backend's refusal of the credentials.
type BackendRejected struct {
	Reply []byte // the protocol reply to show the client (already formatted)
	Text  string // for logs
	// Temporary: the backend refused for a reason that is not the
	// credentials (e.g. IMAP NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP] or
	// [IN-USE]). The reply is still shown, but the attempt does not count as
	// an authentication failure.
	Temporary bool
	// Challenge is the backend's error challenge to a bearer login,
	// decoded (RFC 7628 §3.2.2: a JSON status), which the backend login
	// has already answered with the dummy response (§3.2.3); see
	// Outcome.Challenge.
	Challenge []byte
}

// MaxBearerChallenge bounds an error challenge relayed to a client
// (decoded); a longer one is not relayed (the client gets the reply
// alone). RFC 7628's JSON status is a few dozen bytes.
const MaxBearerChallenge = 4096

// DecodeBearerChallenge decodes a backend's base64 error challenge to a
// bearer login, for BackendRejected.Challenge: nil if it is not base64, is
// empty or is longer than MaxBearerChallenge.
func DecodeBearerChallenge(b64 []byte) []byte {
	b64 = bytes.TrimSpace(b64)
	if len(b64) == 0 || base64.StdEncoding.DecodedLen(len(b64)) > MaxBearerChallenge+3 {
		return nil
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(b64)))
	n, err := base64.StdEncoding.Decode(out, b64)
	if err != nil || n == 0 || n > MaxBearerChallenge {
		return nil
	}
	return out[:n]
}

func (e *BackendRejected) Error() string { return "backend rejected login: " + e.Text }

// Outcome of Client.Login.
type Outcome struct {
	Result  Result
	Handoff *Handoff // on ResultOK
	Reply   []byte   // the reply to send the client (success or backend rejection)
	Refusal *Refusal // refused before the backend
	// Challenge, for a failed bearer login (OAUTHBEARER, XOAUTH2): the
	// SASL error challenge to send the client first (RFC 7628 §3.2.2, the
	// server's JSON status, decoded; from the backend or the auth_http
	// server). The client answers it with a dummy response (§3.2.3), then
	// gets the reply as usual; the exchange with the backend is already
	// over. nil otherwise.
	Challenge []byte
	// Close: the session must end after the reply (too many failures).
	Close bool
	Err   error
	// Connect: time to connect to the backend, when a connection was made.
	Connect time.Duration
}

// Login runs one attempt: route, dial, backend login. It applies the
// failure delay and counts failures; the caller formats and sends replies.
func (c *Client) Login(ctx context.Context, creds Credentials, login BackendLogin) Outcome {
	start := time.Now()
	c.attempts++
	lim := c.limits()
	th := c.Env.Throttle
	var out Outcome
	var pend ThrottleAttempt
	sep := c.Env.MasterSeparator()
	if th != nil {
		// Waiting for attempts in flight is bounded like a backend
		// dialogue.
		wctx, cancel := context.WithTimeout(ctx, lim.BackendTimeout)
		// Waiting here for other logins to end must not keep them
		// from the gate slot they need (netx.Gate).
		hold := netx.HoldFrom(ctx)
		hold.Release()
		p, scope := th.Begin(wctx, c.Remote.Addr(), creds.AuthUser(sep))
		hold.Acquire()
		cancel()
		if scope != "" {
			// Refused before any authentication source is asked.
			ref := &Refusal{Kind: RefuseUnavailable, Text: "too many failed logins (" + scope + ")"}
			out = Outcome{Result: ResultLimit, Refusal: ref, Err: ref}
		} else if p != nil {
			pend = p
			// Ended below as soon as the outcome is known; this covers a
			// panic in between.
			defer pend.Release()
		}
	}
	if out.Result == "" {
		out = c.login(ctx, lim.BackendTimeout, creds, login)
	}
	ev := LoginEvent{User: creds.RouteUser(sep), Result: out.Result, Latency: time.Since(start), Connect: out.Connect, Err: out.Err}
	if creds.User != ev.User {
		ev.Login = creds.User
	}
	if creds.IsBearer() {
		ev.Mechanism = creds.Mechanism
	}
	if out.Handoff != nil {
		ev.BackendID = out.Handoff.BackendID
	}
	var wait time.Duration
	if out.Result == ResultBadCreds || out.Result == ResultLimit {
		c.authFailures++
		if max := lim.MaxAuthFailures; max > 0 && c.authFailures >= max {
			out.Close = true
		}
		// Answer no earlier than AuthFailureDelay after the attempt began
		// (the backend's own delay counts toward it), or the throttle's
		// longer delay after recent failures. The failure is recorded
		// before the wait: a client hanging up early is counted too.
		delay := lim.AuthFailureDelay
		if pend != nil && out.Result == ResultBadCreds {
			delay = max(delay, pend.Failed())
		}
		wait = delay - time.Since(start)
	}
	if pend != nil {
		if out.Result == ResultOK {
			pend.Succeeded()
		}
		// Anything else says nothing about the password: the attempt is no
		// longer in flight (a no-op after Failed or Succeeded).
		pend.Release()
	}
	if out.Refusal != nil {
		if out.Refusal.Close {
			out.Close = true
		}
		// A director's own delay (auth_http Auth-Wait) counts from when
		// its answer came.
		wait = max(wait, out.Refusal.Wait)
	}
	if wait > 0 {
		hold := netx.HoldFrom(ctx)
		hold.Release()
		netx.Block(ctx, func() {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		})
		hold.Acquire()
	}
	c.logLogin(ev)
	if c.Env.OnLogin != nil {
		c.Env.OnLogin(c, ev)
	}
	return out
}

func (c *Client) login(ctx context.Context, timeout time.Duration, creds Credentials, login BackendLogin) Outcome {
	dir := c.Env.Director
	if c.Listener.Director != nil {
		dir = c.Listener.Director
	}
	// An authentication source may wait on the network (auth_http, a
	// directory): not with a gate slot (netx.Gate).
	hold := netx.HoldFrom(ctx)
	hold.Release()
	t, err := dir.Direct(ctx, &Attempt{Client: c, Creds: creds, Number: c.attempts})
	hold.Acquire()
	if err != nil {
		var ref *Refusal
		if errors.As(err, &ref) {
			r := ResultBadCreds
			switch ref.Kind {
			case RefuseUnavailable:
				r = ResultUnavailable
			case RefuseInternal:
				r = ResultError
			}
			out := Outcome{Result: r, Refusal: ref, Err: err}
			if creds.IsBearer() && ref.Kind != RefuseInternal {
				out.Challenge = ref.Challenge
			}
			return out
		}
		return Outcome{Result: ResultUnavailable, Refusal: &Refusal{Kind: RefuseUnavailable}, Err: err}
	}
	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dialed := time.Now()
	be, err := c.Env.Dialer.Dial(bctx, t.Backend, c.Listener.Protocol, c.Remote, c.Local)
	if err != nil {
		return Outcome{Result: classify(err), Refusal: &Refusal{Kind: RefuseUnavailable}, Err: err}
	}
	connect := time.Since(dialed)
	// The backend dialogue runs under the context's deadline.
	if dl, ok := bctx.Deadline(); ok {
		_ = be.SetDeadline(dl)
	}
	stop := context.AfterFunc(bctx, func() { _ = be.SetDeadline(time.Now()) })
	reply, err := login(bctx, be, t)
	stop()
	_ = be.SetDeadline(time.Time{})
	if err != nil {
		_ = be.Close()
		var rej *BackendRejected
		if errors.As(err, &rej) {
			out := Outcome{Result: ResultBadCreds, Reply: rej.Reply, Err: err, Connect: connect}
			if rej.Temporary {
				out.Result = ResultUnavailable
			}
			if creds.IsBearer() {
				out.Challenge = rej.Challenge
			}
			return out
		}
		err = fmt.Errorf("backend %s (%s): %w", t.Backend.ID, t.Backend.Addr(c.Listener.Protocol), err)
		return Outcome{Result: classify(err), Refusal: &Refusal{Kind: RefuseUnavailable}, Err: err, Connect: connect}
	}
	return Outcome{
		Result:  ResultOK,
		Connect: connect,
		Reply:   reply,
		Handoff: &Handoff{
			Client: c, Backend: be, User: creds.RouteUser(c.Env.MasterSeparator()),
			BackendID: t.Backend.ID, BackendAt: t.Backend.Addr(c.Listener.Protocol),
			SharedStorage: t.SharedStorage, Steered: t.Steered,
		},
	}
}

func classify(err error) Result {
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		return ResultTimeout
	}
	return ResultUnavailable
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// logLogin writes the access log line: one per login attempt, with
// everything needed without joining other lines (the session id does that
// for the session's start and end).
func (c *Client) logLogin(ev LoginEvent) {
	// slog.Attr values, not key-value pairs: the same line without boxing
	// each value into an interface.
	attrs := make([]slog.Attr, 0, 12)
	if c.Env.Node != "" {
		attrs = append(attrs, slog.String("node", c.Env.Node))
	}
	attrs = append(attrs, slog.String("listener", c.Listener.Name), slog.String("protocol", string(c.Listener.Protocol)),
		slog.String("client", c.Remote.String()), slog.String("user", ev.User))
	if ev.Login != "" {
		attrs = append(attrs, slog.String("login", ev.Login))
	}
	if ev.Mechanism != "" {
		attrs = append(attrs, slog.String("mechanism", ev.Mechanism))
	}
	attrs = append(attrs, slog.String("result", string(ev.Result)),
		slog.Duration("latency", ev.Latency.Round(time.Microsecond)))
	if ev.BackendID != "" {
		attrs = append(attrs, slog.String("backend", ev.BackendID))
	}
	if ev.Err != nil {
		attrs = append(attrs, slog.String("error", ev.Err.Error()))
	}
	LogAttrs(c.Log, slog.LevelInfo, "login", attrs...)
}

// LogAttrs is l.LogAttrs without the caller's program counter, whose
// runtime.Callers was a fifth of a login line's cost: Portico's handlers
// never report the source. For the lines written per session.
func LogAttrs(l *slog.Logger, level slog.Level, msg string, attrs ...slog.Attr) {
	ctx := context.Background()
	h := l.Handler()
	if !h.Enabled(ctx, level) {
		return
	}
	r := slog.NewRecord(time.Now(), level, msg, 0)
	r.AddAttrs(attrs...)
	_ = h.Handle(ctx, r)
}

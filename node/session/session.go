// Package session holds what the IMAP and POP3 pre-login state machines
// share: the client connection and its listener settings, the pre-login
// scaffold (Dialogue: connection state, read and write deadlines, TLS
// upgrade, protocol-error counting, and why a session ended, decided in
// one place), the login orchestration (route, dial, backend login, failure
// delay and limits), and the hand-off to the relay. A protocol front end
// (node/imap, node/pop3) supplies only its words and its command switch
// (Protocol).
//
// The flow is one way: listener -> Client -> Dialogue -> Director (route
// lookup) -> backend dial -> protocol-specific backend login -> Handoff ->
// relay.
package session

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base32"
	"encoding/binary"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/routing"
)

// Limits bound what one client may cost before login. A zero MaxLine,
// MaxLiteral, TLSHandshakeTimeout or BackendTimeout takes its default
// (DefaultLimits): there is no sensible "none" for them. Any other zero
// switches its limit off.
type Limits struct {
	MaxLine             int           // longest command line (bytes)
	MaxLiteral          int           // longest literal / credential (bytes)
	PreAuthTimeout      time.Duration // inactivity allowed before login; also bounds each pre-login write
	PreAuthLifetime     time.Duration // total time allowed before login, however active
	TLSHandshakeTimeout time.Duration
	MaxErrors           int           // protocol errors before the session is ended
	MaxAuthFailures     int           // failed logins before the session is ended
	AuthFailureDelay    time.Duration // a failed login is answered no earlier than this after it began
	BackendTimeout      time.Duration // connect + greeting + login at the backend
	IdleTimeout         time.Duration // after login, no traffic either way
}

// DefaultLimits returns the defaults documented in the README.
func DefaultLimits(p routing.Protocol) Limits {
	l := Limits{
		MaxLine:             8192,
		MaxLiteral:          8192,
		PreAuthTimeout:      60 * time.Second,
		PreAuthLifetime:     3 * time.Minute,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxErrors:           5,
		MaxAuthFailures:     3,
		AuthFailureDelay:    2 * time.Second,
		BackendTimeout:      15 * time.Second,
		IdleTimeout:         30 * time.Minute,
	}
	switch p {
	case routing.POP3:
		l.IdleTimeout = 10 * time.Minute
	case routing.Submission:
		// Postfix's smtpd_timeout: a backend closes an idle session then.
		l.IdleTimeout = 5 * time.Minute
	}
	return l
}

// withDefaults fills the limits a zero cannot switch off (see Limits).
func (l Limits) withDefaults(p routing.Protocol) Limits {
	d := DefaultLimits(p)
	if l.MaxLine <= 0 {
		l.MaxLine = d.MaxLine
	}
	if l.MaxLiteral <= 0 {
		l.MaxLiteral = d.MaxLiteral
	}
	if l.TLSHandshakeTimeout <= 0 {
		l.TLSHandshakeTimeout = d.TLSHandshakeTimeout
	}
	if l.BackendTimeout <= 0 {
		l.BackendTimeout = d.BackendTimeout
	}
	return l
}

// limits are the client's listener's limits with their defaults.
func (c *Client) limits() Limits { return c.Listener.Limits.withDefaults(c.Listener.Protocol) }

// Listener is the configuration a client connection was accepted under.
type Listener struct {
	Name     string
	Protocol routing.Protocol
	TLS      routing.TLSMode
	// TLSConfig serves STARTTLS and implicit TLS; nil when the listener has
	// no certificate (STARTTLS is then not offered).
	TLSConfig *tls.Config
	// OnTLS, if set, is told of each completed client handshake, and
	// whether it resumed a session (metrics). It must not block.
	OnTLS func(resumed bool)
	// AllowPlaintextAuth permits authentication before TLS.
	AllowPlaintextAuth bool
	// BearerMechanisms are the OAuth bearer mechanisms offered and
	// accepted besides PLAIN and LOGIN (MechOAuthBearer, MechXOAuth2;
	// none by default).
	BearerMechanisms []string
	Limits           Limits
	// Director, if set, decides logins on this listener instead of
	// Env.Director (e.g. an auth_http server for one listener only).
	Director Director
	// Pool, if set, routes every login on this listener inside this pool
	// of the routing table, whatever the user's rules say (submission
	// listeners whose mail goes to the submission servers, not to the
	// user's mailbox server).
	Pool string
	// Extra holds the protocol front end's own settings for this
	// listener (node/submission's *ListenerOptions), or nil.
	Extra any
}

// PlaintextAuthOK reports whether authentication is allowed now.
func (l *Listener) PlaintextAuthOK(isTLS bool) bool {
	return isTLS || l.AllowPlaintextAuth
}

// Mechanisms are the SASL mechanisms the listener offers: PLAIN, LOGIN,
// then its bearer mechanisms.
func (l *Listener) Mechanisms() []string {
	if len(l.BearerMechanisms) == 0 {
		return Mechanisms
	}
	return append(append([]string(nil), Mechanisms...), l.BearerMechanisms...)
}

// NewSASL returns the server side of mech (case-insensitive) if the
// listener offers it, else nil.
func (l *Listener) NewSASL(mech string) SASL {
	mech = strings.ToUpper(mech)
	if IsBearerMechanism(mech) {
		if !slices.Contains(l.BearerMechanisms, mech) {
			return nil
		}
		return &bearerSASL{mech: mech}
	}
	return NewSASL(mech)
}

// StartTLSOffered reports whether STARTTLS/STLS should be offered now.
func (l *Listener) StartTLSOffered(isTLS bool) bool {
	return !isTLS && l.TLSConfig != nil && l.TLS != routing.TLSImplicit
}

// Env is what a session needs from the node.
type Env struct {
	Director Director
	Dialer   *Dialer
	Log      *slog.Logger
	// OnLogin, if set, observes every login attempt (metrics, access log).
	OnLogin func(*Client, LoginEvent)
	// Node names this node in the per-login access log line.
	Node string
	// Throttle, if set, delays failed logins' replies progressively and
	// refuses attempts from blocked clients (node/throttle).
	Throttle Throttle
	// Affinity, if set, is told of every relayed session whose backend was
	// chosen from a shared_storage pool (node/affinity).
	Affinity Affinity

	// masterSep is the master-user separator (SetMasterSeparator).
	masterSep atomic.Pointer[string]
}

// SetMasterSeparator sets the master-user separator: a login "user*master"
// (sep "*") is routed to user's backend (Credentials.RouteUser). "" (the
// default) switches master logins off: the name is routed as it is. Safe
// while sessions run (a reload).
func (e *Env) SetMasterSeparator(sep string) { e.masterSep.Store(&sep) }

// MasterSeparator returns the master-user separator ("" for none, also on
// a nil Env).
func (e *Env) MasterSeparator() string {
	if e == nil {
		return ""
	}
	if p := e.masterSep.Load(); p != nil {
		return *p
	}
	return ""
}

// Affinity keeps the users of shared_storage pools on the backend their
// sessions use (node/affinity; the routing lookup asks it where they are).
type Affinity interface {
	// Bind records a relayed session of user on backend until the
	// returned function is called (once). steered: the user's affinity,
	// not the hash, chose the backend. It must not block.
	Bind(user, backend string, steered bool) (unbind func())
}

// Client is a client connection during the pre-login phase.
type Client struct {
	ID       string
	Listener *Listener
	Env      *Env
	Stream   *netx.Stream
	Remote   netip.AddrPort // the client (from the PROXY header when there was one)
	Local    netip.AddrPort // the address the client connected to
	Peer     netip.AddrPort // the TCP peer (the load balancer when proxied)
	Proxied  bool           // Remote/Local came from a PROXY header
	Log      *slog.Logger
	Started  time.Time

	authFailures int
	attempts     int

	// dlMu orders the deadline changes of the pre-login phase against
	// Interrupt and HandOff (which may come from another goroutine).
	dlMu        sync.Mutex
	interrupted bool
	handedOff   bool
}

// Session identifiers: a random per-process prefix and a counter, so they
// are unique across restarts and nodes without a getrandom(2) per session.
var (
	sidPrefix  [4]byte
	sidCounter atomic.Uint64
	sidEnc     = base32.StdEncoding.WithPadding(base32.NoPadding)
)

func init() { _, _ = rand.Read(sidPrefix[:]) }

// NewSessionID returns a short unique identifier, also sent to backends
// (IMAP ID x-session-id, POP3 XCLIENT SESSION) so that logs on both sides
// can be joined.
func NewSessionID() string {
	var b [12]byte // 4 bytes of prefix, then 6 of counter
	binary.BigEndian.PutUint64(b[4:], sidCounter.Add(1)<<16)
	copy(b[:4], sidPrefix[:])
	return sidEnc.EncodeToString(b[:10])
}

// IsTLS reports whether the client connection is encrypted.
func (c *Client) IsTLS() bool { return c.Stream.TLS() != nil }

// TLSState returns the TLS connection state, or nil.
func (c *Client) TLSState() *tls.ConnectionState {
	if t := c.Stream.TLS(); t != nil {
		st := t.ConnectionState()
		return &st
	}
	return nil
}

// ByeWriteGrace is how long a goodbye may take to write once the pre-login
// lifetime is over or the session was interrupted (shutdown, drain).
const ByeWriteGrace = 2 * time.Second

// lifetimeEnd is when the pre-login phase must be over (zero: never).
// c.dlMu is held.
func (c *Client) lifetimeEnd(now time.Time) time.Time {
	d := c.Listener.Limits.PreAuthLifetime
	if d <= 0 {
		return time.Time{}
	}
	if c.Started.IsZero() {
		c.Started = now
	}
	return c.Started.Add(d)
}

// deadlines returns the read and write deadlines for a pre-login step
// starting now: a read waits at most PreAuthTimeout and never past the
// lifetime; a write (a client that does not read its replies blocks it)
// waits at most PreAuthTimeout, and at most ByeWriteGrace past the
// lifetime. c.dlMu is held.
func (c *Client) deadlines(now time.Time) (rd, wr time.Time) {
	if c.interrupted {
		return now, now.Add(ByeWriteGrace)
	}
	if d := c.Listener.Limits.PreAuthTimeout; d > 0 {
		rd, wr = now.Add(d), now.Add(d)
	}
	if end := c.lifetimeEnd(now); !end.IsZero() {
		if rd.IsZero() || end.Before(rd) {
			rd = end
		}
		if g := maxTime(end, now).Add(ByeWriteGrace); wr.IsZero() || g.Before(wr) {
			wr = g
		}
	}
	return rd, wr
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// ArmReadDeadline sets the pre-login deadlines before a client read: the
// read's (inactivity, lifetime) and the write deadline for the replies
// written until the next read (see deadlines).
func (c *Client) ArmReadDeadline() {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	if c.handedOff {
		return
	}
	rd, wr := c.deadlines(time.Now())
	_ = c.Stream.SetReadDeadline(rd)
	_ = c.Stream.SetWriteDeadline(wr)
}

// ArmWriteDeadline sets the pre-login write deadline before replies are
// flushed (see deadlines).
func (c *Client) ArmWriteDeadline() {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	if c.handedOff {
		return
	}
	_, wr := c.deadlines(time.Now())
	_ = c.Stream.SetWriteDeadline(wr)
}

// LifetimeOver reports whether the pre-login lifetime has passed: a read
// that timed out then ended because of it, not for inactivity.
func (c *Client) LifetimeOver() bool {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	end := c.lifetimeEnd(time.Now())
	return !end.IsZero() && !time.Now().Before(end)
}

// Interrupt wakes the pre-login handler (shutdown, drain): a blocked read
// returns at once, a blocked write within ByeWriteGrace, and every later
// step gets the same deadlines, so the handler can only say goodbye. It
// does nothing after HandOff. Safe to call from any goroutine.
func (c *Client) Interrupt() {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	if c.handedOff {
		return
	}
	c.interrupted = true
	rd, wr := c.deadlines(time.Now())
	_ = c.Stream.SetReadDeadline(rd)
	_ = c.Stream.SetWriteDeadline(wr)
}

// HandOff ends the pre-login phase's hold on the connection: its deadlines
// are cleared and later Interrupts do nothing (the relay owns it now).
func (c *Client) HandOff() {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	c.handedOff = true
	_ = c.Stream.SetDeadline(time.Time{})
}

// Handoff is a finished login, ready to be relayed.
type Handoff struct {
	Client    *Client
	Backend   *netx.Stream
	User      string
	BackendID string
	BackendAt string // backend address
	// SharedStorage and Steered are the Target's: the session binds the
	// user's affinity (Env.Affinity), which chose the backend if Steered.
	SharedStorage bool
	Steered       bool
	// ProtocolErrors counts the commands before the login that counted
	// toward Limits.MaxErrors.
	ProtocolErrors int
	// Framer, if set, follows this session's responses in the relay
	// (built at login, when it depends on what the backend offered);
	// else the handler's NewFramer, if it has one, gives it.
	Framer relay.Framer
}

// Handler is a protocol front end (node/imap, node/pop3, node/sieve,
// node/submission).
type Handler interface {
	// Serve runs the pre-login dialogue with c (a Dialogue driving the
	// protocol). It returns a Handoff after a successful login, else nil
	// and how the session ended (the handler has said goodbye; the caller
	// closes). When ctx is done (shutdown, drain) it says goodbye and
	// returns at once.
	Serve(ctx context.Context, c *Client) (*Handoff, End)
	// TooManyConnections is the line that turns a connection over a
	// connection limit away, in place of the greeting.
	TooManyConnections() string
}

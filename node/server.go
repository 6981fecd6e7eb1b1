// Package node is one Portico proxy node: it accepts client connections on
// its listeners, runs the IMAP or POP3 pre-login dialogue (node/imap,
// node/pop3), logs in at the backend the routing table names, and hands the
// pair to the relay (node/relay).
//
// Server owns the listeners and every connection's lifetime: connection
// limits (total and per client address), the PROXY protocol header from
// trusted load balancers, implicit TLS, graceful shutdown.
package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// ListenerConfig describes one listening socket.
type ListenerConfig struct {
	Name     string
	Protocol routing.Protocol
	Address  string
	TLS      routing.TLSMode
	// AllowPlaintextAuth allows LOGIN/AUTHENTICATE/USER before TLS on a
	// listener that offers STARTTLS.
	AllowPlaintextAuth bool
	// ProxyProtocol: connections from TrustedProxies must start with a
	// PROXY protocol v1 or v2 header; others are served as direct clients.
	ProxyProtocol  bool
	TrustedProxies []netip.Prefix
	Limits         session.Limits
	// TLSPolicy: versions, cipher suites and ALPN for implicit TLS and
	// STARTTLS (tls.go); the zero value is the default policy.
	TLSPolicy TLSPolicy
	// Director, if set, overrides the node's for logins on this listener.
	Director session.Director
}

// Config is a node's serving configuration.
type Config struct {
	Listeners           []ListenerConfig
	MaxConnections      int // total client connections; 0: unlimited (see DefaultMaxConnections)
	MaxConnectionsPerIP int // per client address (IPv6: per /64); 0: unlimited
	// PerIPExempt are client networks MaxConnectionsPerIP does not apply
	// to (webmail servers and other hosts that carry many users' sessions).
	PerIPExempt        []netip.Prefix
	ShutdownGrace      time.Duration // relayed sessions may finish within this on shutdown
	ProxyHeaderTimeout time.Duration // for reading a PROXY header; default 5s
	// EndSpread: sessions still open when the shutdown grace ends are ended
	// at a response boundary, spread evenly over this window (so that
	// their clients do not all reconnect at once); 0: all at once.
	EndSpread time.Duration
	// EndTimeout bounds the wait for a response boundary, after which a
	// session is closed anyway; default 10s.
	EndTimeout time.Duration
	// Inherit, if set, is asked first for a listening socket (in-place
	// upgrade: sockets passed on by the previous process). It returns nil,
	// nil when it has none for the address.
	Inherit func(address string) (net.Listener, error)
}

// Server is a running node.
type Server struct {
	cfgp     atomic.Pointer[Config]
	env      *session.Env
	handlers map[routing.Protocol]session.Handler
	certs    *CertStore
	engine   *relay.Engine
	log      *slog.Logger
	obs      Observer // metrics (metrics.go)

	ctx    context.Context
	cancel context.CancelFunc
	// preCtx is given to pre-login sessions; Pause cancels it (and makes a
	// new one for after Resume).
	preCtx    context.Context
	preCancel context.CancelFunc

	mu        sync.Mutex
	listeners []*listener
	preauth   map[*session.Client]struct{}
	perIP     map[netip.Addr]int // by clientNet
	closing   bool
	paused    bool                      // Pause: listeners closed until Resume
	statsMu   sync.Mutex                // guards stats (not mu: bind runs under mu)
	stats     map[string]*ListenerStats // by listener name (metrics.go)

	conns       atomic.Int64 // open client connections (pre-login and relayed)
	refuseLocal atomic.Pointer[func(local netip.AddrPort) bool]
	wg          sync.WaitGroup
	preWG       sync.WaitGroup
	started     bool
}

type listener struct {
	ln    net.Listener
	stats *ListenerStats
	// st is what Reconfigure may change without rebinding the socket
	// (limits, authentication options, PROXY protocol trust); each
	// connection takes the state current when it is accepted.
	st atomic.Pointer[listenerState]
}

type listenerState struct {
	cfg  ListenerConfig
	info *session.Listener
}

func (l *listener) conf() *ListenerConfig   { return &l.st.Load().cfg }
func (l *listener) info() *session.Listener { return l.st.Load().info }

// NewServer prepares a server. certs may be nil when no listener uses TLS.
func NewServer(cfg Config, env *session.Env, handlers map[routing.Protocol]session.Handler, certs *CertStore, engine *relay.Engine) *Server {
	if cfg.ProxyHeaderTimeout <= 0 {
		cfg.ProxyHeaderTimeout = 5 * time.Second
	}
	if cfg.EndTimeout <= 0 {
		cfg.EndTimeout = 10 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		env: env, handlers: handlers, certs: certs, engine: engine, log: env.Log,
		obs: nopObserver{}, ctx: ctx, cancel: cancel,
		preauth: make(map[*session.Client]struct{}),
		perIP:   make(map[netip.Addr]int),
	}
	s.preCtx, s.preCancel = context.WithCancel(ctx)
	s.cfgp.Store(&cfg)
	return s
}

func (s *Server) conf() *Config { return s.cfgp.Load() }

// Start binds every listener (all or none) and starts accepting.
func (s *Server) Start() error {
	lns, err := s.bind(s.conf().Listeners, nil)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.listeners = lns
	s.started = true
	s.mu.Unlock()
	for _, l := range lns {
		s.startAccepting(l)
	}
	return nil
}

func (s *Server) startAccepting(l *listener) {
	c := l.conf()
	s.log.Info("listening", "listener", c.Name, "protocol", string(c.Protocol), "address", l.ln.Addr().String(), "tls", string(c.TLS))
	s.wg.Add(1)
	go s.accept(l)
}

// state builds a listener's per-connection state from its configuration.
func (s *Server) state(lc ListenerConfig) (*listenerState, error) {
	if lc.TLS == "" {
		lc.TLS = routing.TLSNone
	}
	if s.handlers[lc.Protocol] == nil {
		return nil, fmt.Errorf("listener %s: no handler for protocol %q", lc.Name, lc.Protocol)
	}
	info := &session.Listener{
		Name: lc.Name, Protocol: lc.Protocol, TLS: lc.TLS,
		AllowPlaintextAuth: lc.AllowPlaintextAuth,
		Limits:             lc.Limits,
		Director:           lc.Director,
	}
	if lc.TLS != routing.TLSNone {
		if s.certs == nil || !s.certs.Loaded() {
			return nil, fmt.Errorf("listener %s: tls %s needs a certificate", lc.Name, lc.TLS)
		}
		info.TLSConfig = s.certs.ServerConfig(lc.Protocol, lc.TLSPolicy)
	}
	return &listenerState{cfg: lc, info: info}, nil
}

// bind opens a socket for each listener configuration (all or none).
// keep holds listeners whose sockets are reused as they are, by name.
func (s *Server) bind(cfgs []ListenerConfig, keep map[string]*listener) ([]*listener, error) {
	var fresh, lns []*listener
	fail := func(err error) ([]*listener, error) {
		closeAll(fresh)
		return nil, err
	}
	for _, lc := range cfgs {
		st, err := s.state(lc)
		if err != nil {
			return fail(err)
		}
		if l := keep[lc.Name]; l != nil {
			lns = append(lns, l)
			continue
		}
		// No TCP keepalive probes on client connections (as nginx): idle
		// timeouts bound a dead client's session, and enabling keepalive
		// costs four setsockopt calls per connection.
		// IP_FREEBIND: a listener on the virtual IP can be bound before this
		// node holds the address, so a new owner serves the instant it
		// announces.
		ln, err := s.listen(lc)
		if err != nil {
			return fail(fmt.Errorf("listener %s: %w", lc.Name, err))
		}
		l := &listener{ln: ln, stats: s.statsFor(lc.Name, lc.Protocol)}
		l.st.Store(st)
		fresh = append(fresh, l)
		lns = append(lns, l)
	}
	return lns, nil
}

// listen opens a listening socket: inherited from the previous process
// during an in-place upgrade when one is available (Config.Inherit),
// else newly bound.
func (s *Server) listen(lc ListenerConfig) (net.Listener, error) {
	if f := s.conf().Inherit; f != nil {
		if ln, err := f(lc.Address); ln != nil || err != nil {
			return ln, err
		}
	}
	lcfg := net.ListenConfig{KeepAlive: -1, Control: freebind}
	return lcfg.Listen(context.Background(), "tcp", lc.Address)
}

// Reconfigure applies a new configuration to the running server: listeners
// added are bound, removed ones closed (their sessions carry on), changed
// ones rebound only if their address, protocol or TLS mode changed, else
// their limits and options change for new connections; connection limits
// change at once. Sessions in flight are untouched. On error (a new
// address cannot be bound, a TLS listener without certificate) nothing
// changes.
func (s *Server) Reconfigure(cfg Config) error {
	if cfg.ProxyHeaderTimeout <= 0 {
		cfg.ProxyHeaderTimeout = 5 * time.Second
	}
	cfg.Inherit = nil
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return errors.New("the server is shutting down")
	}
	old := map[string]*listener{}
	for _, l := range s.listeners {
		old[l.conf().Name] = l
	}
	keep := map[string]*listener{}
	for _, lc := range cfg.Listeners {
		if l := old[lc.Name]; l != nil && sameSocket(*l.conf(), lc) {
			keep[lc.Name] = l
		}
	}
	lns, err := s.bind(cfg.Listeners, keep)
	if err != nil {
		return err
	}
	// Commit.
	for _, lc := range cfg.Listeners {
		if l := keep[lc.Name]; l != nil {
			st, _ := s.state(lc)
			l.st.Store(st)
		}
	}
	for name, l := range old {
		if keep[name] == nil {
			s.log.Info("listener closed", "listener", name, "address", l.ln.Addr().String())
			l.ln.Close()
		}
	}
	s.listeners = lns
	cp := cfg
	s.cfgp.Store(&cp)
	if s.started && !s.paused {
		for _, l := range lns {
			if keep[l.conf().Name] == nil {
				s.startAccepting(l)
			}
		}
	}
	return nil
}

// sameSocket: b can be served on a's socket.
func sameSocket(a, b ListenerConfig) bool {
	norm := func(t routing.TLSMode) routing.TLSMode {
		if t == "" {
			return routing.TLSNone
		}
		return t
	}
	return a.Address == b.Address && a.Protocol == b.Protocol && norm(a.TLS) == norm(b.TLS)
}

func closeAll(lns []*listener) {
	for _, l := range lns {
		l.ln.Close()
	}
}

// Addrs returns the bound address of each listener, by name.
func (s *Server) Addrs() map[string]net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]net.Addr, len(s.listeners))
	for _, l := range s.listeners {
		m[l.conf().Name] = l.ln.Addr()
	}
	return m
}

// SetRefuse installs (or, with nil, removes) a filter: connections to a
// local address for which it returns true are reset at accept.
func (s *Server) SetRefuse(f func(local netip.AddrPort) bool) {
	if f == nil {
		s.refuseLocal.Store(nil)
		return
	}
	s.refuseLocal.Store(&f)
}

// Connections returns the number of open client connections.
func (s *Server) Connections() int64 { return s.conns.Load() }

func (s *Server) accept(l *listener) {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, keep serving.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			s.log.Error("accept failed", "listener", l.conf().Name, "error", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		s.preWG.Add(1)
		go s.serve(l, c.(*net.TCPConn))
	}
}

// tooMany is the reply to a connection over a limit.
func tooMany(p routing.Protocol) string {
	if p == routing.POP3 {
		return "-ERR [SYS/TEMP] Too many connections, try again later.\r\n"
	}
	return "* BYE [UNAVAILABLE] Too many connections, try again later.\r\n"
}

func (s *Server) refuse(l *listener, tc *net.TCPConn, why string) {
	if l.conf().TLS != routing.TLSImplicit {
		_ = tc.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = tc.Write([]byte(tooMany(l.conf().Protocol)))
	}
	_ = tc.Close()
	s.obs.Refused(l.stats, why)
	s.log.Warn("connection refused", "listener", l.conf().Name, "client", tc.RemoteAddr().String(), "reason", why)
}

// serve runs one client connection up to the hand-off to the relay.
func (s *Server) serve(l *listener, tc *net.TCPConn) {
	defer s.preWG.Done()
	growStack()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic serving connection", "listener", l.conf().Name, "panic", fmt.Sprint(r))
			_ = tc.Close()
		}
	}()
	l.stats.Accepted.Add(1)
	if f := s.refuseLocal.Load(); f != nil && (*f)(addrPort(tc.LocalAddr())) {
		// Refused outright (a virtual IP being handed over): a reset makes
		// the client retry at once, and find the new owner.
		_ = tc.SetLinger(0)
		_ = tc.Close()
		s.obs.Refused(l.stats, RefusedLocalAddress)
		return
	}
	if n := s.conns.Add(1); s.conf().MaxConnections > 0 && n > int64(s.conf().MaxConnections) {
		s.conns.Add(-1)
		s.refuse(l, tc, "max_connections")
		return
	}
	released := false
	// counted is the per-address key this connection holds (invalid: none),
	// so that a reload cannot make the release miss it.
	var counted netip.Addr
	release := func() {
		if released {
			return
		}
		released = true
		s.conns.Add(-1)
		if counted.IsValid() {
			s.mu.Lock()
			if s.perIP[counted]--; s.perIP[counted] <= 0 {
				delete(s.perIP, counted)
			}
			s.mu.Unlock()
		}
	}

	peer := addrPort(tc.RemoteAddr())
	local := addrPort(tc.LocalAddr())
	remote := peer
	var prefix []byte
	proxied := false
	if l.conf().ProxyProtocol && trusted(l.conf().TrustedProxies, peer.Addr()) {
		h, rest, err := readProxyHeader(tc, s.conf().ProxyHeaderTimeout)
		if err != nil {
			release()
			_ = tc.Close()
			s.obs.Refused(l.stats, RefusedProxyHeader)
			s.log.Warn("bad PROXY header", "listener", l.conf().Name, "peer", peer.String(), "error", err)
			return
		}
		prefix = rest
		if h != nil {
			if src, ok := h.SourceAddr.(*net.TCPAddr); ok {
				remote = src.AddrPort()
			}
			if dst, ok := h.DestinationAddr.(*net.TCPAddr); ok {
				local = dst.AddrPort()
			}
			proxied = true
		}
	}
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	if cfg := s.conf(); cfg.MaxConnectionsPerIP > 0 && !trusted(cfg.PerIPExempt, remote.Addr()) {
		key := clientNet(remote.Addr())
		s.mu.Lock()
		over := s.perIP[key] >= cfg.MaxConnectionsPerIP
		if !over {
			s.perIP[key]++
			counted = key
		}
		s.mu.Unlock()
		if over {
			release()
			s.refuse(l, tc, "max_connections_per_ip")
			return
		}
	}

	nc, err := netx.NewConn(tc, prefix)
	if err != nil {
		release()
		_ = tc.Close()
		return
	}
	c := &session.Client{
		ID: session.NewSessionID(), Listener: l.info(), Env: s.env,
		Stream: netx.NewStream(nc), Remote: remote, Local: local, Peer: peer, Proxied: proxied,
		Started: time.Now(),
	}
	c.Log = s.log.With("session", c.ID)
	c.Log.Info("session start", "listener", l.conf().Name, "protocol", string(l.conf().Protocol), "client", remote.String())
	l.stats.Preauth.Add(1)

	ctx, ok := s.track(c)
	if !ok {
		_ = c.Stream.Close()
		release()
		s.preauthEnded(l, c, nil)
		return
	}
	if l.conf().TLS == routing.TLSImplicit {
		if err := c.StartTLS(ctx); err != nil {
			s.untrack(c)
			_ = c.Stream.Close()
			release()
			s.preauthEnded(l, c, err)
			c.Log.Info("session end", "reason", "tls handshake failed", "error", err.Error(), "duration", time.Since(c.Started).Round(time.Millisecond))
			return
		}
	}
	h, err := s.handlers[l.conf().Protocol].Serve(ctx, c)
	s.untrack(c)
	if h == nil {
		_ = c.Stream.Close()
		release()
		s.preauthEnded(l, c, err)
		attrs := []any{"reason", "ended before login", "duration", time.Since(c.Started).Round(time.Millisecond)}
		if err != nil {
			attrs = append(attrs, "error", err.Error())
		}
		c.Log.Info("session end", attrs...)
		return
	}
	s.startRelay(l, c, h, release)
}

func (s *Server) startRelay(l *listener, c *session.Client, h *session.Handoff, release func()) {
	ls := l.stats
	ls.Preauth.Add(-1)
	ls.Relayed.Add(1)
	s.obs.SessionStarted(ls, h)
	toBackend := c.Stream.Detach()
	toClient := h.Backend.Detach()
	cs := relay.Side{Conn: c.Stream.Base(), TLS: c.Stream.TLS()}
	bs := relay.Side{Conn: h.Backend.Base(), TLS: h.Backend.TLS()}
	var framer relay.Framer
	if f, ok := s.handlers[c.Listener.Protocol].(interface{ NewFramer() relay.Framer }); ok {
		framer = f.NewFramer()
	}
	s.engine.Start(cs, bs, toBackend, toClient, relay.Options{
		IdleTimeout: c.Listener.Limits.IdleTimeout,
		Counters:    &ls.Bytes,
		Framer:      framer,
		OnClose: func(st relay.Stats) {
			release()
			ls.Relayed.Add(-1)
			s.obs.SessionEnded(ls, h, st)
			attrs := []any{"user", h.User, "backend", h.BackendID, "reason", st.Reason,
				"bytes_in", st.ClientToBackend, "bytes_out", st.BackendToClient,
				"duration", time.Since(c.Started).Round(time.Millisecond)}
			if st.Err != nil {
				attrs = append(attrs, "error", st.Err.Error())
			}
			c.Log.Info("session end", attrs...)
		},
	})
}

func (s *Server) track(c *session.Client) (context.Context, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Not when paused: a connection accepted just before the listeners
	// closed (drain, in-place upgrade) is served like any other; it was
	// in no one else's queue.
	if s.closing {
		return nil, false
	}
	s.preauth[c] = struct{}{}
	return s.preCtx, true
}

func (s *Server) untrack(c *session.Client) {
	s.mu.Lock()
	delete(s.preauth, c)
	s.mu.Unlock()
}

// Shutdown stops accepting, ends sessions that have not logged in (each
// handler says goodbye), lets relayed sessions run until ctx is done or
// Config.ShutdownGrace passes, then closes them.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	lns := s.listeners
	s.mu.Unlock()
	closeAll(lns)
	s.cancel()
	// Wake handlers blocked in a read (or in a write to a client that does
	// not read); they see the cancelled context and send BYE / -ERR before
	// closing.
	s.mu.Lock()
	for c := range s.preauth {
		c.Interrupt()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.preWG.Wait()

	grace := s.conf().ShutdownGrace
	deadline := time.Now().Add(grace)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for s.engine.Len() > 0 && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			deadline = time.Now()
		case <-t.C:
		}
	}
	if n := s.engine.Len(); n > 0 {
		s.log.Info("ending relayed sessions after shutdown grace", "sessions", n, "grace", grace)
		s.EndSessions(context.Background(), nil, "Server shutting down, please reconnect.", s.conf().EndSpread)
	}
	s.engine.CloseAll(relay.ReasonShutdown)
	return nil
}

// EndSessions ends the relayed sessions whose local address matches (all
// if match is nil): each at a response boundary (IMAP: "* BYE
// [UNAVAILABLE] text" after the last complete response; POP3: closed
// between responses), spread evenly over spread; a session not at a
// boundary within Config.EndTimeout after that (or when ctx is done) is
// closed anyway. It returns how many sessions it ended, once all are
// closed.
func (s *Server) EndSessions(ctx context.Context, match func(local netip.AddrPort) bool, text string, spread time.Duration) int {
	ctx, cancel := context.WithTimeout(ctx, spread+s.conf().EndTimeout)
	defer cancel()
	var m func(*relay.Session) bool
	if match != nil {
		m = func(rs *relay.Session) bool { return match(addrPort(rs.LocalAddr())) }
	}
	return s.engine.EndAll(ctx, m, text, spread)
}

// EndSpread is the configured window over which EndSessions spreads a
// drain.
func (s *Server) EndSpread() time.Duration { return s.conf().EndSpread }

// Pause stops accepting: the listeners close (the kernel refuses new
// connections) and sessions that have not logged in end (each handler
// says goodbye). Relayed sessions carry on. Resume binds the listeners
// again.
func (s *Server) Pause() { s.stopAccepting(true) }

// stopAccepting closes the listeners and, if endPreauth, ends the
// sessions that have not logged in yet.
func (s *Server) stopAccepting(endPreauth bool) {
	s.mu.Lock()
	if s.paused || s.closing {
		s.mu.Unlock()
		return
	}
	s.paused = true
	lns := s.listeners
	if endPreauth {
		s.preCancel()
		s.preCtx, s.preCancel = context.WithCancel(s.ctx)
		for c := range s.preauth {
			c.Interrupt()
		}
	}
	s.mu.Unlock()
	closeAll(lns)
	s.log.Info("stopped accepting")
}

// Resume undoes Pause: the listeners are bound again.
func (s *Server) Resume() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.paused || s.closing {
		return nil
	}
	lns, err := s.bind(s.conf().Listeners, nil)
	if err != nil {
		return err
	}
	s.listeners, s.paused = lns, false
	for _, l := range lns {
		s.startAccepting(l)
	}
	return nil
}

// StopAccepting closes the listeners like Pause, but sessions that have
// not logged in yet carry on (an in-place upgrade: the new process has the
// listening sockets, and this one finishes what it started).
func (s *Server) StopAccepting() { s.stopAccepting(false) }

// ListenerFiles returns a duplicate of each listening socket, by its
// configured address (to pass to a new process at an in-place upgrade).
// The caller closes them.
func (s *Server) ListenerFiles() (map[string]*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]*os.File, len(s.listeners))
	for _, l := range s.listeners {
		tl, ok := l.ln.(*net.TCPListener)
		if !ok {
			continue
		}
		f, err := tl.File()
		if err != nil {
			for _, f := range out {
				f.Close()
			}
			return nil, fmt.Errorf("listener %s: %w", l.conf().Name, err)
		}
		out[l.conf().Address] = f
	}
	return out, nil
}

// Paused reports whether the server is paused (not accepting).
func (s *Server) Paused() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paused
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// clientNet is what max_connections_per_ip counts by: an IPv4 address, or
// the /64 of an IPv6 address (a host usually owns a whole /64, so counting
// single IPv6 addresses would not limit anyone).
func clientNet(ip netip.Addr) netip.Addr {
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// Descriptor budget of DefaultMaxConnections: a client connection costs
// two descriptors (client and backend sockets); the rest of the process
// (listeners, relay pipes borrowed during bursts, cluster and admin
// connections, log and state files) gets an eighth of the limit, and at
// least descriptorReserve.
const descriptorReserve = 128

// DefaultMaxConnections is the total connection limit used when none is
// configured: what the process's file-descriptor limit (RLIMIT_NOFILE, which
// the Go runtime raises to the hard limit at start) can hold, so that
// accepting more cannot starve the process of descriptors. It returns 0
// (unlimited) if the limit cannot be read.
func DefaultMaxConnections() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return maxConnectionsFor(rl.Cur)
}

func maxConnectionsFor(nofile uint64) int {
	if nofile > 1<<24 {
		nofile = 1 << 24 // RLIM_INFINITY and the like
	}
	reserve := max(nofile/8, descriptorReserve)
	if nofile <= reserve+2 {
		return 1
	}
	return int((nofile - reserve) / 2)
}

func trusted(nets []netip.Prefix, ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, n := range nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// readProxyHeader reads a PROXY v1/v2 header. It returns the bytes read
// past the header (they belong to the session) as rest. A LOCAL command
// (health checks from the balancer) yields a nil header.
func readProxyHeader(tc *net.TCPConn, timeout time.Duration) (*proxyproto.Header, []byte, error) {
	_ = tc.SetReadDeadline(time.Now().Add(timeout))
	defer tc.SetReadDeadline(time.Time{})
	return parseProxyHeader(bufio.NewReaderSize(tc, 512))
}

// parseProxyHeader reads a PROXY header from br and returns it with the
// bytes br read past it.
func parseProxyHeader(br *bufio.Reader) (*proxyproto.Header, []byte, error) {
	h, err := proxyproto.Read(br)
	if err != nil {
		return nil, nil, err
	}
	var rest []byte
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		rest = append([]byte(nil), b...)
	}
	if h.Command.IsLocal() {
		return nil, rest, nil
	}
	return h, rest, nil
}

// growStack grows the calling goroutine's stack once, up front, to the size
// the pre-login phase needs (TLS handshake, logging). A new goroutine
// starts with 2 KiB and would otherwise double and copy its stack several
// times per login; that copying was about a tenth of a login's CPU.
//
//go:noinline
func growStack() {
	var frame [12 << 10]byte
	touchFrame(&frame) // keeps the frame from being optimised away
}

//go:noinline
func touchFrame(*[12 << 10]byte) {}

// freebind sets IP_FREEBIND (IPv4) / IPV6_FREEBIND on a listening socket.
func freebind(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if strings.HasSuffix(network, "6") || strings.Contains(address, "[") {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
			if serr == nil {
				return
			}
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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
	// BearerMechanisms: the OAuth bearer SASL mechanisms offered besides
	// PLAIN and LOGIN (session.Listener.BearerMechanisms).
	BearerMechanisms []string
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
	// Pool, if set, routes every login on this listener inside this pool
	// (session.Listener.Pool).
	Pool string
	// Extra: the protocol front end's own settings (session.Listener.Extra).
	Extra any
	// EventLoop: the listener's sessions run on the node's event loops
	// (loop.go) until they log in, rather than on a goroutine each.
	EventLoop bool
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
	if ll, ok := l.ln.(*loopListener); ok {
		s.startLoopAccepting(l, ll)
		return
	}
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
		BearerMechanisms:   lc.BearerMechanisms,
		Limits:             lc.Limits,
		Director:           lc.Director,
		Pool:               lc.Pool,
		Extra:              lc.Extra,
	}
	if lc.TLS != routing.TLSNone {
		if s.certs == nil || !s.certs.Loaded() {
			return nil, fmt.Errorf("listener %s: tls %s needs a certificate", lc.Name, lc.TLS)
		}
		info.TLSConfig = s.certs.ServerConfig(lc.Protocol, lc.TLSPolicy)
		if s.tickets != nil && !lc.TLSPolicy.SessionTicketsOff {
			s.tickets.install(info.TLSConfig)
		}
		st := s.statsFor(lc.Name, lc.Protocol)
		info.OnTLS = func(resumed bool) {
			if resumed {
				st.TLSResumed.Add(1)
			} else {
				st.TLSFull.Add(1)
			}
		}
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
		if err == nil && lc.EventLoop {
			ln, err = toLoopListener(ln)
		}
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
	cfg = cfg.withDefaults()
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
	return a.Address == b.Address && a.Protocol == b.Protocol && norm(a.TLS) == norm(b.TLS) && a.EventLoop == b.EventLoop
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
		go s.serve(l, c.(*net.TCPConn), nil)
	}
}

// ListenerFiles returns a duplicate of each listening socket, by its
// configured address (to pass to a new process at an in-place upgrade).
// The caller closes them.
func (s *Server) ListenerFiles() (map[string]*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]*os.File, len(s.listeners))
	for _, l := range s.listeners {
		tl, ok := l.ln.(interface{ File() (*os.File, error) })
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

// freebind sets IP_FREEBIND (IPv4) / IPV6_FREEBIND on a listening socket,
// and IP_TRANSPARENT / IPV6_TRANSPARENT where the process may (it needs
// CAP_NET_ADMIN, which managing a VIP needs anyway). The connections it
// accepts inherit the latter, and with it they can still send from the
// address after it was removed from the interface: a connection accepted
// on a virtual IP in the milliseconds before a planned move took the
// address away still gets its greeting, its login reply or its reset
// instead of waiting for an answer that could never leave (the client's
// next packets reach the new owner, which resets them). Receiving is
// unchanged: packets reach the socket only while the address is local.
func freebind(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		six := strings.HasSuffix(network, "6") || strings.Contains(address, "[")
		if six {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1); serr == nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
				return
			}
		}
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1); serr == nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// Package node is one Portico proxy node: it accepts client connections on
// its listeners, runs the IMAP or POP3 pre-login dialogue (node/imap,
// node/pop3), logs in at the backend the routing table names, and hands the
// pair to the relay (node/relay).
//
// Server owns the listeners and every connection's lifetime, one job per
// file: the listening sockets and reconfiguration (listeners.go), whether
// a connection is served: connection limits, the PROXY protocol header
// from trusted load balancers (admission.go), one connection from accept
// to the relay (conn.go), and graceful shutdown, pause and drain
// (shutdown.go). It never speaks a protocol: what a client is told comes
// from the protocol's session.Handler.
package node

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// Config is a node's serving configuration. Zero ProxyHeaderTimeout and
// EndTimeout take their defaults (DefaultConfig); the other zero values
// switch their setting off (DefaultConfig has the values a node runs with
// when its configuration file does not set them).
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
	// Tickets, if set, seals and opens the session tickets of every TLS
	// listener (keys shared by the cluster, tickets.go); nil: crypto/tls's
	// own keys, one set per process. Fixed when the server is created.
	Tickets *TicketKeys
}

// DefaultConfig returns the defaults of a node's settings, as the README
// documents them: the connection limit the descriptor limit holds
// (DefaultMaxConnections); 100 connections per client address, room for an
// office of a few dozen people behind one NAT address (mail clients keep
// two to five connections each) and far below the total, so that one
// address cannot take every connection (hosts that carry many users'
// sessions, such as webmail servers, belong in PerIPExempt); 30 s for
// relayed sessions to finish by themselves at shutdown, then ends at a
// response boundary spread over 10 s; and the timeouts a zero in Config
// stands for.
func DefaultConfig() Config {
	return Config{
		MaxConnections:      DefaultMaxConnections(),
		MaxConnectionsPerIP: 100,
		ShutdownGrace:       30 * time.Second,
		ProxyHeaderTimeout:  5 * time.Second,
		EndSpread:           10 * time.Second,
		EndTimeout:          10 * time.Second,
	}
}

// withDefaults fills the zero settings that stand for a default.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.ProxyHeaderTimeout <= 0 {
		c.ProxyHeaderTimeout = d.ProxyHeaderTimeout
	}
	if c.EndTimeout <= 0 {
		c.EndTimeout = d.EndTimeout
	}
	return c
}

// Server is a running node.
type Server struct {
	cfgp     atomic.Pointer[Config]
	env      *session.Env
	handlers map[routing.Protocol]session.Handler
	certs    *CertStore
	tickets  *TicketKeys // nil: crypto/tls's own per-process keys
	engine   *relay.Engine
	log      *slog.Logger
	obs      Observer // metrics (metrics.go)

	ctx    context.Context
	cancel context.CancelFunc
	// preCtx is given to pre-login sessions; Pause cancels it (and makes a
	// new one for after Resume). A session's Dialogue interrupts its
	// client when it is done.
	preCtx    context.Context
	preCancel context.CancelFunc

	mu        sync.Mutex
	listeners []*listener
	perIP     map[netip.Addr]int // by clientNet
	closing   bool
	paused    bool                      // Pause: listeners closed until Resume
	statsMu   sync.Mutex                // guards stats (not mu: bind runs under mu)
	stats     map[string]*ListenerStats // by listener name (metrics.go)

	conns       atomic.Int64 // open client connections (pre-login and relayed)
	gate        *netx.Gate   // pre-login work running at once (netx.Gate)
	refuseLocal atomic.Pointer[func(local netip.AddrPort) bool]
	// preLocal counts the pre-login sessions by the local address they
	// came in on (PreauthOn: a planned VIP move lets the logins in flight
	// on the address finish before the address goes).
	preMu    sync.Mutex
	preLocal map[netip.Addr]int
	loops    loopSet        // event loops (loop.go), started on first use
	wg       sync.WaitGroup // accept loops
	preWG    sync.WaitGroup // connections before the relay
	started  bool
}

// NewServer prepares a server. certs may be nil when no listener uses TLS.
func NewServer(cfg Config, env *session.Env, handlers map[routing.Protocol]session.Handler, certs *CertStore, engine *relay.Engine) *Server {
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		env: env, handlers: handlers, certs: certs, engine: engine, log: env.Log,
		obs: nopObserver{}, ctx: ctx, cancel: cancel,
		perIP:   make(map[netip.Addr]int),
		tickets: cfg.Tickets,
		gate:    netx.NewGate(PreloginSlots()),
	}
	s.preCtx, s.preCancel = context.WithCancel(ctx)
	s.cfgp.Store(&cfg)
	return s
}

func (s *Server) conf() *Config { return s.cfgp.Load() }

// PreloginSlots is how many pre-login sessions compute at once (netx.Gate):
// two per CPU the Go runtime uses, so that the CPUs stay busy in a storm
// while a goroutine that becomes runnable (a raft heartbeat, a relayed
// session's read) waits behind a few logins, not thousands.
func PreloginSlots() int { return 2 * runtime.GOMAXPROCS(0) }

// Gate is the pre-login gate (its figures for the metrics).
func (s *Server) Gate() *netx.Gate { return s.gate }

// Connections returns the number of open client connections.
func (s *Server) Connections() int64 { return s.conns.Load() }

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

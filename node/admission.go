package node

import (
	"bufio"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"

	"github.com/portico-mail/portico/routing"
)

// Admission: whether an accepted connection gets a session. In order: the
// refuse filter (an address being handed over), the total connection
// limit, the PROXY header from a trusted load balancer (which names the
// client), the per-client-address limit. A connection over a limit gets
// its protocol's refusal line (session.Handler.TooManyConnections), except
// on an implicit-TLS listener where nothing can be said before the
// handshake.

// admission is a connection's hold on the connection limits: one of the
// total count and, when counted per address, its key (kept so that a
// reload that changes the exempt networks cannot unbalance the count).
// release gives both back, once, whoever calls it last (the pre-login
// cleanup or, after a login, the relay).
type admission struct {
	s        *Server
	total    bool       // holds one of s.conns
	perIP    netip.Addr // invalid: not counted per address
	released atomic.Bool
}

func (a *admission) release() {
	if !a.released.CompareAndSwap(false, true) {
		return
	}
	if a.total {
		a.s.conns.Add(-1)
	}
	if a.perIP.IsValid() {
		a.s.mu.Lock()
		if a.s.perIP[a.perIP]--; a.s.perIP[a.perIP] <= 0 {
			delete(a.s.perIP, a.perIP)
		}
		a.s.mu.Unlock()
	}
}

// origin is who a connection comes from and where it went: the TCP peer,
// or the client and the address it connected to as a trusted PROXY header
// names them.
type origin struct {
	remote, local, peer netip.AddrPort
	proxied             bool
	prefix              []byte // read past the PROXY header: the session's first bytes
}

// admit decides whether tc is served, counting it in a's limits. A refused
// connection has been answered (a reset, or its protocol's refusal line)
// and counted in the metrics; the caller closes it and releases a.
func (s *Server) admit(l *listener, tc acceptedConn, a *admission) (origin, bool) {
	if f := s.refuseLocal.Load(); f != nil && (*f)(addrPort(tc.LocalAddr())) {
		// Refused outright (a virtual IP being handed over): a reset makes
		// the client retry at once, and find the new owner.
		_ = tc.SetLinger(0)
		s.obs.Refused(l.stats, RefusedLocalAddress)
		return origin{}, false
	}
	a.total = true
	if n := s.conns.Add(1); s.conf().MaxConnections > 0 && n > int64(s.conf().MaxConnections) {
		s.refuse(l, tc, RefusedMaxConnections)
		return origin{}, false
	}
	o := origin{peer: addrPort(tc.RemoteAddr()), local: addrPort(tc.LocalAddr())}
	o.remote = o.peer
	if l.conf().ProxyProtocol && trusted(l.conf().TrustedProxies, o.peer.Addr()) {
		h, rest, err := readProxyHeader(tc, s.conf().ProxyHeaderTimeout)
		if err != nil {
			s.obs.Refused(l.stats, RefusedProxyHeader)
			s.log.Warn("bad PROXY header", "listener", l.conf().Name, "peer", o.peer.String(), "error", err)
			return origin{}, false
		}
		o.prefix = rest
		if h != nil {
			if src, ok := h.SourceAddr.(*net.TCPAddr); ok {
				o.remote = src.AddrPort()
			}
			if dst, ok := h.DestinationAddr.(*net.TCPAddr); ok {
				o.local = dst.AddrPort()
			}
			o.proxied = true
		}
	}
	o.remote = netip.AddrPortFrom(o.remote.Addr().Unmap(), o.remote.Port())
	if cfg := s.conf(); cfg.MaxConnectionsPerIP > 0 && !trusted(cfg.PerIPExempt, o.remote.Addr()) {
		key := clientNet(o.remote.Addr())
		s.mu.Lock()
		over := s.perIP[key] >= cfg.MaxConnectionsPerIP
		if !over {
			s.perIP[key]++
			a.perIP = key
		}
		s.mu.Unlock()
		if over {
			s.refuse(l, tc, RefusedMaxConnectionsPerIP)
			return origin{}, false
		}
	}
	return o, true
}

// refuse answers a connection over a connection limit with its protocol's
// refusal line (not on implicit TLS: nothing can be said before the
// handshake).
func (s *Server) refuse(l *listener, tc acceptedConn, why string) {
	if l.conf().TLS != routing.TLSImplicit {
		_ = tc.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = tc.Write([]byte(s.handlers[l.conf().Protocol].TooManyConnections()))
	}
	s.obs.Refused(l.stats, why)
	s.log.Warn("connection refused", "listener", l.conf().Name, "client", tc.RemoteAddr().String(), "reason", why)
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
func readProxyHeader(tc acceptedConn, timeout time.Duration) (*proxyproto.Header, []byte, error) {
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

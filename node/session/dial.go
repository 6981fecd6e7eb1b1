package session

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/routing"
)

// Dialer connects to backends: TCP, an optional PROXY protocol v2 header
// carrying the client's address, and implicit TLS. STARTTLS is the
// protocol's business (it needs the protocol dialogue); it uses TLSConfig.
type Dialer struct {
	ConnectTimeout time.Duration

	mu    sync.Mutex
	cache map[tlsKey]*tls.Config
}

type tlsKey struct {
	serverName, caFile string
	insecure           bool
}

// Dial connects to b for protocol p on behalf of a client at remote that
// connected to local. A zero remote means the node connects on its own
// behalf (a health probe): a forward: proxy backend then gets a PROXY v2
// LOCAL header, which the protocol defines for exactly that ("the
// connection was established on purpose by the proxy without being
// relayed"), so the backend sees and logs the node's own address.
func (d *Dialer) Dial(ctx context.Context, b *routing.Backend, p routing.Protocol, remote, local netip.AddrPort) (*netx.Stream, error) {
	addr := b.Addr(p)
	if addr == "" {
		return nil, fmt.Errorf("backend %s does not serve %s", b.ID, p)
	}
	var tlsCfg *tls.Config
	if b.TLS == routing.TLSImplicit {
		var err error
		if tlsCfg, err = d.TLSConfig(b); err != nil {
			return nil, err
		}
	}
	// Keepalive probes are not needed toward backends on a LAN: sessions
	// have idle timeouts, and they would cost four setsockopt calls per login.
	nd := net.Dialer{Timeout: d.ConnectTimeout, KeepAlive: -1}
	if nd.Timeout <= 0 {
		nd.Timeout = 5 * time.Second
	}
	var nc *netx.Conn
	if e := netx.ExecutorFrom(ctx); e != nil {
		// A session of an event loop connects on a connection of its loop.
		var err error
		if nc, err = loopDial(ctx, e, addr, time.Now().Add(nd.Timeout)); err != nil {
			return nil, fmt.Errorf("backend %s: connect: %w", b.ID, err)
		}
	} else {
		// A session's gate slot (netx.Gate) is given back while it
		// connects, and while it waits for the backend on the connection.
		hold := netx.HoldFrom(ctx)
		hold.Release()
		c, err := nd.DialContext(ctx, "tcp", addr)
		hold.Acquire()
		if err != nil {
			return nil, fmt.Errorf("backend %s: connect: %w", b.ID, err)
		}
		tc := c.(*net.TCPConn)
		if nc, err = netx.NewConn(tc, nil); err != nil {
			tc.Close()
			return nil, err
		}
		nc.SetHold(hold)
	}
	s := netx.NewStream(nc)
	if b.Forward == routing.ForwardProxy {
		h := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
		if remote.IsValid() {
			h = proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(remote), net.TCPAddrFromAddrPort(local))
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = nc.SetWriteDeadline(dl)
		}
		_, err := h.WriteTo(nc)
		_ = nc.SetWriteDeadline(time.Time{})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("backend %s: sending PROXY header: %w", b.ID, err)
		}
	}
	if tlsCfg != nil {
		timeout := time.Until(deadlineOf(ctx, 10*time.Second))
		if err := s.StartTLSClient(ctx, tlsCfg, timeout); err != nil {
			s.Close()
			return nil, fmt.Errorf("backend %s: TLS handshake: %w", b.ID, err)
		}
	}
	return s, nil
}

// loopDial connects to addr ("host:port") through e, an event loop's
// Executor, by deadline or ctx's own, whichever comes first. A host name
// is resolved on a goroutine of its own (netx.Block): the loop never waits
// for DNS.
func loopDial(ctx context.Context, e netx.Executor, addr string, deadline time.Time) (*netx.Conn, error) {
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		var ips []netip.Addr
		netx.Block(ctx, func() {
			rctx, cancel := context.WithDeadline(ctx, deadline)
			defer cancel()
			var p int
			if p, err = net.DefaultResolver.LookupPort(rctx, "tcp", port); err == nil {
				ap = netip.AddrPortFrom(netip.Addr{}, uint16(p))
				ips, err = net.DefaultResolver.LookupNetIP(rctx, "ip", host)
			}
		})
		if err != nil {
			return nil, err
		}
		if len(ips) == 0 {
			return nil, fmt.Errorf("%s: no address", host)
		}
		ap = netip.AddrPortFrom(ips[0].Unmap(), ap.Port())
	}
	return e.DialTCP(ap, deadline)
}

func deadlineOf(ctx context.Context, def time.Duration) time.Time {
	if dl, ok := ctx.Deadline(); ok {
		return dl
	}
	return time.Now().Add(def)
}

// TLSConfig returns the client TLS configuration for backend b (cached).
func (d *Dialer) TLSConfig(b *routing.Backend) (*tls.Config, error) {
	name := b.TLSServerName
	if name == "" {
		name = b.Host
	}
	k := tlsKey{serverName: name, caFile: b.TLSCAFile, insecure: b.InsecureSkipVerify}
	d.mu.Lock()
	defer d.mu.Unlock()
	if cfg := d.cache[k]; cfg != nil {
		return cfg, nil
	}
	cfg := &tls.Config{ServerName: name, MinVersion: tls.VersionTLS12, InsecureSkipVerify: b.InsecureSkipVerify}
	if b.TLSCAFile != "" {
		pem, err := os.ReadFile(b.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("backend %s: tls_ca_file: %w", b.ID, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("backend %s: tls_ca_file %s: no PEM certificates", b.ID, b.TLSCAFile)
		}
		cfg.RootCAs = pool
	}
	// Resumption makes repeated logins to the same backend cheap.
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(256)
	if d.cache == nil {
		d.cache = make(map[tlsKey]*tls.Config)
	}
	d.cache[k] = cfg
	return cfg, nil
}

// ErrBackendGreeting: the backend's greeting was not a ready greeting.
var ErrBackendGreeting = errors.New("unexpected backend greeting")

package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/portico-mail/portico/cluster/pki"
)

// Node-to-node traffic: one TCP port (raft_address), mutual TLS 1.3 with
// certificates of the cluster CA, and two protocols told apart by ALPN:
// raft's RPCs and the cluster's own HTTP RPCs (rpc.go). A connection is
// refused during the handshake unless its peer presents a valid cluster
// certificate, so nothing is read from an unauthenticated peer.
const (
	alpnRaft = "portico-raft/1"
	alpnRPC  = "portico-rpc/1"
)

const (
	// handshakeTimeout bounds a TLS handshake on the cluster port.
	handshakeTimeout = 5 * time.Second
	// maxHandshakes bounds handshakes in progress; connections beyond it
	// are closed at once (a flood must not exhaust memory or block raft).
	maxHandshakes = 64
	// maxHandshakesPerIP bounds those from one address, so that one host
	// (a stranger without a certificate, sending nothing) cannot hold
	// every slot and have the port close the nodes' own connections. A
	// node opens a few at a time (raft's pool, the RPC client).
	maxHandshakesPerIP = 8
	// An address a cluster certificate was shown from (a handshake that
	// succeeded) has maxHandshakes slots of its own, shared with the other
	// such addresses, so that a stranger with many addresses (an IPv6
	// /64) filling the others' slots does not shut the nodes out either.
	// maxProven bounds the addresses remembered.
	maxProven = 1024
)

// trust holds the node's current TLS material (replaced on reload, e.g.
// during a certificate rotation) and builds the TLS configurations.
type trust struct {
	mat atomic.Pointer[pki.Material]
	// seen is told of every peer identity verified in a handshake.
	seen func(id pki.Identity)
	// refused counts handshakes refused (not a cluster certificate).
	refused atomic.Uint64
}

func (t *trust) material() *pki.Material { return t.mat.Load() }

// verifyPeer checks the peer's chain against the current trust bundle.
func (t *trust) verifyPeer(cs tls.ConnectionState, want string) (pki.Identity, error) {
	id, err := pki.Verify(cs.PeerCertificates, t.material().Roots, time.Now())
	if err != nil {
		return id, err
	}
	if want != "" && id.Name != want {
		return id, fmt.Errorf("peer is node %q, expected %q", id.Name, want)
	}
	if t.seen != nil {
		t.seen(id)
	}
	return id, nil
}

func (t *trust) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Chains are verified by VerifyConnection against the current
		// bundle (which a reload may replace), not a fixed ClientCAs.
		ClientAuth: tls.RequireAnyClientCert,
		NextProtos: []string{alpnRaft, alpnRPC},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return &t.material().Cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.NegotiatedProtocol != alpnRaft && cs.NegotiatedProtocol != alpnRPC {
				return errors.New("no cluster protocol negotiated")
			}
			_, err := t.verifyPeer(cs, "")
			return err
		},
	}
}

// clientConfig dials a peer speaking alpn; want, if set, is the node name
// the peer's certificate must carry.
func (t *trust) clientConfig(alpn, want string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{alpn},
		// Node certificates name nodes, not hosts: the chain and the name
		// are checked in VerifyConnection instead of by host name.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &t.material().Cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.NegotiatedProtocol != alpn {
				return fmt.Errorf("peer did not agree to %s", alpn)
			}
			_, err := t.verifyPeer(cs, want)
			return err
		},
	}
}

// dial opens a mutual-TLS connection to a peer's cluster port.
func (t *trust) dial(ctx context.Context, addr, alpn, want string) (*tls.Conn, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: t.clientConfig(alpn, want)}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*tls.Conn), nil
}

// mux accepts connections on the cluster port, completes the TLS
// handshakes off the accept loop (bounded in number and time) and hands
// each authenticated connection to raft or to the RPC server by its ALPN
// protocol.
type mux struct {
	ln    net.Listener
	trust *trust
	log   *slog.Logger

	raftCh chan net.Conn
	rpcCh  chan net.Conn
	sem    chan struct{}
	// Handshakes in progress by remote address (maxHandshakesPerIP), and
	// the addresses certificates were shown from, with their slots.
	ipMu      sync.Mutex
	perIP     map[netip.Addr]int
	proven    map[netip.Addr]struct{}
	semProven chan struct{}

	closeOnce sync.Once
	closed    chan struct{}
	wg        sync.WaitGroup

	// Raft's inbound connections: raft's transport never closes them
	// itself (its Close only stops accepting), so its reader goroutines
	// would wait on them until the peer hangs up; Close closes them.
	connMu sync.Mutex
	conns  map[*raftConn]struct{}
}

// raftConn is an inbound raft connection the mux tracks until it is
// closed.
type raftConn struct {
	net.Conn
	m *mux
}

func (c *raftConn) Close() error {
	c.m.connMu.Lock()
	delete(c.m.conns, c)
	c.m.connMu.Unlock()
	return c.Conn.Close()
}

func newMux(ln net.Listener, t *trust, log *slog.Logger) *mux {
	m := &mux{ln: ln, trust: t, log: log, raftCh: make(chan net.Conn), rpcCh: make(chan net.Conn),
		sem: make(chan struct{}, maxHandshakes), closed: make(chan struct{}), conns: map[*raftConn]struct{}{},
		perIP: map[netip.Addr]int{}, proven: map[netip.Addr]struct{}{}, semProven: make(chan struct{}, maxHandshakes)}
	m.wg.Add(1)
	go m.acceptLoop()
	return m
}

func (m *mux) acceptLoop() {
	defer m.wg.Done()
	var backoff time.Duration
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.closed:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Temporary (e.g. out of descriptors): back off, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			m.log.Warn("cluster port: accept failed; retrying", "error", err, "in", backoff)
			select {
			case <-time.After(backoff):
			case <-m.closed:
				return
			}
			continue
		}
		backoff = 0
		ip := remoteIP(c)
		if m.isProven(ip) {
			select {
			case m.semProven <- struct{}{}:
				m.wg.Add(1)
				go m.handshake(c, ip, true)
			default:
				m.trust.refused.Add(1)
				c.Close()
			}
			continue
		}
		if !m.takeIP(ip) {
			m.trust.refused.Add(1)
			c.Close()
			continue
		}
		select {
		case m.sem <- struct{}{}:
		default:
			m.releaseIP(ip)
			m.trust.refused.Add(1)
			c.Close()
			continue
		}
		m.wg.Add(1)
		go m.handshake(c, ip, false)
	}
}

func (m *mux) isProven(ip netip.Addr) bool {
	m.ipMu.Lock()
	defer m.ipMu.Unlock()
	_, ok := m.proven[ip]
	return ok
}

// prove records that a cluster certificate was shown from ip.
func (m *mux) prove(ip netip.Addr) {
	m.ipMu.Lock()
	defer m.ipMu.Unlock()
	if _, ok := m.proven[ip]; ok || !ip.IsValid() {
		return
	}
	if len(m.proven) >= maxProven {
		for k := range m.proven { // forget one at random
			delete(m.proven, k)
			break
		}
	}
	m.proven[ip] = struct{}{}
}

// remoteIP is c's remote address (unmapped; the zero Addr if unknown).
func remoteIP(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// takeIP counts a handshake from ip; false when ip has
// maxHandshakesPerIP in progress already.
func (m *mux) takeIP(ip netip.Addr) bool {
	m.ipMu.Lock()
	defer m.ipMu.Unlock()
	if m.perIP[ip] >= maxHandshakesPerIP {
		return false
	}
	m.perIP[ip]++
	return true
}

func (m *mux) releaseIP(ip netip.Addr) {
	m.ipMu.Lock()
	defer m.ipMu.Unlock()
	if m.perIP[ip]--; m.perIP[ip] <= 0 {
		delete(m.perIP, ip)
	}
}

func (m *mux) handshake(c net.Conn, ip netip.Addr, proven bool) {
	defer m.wg.Done()
	tc := tls.Server(c, m.trust.serverConfig())
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if proven {
		<-m.semProven
	} else {
		<-m.sem
		m.releaseIP(ip)
	}
	if err == nil {
		m.prove(ip)
	}
	if err != nil {
		m.trust.refused.Add(1)
		m.log.Debug("cluster port: refused a connection", "remote", c.RemoteAddr().String(), "error", err)
		c.Close()
		return
	}
	var conn net.Conn = tc
	ch := m.rpcCh
	if tc.ConnectionState().NegotiatedProtocol == alpnRaft {
		rc := &raftConn{Conn: tc, m: m}
		m.connMu.Lock()
		m.conns[rc] = struct{}{}
		m.connMu.Unlock()
		conn, ch = rc, m.raftCh
	}
	select {
	case ch <- conn:
	case <-m.closed:
		conn.Close()
	}
}

// Close stops accepting, waits for handshakes in progress and closes
// raft's inbound connections.
func (m *mux) Close() error {
	var err error
	m.closeOnce.Do(func() {
		close(m.closed)
		err = m.ln.Close()
		m.wg.Wait()
		m.connMu.Lock()
		conns := make([]*raftConn, 0, len(m.conns))
		for c := range m.conns {
			conns = append(conns, c)
		}
		m.connMu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return err
}

// chanListener is a net.Listener fed by the mux.
type chanListener struct {
	m  *mux
	ch chan net.Conn
}

func (l chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.m.closed:
		return nil, net.ErrClosed
	}
}

func (l chanListener) Close() error   { return nil } // the mux owns the socket
func (l chanListener) Addr() net.Addr { return l.m.ln.Addr() }

// raftLayer is raft's StreamLayer over the mux.
type raftLayer struct {
	chanListener
	advertise net.Addr
}

func (l *raftLayer) Addr() net.Addr {
	if l.advertise != nil {
		return l.advertise
	}
	return l.m.ln.Addr()
}

func (l *raftLayer) Close() error { return l.m.Close() }

func (l *raftLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return l.m.trust.dial(ctx, string(address), alpnRaft, "")
}

// SetTLS replaces this node's identity and trust bundle (a certificate
// renewal or a CA rotation, on reload). The node name must not change.
// New connections use it at once; pooled ones are closed so that they
// are made again under it.
func (n *Agent) SetTLS(m *pki.Material) error {
	if m == nil {
		return errors.New("cluster: no node certificate")
	}
	if m.Self.Name != n.cfg.NodeName {
		return fmt.Errorf("cluster: the new node certificate is for %q, this node is %q", m.Self.Name, n.cfg.NodeName)
	}
	old := n.trust.mat.Swap(m)
	if old != nil && old.Self.KeyID == m.Self.KeyID && sameCAs(old, m) {
		return nil
	}
	n.log.Info("cluster TLS identity replaced", "key", m.Self.KeyID.String(), "expires", m.Self.NotAfter, "cas", len(m.CAs))
	if nt, ok := n.transport.(*raft.NetworkTransport); ok {
		nt.CloseStreams()
	}
	n.rpc.CloseIdleConnections()
	// The meta loop gossips the metadata sealed with the new key.
	return nil
}

func sameCAs(a, b *pki.Material) bool {
	if len(a.CAs) != len(b.CAs) {
		return false
	}
	for i := range a.CAs {
		if !a.CAs[i].Equal(b.CAs[i]) {
			return false
		}
	}
	return true
}

// TLSIdentity returns this node's current certificate identity.
func (n *Agent) TLSIdentity() pki.Identity { return n.trust.material().Self }

// TrustStats returns how many connections the cluster port refused in the
// handshake and how many gossip messages were dropped as malformed or
// forged.
func (n *Agent) TrustStats() (refused, dropped uint64) {
	return n.trust.refused.Load(), n.peers.dropped.Load()
}

// DirectGossipFailures is how many gossip messages could not be written
// to a member in the packet sent to it directly (Broadcast); each still
// travels by gossip and push/pull.
func (n *Agent) DirectGossipFailures() uint64 { return n.directFailed.Load() }

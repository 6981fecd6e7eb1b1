package cluster

import (
	"fmt"
	"log"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/memberlist"
)

// Inbound gossip streams. memberlist serves every TCP connection to the
// gossip port (push/pull, joins, reliable sends, TCP pings) in a goroutine
// of its own, for up to TCPTimeout (10 s) before it has read anything,
// and never bounds how many: anyone who reaches the port, without the
// gossip key, could hold thousands of descriptors and goroutines with
// connections that say nothing, and a node's descriptors are its
// clients'. So the transport is memberlist's own with the streams it
// hands over bounded, in all and per remote address; one beyond the
// bounds is closed at once. A node opens at most a few at a time (a
// push/pull every 15 s, a TCP ping when a UDP probe fails).
const (
	maxGossipStreams      = 128
	maxGossipStreamsPerIP = 16
)

// boundedTransport is memberlist's NetTransport with its inbound streams
// bounded (StreamCh).
type boundedTransport struct {
	*memberlist.NetTransport
	out      chan net.Conn
	closing  chan struct{} // Shutdown began: streams are closed, not handed over
	stop     chan struct{} // the NetTransport stopped: the pump returns
	stopOnce sync.Once
	done     chan struct{}

	mu      sync.Mutex
	total   int
	perIP   map[netip.Addr]int
	refused atomic.Uint64
}

// newBoundedTransport creates the transport memberlist.Create would for
// mc (binding mc's address and port, and on port 0 recording the one the
// kernel chose in mc, as memberlist does) and starts handing its streams
// over.
func newBoundedTransport(mc *memberlist.Config) (*boundedTransport, error) {
	nc := &memberlist.NetTransportConfig{
		BindAddrs: []string{mc.BindAddr},
		BindPort:  mc.BindPort,
		Logger:    log.New(mc.LogOutput, "", log.LstdFlags),
	}
	// Binding one port for both TCP and UDP races on port 0: retry, as
	// memberlist does.
	tries := 1
	if mc.BindPort == 0 {
		tries = 10
	}
	var nt *memberlist.NetTransport
	var err error
	for range tries {
		if nt, err = memberlist.NewNetTransport(nc); err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("could not set up network transport: %w", err)
	}
	if mc.BindPort == 0 {
		mc.BindPort = nt.GetAutoBindPort()
		mc.AdvertisePort = mc.BindPort
	}
	t := &boundedTransport{NetTransport: nt, out: make(chan net.Conn), closing: make(chan struct{}),
		stop: make(chan struct{}), done: make(chan struct{}), perIP: map[netip.Addr]int{}}
	go t.pump()
	return t, nil
}

// StreamCh implements memberlist.Transport: the inbound streams within
// the bounds.
func (t *boundedTransport) StreamCh() <-chan net.Conn { return t.out }

// Shutdown implements memberlist.Transport.
func (t *boundedTransport) Shutdown() error {
	var err error
	t.stopOnce.Do(func() {
		close(t.closing)
		// The NetTransport's accept loop may be handing a stream over:
		// the pump takes (and closes) them until it has stopped.
		err = t.NetTransport.Shutdown()
		close(t.stop)
	})
	<-t.done
	return err
}

func (t *boundedTransport) pump() {
	defer close(t.done)
	in := t.NetTransport.StreamCh()
	for {
		select {
		case c := <-in:
			ip := remoteIP(c)
			if !t.take(ip) {
				t.refused.Add(1)
				c.Close()
				continue
			}
			sc := &slotConn{Conn: c, release: func() { t.release(ip) }}
			select {
			case t.out <- sc:
			case <-t.closing:
				sc.Close()
			}
		case <-t.stop:
			return
		}
	}
}

func (t *boundedTransport) take(ip netip.Addr) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.total >= maxGossipStreams || t.perIP[ip] >= maxGossipStreamsPerIP {
		return false
	}
	t.total++
	t.perIP[ip]++
	return true
}

func (t *boundedTransport) release(ip netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.total--
	if t.perIP[ip]--; t.perIP[ip] <= 0 {
		delete(t.perIP, ip)
	}
}

// slotConn gives its stream's slot back when closed (memberlist closes
// every stream it serves).
type slotConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *slotConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

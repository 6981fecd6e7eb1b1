package cluster

import (
	"context"
	"net"
	"testing"
	"time"
)

// A stranger (no certificate, no key) that opens connections to the
// cluster port and says nothing cannot take every handshake slot: the
// nodes' own connections, from other hosts, still get through at once.
// Before, 64 silent connections from one host made the port close every
// other connection for as long as the stranger kept them (5 s each, and
// it opens new ones), so raft could not reconnect to the node.
func TestClusterPortStrangerCannotTakeEverySlot(t *testing.T) {
	ca := newTestCA(t)
	own, peer := &trust{}, &trust{}
	own.mat.Store(ca.material(t, "n1"))
	peer.mat.Store(ca.material(t, "n2"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newMux(ln, own, testLogger(t))
	defer m.Close()
	handed := make(chan struct{}, 1) // an authenticated connection reached the RPC server
	go func() {
		for {
			select {
			case c := <-m.rpcCh:
				c.Close()
				handed <- struct{}{}
			case <-m.closed:
				return
			}
		}
	}()
	// The stranger, from 127.0.0.2: twice as many silent connections as
	// there are slots.
	stranger := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	for range 2 * maxHandshakes {
		c, err := stranger.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	time.Sleep(100 * time.Millisecond) // accepted, or refused, by now
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	c, err := peer.dial(ctx, ln.Addr().String(), alpnRPC, "n1")
	if err != nil {
		t.Fatalf("a node's connection under the stranger's flood: %v after %v", err, time.Since(start))
	}
	defer c.Close()
	select {
	case <-handed:
	case <-time.After(2 * time.Second):
		t.Fatal("a node's connection never reached the RPC server under the stranger's flood")
	}
	if r := m.trust.refused.Load(); r < maxHandshakes {
		t.Fatalf("%d of the stranger's %d connections refused at once", r, 2*maxHandshakes)
	}
}

// A stranger with many addresses can fill the 64 slots strangers share,
// but an address a node showed its certificate from before has slots of
// its own: the node still gets through.
func TestClusterPortStrangerWithManyAddresses(t *testing.T) {
	ca := newTestCA(t)
	own, peer := &trust{}, &trust{}
	own.mat.Store(ca.material(t, "n1"))
	peer.mat.Store(ca.material(t, "n2"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newMux(ln, own, testLogger(t))
	defer m.Close()
	handed := make(chan struct{}, 4)
	go func() {
		for {
			select {
			case c := <-m.rpcCh:
				c.Close()
				handed <- struct{}{}
			case <-m.closed:
				return
			}
		}
	}()
	connect := func(when string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := peer.dial(ctx, ln.Addr().String(), alpnRPC, "n1")
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		defer c.Close()
		select {
		case <-handed:
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: the node's connection never reached the RPC server", when)
		}
	}
	connect("before the flood") // the node's address shows a certificate
	for i := range 2 * maxHandshakes / maxHandshakesPerIP {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 2, byte(i+1))}}
		for range maxHandshakesPerIP {
			c, err := d.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
	}
	time.Sleep(100 * time.Millisecond)
	if r := m.trust.refused.Load(); r < maxHandshakes {
		t.Fatalf("%d refused: the strangers' slots are not full", r)
	}
	connect("under the flood")
}

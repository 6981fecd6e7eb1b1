package cluster

import (
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// Connections to the gossip port that say nothing (anyone can open them:
// no key is needed to connect) are handed to memberlist only up to
// maxGossipStreamsPerIP from one address and maxGossipStreams in all;
// the rest are closed at once, so that a flood holds neither descriptors
// nor goroutines. Another address still gets through, and a stream
// memberlist closes frees its slot.
func TestGossipStreamsBounded(t *testing.T) {
	mc := memberlist.DefaultLANConfig()
	mc.BindAddr, mc.BindPort, mc.LogOutput = "127.0.0.1", 0, io.Discard
	tr, err := newBoundedTransport(mc)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(mc.BindPort))
	dialFrom := func(ip string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var handed []net.Conn
	defer func() {
		for _, c := range handed {
			c.Close()
		}
	}()
	take := func(want int) {
		t.Helper()
		for len(handed) < want {
			select {
			case c := <-tr.StreamCh():
				handed = append(handed, c)
			case <-time.After(2 * time.Second):
				t.Fatalf("%d streams handed over, want %d", len(handed), want)
			}
		}
		select {
		case c := <-tr.StreamCh():
			t.Fatalf("stream %d from %v handed over beyond the bounds", len(handed)+1, c.RemoteAddr())
		case <-time.After(100 * time.Millisecond):
		}
	}
	// One host: maxGossipStreamsPerIP of its connections, the rest closed.
	var flood []net.Conn
	for range 3 * maxGossipStreamsPerIP {
		flood = append(flood, dialFrom("127.0.0.2"))
	}
	take(maxGossipStreamsPerIP)
	closed := 0
	for _, c := range flood { // closed ones were closed at once, before take returned
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err == io.EOF {
			closed++
		}
	}
	if closed != 2*maxGossipStreamsPerIP {
		t.Fatalf("%d of the %d connections beyond the bound closed", closed, 2*maxGossipStreamsPerIP)
	}
	// Another host still gets through; a stream closed frees its slot.
	dialFrom("127.0.0.3")
	take(maxGossipStreamsPerIP + 1)
	handed[0].Close()
	dialFrom("127.0.0.2")
	take(maxGossipStreamsPerIP + 2)
	// Many hosts: maxGossipStreams in all.
	for i := range maxGossipStreams / maxGossipStreamsPerIP {
		for range maxGossipStreamsPerIP {
			dialFrom("127.0.1." + strconv.Itoa(i+1))
		}
	}
	take(maxGossipStreams + 1) // handed[0] was closed
	if tr.refused.Load() == 0 {
		t.Fatal("nothing counted as refused")
	}
}

package node

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/portico-mail/portico/node/imap"
	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// dialAs connects through the PROXY protocol as client src.
func dialAs(t *testing.T, addr, src string) *bufio.Reader {
	t.Helper()
	c, br := dial(t, addr)
	h := proxyproto.HeaderProxyFromAddrs(2, tcpAddr(t, src), tcpAddr(t, "[2001:db8::143]:143"))
	if _, err := h.WriteTo(c); err != nil {
		t.Fatal(err)
	}
	return br
}

func tcpAddr(t *testing.T, s string) *net.TCPAddr {
	a, err := net.ResolveTCPAddr("tcp", s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// max_connections_per_ip counts an IPv6 client by its /64 (another address
// of the same /64 is the same client; another /64 is not), and does not
// apply to exempt networks.
func TestPerIPLimitIPv6AndExempt(t *testing.T) {
	s := startServer(t, Config{MaxConnectionsPerIP: 2,
		PerIPExempt: []netip.Prefix{netip.MustParsePrefix("2001:db8:ffff::/48")},
		Listeners: []ListenerConfig{{Name: "l", Address: "127.0.0.1:0", ProxyProtocol: true,
			TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}}})
	addr := s.Addrs()["l"].String()
	for _, src := range []string{"[2001:db8:1:2::1]:1000", "[2001:db8:1:2:ffff::9]:1001"} {
		if got := readLine(t, dialAs(t, addr, src)); !strings.HasPrefix(got, "* OK [2001:db8:1:2:") {
			t.Fatalf("%s: %q", src, got)
		}
	}
	if got := readLine(t, dialAs(t, addr, "[2001:db8:1:2::77]:1002")); !strings.HasPrefix(got, "* BYE [UNAVAILABLE] Too many connections") {
		t.Fatalf("third from the same /64: %q", got)
	}
	if got := readLine(t, dialAs(t, addr, "[2001:db8:1:3::1]:1003")); !strings.HasPrefix(got, "* OK [2001:db8:1:3::1]") {
		t.Fatalf("another /64: %q", got)
	}
	// IPv4 is counted per address.
	for i, want := range []string{"* OK", "* OK", "* BYE [UNAVAILABLE]"} {
		if got := readLine(t, dialAs(t, addr, "198.51.100.7:200"+string(rune('0'+i)))); !strings.HasPrefix(got, want) {
			t.Fatalf("IPv4 connection %d: %q", i+1, got)
		}
	}
	// An exempt network (webmail) is not limited.
	for i := 0; i < 5; i++ {
		if got := readLine(t, dialAs(t, addr, "[2001:db8:ffff::10]:3000")); !strings.HasPrefix(got, "* OK") {
			t.Fatalf("exempt connection %d: %q", i+1, got)
		}
	}
}

func TestDefaultMaxConnections(t *testing.T) {
	for _, c := range []struct {
		nofile uint64
		want   int
	}{
		{1024, 448},       // (1024-128)/2
		{65536, 28672},    // (65536-8192)/2
		{1048576, 458752}, // (1048576-131072)/2
		{100, 1},
		{^uint64(0), 7340032}, // RLIM_INFINITY: capped at 2^24 descriptors
	} {
		if got := maxConnectionsFor(c.nofile); got != c.want {
			t.Errorf("nofile %d: %d, want %d", c.nofile, got, c.want)
		}
	}
	if n := DefaultMaxConnections(); n <= 0 {
		t.Errorf("DefaultMaxConnections() = %d here", n)
	}
}

// blockedInWrite reports whether a goroutine is parked waiting for a
// socket to accept a write from inside fn (a function name).
func blockedInWrite(fn string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		// RawWrite: a pre-login write through netx.Conn's gate hold.
		write := strings.Contains(g, "(*FD).Write") || strings.Contains(g, "(*FD).RawWrite")
		if strings.Contains(g, "[IO wait") && write && strings.Contains(g, fn) {
			return true
		}
	}
	return false
}

// Shutdown does not wait for a client that sends commands and never reads
// the replies: its blocked write is interrupted within ByeWriteGrace, well
// before preauth_timeout (60 s by default).
func TestShutdownWithClientThatNeverReads(t *testing.T) {
	engine, err := relay.NewEngine()
	if err != nil {
		t.Fatal(err)
	}
	defer engine.Close()
	lim := session.DefaultLimits(routing.IMAP)
	lim.MaxErrors = 0
	s := NewServer(Config{Listeners: []ListenerConfig{{Name: "l", Address: "127.0.0.1:0", Protocol: routing.IMAP, Limits: lim}}},
		&session.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil))},
		map[routing.Protocol]session.Handler{routing.IMAP: imap.New(imap.Options{})}, nil, engine)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", s.Addrs()["l"].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// 1 MB of commands whose replies (ten times as large) cannot fit in
	// the socket buffers (4 MB at most each way here): the handler ends up
	// blocked in a write. Wait for that.
	cmds := []byte(strings.Repeat("a CAPABILITY\r\n", 1<<20/14))
	go c.Write(cmds)
	for deadline := time.Now().Add(30 * time.Second); !blockedInWrite("session.(*Dialogue).Flush"); {
		if time.Now().After(deadline) {
			t.Fatal("the handler never blocked writing its replies")
		}
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		c.Close()
		<-done
		t.Fatal("Shutdown waited for a client that does not read")
	}
	// The blocked write waited for its deadline (ByeWriteGrace).
	t.Logf("Shutdown took %v", time.Since(start).Round(time.Millisecond))
}

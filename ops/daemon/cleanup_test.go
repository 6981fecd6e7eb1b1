package daemon

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/ops/config"
)

// freeAddr returns a loopback address whose port is free for TCP and UDP
// right now (memberlist binds both).
func freeAddr(t *testing.T) string {
	t.Helper()
	for i := 0; i < 20; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			continue
		}
		u.Close()
		return addr
	}
	t.Fatal("no free port")
	return ""
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// partialNode is a cluster node's configuration on addresses the test
// chose, so that it can check afterwards that they are free again.
type partialNode struct {
	cfg                         *config.Config
	dir, admin, raft, gossip, l string
}

func newPartialNode(t *testing.T) *partialNode {
	p := &partialNode{dir: t.TempDir(), admin: freeAddr(t), raft: freeAddr(t), gossip: freeAddr(t), l: freeAddr(t)}
	cfg, err := config.Parse([]byte(`
listeners: [{name: imap, protocol: imap, address: "` + p.l + `"}]
admin: {address: "` + p.admin + `"}
data_dir: ` + p.dir + `
cluster: {raft_address: "` + p.raft + `", gossip_address: "` + p.gossip + `"}
auth: {mode: http, url: "http://127.0.0.1:1/auth"}
backends: [{id: b1, host: 127.0.0.1, imap_port: 1}]
pools: [{name: p, backends: [b1]}]
routes: {default_pool: p}
`))
	if err != nil {
		t.Fatal(err)
	}
	p.cfg = cfg
	return p
}

// released checks that what the node had opened is closed again: its
// addresses can be bound, its data directory locked, and no descriptor or
// goroutine is left over.
func (p *partialNode) released(t *testing.T, fds int) {
	t.Helper()
	for _, a := range []string{p.admin, p.raft, p.gossip, p.l} {
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Errorf("%s still bound: %v", a, err)
			continue
		}
		l.Close()
	}
	u, err := net.ListenPacket("udp", p.gossip)
	if err != nil {
		t.Errorf("gossip UDP %s still bound: %v", p.gossip, err)
	} else {
		u.Close()
	}
	lock, err := cluster.LockDataDir(p.dir)
	if err != nil {
		t.Errorf("data dir still locked: %v", err)
	} else {
		lock.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for openFDs(t) > fds && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := openFDs(t); n > fds {
		t.Errorf("%d descriptors open, %d before", n, fds)
	}
}

// New fails after it bound the admin socket, opened the cluster agent
// (raft and gossip ports, data directory lock, raft's stores) and the
// relay engine: all of it is closed again, and no goroutine is left.
func TestNewFailsLateLeaksNothing(t *testing.T) {
	p := newPartialNode(t)
	// Valid when the configuration was checked; refused by the auth_http
	// stage, which New sets up after the cluster and the relay engine.
	p.cfg.Auth.URL = "gopher://127.0.0.1/auth"
	ignore := goleak.IgnoreCurrent()
	fds := openFDs(t)
	d, err := New(p.cfg, Options{Logger: discardLogger()})
	if err == nil {
		_ = d.Shutdown(context.Background())
		t.Fatal("New succeeded")
	}
	if !strings.Contains(err.Error(), "auth") {
		t.Fatalf("New failed elsewhere than expected: %v", err)
	}
	p.released(t, fds)
	goleak.VerifyNone(t, ignore)
}

// Start fails (a listener's address is taken) after the admin API
// started serving: Start stops and closes everything.
func TestStartFailsLeaksNothing(t *testing.T) {
	p := newPartialNode(t)
	p.cfg.Auth = nil
	p.cfg.Listeners[0].Auth = nil
	ignore := goleak.IgnoreCurrent()
	fds := openFDs(t)
	d, err := New(p.cfg, Options{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", p.l)
	if err != nil {
		t.Fatal(err)
	}
	err = d.Start()
	taken.Close()
	if err == nil {
		_ = d.Shutdown(context.Background())
		t.Fatal("Start succeeded on a taken address")
	}
	p.released(t, fds)
	goleak.VerifyNone(t, ignore)
}

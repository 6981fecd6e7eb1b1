package upgrade

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/vip"
)

// The new process of these tests is this test binary again, started by
// the Upgrader with childEnv set: it plays the new side of the protocol
// (Handover) as told, and checks what it inherited.
const childEnv = "PORTICO_UPGRADE_TEST_CHILD"

// testSecret is what the old process hands over as Config.Secrets.
const testSecret = "ticket keys: not for the environment"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(child(mode))
	}
	goleak.VerifyTestMain(m)
}

// child is the new process: mode "ok" takes over, "fail-hello" gives up
// before the old process hands over, "fail-ready" after.
func child(mode string) int {
	h, err := Inherited()
	if err != nil || h == nil {
		fmt.Fprintln(os.Stderr, "child: no handover:", err)
		return 2
	}
	if mode == "fail-hello" {
		h.Fail(errors.New("the configuration does not load"))
		return 1
	}
	// What the old process handed over.
	var problems []string
	ln, err := h.Listener(os.Getenv("PORTICO_UPGRADE_TEST_ADDR"))
	if err != nil || ln == nil || ln.Addr().String() != os.Getenv("PORTICO_UPGRADE_TEST_ADDR") {
		problems = append(problems, fmt.Sprintf("listener: %v %v", ln, err))
	}
	if ln != nil {
		ln.Close()
	}
	if until := h.VIPHoldUntil(); until.Before(time.Now()) {
		problems = append(problems, fmt.Sprintf("VIP hold until %v", until))
	}
	if idx, ok := h.TableIndex(); !ok || idx != 42 {
		problems = append(problems, fmt.Sprintf("table index %d %v", idx, ok))
	}
	// The secrets came through their pipe, and nowhere in the environment.
	if got := string(h.Secrets()); got != testSecret {
		problems = append(problems, fmt.Sprintf("secrets %q", got))
	}
	if env, err := os.ReadFile("/proc/self/environ"); err != nil || strings.Contains(string(env), testSecret) {
		problems = append(problems, fmt.Sprintf("the secret is in the environment (%v)", err))
	}
	if err := h.Hello(10 * time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	if mode == "fail-ready" || len(problems) > 0 {
		h.Fail(fmt.Errorf("cannot serve: %s", strings.Join(problems, "; ")))
		return 1
	}
	h.Ready()
	return 0
}

// fakes records the calls the Upgrader makes on the node's parts.
type fakes struct {
	mu    sync.Mutex
	calls []string
	ln    net.Listener
}

func (f *fakes) add(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}

func (f *fakes) called() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.calls, ", ")
}

// Server.
func (f *fakes) ListenerFiles() (map[string]*os.File, error) {
	file, err := f.ln.(*net.TCPListener).File()
	if err != nil {
		return nil, err
	}
	return map[string]*os.File{f.ln.Addr().String(): file}, nil
}
func (f *fakes) StopAccepting() { f.add("stop accepting") }
func (f *fakes) EndSessions(context.Context, func(netip.AddrPort) bool, string, time.Duration) int {
	return 0
}
func (f *fakes) EndSpread() time.Duration { return 0 }

// Cluster.
type fakeCluster struct{ *fakes }

func (c fakeCluster) IsLeader() bool { return true }
func (c fakeCluster) HoldPeerElections(_ context.Context, d time.Duration) error {
	c.add(fmt.Sprintf("hold elections %v", d))
	return nil
}
func (c fakeCluster) ReleasePeerElections(context.Context) { c.add("release elections") }
func (c fakeCluster) Handoff(keep bool) error {
	c.add(fmt.Sprintf("handoff keep=%v", keep))
	return nil
}

// VIP.
type fakeVIP struct{ *fakes }

func (v fakeVIP) Owned() bool                 { return true }
func (v fakeVIP) Release(time.Duration) error { v.add("release VIP"); return nil }
func (v fakeVIP) Detach()                     { v.add("detach VIP") }
func (v fakeVIP) Addresses() []vip.Address    { return nil }

func newUpgrader(t *testing.T, mode string) (*Upgrader, *fakes) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	t.Setenv(childEnv, mode)
	t.Setenv("PORTICO_UPGRADE_TEST_ADDR", ln.Addr().String())
	f := &fakes{ln: ln}
	hold := config.Duration(5 * time.Second)
	var wg sync.WaitGroup
	u := New(Config{
		Executable: os.Args[0], Args: []string{"-test.run=^$"},
		Settings: func() config.Upgrade {
			return config.Upgrade{Timeout: config.Duration(30 * time.Second), SessionGrace: config.Duration(time.Minute), LeaderHold: &hold}
		},
		Server: f, Sessions: func() int { return 0 },
		Cluster: fakeCluster{f}, VIP: fakeVIP{f},
		TableIndex: func() (uint64, bool) { return 42, true },
		Secrets:    func() []byte { return []byte(testSecret) },
		Go: func(fn func(context.Context)) bool {
			wg.Add(1)
			go func() { defer wg.Done(); fn(t.Context()) }()
			return true
		},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	t.Cleanup(wg.Wait)
	return u, f
}

func retired(t *testing.T, u *Upgrader) {
	t.Helper()
	select {
	case <-u.Retired():
	case <-time.After(10 * time.Second):
		t.Fatal("not retired")
	}
}

// The VIP owner upgrades: the other voters hold their elections, the old
// process stops accepting, keeps the VIP on the interface for the new
// one, hands the cluster identity off keeping leadership, and retires
// once its sessions are done.
func TestUpgradeHandsOver(t *testing.T) {
	u, f := newUpgrader(t, "ok")
	res, err := u.Upgrade(t.Context())
	if err != nil {
		t.Fatalf("upgrade: %v (calls: %s)", err, f.called())
	}
	if res.PID <= 0 {
		t.Fatalf("result %+v", res)
	}
	want := "hold elections 5s, stop accepting, detach VIP, handoff keep=true, detach VIP"
	if got := f.called(); got != want {
		t.Fatalf("calls: %s\nwant:  %s", got, want)
	}
	retired(t, u)
	if u.Failed() {
		t.Fatal("failed")
	}
	if _, err := u.Upgrade(t.Context()); err == nil {
		t.Fatal("a second upgrade started")
	}
}

// The new process gives up before the handover: nothing changed, the
// voters' hold is released, and another upgrade may be tried.
func TestUpgradeAbortedBeforeHandover(t *testing.T) {
	u, f := newUpgrader(t, "fail-hello")
	_, err := u.Upgrade(t.Context())
	if err == nil || !strings.Contains(err.Error(), "the configuration does not load") {
		t.Fatalf("upgrade: %v", err)
	}
	if got, want := f.called(), "hold elections 5s, release elections"; got != want {
		t.Fatalf("calls: %s, want %s", got, want)
	}
	if u.Failed() || u.running.Load() {
		t.Fatal("an aborted upgrade left state behind")
	}
	select {
	case <-u.Retired():
		t.Fatal("retired after an aborted upgrade")
	default:
	}
}

// The new process fails after the handover: this process no longer has
// the cluster identity; it finishes its sessions and marks itself failed
// so that the supervisor restarts the node.
func TestUpgradeFailsAfterHandover(t *testing.T) {
	u, f := newUpgrader(t, "fail-ready")
	_, err := u.Upgrade(t.Context())
	if err == nil || !strings.Contains(err.Error(), "cannot serve") {
		t.Fatalf("upgrade: %v", err)
	}
	if !strings.Contains(f.called(), "handoff keep=true") {
		t.Fatalf("calls: %s", f.called())
	}
	retired(t, u)
	if !u.Failed() {
		t.Fatal("not marked failed")
	}
}

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/loopback"
)

// In-place upgrade with 200 IMAP sessions IDLE through the node: a new
// process takes the sockets and the cluster identity over; all 200 still
// work afterwards (they can NOOP, relayed by the old process), new logins
// succeed throughout, and the old process exits once its sessions end.
func TestInPlaceUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.91"})
	dir := t.TempDir()
	bin := filepath.Join(dir, "portico")
	src, err := os.ReadFile(porticoBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	// Both processes read the addresses from the file, and the test dials
	// them: an address of this test's own, with ports free on it.
	ip := loopback.Addr(t)
	ports := loopback.Ports(t, ip, 4)
	at := func(i int) string { return netip.AddrPortFrom(ip, uint16(ports[i])).String() }
	imapAddr, adminAddr := at(0), at(1)
	cfgPath := filepath.Join(dir, "portico.yaml")
	cfg := fmt.Sprintf(`
node_name: up1
data_dir: %q
admin: {address: %q}
cluster:
  raft_address: %q
  gossip_address: %q
  # 200 logins at once keep Dovecot busy: on a loaded CI machine its
  # greeting to a health probe can take seconds, which must not mark it down.
  health: {timeout: 10s, fall: 10}
listeners:
  - {name: imap, protocol: imap, address: %q, tls: none}
backends:
  - {id: dc1, host: %s, imap_port: %d, pop3_port: %d}
pools:
  - {name: main, backends: [dc1]}
routes:
  default_pool: main
`, filepath.Join(dir, "data"), adminAddr, at(2), at(3), imapAddr, dc.Addr, dc.IMAPPort, dc.POP3Port)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// A file, not a pipe: the new process inherits the old one's output,
	// and Wait would otherwise wait for it too.
	logs, err := os.Create(filepath.Join(dir, "portico.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	old := exec.Command(bin, "serve", "--config", cfgPath)
	old.Stdout, old.Stderr = logs, logs
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	oldDone := make(chan error, 1)
	go func() { oldDone <- old.Wait() }()
	var newPID atomic.Int64
	t.Cleanup(func() {
		_ = old.Process.Kill()
		if p := newPID.Load(); p > 0 {
			_ = syscall.Kill(int(p), syscall.SIGKILL)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logs.Name())
			t.Logf("portico logs:\n%s", tail(string(b), 60))
		}
	})
	waitListening(t, imapAddr)
	waitFor(t, "ready", 15*time.Second, func() bool {
		resp, err := http.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	// 200 sessions in IDLE.
	const n = 200
	sessions := make([]*lineConn, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 20)
	for i := range sessions {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			l := loginRaw(t, imapAddr, false)
			_ = l.c.SetDeadline(time.Now().Add(2 * time.Minute))
			l.send("i1 IDLE\r\n")
			l.until("+ ")
			sessions[i] = l
		}(i)
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// New logins throughout.
	ctx, stopLoad := context.WithCancel(context.Background())
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		for ctx.Err() == nil {
			if err := loginVia(t, imapAddr, "bob", "secret"); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			} else {
				ok.Add(1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	time.Sleep(300 * time.Millisecond)

	resp, err := http.Post("http://"+adminAddr+"/v1/upgrade", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		PID      int   `json:"pid"`
		Took     int64 `json:"took_ms"`
		Sessions int   `json:"sessions"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if resp.StatusCode != 200 || res.PID == 0 || res.PID == old.Process.Pid {
		t.Fatalf("upgrade: %d %+v", resp.StatusCode, res)
	}
	newPID.Store(int64(res.PID))
	t.Logf("upgrade: new pid %d serving after %d ms; old process keeps %d sessions", res.PID, res.Took, res.Sessions)
	if res.Sessions < n {
		t.Fatalf("the old process kept %d sessions, want at least %d", res.Sessions, n)
	}
	time.Sleep(time.Second)
	stopLoad()
	<-loadDone
	t.Logf("logins during the upgrade: %d ok, %d failed", ok.Load(), failed.Load())
	if failed.Load() > 0 || ok.Load() < 10 {
		t.Fatalf("logins during the upgrade: %d ok, %d failed (first: %v)", ok.Load(), failed.Load(), firstErr.Load())
	}
	// The admin API is the new process's now.
	var st struct {
		Node string `json:"node"`
	}
	if code, raw := getJSON(t, "http://"+adminAddr+"/v1/status", &st); code != 200 || st.Node != "up1" {
		t.Fatalf("status after upgrade: %d %s", code, raw)
	}

	// Every old session still works, through the old process.
	for i, l := range sessions {
		l.send("DONE\r\n")
		if got := l.until("i1 "); !strings.HasPrefix(got, "i1 OK") {
			t.Fatalf("session %d: IDLE ended with %q", i, got)
		}
		l.send("n1 NOOP\r\n")
		if got := l.until("n1 "); !strings.HasPrefix(got, "n1 OK") {
			t.Fatalf("session %d: NOOP: %q", i, got)
		}
	}
	select {
	case err := <-oldDone:
		t.Fatalf("old process exited while it had sessions: %v", err)
	default:
	}
	for _, l := range sessions {
		l.send("z LOGOUT\r\n")
		l.until("z OK")
		l.c.Close()
	}
	select {
	case err := <-oldDone:
		if err != nil {
			t.Fatalf("old process: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("old process did not exit after its sessions ended")
	}
	// The new process serves on, and stops cleanly.
	if err := loginVia(t, imapAddr, "alice", "secret"); err != nil {
		t.Fatalf("login after the old process exited: %v", err)
	}
	if err := syscall.Kill(res.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "new process exit", 20*time.Second, func() bool { return syscall.Kill(res.PID, 0) != nil })
}

func getJSON(t *testing.T, url string, v any) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw json.RawMessage
	_ = json.NewDecoder(resp.Body).Decode(&raw)
	_ = json.Unmarshal(raw, v)
	return resp.StatusCode, string(raw)
}

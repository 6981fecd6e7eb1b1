package integration

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/internal/daemon"
)

// The quick start twice on one host: two `portico proxy` processes with
// their own listeners start side by side (no admin API unless asked for,
// nothing on disk) and both serve logins. What `--print-config` prints
// runs under `portico serve --config` the same way: standalone, with the
// admin API it was given, and twice at once as well (a raft node would
// hold /var/lib/portico and its ports).
func TestProxyTwiceOnOneHost(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.141"})
	bin := porticoBinary(t)
	type proc struct {
		cmd    *exec.Cmd
		stderr *daemon.Output
		done   chan error
	}
	start := func(args ...string) *proc {
		t.Helper()
		p := &proc{cmd: exec.Command(bin, args...), stderr: &daemon.Output{}, done: make(chan error, 1)}
		p.cmd.Stderr = p.stderr
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { p.done <- p.cmd.Wait() }()
		t.Cleanup(func() {
			p.cmd.Process.Kill()
			<-p.done
		})
		return p
	}
	stop := func(p *proc) {
		t.Helper()
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.done:
			p.done <- err // for the cleanup
			if err != nil {
				t.Errorf("%s: exit %v\n%s", strings.Join(p.cmd.Args, " "), err, p.stderr)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("%s: no exit after SIGTERM", strings.Join(p.cmd.Args, " "))
		}
	}
	login := func(addr string, p *proc) {
		t.Helper()
		waitListeningOrExit(t, addr, p.done, p.stderr)
		if r := imapLogin(t, "127.0.0.1", addr, "alice", "secret"); !strings.HasPrefix(r, "a OK") {
			t.Fatalf("login through %s: %q\n%s", addr, r, p.stderr)
		}
	}

	a1, a2 := freeAddr(t), freeAddr(t)
	p1 := start("proxy", "--from", "imap://"+a1, "--to", "imap://"+dc.IMAPAddr)
	p2 := start("proxy", "--from", "imap://"+a2, "--to", "imap://"+dc.IMAPAddr)
	login(a1, p1)
	login(a2, p2)

	// The printed configuration, served twice (other ports each time).
	dir := t.TempDir()
	var served []*proc
	for i := 0; i < 2; i++ {
		imap, admin := freeAddr(t), freeAddr(t)
		out, err := exec.Command(bin, "proxy", "--from", "imap://"+imap, "--to", "imap://"+dc.IMAPAddr,
			"--admin", admin, "--log-level", "warn", "--print-config").Output()
		if err != nil {
			t.Fatalf("--print-config: %v", err)
		}
		cfg := filepath.Join(dir, "printed"+string(rune('1'+i))+".yaml")
		if err := os.WriteFile(cfg, out, 0o644); err != nil {
			t.Fatal(err)
		}
		p := start("serve", "--config", cfg)
		served = append(served, p)
		login(imap, p)
		var st struct {
			Role    string `json:"role"`
			Version string `json:"version"`
		}
		raw, err := porticoCLI(t, nil, "status", "--json", "--admin", admin)
		if err != nil || json.Unmarshal([]byte(raw), &st) != nil || st.Role != "standalone" || st.Version == "" {
			t.Fatalf("status of serve --config %s: %v %s\n%s", cfg, err, raw, out)
		}
		// The build the binary reports, everywhere: portico version,
		// status, and the portico_build_info metric.
		ver, err := exec.Command(bin, "version").Output()
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`^portico (\S+) \(commit (\S+), `).FindStringSubmatch(string(ver))
		if m == nil || st.Version != m[1] {
			t.Fatalf("portico version %q, status says version %q", ver, st.Version)
		}
		resp, err := http.Get("http://" + admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		metrics, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := `portico_build_info{commit="` + m[2] + `",goversion="` + runtime.Version() + `",version="` + m[1] + `"} 1`; !strings.Contains(string(metrics), want) {
			t.Fatalf("no %s in /metrics", want)
		}
	}
	for _, p := range append([]*proc{p1, p2}, served...) {
		stop(p)
	}
}

// waitListeningOrExit waits for addr to accept connections, failing at
// once with the process's output if it exits first.
func waitListeningOrExit(t *testing.T, addr string, done chan error, stderr *daemon.Output) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("exited before listening on %s: %v\n%s", addr, err, stderr)
		default:
		}
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s never listened\n%s", addr, stderr)
}

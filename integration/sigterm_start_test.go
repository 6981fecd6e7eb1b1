package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A SIGTERM that arrives while a node is still starting (a supervisor
// stopping it at once, a drill stopping a node that has just come back)
// is a clean shutdown once it has started, never a death by signal (the
// default action): the failover drills hit this.
func TestSIGTERMDuringStart(t *testing.T) {
	bin := porticoBinary(t)
	for i, delay := range []time.Duration{40 * time.Millisecond, 80 * time.Millisecond, 150 * time.Millisecond} {
		dir := t.TempDir()
		cfg := fmt.Sprintf(`
data_dir: %q
admin: {address: "127.0.0.1:0"}
cluster: {raft_address: "127.0.0.1:0", gossip_address: "127.0.0.1:0"}
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0"}
backends:
  - {id: b, host: 127.0.0.1, imap_port: 1}
pools:
  - {name: p, backends: [b]}
`, filepath.Join(dir, "data"))
		path := filepath.Join(dir, "portico.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "serve", "--config", path)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("case %d (SIGTERM %v after exec): %v, want a clean exit\n%s", i, delay, err, out.String())
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("case %d: no exit 30 s after SIGTERM\n%s", i, out.String())
		}
	}
}

package integration

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// porticoBinary builds cmd/portico once per test run.
func porticoBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "portico-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "portico")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/portico").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitListening(t *testing.T, addr string) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s never listened", addr)
}

func TestCheckConfigCommand(t *testing.T) {
	bin := porticoBinary(t)
	out, err := exec.Command(bin, "check-config", "--config", "../examples/portico.yaml").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OK") {
		t.Fatalf("example config: %v\n%s", err, out)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("listeners:\n  - protocol: imap\n    address: 127.0.0.1:1\n    tsl: implicit\n"), 0o644)
	out, err = exec.Command(bin, "check-config", "--config", bad).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "line 4: field tsl not found") {
		t.Fatalf("bad config: %v\n%s", err, out)
	}
}

// SIGTERM: pre-login sessions get BYE, relayed ones may finish within the
// grace period, the process exits 0.
func TestSIGTERM(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.81"})
	bin := porticoBinary(t)
	addr := freeAddr(t)
	cmd := exec.Command(bin, "proxy", "--from", "imap://"+addr, "--from", "pop3://"+freeAddr(t),
		"--to", "imap://"+dc.IMAPAddr, "--to", "pop3://"+dc.POP3Addr, "--admin", "127.0.0.1:0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	waitListening(t, addr)

	pre := dialLine(t, addr, false)
	pre.line()
	relayed := dialLine(t, addr, false)
	relayed.line()
	relayed.send("a LOGIN alice secret\r\n")
	if got := relayed.until("a "); !strings.HasPrefix(got, "a OK") {
		t.Fatal(got)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if got := pre.line(); !strings.HasPrefix(got, "* BYE [UNAVAILABLE] Server shutting down") {
		t.Fatalf("pre-login session got %q", got)
	}
	// The relayed session still works during the grace period, and ends
	// normally when the client logs out.
	relayed.send("b NOOP\r\n")
	if got := relayed.until("b "); !strings.HasPrefix(got, "b OK") {
		t.Fatalf("relayed NOOP during grace: %q", got)
	}
	relayed.send("c LOGOUT\r\n")
	relayed.until("c ")
	select {
	case err := <-done:
		done <- err // for the cleanup
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("did not exit after SIGTERM\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "stopped") {
		t.Errorf("final log line missing (logs not flushed?):\n%s", stderr.String())
	}
}

// Hostile clients against a running node: none of this may crash it,
// hang it, or leak: a normal login still works afterwards.
func TestHostileClients(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.81"})
	p := startPortico(t, singleBackendConfig(t, dc, ""))

	// Plaintext on the implicit-TLS port: the handshake fails, the
	// connection is closed promptly.
	l := dialLine(t, p.addr("imaps"), false)
	l.send("a LOGIN alice secret\r\n")
	if !l.closed(12 * time.Second) {
		t.Fatal("plaintext on the TLS port: connection not closed")
	}

	// A huge synchronizing literal is refused without a continuation.
	l = dialLine(t, p.addr("imap-plain"), false)
	l.line()
	l.send("a LOGIN {100000000}\r\n")
	if got := l.line(); !strings.HasPrefix(got, "a BAD [TOOBIG]") {
		t.Fatalf("huge literal: %q", got)
	}
	// A huge non-synchronizing literal ends the session.
	l.send("b LOGIN {100000000+}\r\n")
	if got := l.until("* BYE"); got == "" {
		t.Fatal("no BYE")
	}
	if !l.closed(5 * time.Second) {
		t.Fatal("not closed after an oversized non-synchronizing literal")
	}

	// Binary garbage: errors, then BYE.
	l = dialLine(t, p.addr("imap-plain"), false)
	l.line()
	for i := 0; i < 5; i++ {
		l.send("\x00\xff\xfe garbage \x01\r\n")
	}
	l.until("* BYE")

	// An endless line without CRLF: bounded, answered, not buffered.
	l = dialLine(t, p.addr("pop3-plain"), false)
	l.line()
	l.send(strings.Repeat("A", 1<<20) + "\r\n")
	if got := l.line(); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("long POP3 line: %q", got)
	}

	// Still serving.
	c := dialIMAP(t, p, "imaps", nil)
	if err := c.Login("alice", "secret").Wait(); err != nil {
		t.Fatal(err)
	}
}

package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
)

// sieveConfig is one Dovecot with ManageSieve behind a Portico sieve
// listener (STARTTLS; plaintext authentication refused before it).
func sieveConfig(t *testing.T, dc *dovecot.Server) string {
	cert, key := demoCert(t)
	return fmt.Sprintf(`
tls:
  certificates: [{cert: %s, key: %s}]
listeners:
  - {name: sieve, protocol: sieve, address: "127.0.0.1:0", tls: starttls}
limits:
  auth_failure_delay: 100ms
backends:
  - {id: dc1, host: %s, sieve_port: %d, tls: starttls, tls_insecure_skip_verify: true, forward: id}
pools:
  - {name: main, backends: [dc1]}
routes:
  default_pool: main
`, cert, key, dc.Addr, dc.SievePort)
}

// sieveConnect runs the sieve-connect client (Debian package sieve-connect)
// against addr as alice, the password on a pipe (--passwordfd), and
// returns its output.
func sieveConnect(t *testing.T, addr, password string, args ...string) (string, error) {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	go func() {
		_, _ = pw.WriteString(password + "\n")
		pw.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all := append([]string{"--server", host, "--port", port, "--user", "alice", "--passwordfd", "3",
		"--notlsverify", "--authmech", "PLAIN"}, args...)
	cmd := exec.CommandContext(ctx, "sieve-connect", all...)
	cmd.ExtraFiles = []*os.File{pr}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	return out.String(), err
}

// The real sieve-connect client (driven non-interactively by its action
// options) checks, uploads, lists, activates, downloads, deactivates and
// deletes a script through Portico's ManageSieve listener (STARTTLS with
// the client, STARTTLS and XCLIENT with Dovecot's managesieve-login); a
// wrong password and an invalid script are refused.
func TestSieveConnectThroughPortico(t *testing.T) {
	if _, err := exec.LookPath("sieve-connect"); err != nil {
		t.Skip("sieve-connect not installed (apt-get install sieve-connect)")
	}
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.82", Sieve: true, TLS: true})
	p := startPortico(t, sieveConfig(t, dc))
	addr := p.addr("sieve")

	dir := t.TempDir()
	script := filepath.Join(dir, "filter.sieve")
	body := "require [\"fileinto\"];\nif header :contains \"subject\" \"portico\" {\n  fileinto \"INBOX\";\n}\n"
	if err := os.WriteFile(script, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		out, err := sieveConnect(t, addr, "secret", args...)
		if err != nil {
			t.Fatalf("sieve-connect %v: %v\n%s", args, err, out)
		}
		return out
	}

	if out, err := sieveConnect(t, addr, "wrong", "--list"); err == nil {
		t.Fatalf("wrong password accepted:\n%s", out)
	}
	run("--checkscript", "--localsieve", script)
	bad := filepath.Join(dir, "bad.sieve")
	if err := os.WriteFile(bad, []byte("fileinto \"x\";\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := sieveConnect(t, addr, "secret", "--checkscript", "--localsieve", bad); err == nil {
		t.Fatalf("a script without require passed CHECKSCRIPT:\n%s", out)
	}
	run("--upload", "--localsieve", script, "--remotesieve", "filter")
	if out := run("--list"); !strings.Contains(out, `"filter"`) || strings.Contains(out, "ACTIVE") || strings.Contains(out, "violates") {
		t.Fatalf("list after upload:\n%s", out)
	}
	run("--activate", "--remotesieve", "filter")
	if out := run("--list"); !strings.Contains(out, `"filter" ACTIVE`) {
		t.Fatalf("list after activate:\n%s", out)
	}
	got := filepath.Join(dir, "got.sieve")
	run("--download", "--remotesieve", "filter", "--localsieve", got)
	if b, err := os.ReadFile(got); err != nil || string(b) != body {
		t.Fatalf("downloaded %q (%v), want %q", b, err, body)
	}
	run("--deactivate")
	run("--delete", "--remotesieve", "filter")
	if out := run("--list"); strings.Contains(out, "filter") {
		t.Fatalf("list after delete:\n%s", out)
	}

	// Every login came over TLS with Portico's session ID, which only
	// XCLIENT SESSION= passes (Dovecot's own IDs hold '/' and '+'); the
	// address cannot be told from the proxy's here (all of 127/8 is one
	// host), node/sieve's TestDovecot checks ADDR.
	var sieveLogins int
	for _, r := range dc.LoginRecords() {
		if r.Protocol == "sieve" {
			sieveLogins++
			if !strings.Contains(r.Line, "TLS") || !porticoSession.MatchString(r.Line) {
				t.Errorf("dovecot login %q: want TLS and a Portico session=<...> (XCLIENT)", r.Line)
			}
		}
	}
	if sieveLogins == 0 {
		t.Fatalf("no ManageSieve logins in Dovecot's log:\n%s", dc.Log())
	}
}

var porticoSession = regexp.MustCompile(`session=<[A-Z2-7]{16}>`)

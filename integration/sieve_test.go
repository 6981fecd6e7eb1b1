package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/routing"
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
  - {name: sieve-plain, protocol: sieve, address: "127.0.0.1:0", tls: none}
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
// wrong password and an invalid script are refused; while active, the
// script files a message dovecot-lda delivers.
func TestSieveConnectThroughPortico(t *testing.T) {
	if _, err := exec.LookPath("sieve-connect"); err != nil {
		t.Skip("sieve-connect not installed (apt-get install sieve-connect)")
	}
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.82", Sieve: true, TLS: true})
	p := startPortico(t, sieveConfig(t, dc))
	addr := p.addr("sieve")

	dir := t.TempDir()
	script := filepath.Join(dir, "filter.sieve")
	body := "require [\"fileinto\", \"mailbox\"];\nif header :contains \"subject\" \"portico\" {\n  fileinto :create \"Filtered\";\n}\n"
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
	// The script uploaded through Portico filters a delivered message.
	if err := dc.Deliver("alice", "From: bob@example.com\r\nTo: alice@example.com\r\nSubject: via portico\r\n\r\nfiltered\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := dc.Deliver("alice", "From: bob@example.com\r\nTo: alice@example.com\r\nSubject: other\r\n\r\nkept\r\n"); err != nil {
		t.Fatal(err)
	}
	if f, in := dc.MaildirFiles("alice", ".Filtered"), dc.MaildirFiles("alice", ""); len(f) != 1 || len(in) != 1 {
		t.Fatalf("after delivery: Filtered %q, INBOX %q (want one each)", f, in)
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
	if sieveLogins != 10 {
		t.Fatalf("%d ManageSieve logins in Dovecot's log, want 10:\n%s", sieveLogins, dc.Log())
	}
	mfs, _ := scrape(t, p)
	for result, want := range map[string]float64{"ok": 10, "bad_credentials": 1} {
		if got, _ := value(mfs, "portico_logins_total", l("protocol", "sieve", "listener", "sieve", "result", result)); got != want {
			t.Errorf("portico_logins_total{protocol=sieve,result=%s} = %v, want %v", result, got, want)
		}
	}
}

var porticoSession = regexp.MustCompile(`session=<[A-Z2-7]{16}>`)

// A kick ends a relayed ManageSieve session at a response boundary: a
// GETSCRIPT literal in flight arrives whole with its OK, then the client
// gets BYE (TRYLATER) with the reason, and the connection closes.
func TestSieveKickAtResponseBoundary(t *testing.T) {
	// A script larger than the socket buffers between Dovecot and the
	// client, so that its literal is still in flight at the kick.
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.83", Sieve: true, TLS: true,
		ExtraConfig: "plugin {\n  sieve_max_script_size = 32M\n  sieve_quota_max_storage = 64M\n}"})
	p := startPortico(t, sieveConfig(t, dc))
	// A small receive buffer keeps most of the literal out of the
	// client's kernel: it is still in the relay's path at the kick.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 32<<10)
		})
	}}
	nc, err := d.Dial("tcp", p.addr("sieve-plain"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
	l := &lineConn{t: t, c: nc, br: bufio.NewReader(nc)}
	l.until("OK ")
	l.send(`AUTHENTICATE "PLAIN" "` + base64PlainIR("alice", "secret") + "\"\r\n")
	if got := l.line(); !strings.HasPrefix(got, "OK ") {
		t.Fatalf("login: %q", got)
	}
	var b strings.Builder
	for b.Len() < 8<<20 {
		fmt.Fprintf(&b, "# line %08d of a large script, fetched while the session is kicked\r\n", b.Len())
	}
	b.WriteString("keep;\r\n")
	script := b.String()
	l.send("PUTSCRIPT \"big\" {" + strconv.Itoa(len(script)) + "+}\r\n" + script + "\r\n")
	if got := l.line(); !strings.HasPrefix(got, "OK ") {
		t.Fatalf("PUTSCRIPT: %q", got)
	}
	l.send("GETSCRIPT \"big\"\r\n")
	head := l.line()
	if head != "{"+strconv.Itoa(len(script))+"}\r\n" {
		t.Fatalf("GETSCRIPT response %q, want a literal of %d bytes", head, len(script))
	}
	first := make([]byte, 32<<10)
	if _, err := io.ReadFull(l.br, first); err != nil {
		t.Fatal(err)
	}
	// The rest of the literal is in flight (socket buffers, Dovecot) when
	// the kick comes; the kick answers once the session has ended, so the
	// client reads meanwhile.
	kicked := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("POST", "http://"+p.d.AdminAddr().String()+"/v1/sessions/kick",
			strings.NewReader(`{"user": "alice", "reason": "Moving your mailbox."}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			kicked <- err.Error()
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		kicked <- fmt.Sprintf("%d %s", resp.StatusCode, strings.Join(strings.Fields(string(body)), ""))
	}()
	_ = l.c.SetDeadline(time.Now().Add(20 * time.Second))
	rest, err := io.ReadAll(l.br)
	if err != nil {
		t.Fatalf("reading after the kick: %v", err)
	}
	if k := <-kicked; !strings.HasPrefix(k, "200 ") || !strings.Contains(k, `"kicked":1`) {
		t.Fatalf("kick: %s", k)
	}
	got := append(first, rest...)
	if len(got) < len(script) || string(got[:len(script)]) != script {
		t.Fatalf("the literal was cut: got %d bytes of %d", len(got), len(script))
	}
	after := string(got[len(script):])
	if !strings.HasPrefix(after, "\r\nOK ") || !strings.HasSuffix(after, "\r\nBYE (TRYLATER) \"Moving your mailbox.\"\r\n") {
		t.Fatalf("after the literal: %q", after)
	}
}

func base64PlainIR(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
}

// The README's ManageSieve configuration is valid and routes ManageSieve
// logins to the backends' sieve_port.
func TestReadmeSieveConfiguration(t *testing.T) {
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const marker = "# ManageSieve beside IMAP, to the same backends\n"
	i := strings.Index(string(raw), marker)
	if i < 0 {
		t.Fatal("README: ManageSieve configuration not found")
	}
	yml := string(raw[i:])
	yml = yml[:strings.Index(yml, "```")]
	cfg, err := config.Parse([]byte(yml))
	if err != nil {
		t.Fatalf("README ManageSieve configuration: %v\n%s", err, yml)
	}
	if cfg.Listeners[1].Protocol != "sieve" {
		t.Fatalf("listeners %+v", cfg.Listeners)
	}
	tbl, err := routing.NewTable(cfg.RoutingSpec())
	if err != nil {
		t.Fatal(err)
	}
	r, err := tbl.Lookup(routing.Request{User: "alice@example.com", Protocol: routing.Sieve}, nil)
	if err != nil || r.Backend.Port(routing.Sieve) != 4190 {
		t.Fatalf("sieve route %+v %v", r, err)
	}
}

package integration

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/loopback"
	"github.com/portico-mail/portico/integration/testcert"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/ops/daemon"
)

// startPorticoFile runs a node from a configuration file, which
// POST /v1/reload re-reads.
func startPorticoFile(t *testing.T, path string) *portico {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return runPortico(t, cfg, daemon.Options{Logger: testLogger(t), ConfigPath: path})
}

func adminDo(t *testing.T, p *portico, method, path string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+p.d.AdminAddr().String()+path, nil)
	if method != "GET" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// appendBig stores a message of n bytes in alice's INBOX through the proxy.
func appendBig(t *testing.T, p *portico, n int) []byte {
	t.Helper()
	c := dialIMAP(t, p, "imap-plain", nil)
	defer c.Close()
	if err := c.Login("alice", "secret").Wait(); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	b.WriteString("Subject: big\r\n\r\n")
	for b.Len() < n {
		fmt.Fprintf(&b, "line %08d of a large message body, to be fetched while the node drains\r\n", b.Len())
	}
	app := c.Append("INBOX", int64(b.Len()), nil)
	_, _ = app.Write(b.Bytes())
	_ = app.Close()
	if _, err := app.Wait(); err != nil {
		t.Fatal(err)
	}
	_ = c.Logout().Wait()
	return b.Bytes()
}

// loginRaw logs alice in over a raw connection and selects INBOX.
func loginRaw(t *testing.T, addr string, implicitTLS bool) *lineConn {
	t.Helper()
	l := dialLine(t, addr, implicitTLS)
	l.line()
	l.send("a1 LOGIN alice secret\r\n")
	if got := l.until("a1 "); !strings.HasPrefix(got, "a1 OK") {
		t.Fatalf("login: %q", got)
	}
	l.send("a2 SELECT INBOX\r\n")
	l.until("a2 OK")
	return l
}

// Drain: readyz flips, nothing is accepted, idle sessions get BYE, a FETCH
// literal in flight arrives whole before the BYE, POP3 sessions are closed
// between responses; cancelling the drain serves again.
func TestDrainEndsSessionsAtResponseBoundary(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.89"})
	p := startPortico(t, singleBackendConfig(t, dc, "shutdown_grace: 300ms\ndrain: {spread: 200ms, boundary_timeout: 20s}\n"))
	msg := appendBig(t, p, 8<<20)

	if code, _ := adminDo(t, p, "GET", "/readyz"); code != 200 {
		t.Fatalf("readyz before drain: %d", code)
	}
	idle := loginRaw(t, p.addr("imap-plain"), false)
	idleTLS := loginRaw(t, p.addr("imaps"), true)
	pop := dialLine(t, p.addr("pop3-plain"), false)
	pop.line()
	pop.send("USER alice\r\nPASS secret\r\n")
	pop.line()
	if got := pop.line(); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("pop3 login: %q", got)
	}
	// A large FETCH whose literal the client reads slowly: it is in
	// flight in the relay when the drain ends the session.
	fetch := loginRaw(t, p.addr("imap-plain"), false)
	fetch.send("f1 FETCH 1 BODY.PEEK[]\r\n")
	head := fetch.line()
	i := strings.LastIndex(head, "{")
	size, err := strconv.Atoi(strings.TrimSuffix(head[i+1:], "}\r\n"))
	if err != nil || size != len(msg) {
		t.Fatalf("FETCH response %q: literal of %d bytes, want %d", head, size, len(msg))
	}
	first := make([]byte, 64<<10)
	if _, err := io.ReadFull(fetch.br, first); err != nil {
		t.Fatal(err)
	}

	code, st := adminDo(t, p, "POST", "/v1/drain")
	if code != http.StatusAccepted || st["draining"] != true {
		t.Fatalf("POST /v1/drain: %d %v", code, st)
	}
	if code, body := adminDo(t, p, "GET", "/readyz"); code != 503 || !strings.Contains(fmt.Sprint(body["reasons"]), "draining") {
		t.Fatalf("readyz while draining: %d %v", code, body)
	}
	time.Sleep(100 * time.Millisecond)
	if c, err := net.DialTimeout("tcp", p.addr("imap-plain"), time.Second); err == nil {
		c.Close()
		t.Fatal("a connection was accepted while draining")
	}
	time.Sleep(time.Second) // past the grace: sessions are being ended
	rest, err := io.ReadAll(fetch.br)
	if err != nil {
		t.Fatalf("reading the rest of the FETCH: %v", err)
	}
	got := append(first, rest...)
	if len(got) < len(msg) || !bytes.Equal(got[:len(msg)], msg) {
		t.Fatalf("the literal was cut: got %d bytes of %d", len(got), len(msg))
	}
	after := string(got[len(msg):])
	if !strings.HasPrefix(after, ")\r\n") || !strings.HasSuffix(after, "* BYE [UNAVAILABLE] Server draining, please reconnect.\r\n") {
		t.Fatalf("after the literal: %q", after)
	}
	for _, l := range []*lineConn{idle, idleTLS} {
		if got := l.line(); got != "* BYE [UNAVAILABLE] Server draining, please reconnect.\r\n" {
			t.Fatalf("idle session got %q", got)
		}
		if _, err := l.br.ReadByte(); err != io.EOF {
			t.Fatalf("no close after BYE: %v", err)
		}
	}
	if b, err := io.ReadAll(pop.br); err != nil || len(b) != 0 {
		t.Fatalf("POP3 session: %q, %v; want a close between responses", b, err)
	}
	waitFor(t, "drained", 5*time.Second, func() bool {
		_, st := adminDo(t, p, "GET", "/v1/drain")
		return st["phase"] == "drained"
	})
	_, st = adminDo(t, p, "GET", "/v1/drain")
	if st["sessions_ended"].(float64) != 4 || st["sessions"].(float64) != 0 {
		t.Fatalf("drain status %v", st)
	}

	if code, _ := adminDo(t, p, "POST", "/v1/drain?cancel=1"); code != 200 {
		t.Fatalf("cancel: %d", code)
	}
	if code, _ := adminDo(t, p, "GET", "/readyz"); code != 200 {
		t.Fatalf("readyz after cancel: %d", code)
	}
	l := loginRaw(t, p.addr("imap-plain"), false)
	l.send("z LOGOUT\r\n")
	l.until("z OK")
}

// Reload: a new certificate is served on the next handshake while a
// session on the old one keeps working; listeners are added and removed;
// a broken file changes nothing and the API says why.
func TestReloadCertificatesListenersAndBrokenConfig(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.89"})
	dir := t.TempDir()
	certA, keyA := demoCert(t)
	certB, keyB, _, _ := testcert.Generate(t, dir, "reloaded.example")
	cfgFile := filepath.Join(dir, "portico.yaml")
	// The listeners' addresses are written before anything listens (the
	// extra one comes and goes with reloads): an address of this test's
	// own, with ports free on it.
	ip := loopback.Addr(t)
	ports := loopback.Ports(t, ip, 2)
	imapsAddr := netip.AddrPortFrom(ip, uint16(ports[0])).String()
	extraAddr := netip.AddrPortFrom(ip, uint16(ports[1])).String()
	render := func(cert, key, extraListener string) string {
		return fmt.Sprintf(`
data_dir: %q
admin: {address: "127.0.0.1:0"}
cluster: {raft_address: "127.0.0.1:0", gossip_address: "127.0.0.1:0"}
tls:
  certificates: [{cert: %s, key: %s}]
listeners:
  - {name: imaps, protocol: imap, address: "%s", tls: implicit}
%s
backends:
  - {id: dc1, host: %s, imap_port: %d, pop3_port: %d}
pools:
  - {name: main, backends: [dc1]}
routes:
  default_pool: main
`, filepath.Join(dir, "data"), mustAbs(t, cert), mustAbs(t, key), imapsAddr, extraListener, dc.Addr, dc.IMAPPort, dc.POP3Port)
	}
	if err := os.WriteFile(cfgFile, []byte(render(certA, keyA, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startPorticoFile(t, cfgFile)
	old := loginRaw(t, p.addr("imaps"), true)
	if cn := peerCN(t, p.addr("imaps")); cn == "reloaded.example" {
		t.Fatal("new certificate before the reload")
	}

	// New certificate and a new listener.
	if err := os.WriteFile(cfgFile, []byte(render(certB, keyB,
		`  - {name: extra, protocol: imap, address: "`+extraAddr+`", tls: none}`)), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, body := adminDo(t, p, "POST", "/v1/reload"); code != 200 {
		t.Fatalf("reload: %d %v", code, body)
	}
	if cn := peerCN(t, p.addr("imaps")); cn != "reloaded.example" {
		t.Fatalf("after reload the certificate is %q", cn)
	}
	old.send("n1 NOOP\r\n")
	old.until("n1 OK")
	loginRaw(t, extraAddr, false)

	// A broken file: nothing changes, the error is returned.
	if err := os.WriteFile(cfgFile, []byte("listeners: [{name: x, protocol: smtp}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, body := adminDo(t, p, "POST", "/v1/reload")
	if code != http.StatusUnprocessableEntity || !strings.Contains(fmt.Sprint(body["error"]), "smtp") {
		t.Fatalf("broken reload: %d %v", code, body)
	}
	loginRaw(t, extraAddr, false)
	if cn := peerCN(t, p.addr("imaps")); cn != "reloaded.example" {
		t.Fatalf("after a failed reload the certificate is %q", cn)
	}

	// Removing the extra listener closes it; its sessions carry on.
	kept := loginRaw(t, extraAddr, false)
	if err := os.WriteFile(cfgFile, []byte(render(certB, keyB, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, body := adminDo(t, p, "POST", "/v1/reload"); code != 200 {
		t.Fatalf("reload: %d %v", code, body)
	}
	if c, err := net.DialTimeout("tcp", extraAddr, time.Second); err == nil {
		c.Close()
		t.Fatal("removed listener still accepts")
	}
	kept.send("n2 NOOP\r\n")
	kept.until("n2 OK")
}

func mustAbs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func peerCN(t *testing.T, addr string) string {
	t.Helper()
	c, err := tls.Dial("tcp", addr, clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName
}

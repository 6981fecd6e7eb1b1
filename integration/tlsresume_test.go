package integration

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/loopback"
)

// tlsLogin connects to addr with implicit TLS (cfg's session cache
// offering whatever ticket it holds), logs alice in through the node to
// Dovecot and out again, and reports whether the handshake resumed a
// session.
func tlsLogin(t *testing.T, addr string, cfg *tls.Config) bool {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("TLS to %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	expect := func(prefix string) {
		t.Helper()
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("%s: waiting for %q: %v", addr, prefix, err)
			}
			if strings.HasPrefix(line, prefix) {
				return
			}
			if !strings.HasPrefix(line, "* ") {
				t.Fatalf("%s: %q, want %q", addr, line, prefix)
			}
		}
	}
	expect("* OK")
	fmt.Fprintf(c, "a LOGIN alice secret\r\n")
	expect("a OK")
	fmt.Fprintf(c, "b LOGOUT\r\n")
	expect("b OK")
	return c.ConnectionState().DidResume
}

// ticketClient is a mail client with a session cache, as real ones keep.
func ticketClient() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", ClientSessionCache: tls.NewLRUClientSessionCache(8)}
}

// ticketStatus reads a node's tls_session_tickets status section.
func ticketStatus(nd *procNode) (source, sealing string) {
	code, b, err := nd.api("GET", "/v1/status", nil)
	if err != nil || code != 200 {
		return "", ""
	}
	var st struct {
		T struct {
			Source, Sealing string
		} `json:"tls_session_tickets"`
	}
	_ = json.Unmarshal(b, &st)
	return st.T.Source, st.T.Sealing
}

// waitSameTicketKeys waits until every node seals with the cluster's key.
func waitSameTicketKeys(t *testing.T, nodes []*procNode) string {
	t.Helper()
	var sealing string
	waitFor(t, "the cluster's session-ticket keys on every node", 20*time.Second, func() bool {
		sealing = ""
		for _, nd := range nodes {
			src, s := ticketStatus(nd)
			if src != "cluster" || sealing != "" && s != sealing {
				return false
			}
			sealing = s
		}
		return true
	})
	return sealing
}

// implicitTLS turns the nodes' IMAP listener into an implicit-TLS one
// with the demo certificate (before they start).
func implicitTLS(t *testing.T, nodes []*procNode, extraTLS string) {
	t.Helper()
	cert, key := demoCert(t)
	cert, _ = filepath.Abs(cert)
	key, _ = filepath.Abs(key)
	for _, nd := range nodes {
		b, err := os.ReadFile(nd.cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		old := fmt.Sprintf(`- {name: imap, protocol: imap, address: "%s"}`, nd.imap)
		s := strings.Replace(string(b), old, fmt.Sprintf(`- {name: imap, protocol: imap, address: "%s", tls: implicit}`, nd.imap), 1)
		if s == string(b) {
			t.Fatal("listener line not found")
		}
		s += fmt.Sprintf("tls:\n  certificates: [{cert: %q, key: %q}]\n%s", cert, key, extraTLS)
		if err := os.WriteFile(nd.cfgPath, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// upgradeNode runs an in-place upgrade of nd (same binary) and returns the
// new process's pid, which the test then owns (killed at cleanup).
func upgradeNode(t *testing.T, nd *procNode) int {
	t.Helper()
	code, b, err := nd.api("POST", "/v1/upgrade", nil)
	var res struct {
		PID int `json:"pid"`
	}
	_ = json.Unmarshal(b, &res)
	if err != nil || code != 200 || res.PID == 0 {
		t.Fatalf("upgrade of %s: %d %s %v", nd.name, code, b, err)
	}
	t.Cleanup(func() { _ = syscall.Kill(res.PID, syscall.SIGKILL) })
	return res.PID
}

// Issue 14: a client resumes its TLS session on another node of the
// cluster (the second connection, to the other node, reports a resumed
// session), and across an in-place upgrade of a node; the resumed
// handshakes are counted per listener.
func TestTLSResumptionAcrossNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.143"})
	nodes := newCluster(t, 2, dc, "routes: {default_pool: main}\n")
	implicitTLS(t, nodes, "")
	for _, nd := range nodes {
		nd.start()
	}
	waitSeeded(t, nodes)
	sealing := waitSameTicketKeys(t, nodes)
	n1, n2 := nodes[0], nodes[1]

	client := ticketClient()
	if tlsLogin(t, n1.imap, client) {
		t.Fatal("the first connection resumed")
	}
	if !tlsLogin(t, n2.imap, client) {
		t.Fatal("a ticket issued by n1 did not resume on n2")
	}
	// And back: n2's ticket on n1.
	if !tlsLogin(t, n1.imap, client) {
		t.Fatal("a ticket issued by n2 did not resume on n1")
	}
	code, metrics, _ := n2.api("GET", "/metrics", nil)
	if code != 200 || !strings.Contains(string(metrics), `portico_tls_handshakes_total{handshake="resumed",listener="imap",protocol="imap"} 1`) {
		t.Fatalf("n2's metrics: %d\n%s", code, grepLines(string(metrics), "portico_tls_handshakes_total"))
	}

	// An in-place upgrade of n2: its new process opens the tickets the old
	// one and n1 issued.
	ticketFromN1, ticketFromOld := ticketClient(), ticketClient()
	tlsLogin(t, n1.imap, ticketFromN1)
	tlsLogin(t, n2.imap, ticketFromOld)
	upgradeNode(t, n2)
	waitFor(t, "n2's new process serving", 20*time.Second, func() bool {
		code, _, err := n2.api("GET", "/readyz", nil)
		return err == nil && code == 200
	})
	if src, s := ticketStatus(n2); s != sealing {
		t.Fatalf("after the upgrade n2 seals with %s (%s), before with %s", s, src, sealing)
	}
	if !tlsLogin(t, n2.imap, ticketFromOld) {
		t.Fatal("a ticket of n2's old process did not resume on its new one")
	}
	if !tlsLogin(t, n2.imap, ticketFromN1) {
		t.Fatal("a ticket of n1 did not resume on n2's new process")
	}
}

// tls.session_tickets: off issues no ticket: a client's second connection,
// to the same node, makes a full handshake.
func TestTLSSessionTicketsOff(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.144"})
	nodes := newCluster(t, 1, dc, "routes: {default_pool: main}\n")
	implicitTLS(t, nodes, "  session_tickets: \"off\"\n")
	nodes[0].start()
	waitSeeded(t, nodes)
	client := ticketClient()
	for i := range 3 {
		if tlsLogin(t, nodes[0].imap, client) {
			t.Fatalf("connection %d resumed with session tickets off", i+1)
		}
	}
}

// A standalone node (no cluster, no data directory) hands its keys to the
// new process of an in-place upgrade: a client resumes across it.
func TestTLSResumptionStandaloneUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.145"})
	dir := t.TempDir()
	ip := loopback.Addr(t)
	ports := loopback.Ports(t, ip, 2)
	imapAddr := netip.AddrPortFrom(ip, uint16(ports[0])).String()
	adminAddr := netip.AddrPortFrom(ip, uint16(ports[1])).String()
	cert, key := demoCert(t)
	cert, _ = filepath.Abs(cert)
	key, _ = filepath.Abs(key)
	cfgPath := filepath.Join(dir, "portico.yaml")
	cfg := fmt.Sprintf(`
standalone: true
node_name: solo
admin: {address: %q}
tls:
  certificates: [{cert: %q, key: %q}]
listeners:
  - {name: imaps, protocol: imap, address: %q, tls: implicit}
backends:
  - {id: dc1, host: %s, imap_port: %d}
pools:
  - {name: main, backends: [dc1]}
routes: {default_pool: main}
`, adminAddr, cert, key, imapAddr, dc.Addr, dc.IMAPPort)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logs, err := os.Create(filepath.Join(dir, "portico.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	old := exec.Command(porticoBinary(t), "serve", "--config", cfgPath)
	old.Stdout, old.Stderr = logs, logs
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = old.Wait() }()
	t.Cleanup(func() {
		_ = old.Process.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(logs.Name())
			t.Logf("portico logs:\n%s", tail(string(b), 60))
		}
	})
	waitListening(t, imapAddr)
	nd := &procNode{t: t, name: "solo", admin: adminAddr}
	client := ticketClient()
	if tlsLogin(t, imapAddr, client) {
		t.Fatal("the first connection resumed")
	}
	src, sealing := ticketStatus(nd)
	if src != "node" {
		t.Fatalf("standalone keys: %q", src)
	}
	upgradeNode(t, nd)
	waitFor(t, "the new process serving", 20*time.Second, func() bool {
		resp, err := http.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if src2, s := ticketStatus(nd); src2 != "node" || s != sealing {
		t.Fatalf("after the upgrade: %s %s, before %s %s", src2, s, src, sealing)
	}
	if !tlsLogin(t, imapAddr, client) {
		t.Fatal("no resumption across the in-place upgrade")
	}
}

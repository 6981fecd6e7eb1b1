package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/portico-mail/portico/integration/dovecot"
)

type listedSession struct {
	Node    string `json:"node"`
	ID      string `json:"id"`
	User    string `json:"user"`
	Backend string `json:"backend"`
	Client  string `json:"client"`
}

func listSessions(t *testing.T, nd *procNode, args ...string) []listedSession {
	t.Helper()
	out, err := nd.cli(append([]string{"sessions", "list", "--json"}, args...)...)
	var ans struct {
		Sessions  []listedSession `json:"sessions"`
		Unreached []any           `json:"unreached"`
	}
	if err != nil || json.Unmarshal([]byte(out), &ans) != nil || len(ans.Unreached) > 0 {
		t.Fatalf("sessions list on %s: %v\n%s", nd.name, err, out)
	}
	return ans.Sessions
}

// backendsOf returns the backend of each listed session, and whether
// they all are on want.
func allOn(ss []listedSession, want string) bool {
	for _, s := range ss {
		if s.Backend != want {
			return false
		}
	}
	return true
}

// The 3 a.m. verbs against real processes and real Dovecot: who is
// connected (every node's sessions from any node), ending one user's
// sessions at a response boundary, and a mailbox migration cut-over
// (`portico user move`) with IDLE clients of three kinds (raw IMAP,
// go-imap v2, Python's imaplib), which get BYE and reconnect to the new
// server; remove-peer refused for a live node.
func TestSessionsKickAndMove(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process cluster test")
	}
	users := map[string]string{"alice": "secret", "bob": "secret"}
	dc1 := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.141", Users: users})
	dc2 := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.142", Users: users})
	nodes := newCluster(t, 2, dc1, "routes: {default_pool: main}\n")
	for _, nd := range nodes {
		nd.start()
	}
	waitSeeded(t, nodes)
	n1, n2 := nodes[0], nodes[1]
	if out, err := n1.cli("backend", "set", "dc2", "--host", dc2.Addr, "--imap-port", fmt.Sprint(dc2.IMAPPort), "--pop3-port", fmt.Sprint(dc2.POP3Port)); err != nil {
		t.Fatalf("backend set dc2: %v\n%s", err, out)
	}
	if out, err := n1.cli("route", "set", "alice", "--backend", "dc1"); err != nil {
		t.Fatalf("route set: %v\n%s", err, out)
	}
	waitFor(t, "alice's route on n2", 10*time.Second, func() bool { return hasUser(n2, "alice") })

	// Three IDLE clients of alice's, on both nodes, and one of bob's.
	raw := dialLine(t, n1.imap, false)
	raw.line()
	raw.send("a1 LOGIN alice secret\r\n")
	if got := raw.until("a1 "); !strings.HasPrefix(got, "a1 OK") {
		t.Fatalf("raw login: %q", got)
	}
	raw.send("a2 SELECT INBOX\r\na3 IDLE\r\n")
	raw.until("a2 OK")
	if got := raw.line(); !strings.HasPrefix(got, "+ ") {
		t.Fatalf("IDLE: %q", got)
	}
	gc, err := imapclient.DialInsecure(n2.imap, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	if err := gc.Login("alice", "secret").Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := gc.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := gc.Idle()
	if err != nil {
		t.Fatal(err)
	}
	py := startPyIMAP(t, n1.imap, "alice", "secret")
	bob := dialLine(t, n2.imap, false)
	bob.line()
	bob.send("b1 LOGIN bob secret\r\n")
	if got := bob.until("b1 "); !strings.HasPrefix(got, "b1 OK") {
		t.Fatalf("bob's login: %q", got)
	}

	// Who is connected: every node's sessions, from either node.
	var all []listedSession
	waitFor(t, "4 sessions listed", 10*time.Second, func() bool { all = listSessions(t, n2); return len(all) == 4 })
	alice := listSessions(t, n1, "--user", "ALICE")
	if len(alice) != 3 || !allOn(alice, "dc1") {
		t.Fatalf("alice's sessions: %+v", alice)
	}
	perNode := map[string]int{}
	for _, s := range alice {
		perNode[s.Node]++
	}
	if perNode["n1"] != 2 || perNode["n2"] != 1 {
		t.Fatalf("alice's sessions by node: %v (%+v)", perNode, alice)
	}
	if only := listSessions(t, n1, "--node", "n2", "--user", "bob"); len(only) != 1 || only[0].Node != "n2" {
		t.Fatalf("bob on n2: %+v", only)
	}
	if out, err := n1.cli("sessions", "list"); err != nil || !strings.Contains(out, "alice") || !strings.Contains(out, "bob") {
		t.Fatalf("sessions list table: %v\n%s", err, out)
	}

	// Kick one session by its id: only that one ends (bob's).
	bobID := listSessions(t, n1, "--user", "bob")[0].ID
	if out, err := n1.cli("sessions", "kick", "--session", bobID, "--reason", "Password changed."); err != nil || !strings.Contains(out, "ended 1 session") {
		t.Fatalf("kick bob: %v\n%s", err, out)
	}
	if got := bob.line(); got != "* BYE [UNAVAILABLE] Password changed.\r\n" {
		t.Fatalf("bob got %q", got)
	}
	if !bob.closed(5 * time.Second) {
		t.Fatal("bob's session still open")
	}
	if out, err := n1.cli("sessions", "kick"); err == nil {
		t.Fatalf("a kick without a filter: %s", out)
	}

	// The cut-over: alice moves to dc2; all three clients are told, at a
	// response boundary, and reconnect there.
	out, err := n2.cli("user", "move", "alice", "--to", "dc2")
	if err != nil || !strings.Contains(out, "now routes to backend dc2") || !strings.Contains(out, "ended 3 session") {
		t.Fatalf("user move: %v\n%s", err, out)
	}
	if got := raw.line(); got != "* BYE [UNAVAILABLE] Your mailbox has moved, please reconnect.\r\n" {
		t.Fatalf("raw IDLE client got %q", got)
	}
	if !raw.closed(5 * time.Second) {
		t.Fatal("raw client's session still open")
	}
	select {
	case <-gc.Closed():
	case <-time.After(10 * time.Second):
		t.Fatal("go-imap client's connection not closed by the move")
	}
	_ = idle.Wait()
	py.expect(t, "aborted")
	py.expect(t, "reconnected")
	gc2, err := imapclient.DialInsecure(n2.imap, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer gc2.Close()
	if err := gc2.Login("alice", "secret").Wait(); err != nil {
		t.Fatalf("go-imap client logging in again: %v", err)
	}
	waitFor(t, "alice's new sessions", 10*time.Second, func() bool {
		ss := listSessions(t, n1, "--user", "alice")
		return len(ss) == 2 && allOn(ss, "dc2")
	})
	if n := strings.Count(dc2.Log(), "imap-login: Info: Login: user=<alice>"); n < 2 {
		t.Errorf("dc2 logged %d logins of alice, want 2", n)
	}

	// remove-peer is refused for a live node.
	if out, err := n1.cli("cluster", "remove-peer", "n2"); err == nil || !strings.Contains(out, "alive") {
		t.Fatalf("remove-peer of a live node: %v\n%s", err, out)
	}
}

// pyIMAP is Python's imaplib in a child process: it logs in, selects
// INBOX and polls with NOOP until the server ends the session ("aborted"),
// then logs in again ("reconnected") and waits for stdin to close.
type pyIMAP struct {
	lines chan string
}

func startPyIMAP(t *testing.T, addr, user, pass string) *pyIMAP {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	host, port, _ := strings.Cut(addr, ":")
	script := `
import imaplib, sys, time
h, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
m = imaplib.IMAP4(h, port)
m.login(user, pw)
m.select("INBOX")
print("idle", flush=True)
try:
    while True:
        m.noop()
        time.sleep(0.1)
except imaplib.IMAP4.abort as e:
    print("aborted", e, flush=True)
m = imaplib.IMAP4(h, port)
m.login(user, pw)
print("reconnected", flush=True)
sys.stdin.read()
m.logout()
`
	cmd := exec.Command(py, "-c", script, host, port, user, pass)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &pyIMAP{lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("python: %s", stderr.String())
		}
	})
	p.expect(t, "idle")
	return p
}

func (p *pyIMAP) expect(t *testing.T, prefix string) {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok || !strings.HasPrefix(l, prefix) {
			t.Fatalf("python imaplib: %q (open %v), want %s", l, ok, prefix)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("python imaplib: no %q", prefix)
	}
}

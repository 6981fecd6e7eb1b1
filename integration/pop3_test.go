package integration

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
)

// POP3 through each listener kind: login, STAT, RETR of a message
// delivered over IMAP through the same proxy.
func TestPOP3ThroughEachListener(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.81"})
	p := startPortico(t, singleBackendConfig(t, dc, ""))

	// Put a message in the mailbox.
	c := dialIMAP(t, p, "imaps", nil)
	if err := c.Login("alice", "secret").Wait(); err != nil {
		t.Fatal(err)
	}
	body := "Subject: pop3 test\r\n\r\nhello over pop3\r\n"
	app := c.Append("INBOX", int64(len(body)), nil)
	app.Write([]byte(body))
	app.Close()
	if _, err := app.Wait(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()

	for _, listener := range []string{"pop3-plain", "pop3-starttls", "pop3s"} {
		t.Run(listener, func(t *testing.T) {
			l := dialLine(t, p.addr(listener), listener == "pop3s")
			if g := l.line(); !strings.HasPrefix(g, "+OK") {
				t.Fatalf("greeting %q", g)
			}
			if listener == "pop3-starttls" {
				l.send("USER alice\r\n")
				if got := l.line(); !strings.HasPrefix(got, "-ERR [AUTH]") {
					t.Fatalf("plaintext USER before STLS: %q", got)
				}
				l.send("STLS\r\n")
				if got := l.line(); !strings.HasPrefix(got, "+OK") {
					t.Fatal(got)
				}
				l.startTLS()
			}
			l.send("USER alice\r\n")
			l.line()
			l.send("PASS wrong\r\n")
			if got := l.line(); !strings.HasPrefix(got, "-ERR") {
				t.Fatalf("wrong password: %q", got)
			}
			l.send("USER alice\r\nPASS secret\r\nSTAT\r\n") // pipelined
			l.line()
			if got := l.line(); !strings.HasPrefix(got, "+OK") {
				t.Fatalf("login: %q", got)
			}
			stat := l.line()
			var n, size int
			if _, err := fmt.Sscanf(stat, "+OK %d %d", &n, &size); err != nil || n < 1 {
				t.Fatalf("STAT %q", stat)
			}
			l.send(fmt.Sprintf("RETR %d\r\n", n))
			if got := l.line(); !strings.HasPrefix(got, "+OK") {
				t.Fatal(got)
			}
			var msg strings.Builder
			for {
				s := l.line()
				if s == ".\r\n" {
					break
				}
				msg.WriteString(s)
			}
			if !strings.Contains(msg.String(), "hello over pop3") {
				t.Fatalf("RETR body %q", msg.String())
			}
			l.send("QUIT\r\n")
			if got := l.line(); !strings.HasPrefix(got, "+OK") {
				t.Fatal(got)
			}
		})
	}
	dc.WaitLogins("alice", 4, 5*time.Second)
}

// Real client libraries other than Go's: Python's imaplib and poplib, and
// curl, each through implicit TLS.
func TestOtherClientLibraries(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.81"})
	p := startPortico(t, singleBackendConfig(t, dc, ""))
	if py, err := exec.LookPath("python3"); err != nil {
		t.Log("python3 not installed: skipping imaplib/poplib")
	} else {
		script := fmt.Sprintf(`
import imaplib, poplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
h, port = %q.rsplit(":", 1)
m = imaplib.IMAP4_SSL(h, int(port), ssl_context=ctx)
m.login("alice", "secret")
typ, data = m.select("INBOX")
assert typ == "OK", (typ, data)
m.logout()
h, port = %q.rsplit(":", 1)
m = imaplib.IMAP4(h, int(port))
m.starttls(ssl_context=ctx)
m.login("alice", "secret")
m.logout()
h, port = %q.rsplit(":", 1)
pc = poplib.POP3_SSL(h, int(port), context=ctx)
pc.user("alice"); pc.pass_("secret")
print("stat", pc.stat())
pc.quit()
print("ok")
`, p.addr("imaps"), p.addr("imap-starttls"), p.addr("pop3s"))
		out, err := exec.Command(py, "-c", script).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "ok") {
			t.Fatalf("python: %v\n%s", err, out)
		}
	}
	if curl, err := exec.LookPath("curl"); err != nil {
		t.Log("curl not installed: skipping")
	} else {
		out, err := exec.Command(curl, "-sS", "-k", "--max-time", "20", "--user", "alice:secret", "imaps://"+p.addr("imaps")+"/").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "INBOX") {
			t.Fatalf("curl imaps: %v\n%s", err, out)
		}
		out, err = exec.Command(curl, "-sS", "-k", "--max-time", "20", "--user", "alice:secret", "pop3s://"+p.addr("pop3s")+"/").CombinedOutput()
		if err != nil {
			t.Fatalf("curl pop3s: %v\n%s", err, out)
		}
	}
}

package postfix

import (
	"bufio"
	"encoding/base64"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
)

type smtpConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func (c *smtpConn) cmd(line, want string) string {
	c.t.Helper()
	if line != "" {
		if _, err := c.c.Write([]byte(line + "\r\n")); err != nil {
			c.t.Fatal(err)
		}
	}
	var last string
	for {
		l, err := c.br.ReadString('\n')
		if err != nil {
			c.t.Fatalf("%q: %v", line, err)
		}
		last = strings.TrimRight(l, "\r\n")
		if len(last) < 4 || last[3] != '-' {
			break
		}
	}
	if !strings.HasPrefix(last, want) {
		c.t.Fatalf("%q: got %q, want %q", line, last, want)
	}
	return last
}

// The harness: Postfix authenticates against Dovecot's auth socket,
// delivers to the sink, logs to the harness, and stops.
func TestPostfixHarness(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.90", ExtraConfig: DovecotSASL})
	pf := Start(t, Options{Addr: "127.0.0.90", SASLPath: DovecotSASLSocket(dc.Dir)})
	c, err := net.Dial("tcp", pf.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	sc := &smtpConn{t: t, c: c, br: bufio.NewReader(c)}
	sc.cmd("", "220 postfix.test ESMTP")
	sc.cmd("EHLO client.example", "250 ")
	sc.cmd("MAIL FROM:<alice@example.com>", "250 ")
	sc.cmd("RCPT TO:<bob@example.com>", "554 5.7.1 ")
	sc.cmd("RSET", "250 ")
	sc.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00alice\x00wrong")), "535 5.7.8 ")
	sc.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00alice\x00secret")), "235 2.7.0 ")
	sc.cmd("MAIL FROM:<alice@example.com>", "250 ")
	sc.cmd("RCPT TO:<bob@example.com>", "250 ")
	sc.cmd("DATA", "354 ")
	sc.cmd("Subject: harness\r\n\r\nhello\r\n.", "250 2.0.0 Ok: queued")
	sc.cmd("QUIT", "221 ")
	msgs := pf.WaitDelivered(1, 10*time.Second)
	if len(msgs) != 1 || !strings.Contains(msgs[0], "Subject: harness") || !strings.Contains(msgs[0], "(Authenticated sender: alice)") {
		t.Fatalf("delivered %q", msgs)
	}
	if pf.WaitLog(regexp.MustCompile(`client=\S+\[127\.0\.0\.1\], sasl_method=PLAIN, sasl_username=alice`), 5*time.Second) == nil {
		t.Fatalf("no client= line in the log:\n%s", pf.Log())
	}
	pf.Stop()
	if c, err := net.DialTimeout("tcp", pf.Addr, time.Second); err == nil {
		c.Close()
		t.Fatal("still listening after Stop")
	}
}

// TestPortTakenByAnother: when another process holds the port asked for,
// Start does not take that process for Postfix (it answers with another
// banner) and fails with a clear error instead of handing the test a
// server that is not there.
func TestPortTakenByAnother(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("220 someone.else ESMTP\r\n"))
			c.Close()
		}
	}()
	s, err := StartProcess(Options{Port: l.Addr().(*net.TCPAddr).Port, StartTimeout: 5 * time.Second})
	if err == nil {
		s.Stop()
		t.Fatal("Postfix reported started on a port another process holds")
	}
	if !strings.Contains(err.Error(), "in use") && !strings.Contains(err.Error(), "exited") && !strings.Contains(err.Error(), "not this Postfix's") {
		t.Fatalf("unclear error: %v", err)
	}
	t.Logf("error, as expected: %.200s", err)
}

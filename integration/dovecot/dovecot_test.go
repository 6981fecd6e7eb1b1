package dovecot

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/internal/daemon"
	"github.com/portico-mail/portico/integration/netns"
)

// lineConn is a minimal line-oriented IMAP/POP3 client over a raw socket.
type lineConn struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dial(t *testing.T, addr string) *lineConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return wrap(t, c)
}

func wrap(t *testing.T, c net.Conn) *lineConn {
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	return &lineConn{t: t, conn: c, r: bufio.NewReader(c)}
}

func (c *lineConn) send(line string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(line + "\r\n")); err != nil {
		c.t.Fatalf("send %q: %v", line, err)
	}
}

func (c *lineConn) readLine() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

// imapCmd sends "tag cmd" and returns the tagged completion line.
func (c *lineConn) imapCmd(tag, cmd string) string {
	c.t.Helper()
	c.send(tag + " " + cmd)
	for {
		l := c.readLine()
		if strings.HasPrefix(l, tag+" ") {
			return l
		}
	}
}

// pop3Cmd sends a command and returns the one-line status reply.
func (c *lineConn) pop3Cmd(cmd string) string {
	c.t.Helper()
	c.send(cmd)
	return c.readLine()
}

func (c *lineConn) startTLS(cfg *tls.Config) {
	c.t.Helper()
	if c.r.Buffered() != 0 {
		c.t.Fatal("unexpected buffered data before TLS handshake")
	}
	tc := tls.Client(c.conn, cfg)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn = tc
	c.r = bufio.NewReader(tc)
}

func expectPrefix(t *testing.T, got, want string) {
	t.Helper()
	if !strings.HasPrefix(got, want) {
		t.Fatalf("got %q, want prefix %q", got, want)
	}
}

func imapLogin(t *testing.T, addr, user, pass string) string {
	t.Helper()
	c := dial(t, addr)
	expectPrefix(t, c.readLine(), "* OK")
	resp := c.imapCmd("a", fmt.Sprintf("LOGIN %q %q", user, pass))
	if strings.HasPrefix(resp, "a OK") {
		c.imapCmd("z", "LOGOUT")
	}
	return resp
}

func pop3Login(t *testing.T, addr, user, pass string) string {
	t.Helper()
	c := dial(t, addr)
	expectPrefix(t, c.readLine(), "+OK")
	expectPrefix(t, c.pop3Cmd("USER "+user), "+OK")
	resp := c.pop3Cmd("PASS " + pass)
	if strings.HasPrefix(resp, "+OK") {
		expectPrefix(t, c.pop3Cmd("QUIT"), "+OK")
	}
	return resp
}

func waitLogins(t *testing.T, s *Server, user string, n int) {
	t.Helper()
	if got := s.WaitLogins(user, n, 5*time.Second); got != n {
		t.Fatalf("Logins(%q) = %d, want %d\nlog:\n%s", user, got, n, s.Log())
	}
}

func TestLoginIMAPAndPOP3(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{Addr: "127.0.0.81"})
	if s.Logins("alice") != 0 {
		t.Fatalf("Logins before any login = %d", s.Logins("alice"))
	}
	if !strings.HasPrefix(s.IMAPAddr, "127.0.0.81:") || !strings.HasPrefix(s.POP3Addr, "127.0.0.81:") {
		t.Fatalf("addresses %s %s", s.IMAPAddr, s.POP3Addr)
	}

	expectPrefix(t, imapLogin(t, s.IMAPAddr, "alice", "secret"), "a OK")
	waitLogins(t, s, "alice", 1)
	expectPrefix(t, pop3Login(t, s.POP3Addr, "alice", "secret"), "+OK")
	waitLogins(t, s, "alice", 2)
	expectPrefix(t, imapLogin(t, s.IMAPAddr, "bob", "secret"), "a OK")
	waitLogins(t, s, "bob", 1)
	if n := s.Logins("alice"); n != 2 {
		t.Fatalf("Logins(alice) = %d after bob logged in", n)
	}
	for _, ip := range s.LoginRemoteIPs("alice") {
		if !strings.HasPrefix(ip, "127.") {
			t.Fatalf("rip %q, want a loopback address; records %+v", ip, s.LoginRecords())
		}
	}
	recs := s.LoginRecords()
	if len(recs) != 3 || recs[0].Protocol != "imap" || recs[1].Protocol != "pop3" {
		t.Fatalf("records: %+v", recs)
	}
}

func TestWrongPassword(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{})
	start := time.Now()
	expectPrefix(t, imapLogin(t, s.IMAPAddr, "alice", "wrong"), "a NO")
	expectPrefix(t, pop3Login(t, s.POP3Addr, "alice", "wrong"), "-ERR")
	expectPrefix(t, imapLogin(t, s.IMAPAddr, "nobody", "secret"), "a NO")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("three failed logins took %v; auth_failure_delay not applied?", d)
	}
	// A successful login afterwards is counted, the failures are not.
	expectPrefix(t, imapLogin(t, s.IMAPAddr, "alice", "secret"), "a OK")
	waitLogins(t, s, "alice", 1)
	time.Sleep(100 * time.Millisecond)
	if n := s.Logins("alice"); n != 1 {
		t.Fatalf("Logins(alice) = %d, want 1", n)
	}
}

func TestUserNameWithAt(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{Users: map[string]string{"carol@example.com": "pw-carol", "dave": "x y"}})
	expectPrefix(t, imapLogin(t, s.IMAPAddr, "carol@example.com", "pw-carol"), "a OK")
	expectPrefix(t, pop3Login(t, s.POP3Addr, "carol@example.com", "pw-carol"), "+OK")
	expectPrefix(t, imapLogin(t, s.IMAPAddr, "dave", "x y"), "a OK")
	expectPrefix(t, imapLogin(t, s.IMAPAddr, "alice", "secret"), "a NO") // not a default user any more
	waitLogins(t, s, "carol@example.com", 2)
	waitLogins(t, s, "dave", 1)
}

func TestTLS(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{Addr: "127.0.0.82", TLS: true, ImplicitTLS: true})
	if len(s.CACertPEM) == 0 || s.TLSConfig() == nil {
		t.Fatal("no CA certificate")
	}

	// IMAP STARTTLS, verified against CACertPEM.
	c := dial(t, s.IMAPAddr)
	greeting := c.readLine()
	expectPrefix(t, greeting, "* OK")
	if !strings.Contains(greeting, "STARTTLS") {
		t.Fatalf("greeting without STARTTLS: %q", greeting)
	}
	expectPrefix(t, c.imapCmd("a", "STARTTLS"), "a OK")
	c.startTLS(s.TLSConfig())
	expectPrefix(t, c.imapCmd("b", "LOGIN alice secret"), "b OK")

	// POP3 STLS.
	p := dial(t, s.POP3Addr)
	expectPrefix(t, p.readLine(), "+OK")
	expectPrefix(t, p.pop3Cmd("STLS"), "+OK")
	p.startTLS(s.TLSConfig())
	expectPrefix(t, p.pop3Cmd("USER alice"), "+OK")
	expectPrefix(t, p.pop3Cmd("PASS secret"), "+OK")

	// Implicit TLS listeners.
	for _, a := range []string{s.IMAPSAddr, s.POP3SAddr} {
		tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", a, s.TLSConfig())
		if err != nil {
			t.Fatalf("implicit TLS %s: %v", a, err)
		}
		l := wrap(t, tc)
		g := l.readLine()
		if !strings.HasPrefix(g, "* OK") && !strings.HasPrefix(g, "+OK") {
			t.Fatalf("greeting %q", g)
		}
		tc.Close()
	}

	// An unrelated trust root must not verify.
	other := dial(t, s.IMAPAddr)
	other.readLine()
	expectPrefix(t, other.imapCmd("a", "STARTTLS"), "a OK")
	tc := tls.Client(other.conn, &tls.Config{ServerName: s.Addr})
	if err := tc.Handshake(); err == nil {
		t.Fatal("handshake verified without the test CA")
	}
	waitLogins(t, s, "alice", 2)
}

func TestForwardedClientAddress(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{Addr: "127.0.0.83"})

	c := dial(t, s.IMAPAddr)
	expectPrefix(t, c.readLine(), "* OK")
	expectPrefix(t, c.imapCmd("a", `ID ("x-originating-ip" "198.51.100.7" "x-originating-port" "40001")`), "a OK")
	expectPrefix(t, c.imapCmd("b", "LOGIN alice secret"), "b OK")
	waitLogins(t, s, "alice", 1)

	// POP3: Dovecot's XCLIENT, accepted from login_trusted_networks.
	p := dial(t, s.POP3Addr)
	greeting := p.readLine()
	if !strings.Contains(greeting, "XCLIENT") {
		t.Fatalf("POP3 greeting does not offer XCLIENT: %q", greeting)
	}
	expectPrefix(t, p.pop3Cmd("XCLIENT ADDR=198.51.100.8 PORT=40002"), "+OK")
	expectPrefix(t, p.pop3Cmd("USER alice"), "+OK")
	expectPrefix(t, p.pop3Cmd("PASS secret"), "+OK")
	waitLogins(t, s, "alice", 2)

	if got, want := s.LoginRemoteIPs("alice"), []string{"198.51.100.7", "198.51.100.8"}; !slices.Equal(got, want) {
		t.Fatalf("LoginRemoteIPs = %v, want %v\n%s", got, want, s.Log())
	}
}

// With the auth penalty disabled (the default), failed logins for a
// forwarded address do not slow down the next login from it.
func TestNoAuthPenaltyForForwardedAddress(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{})
	start := time.Now()
	c := dial(t, s.IMAPAddr)
	c.readLine()
	expectPrefix(t, c.imapCmd("a", `ID ("x-originating-ip" "192.0.2.10")`), "a OK")
	expectPrefix(t, c.imapCmd("b", "LOGIN alice wrong1"), "b NO")
	expectPrefix(t, c.imapCmd("c", "LOGIN alice wrong2"), "c NO")
	expectPrefix(t, c.imapCmd("d", "LOGIN alice secret"), "d OK")
	if d := time.Since(start); d > 3500*time.Millisecond {
		t.Fatalf("took %v: auth penalty still active?\n%s", d, s.Log())
	}
}

func TestHAProxy(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{Addr: "127.0.0.84", HAProxy: true})
	c := dial(t, s.IMAPAddr)
	c.send(fmt.Sprintf("PROXY TCP4 198.51.100.9 127.0.0.84 40003 %d", s.IMAPPort))
	expectPrefix(t, c.readLine(), "* OK")
	expectPrefix(t, c.imapCmd("a", "LOGIN alice secret"), "a OK")

	p := dial(t, s.POP3Addr)
	p.send(fmt.Sprintf("PROXY TCP4 198.51.100.10 127.0.0.84 40004 %d", s.POP3Port))
	expectPrefix(t, p.readLine(), "+OK")
	expectPrefix(t, p.pop3Cmd("USER bob"), "+OK")
	expectPrefix(t, p.pop3Cmd("PASS secret"), "+OK")

	waitLogins(t, s, "alice", 1)
	waitLogins(t, s, "bob", 1)
	if got := s.LoginRemoteIPs("alice"); !slices.Equal(got, []string{"198.51.100.9"}) {
		t.Fatalf("alice rip %v", got)
	}
	if got := s.LoginRemoteIPs("bob"); !slices.Equal(got, []string{"198.51.100.10"}) {
		t.Fatalf("bob rip %v", got)
	}
}

func TestParallelInstancesAndStop(t *testing.T) {
	t.Parallel()
	var wg sync.WaitGroup
	servers := make([]*Server, 3)
	for i := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := StartProcess(Options{Addr: fmt.Sprintf("127.0.0.%d", 91+i)})
			if errors.Is(err, ErrUnavailable) && os.Getenv(EnvRequire) != "1" {
				return
			}
			if err != nil {
				t.Error(err)
				return
			}
			servers[i] = s
		}()
	}
	wg.Wait()
	for _, s := range servers {
		if s != nil {
			defer s.Stop()
		}
	}
	if t.Failed() {
		return
	}
	if servers[0] == nil {
		t.Skip(Available())
	}
	for _, s := range servers {
		expectPrefix(t, imapLogin(t, s.IMAPAddr, "alice", "secret"), "a OK")
	}

	s := servers[0]
	pid := s.cmd.Process.Pid
	dir := s.Dir
	s.Stop()
	s.Stop() // idempotent
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("dovecot master %d still exists after Stop: %v", pid, err)
	}
	if groupAlive(pid) {
		t.Fatalf("processes of dovecot's process group %d still run after Stop", pid)
	}
	if _, err := net.DialTimeout("tcp", s.IMAPAddr, time.Second); err == nil {
		t.Fatal("IMAP port still accepts after Stop")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) && os.Getenv(EnvKeep) != "1" {
		t.Fatalf("directory %s not removed: %v", dir, err)
	}
	if !strings.Contains(s.Log(), "Login: user=<alice>") {
		t.Fatalf("Log after Stop lost its content: %q", s.Log())
	}
	// The other instances are unaffected.
	expectPrefix(t, imapLogin(t, servers[1].IMAPAddr, "alice", "secret"), "a OK")
	expectPrefix(t, pop3Login(t, servers[2].POP3Addr, "bob", "secret"), "+OK")
}

func TestFixedPorts(t *testing.T) {
	t.Parallel()
	ports, err := daemon.FreePorts("127.0.0.85", 2)
	if err != nil {
		t.Fatal(err)
	}
	imap, pop3 := ports[0], ports[1]
	s := Start(t, Options{Addr: "127.0.0.85", IMAPPort: imap, POP3Port: pop3, AuthFailureDelay: 10 * time.Millisecond})
	if !strings.Contains(s.configText(t), "auth_failure_delay = 1s\n") {
		t.Fatal("10ms not rounded up to 1 s")
	}
	if s.IMAPAddr != fmt.Sprintf("127.0.0.85:%d", imap) || s.POP3Addr != fmt.Sprintf("127.0.0.85:%d", pop3) {
		t.Fatalf("addresses %s %s", s.IMAPAddr, s.POP3Addr)
	}
	expectPrefix(t, pop3Login(t, s.POP3Addr, "bob", "secret"), "+OK")
}

func TestConfigRendering(t *testing.T) {
	s := &Server{Dir: "/tmp/x", LogFile: "/tmp/x/dovecot.log", CertFile: "/tmp/x/cert.pem", KeyFile: "/tmp/x/key.pem"}
	conf := renderConfig(s, Options{Addr: "127.0.0.9", IMAPPort: 1, POP3Port: 2, TLS: true, HAProxy: true, ExtraConfig: "verbose_proctitle = yes"}, 999)
	for _, want := range []string{
		"auth_failure_delay = 0s\n", "ssl = yes", "ssl_cert = </tmp/x/cert.pem", "haproxy = yes",
		"haproxy_trusted_networks = 127.0.0.0/8", "login_trusted_networks = 127.0.0.0/8",
		"first_valid_uid = 999", "anvil-auth-penalty", "verbose_proctitle = yes", "address = 127.0.0.9",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("config lacks %q:\n%s", want, conf)
		}
	}
	conf = renderConfig(s, Options{Addr: "127.0.0.9", AuthPenalty: true}, 999)
	if strings.Contains(conf, "anvil-auth-penalty") || strings.Contains(conf, "haproxy") || !strings.Contains(conf, "ssl = no") {
		t.Errorf("unexpected config:\n%s", conf)
	}
}

func (s *Server) configText(t *testing.T) string {
	b, err := os.ReadFile(s.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// An instance runs inside a network namespace (Options.Netns): it listens
// on that namespace's address, a client in another namespace of the same
// bridge logs in, and the forwarded client address is honoured from the
// configured trusted network.
func TestInNetns(t *testing.T) {
	n := netns.New(t, "mail", "proxy")
	mail, proxy := n.Host("mail"), n.Host("proxy")
	s := Start(t, Options{Addr: mail.IP4.String(), Netns: mail.Path, IMAPPort: 143, POP3Port: 110,
		TrustedNetworks: []string{netns.Net4.String()}})
	if s.IMAPAddr != mail.IP4.String()+":143" {
		t.Fatalf("IMAPAddr %s", s.IMAPAddr)
	}
	conn, err := proxy.DialTimeout("tcp", s.IMAPAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := wrap(t, conn)
	if g := c.readLine(); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("greeting %q", g)
	}
	if r := c.imapCmd("a", `ID ("x-originating-ip" "203.0.113.9" "x-originating-port" "4242")`); !strings.HasPrefix(r, "a OK") {
		t.Fatalf("ID: %q", r)
	}
	if r := c.imapCmd("b", "LOGIN alice secret"); !strings.HasPrefix(r, "b OK") {
		t.Fatalf("LOGIN: %q", r)
	}
	waitLog(t, s, "alice")
	if ips := s.LoginRemoteIPs("alice"); len(ips) != 1 || ips[0] != "203.0.113.9" {
		t.Fatalf("rip %v, want the forwarded 203.0.113.9", ips)
	}
}

func waitLog(t *testing.T, s *Server, user string) {
	t.Helper()
	if s.WaitLogins(user, 1, 5*time.Second) < 1 {
		t.Fatalf("no login of %s in the log:\n%s", user, s.Log())
	}
}

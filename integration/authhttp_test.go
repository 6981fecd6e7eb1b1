package integration

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/loopback"
)

// authRecorder is an nginx auth_http server for tests: it records every
// request byte for byte and answers like a typical daemon: Dovecot's users
// log in with their password, a few aliases log in as alice (Auth-User and
// Auth-Pass overrides), the password "wrong" is refused with Auth-Wait,
// anything else is refused without it.
type authRecorder struct {
	ln net.Listener
	dc *dovecot.Server

	mu   sync.Mutex
	reqs []string
	wg   sync.WaitGroup
}

// aliases are client credentials the daemon maps to alice/secret.
var aliases = map[string]string{"we ird%user": "p a%ss", "odd%user": "p a%ss\tx", "tls-user": "tls pass"}

func startAuthRecorder(t *testing.T, addr string, dc *dovecot.Server) *authRecorder {
	t.Helper()
	ln, err := net.Listen("tcp", addr+":0")
	if err != nil {
		t.Fatal(err)
	}
	r := &authRecorder{ln: ln, dc: dc}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				defer c.Close()
				r.serve(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); r.wg.Wait() })
	return r
}

func (r *authRecorder) url() string { return "http://" + r.ln.Addr().String() + "/auth" }

func (r *authRecorder) serve(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	var raw strings.Builder
	h := map[string]string{}
	for {
		line, err := br.ReadString('\n')
		raw.WriteString(line)
		if err != nil {
			return
		}
		if line == "\r\n" {
			break
		}
		if k, v, ok := strings.Cut(strings.TrimRight(line, "\r\n"), ": "); ok {
			h[k] = v
		}
	}
	r.mu.Lock()
	r.reqs = append(r.reqs, raw.String())
	r.mu.Unlock()
	user, pass := unescapeNginx(h["Auth-User"]), unescapeNginx(h["Auth-Pass"])
	port := r.dc.IMAPPort
	if h["Auth-Protocol"] == "pop3" {
		port = r.dc.POP3Port
	}
	ok := func(extra string) {
		fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: %s\r\nAuth-Port: %d\r\n%s\r\n", r.dc.Addr, port, extra)
	}
	switch {
	case user == "by-id":
		// Beyond nginx: a backend id from the routing table.
		io.WriteString(c, "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: dc1\r\nAuth-User: bob\r\nAuth-Pass: secret\r\n\r\n")
	case pass == "wrong":
		io.WriteString(c, "HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 1\r\n\r\n")
	case aliases[user] == pass && pass != "":
		ok("Auth-User: alice\r\nAuth-Pass: secret\r\n")
	case r.dc.Users[user] == pass && pass != "":
		ok("")
	default:
		// A 500 status: nginx ignores it; so must Portico.
		io.WriteString(c, "HTTP/1.0 500 Internal Server Error\r\nAuth-Status: Go away\r\n\r\n")
	}
}

// since returns the requests recorded after the first n.
func (r *authRecorder) since(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.reqs[n:]...)
}

func (r *authRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

// unescapeNginx undoes nginx's Auth-User/Auth-Pass escaping (%XX).
func unescapeNginx(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(n))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// routesTo is a routing table with dc as backend dc1 (auth_http may name
// it; a node with an empty table also waits at start for a table that
// never comes).
func routesTo(dc *dovecot.Server) string {
	return fmt.Sprintf(`
backends:
  - {id: dc1, host: %s, imap_port: %d, pop3_port: %d, forward: id}
pools:
  - {name: main, backends: [dc1]}
routes:
  default_pool: main
`, dc.Addr, dc.IMAPPort, dc.POP3Port)
}

// authConn is a raw client that can switch to TLS.
type authConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialAuth(t *testing.T, addr string, tlsCfg *tls.Config, proxyHeader string) *authConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if proxyHeader != "" {
		if _, err := io.WriteString(c, proxyHeader); err != nil {
			t.Fatal(err)
		}
	}
	if tlsCfg != nil {
		tc := tls.Client(c, tlsCfg)
		if err := tc.Handshake(); err != nil {
			t.Fatalf("%s: TLS: %v", addr, err)
		}
		c = tc
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &authConn{t: t, c: c, br: bufio.NewReader(c)}
}

// cmd sends a line and returns the reply line that starts with want
// (skipping untagged lines), failing otherwise.
func (a *authConn) cmd(send, want string) string {
	a.t.Helper()
	if send != "" {
		if _, err := io.WriteString(a.c, send+"\r\n"); err != nil {
			a.t.Fatalf("send %q: %v", send, err)
		}
	}
	for {
		line, err := a.br.ReadString('\n')
		if err != nil {
			a.t.Fatalf("after %q: want %q: %v (got %q)", send, want, err, line)
		}
		if strings.HasPrefix(line, want) {
			return strings.TrimRight(line, "\r\n")
		}
		if !strings.HasPrefix(line, "* ") {
			a.t.Fatalf("after %q: got %q, want %q", send, line, want)
		}
	}
}

func (a *authConn) startTLS(cfg *tls.Config) {
	tc := tls.Client(a.c, cfg)
	if err := tc.Handshake(); err != nil {
		a.t.Fatal(err)
	}
	a.c, a.br = tc, bufio.NewReader(tc)
}

// Logins through auth_http against a real Dovecot: the daemon's answers
// (OK with and without overrides, refusals with and without Auth-Wait, a
// 500 status) and its failures reach the client as nginx would show them.
func TestAuthHTTPLoginDovecot(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.95"})
	rec := startAuthRecorder(t, "127.0.0.95", dc)
	// An auth server nobody runs: a port of this test's own address.
	down := loopback.HostPort(t, loopback.Addr(t))
	p := startPortico(t, fmt.Sprintf(`
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0"}
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0"}
  - name: imap-down
    protocol: imap
    address: "127.0.0.1:0"
    auth: {mode: http, url: "http://%s/auth", timeout: 1s}
limits: {auth_failure_delay: 10ms, max_auth_failures: 5}
auth:
  mode: http
  url: %s
  headers: {X-Auth-Key: secret}
  cache: {positive_ttl: 1m}
%s`, down, rec.url(), routesTo(dc)))

	c := dialAuth(t, p.addr("imap"), nil, "")
	c.cmd("", "* OK")
	start := time.Now()
	if got := c.cmd("a LOGIN alice wrong", "a "); got != "a NO Invalid login or password" {
		t.Fatalf("refusal %q", got)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("Auth-Wait: 1 answered after %v", d)
	}
	c.cmd(`b LOGIN "we ird%user" "p a%ss"`, "b OK")
	c.cmd("c SELECT INBOX", "c OK")
	c.cmd("d LOGOUT", "d OK")
	if n := dc.WaitLogins("alice", 1, 5*time.Second); n != 1 {
		t.Fatalf("dovecot saw %d logins of alice", n)
	}
	reqs := rec.since(0)
	if len(reqs) != 2 || !strings.Contains(reqs[0], "Auth-Login-Attempt: 1\r\n") || !strings.Contains(reqs[1], "Auth-Login-Attempt: 2\r\n") ||
		!strings.Contains(reqs[1], "Auth-User: we%20ird%25user\r\nAuth-Pass: p%20a%25ss\r\n") || !strings.HasSuffix(reqs[1], "X-Auth-Key: secret\r\n\r\n") {
		t.Fatalf("requests %q", reqs)
	}

	// A refusal without Auth-Wait (here with a 500 status) ends the session.
	c = dialAuth(t, p.addr("pop3"), nil, "")
	c.cmd("", "+OK")
	c.cmd("USER bob", "+OK")
	if got := c.cmd("PASS nope", "-ERR"); got != "-ERR Go away" {
		t.Fatalf("refusal %q", got)
	}
	if _, err := c.br.ReadByte(); err == nil {
		t.Fatal("session not closed")
	}
	// POP3 login through an override; then the same login again comes
	// from the positive cache.
	for i := 0; i < 2; i++ {
		c = dialAuth(t, p.addr("pop3"), nil, "")
		c.cmd("", "+OK")
		c.cmd("USER odd%user", "+OK")
		c.cmd("PASS p a%ss\tx", "+OK")
		c.cmd("STAT", "+OK")
		c.cmd("QUIT", "+OK")
	}
	if n := rec.count(); n != 4 {
		t.Errorf("%d auth requests; the repeated login should have come from the cache", n)
	}

	// Auth-Server naming a routing-table backend: its own port and
	// settings apply, no Auth-Port needed.
	c = dialAuth(t, p.addr("imap"), nil, "")
	c.cmd("", "* OK")
	c.cmd("a LOGIN by-id whatever", "a OK")
	c.cmd("b LOGOUT", "b OK")
	if n := dc.WaitLogins("bob", 1, 5*time.Second); n != 1 {
		t.Fatalf("dovecot saw %d logins of bob", n)
	}

	// An auth server that cannot be reached: nginx's internal error.
	c = dialAuth(t, p.addr("imap-down"), nil, "")
	c.cmd("", "* OK")
	if got := c.cmd("a LOGIN alice secret", "* BAD"); got != "* BAD internal server error" {
		t.Fatalf("got %q", got)
	}
	if _, err := c.br.ReadByte(); err == nil {
		t.Fatal("session not closed")
	}

	for name, want := range map[string]float64{
		`portico_auth_http_requests_total{result="ok"}`:      3,
		`portico_auth_http_requests_total{result="refused"}`: 2,
		`portico_auth_http_errors_total{kind="connect"}`:     1,
		`portico_auth_http_cache_hits_total{answer="ok"}`:    1,
	} {
		if got := gatherValue(t, p, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if problems, err := testutil.GatherAndLint(p.d.Metrics); err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %+v", err, problems)
	}

	// A reload back to passthrough: the routing table decides, Dovecot
	// checks the password, the auth server is not asked.
	next := *p.cfg
	next.Auth = nil
	if err := p.d.Reload(&next); err != nil {
		t.Fatal(err)
	}
	n := rec.count()
	c = dialAuth(t, p.addr("imap"), nil, "")
	c.cmd("", "* OK")
	c.cmd(`a LOGIN "we ird%user" "p a%ss"`, "a NO [AUTHENTICATIONFAILED]")
	c.cmd("b LOGIN alice secret", "b OK")
	if rec.count() != n {
		t.Errorf("auth server asked after the reload to passthrough")
	}
}

// gatherValue reads one sample (name{labels}) from the node's registry.
func gatherValue(t *testing.T, p *portico, sample string) float64 {
	t.Helper()
	name, labels, _ := strings.Cut(strings.TrimSuffix(sample, "}"), "{")
	mfs, err := p.d.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels != "" && fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()) != labels {
					continue next
				}
			}
			if m.Counter != nil {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no sample %s", sample)
	return 0
}

const (
	nginxBin       = "/usr/sbin/nginx"
	nginxMailMod   = "/usr/lib/nginx/modules/ngx_mail_module.so"
	nginxAddr      = "127.0.0.96"
	nginxConfigTpl = `load_module %[1]s;
daemon off;
master_process off;
worker_processes 1;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log info;
events { worker_connections 128; }
mail {
  server_name mail.test;
  auth_http %[3]s;
  auth_http_header X-Auth-Key "secret";
  proxy on;
  proxy_pass_error_message on;
  imap_auth login plain;
  ssl_certificate %[4]s;
  ssl_certificate_key %[5]s;
  ssl_protocols TLSv1.2 TLSv1.3;
  server { listen %[6]s:%[7]d; protocol imap; starttls on; }
  server { listen %[6]s:%[8]d ssl; protocol imap; }
  server { listen %[6]s:%[9]d; protocol pop3; }
  server { listen %[6]s:%[10]d proxy_protocol; protocol imap; set_real_ip_from 127.0.0.0/8; }
  server { listen %[6]s:%[11]d; protocol smtp; smtp_auth login plain; }
}
`
)

// startNginx runs Debian's nginx with the mail module in front of the
// auth server; it returns the addresses of its imap (STARTTLS), imaps,
// pop3 and imap-with-PROXY listeners.
func startNginx(t *testing.T, authURL, cert, key string) map[string]string {
	t.Helper()
	_, errBin := os.Stat(nginxBin)
	_, errMod := os.Stat(nginxMailMod)
	if errBin != nil || errMod != nil || os.Geteuid() != 0 {
		msg := fmt.Sprintf("nginx with the mail module (%s, %s) as root: %v %v euid %d", nginxBin, nginxMailMod, errBin, errMod, os.Geteuid())
		if os.Getenv(dovecot.EnvRequire) == "1" {
			t.Fatalf("%s=1 but no %s (apt-get install nginx libnginx-mod-mail)", dovecot.EnvRequire, msg)
		}
		t.Skipf("skipping: no %s", msg)
	}
	dir := t.TempDir()
	ports := make([]int, 5)
	for i := range ports {
		ln, err := net.Listen("tcp", nginxAddr+":0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
	}
	absCert, _ := filepath.Abs(cert)
	absKey, _ := filepath.Abs(key)
	conf := fmt.Sprintf(nginxConfigTpl, nginxMailMod, dir, strings.TrimPrefix(authURL, "http://"), absCert, absKey,
		nginxAddr, ports[0], ports[1], ports[2], ports[3], ports[4])
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(nginxBin, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log"))
	var out lockedBuf
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx output: %s\nnginx error.log:\n%s", out.String(), log)
		}
	})
	addrs := map[string]string{}
	for i, name := range []string{"imap", "imaps", "pop3", "imap-proxied", "smtp"} {
		addrs[name] = net.JoinHostPort(nginxAddr, strconv.Itoa(ports[i]))
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, a := range addrs {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-done:
				t.Fatalf("nginx exited: %s", out.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("nginx not listening on %s: %v", a, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return addrs
}

// legitimatelyDiffer lists the request headers whose values may differ
// between nginx and Portico for the same login, and why. With the same
// client, the same TLS parameters and the same PROXY header, none does:
// the list is empty, and the test shows it. (Headers that Portico never
// sends, e.g. Auth-SSL-Verify without client certificates, are absent on
// both sides in these scenarios: nginx sends them only with
// ssl_verify_client.)
var legitimatelyDiffer = map[string]string{}

// The side-by-side test: the same logins through nginx's mail proxy and
// through Portico, both asking the same recording auth server, must
// produce the same requests (headers, order, values) and the same
// client-visible answers.
func TestAuthHTTPSideBySideNginx(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.95"})
	rec := startAuthRecorder(t, "127.0.0.95", dc)
	cert, key := demoCert(t)
	ngx := startNginx(t, rec.url(), cert, key)
	p := startPortico(t, fmt.Sprintf(`
tls:
  certificates: [{cert: %s, key: %s}]
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0", tls: starttls, allow_plaintext_auth: true}
  - {name: imaps, protocol: imap, address: "127.0.0.1:0", tls: implicit}
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0"}
  - {name: imap-proxied, protocol: imap, address: "127.0.0.1:0", proxy_protocol: true, trusted_proxies: [127.0.0.0/8]}
  - {name: smtp, protocol: submission, address: "127.0.0.1:0"}
limits: {auth_failure_delay: 10ms}
auth:
  mode: http
  url: %s
  headers: {X-Auth-Key: secret}
  cache: {negative_ttl: 0s}
%s`, cert, key, rec.url(), routesTo(dc)))

	tls12 := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}
	tls13 := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	plainIR := func(authz, user, pass string) string {
		return base64.StdEncoding.EncodeToString([]byte(authz + "\x00" + user + "\x00" + pass))
	}
	scenarios := []struct {
		name     string
		listener string
		tls      *tls.Config
		proxy    string
		dialog   func(c *authConn) []string // client-visible answers to compare
	}{
		{"imap LOGIN wrong then right", "imap", nil, "", func(c *authConn) []string {
			c.cmd("", "* OK")
			return []string{c.cmd("a LOGIN alice wrong", "a "), okPrefix(c.cmd("b LOGIN alice secret", "b "))}
		}},
		{"imap AUTHENTICATE PLAIN with an authorization identity", "imap", nil, "", func(c *authConn) []string {
			c.cmd("", "* OK")
			return []string{okPrefix(c.cmd("a AUTHENTICATE PLAIN "+plainIR("admin", "bob", "secret"), "a "))}
		}},
		{"imap STARTTLS (TLS 1.3) then LOGIN", "imap", nil, "", func(c *authConn) []string {
			c.cmd("", "* OK")
			c.cmd("a STARTTLS", "a OK")
			c.startTLS(tls13)
			return []string{okPrefix(c.cmd(`b LOGIN "we ird%user" "p a%ss"`, "b "))}
		}},
		{"imaps (TLS 1.2) LOGIN with a literal", "imaps", tls12, "", func(c *authConn) []string {
			c.cmd("", "* OK")
			c.cmd("a LOGIN {8}", "+")
			c.cmd("tls-user {8}", "+")
			return []string{okPrefix(c.cmd("tls pass", "a "))}
		}},
		{"pop3 USER/PASS, escaped, refused then accepted", "pop3", nil, "", func(c *authConn) []string {
			c.cmd("", "+OK")
			c.cmd("USER odd%user", "+OK")
			first := c.cmd("PASS wrong", "-ERR")
			c.cmd("USER odd%user", "+OK")
			return []string{first, okPrefix(c.cmd("PASS p a%ss\tx", "+OK"))}
		}},
		{"imap after a PROXY header", "imap-proxied", nil, "PROXY TCP4 192.0.2.7 198.51.100.9 40000 143\r\n", func(c *authConn) []string {
			c.cmd("", "* OK")
			return []string{okPrefix(c.cmd("a LOGIN bob secret", "a "))}
		}},
		// Submission (nginx's protocol smtp): Auth-Protocol smtp and
		// Client-Host [UNAVAILABLE] (no resolver); a refusal with
		// Auth-Wait is "535 5.7.0 <Auth-Status>" and the session goes on.
		{"smtp AUTH PLAIN and LOGIN refused", "smtp", nil, "", func(c *authConn) []string {
			c.cmd("", "220 ")
			c.cmd("HELO client.example", "250 ")
			first := c.cmd("AUTH PLAIN "+plainIR("", "alice", "wrong"), "535 ")
			c.cmd("AUTH LOGIN", "334 ")
			c.cmd(base64.StdEncoding.EncodeToString([]byte("odd%user")), "334 ")
			return []string{first, c.cmd(base64.StdEncoding.EncodeToString([]byte("wrong")), "535 ")}
		}},
		{"imap refused without Auth-Wait: session closed", "imap", nil, "", func(c *authConn) []string {
			c.cmd("", "* OK")
			got := c.cmd("a LOGIN bob nope", "a ")
			_, err := c.br.ReadByte()
			return []string{got, fmt.Sprintf("closed=%v", err != nil)}
		}},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			var reqs [2][]string
			var answers [2][]string
			for i, addr := range []string{ngx[sc.listener], p.addr(sc.listener)} {
				n := rec.count()
				c := dialAuth(t, addr, sc.tls, sc.proxy)
				answers[i] = sc.dialog(c)
				c.c.Close()
				reqs[i] = rec.since(n)
			}
			if fmt.Sprint(answers[0]) != fmt.Sprint(answers[1]) {
				t.Errorf("client saw\n nginx:   %q\n portico: %q", answers[0], answers[1])
			}
			if len(reqs[0]) != len(reqs[1]) || len(reqs[0]) == 0 {
				t.Fatalf("nginx sent %d requests, portico %d:\n%q\n%q", len(reqs[0]), len(reqs[1]), reqs[0], reqs[1])
			}
			for j := range reqs[0] {
				compareAuthRequests(t, reqs[0][j], reqs[1][j])
			}
		})
	}
}

// okPrefix keeps the status of a success reply (nginx and Portico word
// the rest differently: each passes on or writes its own text).
func okPrefix(s string) string {
	f := strings.Fields(s)
	if len(f) >= 2 && f[1] == "OK" {
		return f[0] + " OK"
	}
	if len(f) >= 1 && f[0] == "+OK" {
		return "+OK"
	}
	return s
}

// compareAuthRequests checks that two requests have the same request line
// and the same headers in the same order with the same values, apart from
// legitimatelyDiffer.
func compareAuthRequests(t *testing.T, nginx, portico string) {
	t.Helper()
	a, b := strings.Split(nginx, "\r\n"), strings.Split(portico, "\r\n")
	if len(a) != len(b) {
		t.Errorf("different headers:\n nginx:   %q\n portico: %q", nginx, portico)
		return
	}
	for i := range a {
		if a[i] == b[i] {
			continue
		}
		na, _, _ := strings.Cut(a[i], ": ")
		nb, _, _ := strings.Cut(b[i], ": ")
		if na == nb && legitimatelyDiffer[na] != "" {
			continue
		}
		t.Errorf("line %d differs: nginx %q, portico %q\n nginx:   %q\n portico: %q", i, a[i], b[i], nginx, portico)
	}
	t.Logf("same request:\n%s", nginx)
}

package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/postfix"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/routing"
)

// submissionRig is a Dovecot (the users' passwords, through its auth
// socket) and a Postfix submission server behind Portico: a STARTTLS
// listener (587 style) and an implicit TLS one (465 style), both routing
// every login to the pool of submission servers whatever the user's rules
// say; Postfix trusts XCLIENT from the proxy's address only. Clients
// connect from other loopback addresses, so that Postfix's log tells the
// client's address from the proxy's.
type submissionRig struct {
	dc  *dovecot.Server
	pf  *postfix.Server
	p   *portico
	log *lockedBuf
}

func startSubmissionRig(t *testing.T, addr string, extraYAML string) *submissionRig {
	t.Helper()
	dc := dovecot.Start(t, dovecot.Options{Addr: addr, ExtraConfig: postfix.DovecotSASL})
	pf := postfix.Start(t, postfix.Options{Addr: addr, SASLPath: postfix.DovecotSASLSocket(dc.Dir), TLS: true, TLSAuthOnly: true,
		XCLIENTHosts: []string{"127.0.0.1"}})
	cert, key := demoCert(t)
	yml := fmt.Sprintf(`
tls:
  certificates: [{cert: %s, key: %s}]
listeners:
  - {name: submission, protocol: submission, address: "127.0.0.1:0", tls: starttls, pool: relay,
     submission: {hostname: portico.test}}
  - {name: submissions, protocol: submission, address: "127.0.0.1:0", tls: implicit, pool: relay}
limits:
  auth_failure_delay: 100ms
backends:
  - {id: dc1, host: %s, imap_port: %d}
  - {id: mx1, host: %s, submission_port: %d, tls: starttls, tls_insecure_skip_verify: true, forward: id}
pools:
  - {name: main, backends: [dc1]}
  - {name: relay, backends: [mx1]}
routes:
  default_pool: main
%s`, cert, key, dc.Addr, dc.IMAPPort, pf.Addr[:strings.LastIndexByte(pf.Addr, ':')], pf.Port, extraYAML)
	p, log := startPorticoLogged(t, yml)
	return &submissionRig{dc: dc, pf: pf, p: p, log: log}
}

// smtplibScript sends through Portico with Python's smtplib, from a given
// source address: first MAIL without AUTH (refused), a wrong password,
// then the right one and the message. It prints a JSON summary.
const smtplibScript = `
import json, smtplib, ssl, sys
mode, port, src, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
ctx = ssl._create_unverified_context()
out = {}
if mode == "starttls":
    s = smtplib.SMTP("127.0.0.1", port, local_hostname="smtplib.example", source_address=(src, 0), timeout=60)
    out["ehlo_plain"] = s.ehlo()[1].decode()
    s.starttls(context=ctx)
else:
    s = smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="smtplib.example", source_address=(src, 0), context=ctx, timeout=60)
out["ehlo"] = s.ehlo()[1].decode()
msg = ("From: alice@example.com\r\nTo: bob@example.com\r\nSubject: via smtplib " + mode + "\r\n\r\n").encode()
line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
msg += line * (size // len(line)) + b"end\r\n"
try:
    s.sendmail("alice@example.com", ["bob@example.com"], msg)
    out["noauth"] = "accepted"
except smtplib.SMTPSenderRefused as e:
    out["noauth"] = [e.smtp_code, e.smtp_error.decode()]
s.rset()
try:
    s.login("alice", "wrong")
    out["wrong"] = "accepted"
except smtplib.SMTPAuthenticationError as e:
    out["wrong"] = [e.smtp_code, e.smtp_error.decode()]
out["login"] = list(s.login("alice", "secret"))
out["login"][1] = out["login"][1].decode()
out["refused"] = s.sendmail("alice@example.com", ["bob@example.com"], msg)
s.quit()
print(json.dumps(out))
`

type smtplibResult struct {
	EHLOPlain string   `json:"ehlo_plain"`
	EHLO      string   `json:"ehlo"`
	NoAuth    []any    `json:"noauth"`
	Wrong     []any    `json:"wrong"`
	Login     []any    `json:"login"`
	Refused   struct{} `json:"refused"`
}

func runSmtplib(t *testing.T, mode, addr, src string, size int) smtplibResult {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "python3", "-c", smtplibScript, mode, port, src, strconv.Itoa(size)).CombinedOutput()
	if err != nil {
		t.Fatalf("smtplib %s: %v\n%s", mode, err, out)
	}
	var r smtplibResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("smtplib %s: %v\n%s", mode, err, out)
	}
	return r
}

// Python's smtplib and swaks send through Portico to Postfix, over
// STARTTLS and implicit TLS: before AUTH the EHLO reply offers no AUTH in
// plaintext and MAIL is refused by Portico (530 5.7.0); a wrong password
// gets Postfix's 535 relayed; the messages are delivered, and Postfix's
// log and the Received headers show each client's own address (XCLIENT),
// not the proxy's. Logins are counted under protocol="submission", logged
// once each, and no credential is ever logged.
func TestSubmissionClientsThroughPortico(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	r := startSubmissionRig(t, "127.0.0.110", "")

	st := runSmtplib(t, "starttls", r.p.addr("submission"), "127.0.0.2", 2000)
	if strings.Contains(st.EHLOPlain, "AUTH") || !strings.Contains(st.EHLOPlain, "STARTTLS") || !strings.HasPrefix(st.EHLOPlain, "portico.test\n") {
		t.Errorf("EHLO before TLS: %q", st.EHLOPlain)
	}
	if !strings.Contains(st.EHLO, "AUTH PLAIN LOGIN") || strings.Contains(st.EHLO, "STARTTLS") || !strings.Contains(st.EHLO, "CHUNKING") {
		t.Errorf("EHLO after STARTTLS: %q", st.EHLO)
	}
	if fmt.Sprint(st.NoAuth) != "[530 5.7.0 Authentication required]" {
		t.Errorf("MAIL without AUTH: %v", st.NoAuth)
	}
	if len(st.Wrong) != 2 || st.Wrong[0] != float64(535) || !strings.Contains(fmt.Sprint(st.Wrong[1]), "5.7.8 Error: authentication failed") {
		t.Errorf("wrong password: %v", st.Wrong)
	}
	if fmt.Sprint(st.Login) != "[235 2.7.0 Authentication successful]" {
		t.Errorf("login: %v", st.Login)
	}
	// The same over implicit TLS, with a 10 MB message (DATA).
	im := runSmtplib(t, "implicit", r.p.addr("submissions"), "127.0.0.3", 10<<20)
	if !strings.Contains(im.EHLO, "AUTH PLAIN LOGIN") || fmt.Sprint(im.NoAuth) != "[530 5.7.0 Authentication required]" {
		t.Errorf("implicit TLS: %+v", im)
	}

	// swaks, STARTTLS and implicit TLS.
	swaks := func(src, listener string, args ...string) {
		t.Helper()
		host, port, _ := net.SplitHostPort(r.p.addr(listener))
		all := append([]string{"--server", host, "--port", port, "--local-interface", src, "--ehlo", "swaks.example",
			"--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "secret",
			"--from", "alice@example.com", "--to", "bob@example.com", "--header", "Subject: via swaks " + listener,
			"--body", "sent by swaks", "--timeout", "30"}, args...)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "swaks", all...).CombinedOutput(); err != nil {
			t.Fatalf("swaks %v: %v\n%s", args, err, out)
		}
	}
	if _, err := exec.LookPath("swaks"); err != nil {
		if os.Getenv(dovecot.EnvRequire) == "1" {
			t.Fatal("swaks not installed (apt-get install swaks)")
		}
		t.Log("swaks not installed: skipping its part")
	} else {
		swaks("127.0.0.4", "submission", "--tls")
		swaks("127.0.0.5", "submissions", "--tls-on-connect")
	}

	want := map[string]string{"via smtplib starttls": "127.0.0.2", "via smtplib implicit": "127.0.0.3"}
	if _, err := exec.LookPath("swaks"); err == nil {
		want["via swaks submission"] = "127.0.0.4"
		want["via swaks submissions"] = "127.0.0.5"
	}
	msgs := r.pf.WaitDelivered(len(want), 30*time.Second)
	if len(msgs) != len(want) {
		t.Fatalf("%d messages delivered, want %d\n%s", len(msgs), len(want), r.pf.Log())
	}
	for _, m := range msgs {
		subj := regexp.MustCompile(`Subject: (via \S+ \S+)`).FindStringSubmatch(m)
		if subj == nil || want[subj[1]] == "" {
			t.Fatalf("unexpected message:\n%.500s", m)
		}
		src := want[subj[1]]
		// Received: from <client's EHLO> (unknown [<client's address>])
		// ... (Authenticated sender: alice) by postfix.test ... ESMTPSA
		if !regexp.MustCompile(`Received: from \S+\.example \(unknown \[` + regexp.QuoteMeta(src) + `\]\)\s+\(Authenticated sender: alice\)\s+by postfix\.test \(Postfix\) with ESMTPSA`).MatchString(m) {
			t.Errorf("%s: Received header does not show the client's address %s:\n%.600s", subj[1], src, m)
		}
		if strings.Contains(m, "[127.0.0.1]") {
			t.Errorf("%s: the proxy's address in the message:\n%.600s", subj[1], m)
		}
	}
	var big int
	for _, m := range msgs {
		if len(m) > 10_000_000 {
			big++
		}
	}
	if big != 1 {
		t.Errorf("%d messages over 10 MB, want 1", big)
	}
	for _, src := range want {
		if r.pf.WaitLog(regexp.MustCompile(`client=unknown\[`+regexp.QuoteMeta(src)+`\], sasl_method=PLAIN, sasl_username=alice`), 5*time.Second) == nil {
			t.Errorf("Postfix's log has no client=unknown[%s] with sasl_username=alice:\n%s", src, r.pf.Log())
		}
	}

	mfs, _ := scrape(t, r.p)
	logins := 0.0
	for _, lst := range []string{"submission", "submissions"} {
		v, _ := value(mfs, "portico_logins_total", l("protocol", "submission", "listener", lst, "result", "ok"))
		logins += v
	}
	if logins != float64(len(want)) {
		t.Errorf("portico_logins_total{protocol=submission,result=ok} = %v, want %d", logins, len(want))
	}
	if v, _ := value(mfs, "portico_logins_total", l("protocol", "submission", "result", "bad_credentials")); v != 4 {
		// smtplib tries PLAIN, then LOGIN, with the wrong password.
		t.Errorf("bad_credentials logins %v, want 4", v)
	}
	logText := r.log.String()
	if !regexp.MustCompile(`"msg":"login".*"protocol":"submission","client":"127\.0\.0\.2:\d+","user":"alice","result":"ok"`).MatchString(logText) {
		t.Errorf("no access log line for the STARTTLS login:\n%s", logText)
	}
	for _, secret := range []string{"secret", base64PlainIR("alice", "secret"), "wrong"} {
		if strings.Contains(logText, secret) {
			t.Errorf("the log holds a credential (%q)", secret)
		}
	}
}

// smtpConn is a raw SMTP client for precise assertions.
type smtpConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialSMTP(t *testing.T, addr, src string, implicitTLS bool) *smtpConn {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	var c net.Conn
	var err error
	if implicitTLS {
		c, err = tls.DialWithDialer(d, "tcp", addr, clientTLS)
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	t.Cleanup(func() { c.Close() })
	s := &smtpConn{t: t, c: c, br: bufio.NewReaderSize(c, 64<<10)}
	s.expect("220 ")
	return s
}

func (s *smtpConn) send(b string) {
	s.t.Helper()
	if _, err := io.WriteString(s.c, b); err != nil {
		s.t.Fatalf("send: %v", err)
	}
}

// reply reads one reply and returns its lines.
func (s *smtpConn) reply() []string {
	s.t.Helper()
	var lines []string
	for {
		l, err := s.br.ReadString('\n')
		if err != nil {
			s.t.Fatalf("read: %v (%q after %q)", err, l, lines)
		}
		l = strings.TrimRight(l, "\r\n")
		lines = append(lines, l)
		if len(l) < 4 || l[3] != '-' {
			return lines
		}
	}
}

func (s *smtpConn) expect(want string) []string {
	s.t.Helper()
	r := s.reply()
	if !strings.HasPrefix(r[len(r)-1], want) {
		s.t.Fatalf("got %q, want %q", r, want)
	}
	return r
}

func (s *smtpConn) cmd(line, want string) []string {
	s.t.Helper()
	s.send(line + "\r\n")
	return s.expect(want)
}

func (s *smtpConn) closed() bool {
	_ = s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, s.br)
	return err == nil
}

// A 10 MB message in BDAT chunks (CHUNKING, which Postfix offers) arrives
// whole; then what Portico refuses through a relayed session: XCLIENT
// (Postfix trusts the proxy's address for it) closes the session before
// it reaches Postfix. A kick waits for the message in progress to be
// taken, then says 421. With Postfix down, AUTH gets a temporary 454,
// never 535.
func TestSubmissionBDATGuardKickAndBackendDown(t *testing.T) {
	r := startSubmissionRig(t, "127.0.0.111", "drain: {boundary_timeout: 30s}\n")

	s := dialSMTP(t, r.p.addr("submissions"), "127.0.0.6", true)
	if ehlo := s.cmd("EHLO bdat.example", "250 "); !containsLine(ehlo, "250-CHUNKING") {
		t.Fatalf("EHLO %q", ehlo)
	}
	s.send("BDAT 5 LAST\r\nhello") // before AUTH: the chunk is dropped
	s.expect("530 5.7.0 ")
	s.cmd("AUTH PLAIN "+base64PlainIR("alice", "secret"), "235 ")
	var msg bytes.Buffer
	msg.WriteString("From: alice@example.com\r\nTo: bob@example.com\r\nSubject: via BDAT\r\n\r\n")
	for msg.Len() < 10<<20 {
		fmt.Fprintf(&msg, "line %09d of a ten megabyte message sent in BDAT chunks\r\n", msg.Len())
	}
	body := msg.Bytes()
	start := time.Now()
	s.cmd("MAIL FROM:<alice@example.com> SIZE="+strconv.Itoa(len(body)), "250 ")
	s.cmd("RCPT TO:<bob@example.com>", "250 ")
	const chunk = 1 << 20
	n := 0
	for off := 0; off < len(body); off += chunk {
		end := min(off+chunk, len(body))
		last := ""
		if end == len(body) {
			last = " LAST"
		}
		s.send("BDAT " + strconv.Itoa(end-off) + last + "\r\n")
		s.send(string(body[off:end]))
		n++
	}
	for i := 0; i < n; i++ {
		s.expect("250 ")
	}
	elapsed := time.Since(start)
	t.Logf("10 MB in %d BDAT chunks through Portico (TLS both ways) to Postfix: %v (%.1f MB/s)", n, elapsed, float64(len(body))/(1<<20)/elapsed.Seconds())
	msgs := r.pf.WaitDelivered(1, 30*time.Second)
	if len(msgs) != 1 {
		t.Fatalf("delivered %d", len(msgs))
	}
	// Postfix adds Date and Message-ID headers: compare the bodies.
	_, gotBody, _ := strings.Cut(strings.ReplaceAll(msgs[0], "\n", "\r\n"), "\r\n\r\n")
	_, sentBody, _ := bytes.Cut(body, []byte("\r\n\r\n"))
	if !strings.Contains(msgs[0], "Subject: via BDAT") || sha256.Sum256([]byte(gotBody)) != sha256.Sum256(sentBody) {
		t.Fatalf("BDAT message changed: %d body bytes delivered, %d sent", len(gotBody), len(sentBody))
	}

	// XCLIENT through the relayed session: closed, never at Postfix.
	s.send("XCLIENT ADDR=198.51.100.66 LOGIN=bob\r\n")
	if !s.closed() {
		t.Fatal("session not closed after XCLIENT")
	}
	if strings.Contains(r.pf.Log(), "198.51.100.66") {
		t.Fatalf("XCLIENT reached Postfix:\n%s", r.pf.Log())
	}

	// A kick while a message is being sent: the message is taken, then
	// the client gets 421 and the connection closes.
	k := dialSMTP(t, r.p.addr("submission"), "127.0.0.7", false)
	k.cmd("EHLO kick.example", "250 ")
	k.cmd("STARTTLS", "220 ")
	tc := tls.Client(k.c, clientTLS)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	k.c, k.br = tc, bufio.NewReader(tc)
	k.cmd("EHLO kick.example", "250 ")
	k.cmd("AUTH PLAIN "+base64PlainIR("alice", "secret"), "235 ")
	k.cmd("MAIL FROM:<alice@example.com>", "250 ")
	k.cmd("RCPT TO:<bob@example.com>", "250 ")
	k.cmd("DATA", "354 ")
	k.send("Subject: kicked\r\n\r\nfirst half\r\n")
	kicked := make(chan string, 1)
	go func() { kicked <- kick(r.p, "alice", "Moving you elsewhere.") }()
	time.Sleep(300 * time.Millisecond)
	select {
	case k := <-kicked:
		t.Fatalf("kick finished inside a message: %s", k)
	default:
	}
	k.send("second half\r\n.\r\n")
	k.expect("250 2.0.0 Ok: queued")
	if got := k.reply(); len(got) != 1 || got[0] != "421 4.3.2 Moving you elsewhere." {
		t.Fatalf("after the message: %q", got)
	}
	if !k.closed() {
		t.Fatal("not closed after 421")
	}
	if res := <-kicked; !strings.HasPrefix(res, "200 ") {
		t.Fatalf("kick: %s", res)
	}
	kickedWhole := false
	for _, m := range r.pf.WaitDelivered(2, 10*time.Second) {
		kickedWhole = kickedWhole || strings.Contains(m, "Subject: kicked") && strings.Contains(m, "first half\nsecond half\n")
	}
	if !kickedWhole {
		t.Fatalf("kicked message not delivered whole:\n%s", r.pf.Log())
	}

	// Postfix down: a temporary failure, and the session goes on.
	r.pf.Stop()
	d := dialSMTP(t, r.p.addr("submissions"), "127.0.0.8", true)
	d.cmd("EHLO down.example", "250 ")
	for i := 0; i < 4; i++ {
		d.cmd("AUTH PLAIN "+base64PlainIR("alice", "secret"), "454 4.7.0 ")
	}
	d.cmd("QUIT", "221 ")
	mfs, _ := scrape(t, r.p)
	if v, _ := value(mfs, "portico_logins_total", l("protocol", "submission", "result", "backend_unavailable")); v != 4 {
		t.Errorf("backend_unavailable logins %v, want 4", v)
	}
}

func containsLine(lines []string, l string) bool {
	for _, x := range lines {
		if x == l {
			return true
		}
	}
	return false
}

// kick asks the admin API to end user's sessions and returns "status body".
func kick(p *portico, user, reason string) string {
	body, _ := json.Marshal(map[string]string{"user": user, "reason": reason})
	req, _ := http.NewRequest("POST", "http://"+p.d.AdminAddr().String()+"/v1/sessions/kick", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, strings.Join(strings.Fields(string(b)), ""))
}

// smtpAuthServer is an auth_http server for submission: Dovecot's users
// with their password are sent to Postfix; anything else is refused with
// an SMTP error code and Auth-Wait (the session goes on).
type smtpAuthServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	proto []string
}

func startSMTPAuthServer(t *testing.T, users map[string]string, host string, port int) *smtpAuthServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &smtpAuthServer{ln: ln}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReader(c)
				h := map[string]string{}
				for {
					line, err := br.ReadString('\n')
					if err != nil || line == "\r\n" {
						break
					}
					if k, v, ok := strings.Cut(strings.TrimRight(line, "\r\n"), ": "); ok {
						h[k] = v
					}
				}
				a.mu.Lock()
				a.proto = append(a.proto, h["Auth-Protocol"]+" "+h["Auth-Method"])
				a.mu.Unlock()
				if p, ok := users[h["Auth-User"]]; ok && p == h["Auth-Pass"] {
					fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: %s\r\nAuth-Port: %d\r\n\r\n", host, port)
					return
				}
				io.WriteString(c, "HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Error-Code: 535 5.7.8\r\nAuth-Wait: 1\r\n\r\n")
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); a.wg.Wait() })
	return a
}

// auth_http for submission (nginx's Auth-Protocol smtp): the auth server
// checks the password and names Postfix; with xclient_login Portico tells
// Postfix who logged in with XCLIENT LOGIN and sends no AUTH (nginx's
// "xclient on"), without it Portico replays the credentials. A refusal
// comes with the server's Auth-Error-Code.
func TestSubmissionAuthHTTP(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.112", ExtraConfig: postfix.DovecotSASL})
	pf := postfix.Start(t, postfix.Options{Addr: "127.0.0.112", SASLPath: postfix.DovecotSASLSocket(dc.Dir), XCLIENTHosts: []string{"127.0.0.1"}})
	as := startSMTPAuthServer(t, dc.Users, "127.0.0.112", pf.Port)
	cert, key := demoCert(t)
	yml := fmt.Sprintf(`
tls:
  certificates: [{cert: %s, key: %s}]
auth: {mode: http, url: %q, backend_forward: id}
listeners:
  - {name: xclient, protocol: submission, address: "127.0.0.1:0", tls: implicit, submission: {xclient_login: true}}
  - {name: replay, protocol: submission, address: "127.0.0.1:0", tls: implicit}
limits:
  auth_failure_delay: 100ms
backends:
  - {id: mx1, host: 127.0.0.112, submission_port: %d, forward: id}
pools:
  - {name: relay, backends: [mx1]}
routes:
  default_pool: relay
`, cert, key, "http://"+as.ln.Addr().String()+"/auth", pf.Port)
	p := startPortico(t, yml)
	send := func(listener, src, subject string) {
		t.Helper()
		s := dialSMTP(t, p.addr(listener), src, true)
		s.cmd("EHLO "+listener+".example", "250 ")
		s.cmd("AUTH PLAIN "+base64PlainIR("alice", "nope"), "535 5.7.8 Invalid login or password")
		s.cmd("AUTH PLAIN "+base64PlainIR("alice", "secret"), "235 ")
		s.cmd("MAIL FROM:<alice@example.com>", "250 ")
		s.cmd("RCPT TO:<bob@example.com>", "250 ")
		s.cmd("DATA", "354 ")
		s.cmd("Subject: "+subject+"\r\n\r\nbody\r\n.", "250 ")
		s.cmd("QUIT", "221 ")
	}
	send("xclient", "127.0.0.9", "xclient login")
	send("replay", "127.0.0.10", "replayed")
	if msgs := pf.WaitDelivered(2, 20*time.Second); len(msgs) != 2 {
		t.Fatalf("delivered %d:\n%s", len(msgs), pf.Log())
	}
	// XCLIENT LOGIN: Postfix takes the login without a SASL exchange of
	// its own (sasl_method=XCLIENT); the replayed login went through
	// Dovecot (sasl_method=PLAIN).
	if pf.WaitLog(regexp.MustCompile(`client=unknown\[127\.0\.0\.9\], sasl_method=XCLIENT, sasl_username=alice`), 5*time.Second) == nil ||
		pf.WaitLog(regexp.MustCompile(`client=unknown\[127\.0\.0\.10\], sasl_method=PLAIN, sasl_username=alice`), 5*time.Second) == nil {
		t.Fatalf("Postfix's log:\n%s", pf.Log())
	}
	as.mu.Lock()
	defer as.mu.Unlock()
	for _, pr := range as.proto {
		if pr != "smtp plain" {
			t.Fatalf("auth_http requests: %q, want Auth-Protocol smtp, Auth-Method plain", as.proto)
		}
	}
	if len(as.proto) != 4 {
		t.Fatalf("auth_http requests: %q", as.proto)
	}
}

// The README's submission configuration is valid and routes submission
// logins to the submission servers' pool.
func TestReadmeSubmissionConfiguration(t *testing.T) {
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const marker = "# Submission (587 and 465) to the Postfix servers\n"
	i := strings.Index(string(raw), marker)
	if i < 0 {
		t.Fatal("README: submission configuration not found")
	}
	yml := string(raw[i:])
	yml = yml[:strings.Index(yml, "```")]
	cfg, err := config.Parse([]byte(yml))
	if err != nil {
		t.Fatalf("README submission configuration: %v\n%s", err, yml)
	}
	var pool string
	for _, l := range cfg.Listeners {
		if l.Protocol == "submission" {
			pool = l.Pool
		}
	}
	tbl, err := routing.NewTable(cfg.RoutingSpec())
	if err != nil {
		t.Fatal(err)
	}
	r, err := tbl.Lookup(routing.Request{User: "alice@example.com", Protocol: routing.Submission, Pool: pool}, nil)
	if err != nil || r.Backend.Port(routing.Submission) != 587 {
		t.Fatalf("submission route %+v %v", r, err)
	}
}

// forward: proxy: Portico sends Postfix a PROXY v2 header
// (smtpd_upstream_proxy_protocol = haproxy) instead of XCLIENT, and says
// EHLO with the client's name; Postfix logs the client's address.
func TestSubmissionProxyHeader(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.113", ExtraConfig: postfix.DovecotSASL})
	pf := postfix.Start(t, postfix.Options{Addr: "127.0.0.113", SASLPath: postfix.DovecotSASLSocket(dc.Dir), ProxyProtocol: true})
	cert, key := demoCert(t)
	p := startPortico(t, fmt.Sprintf(`
tls:
  certificates: [{cert: %s, key: %s}]
listeners:
  - {name: submissions, protocol: submission, address: "127.0.0.1:0", tls: implicit}
backends:
  - {id: mx1, host: 127.0.0.113, submission_port: %d, forward: proxy}
pools:
  - {name: relay, backends: [mx1]}
routes:
  default_pool: relay
`, cert, key, pf.Port))
	s := dialSMTP(t, p.addr("submissions"), "127.0.0.12", true)
	s.cmd("EHLO proxied.example", "250 ")
	s.cmd("AUTH PLAIN "+base64PlainIR("alice", "secret"), "235 ")
	s.cmd("MAIL FROM:<alice@example.com>", "250 ")
	s.cmd("RCPT TO:<bob@example.com>", "250 ")
	s.cmd("DATA", "354 ")
	s.cmd("Subject: proxied\r\n\r\nbody\r\n.", "250 ")
	s.cmd("QUIT", "221 ")
	msgs := pf.WaitDelivered(1, 20*time.Second)
	if len(msgs) != 1 || !regexp.MustCompile(`Received: from proxied\.example \(\S+ \[127\.0\.0\.12\]\)`).MatchString(msgs[0]) {
		t.Fatalf("delivered %q", msgs)
	}
	if pf.WaitLog(regexp.MustCompile(`client=\S+\[127\.0\.0\.12\], sasl_method=PLAIN, sasl_username=alice`), 5*time.Second) == nil {
		t.Fatalf("Postfix's log:\n%s", pf.Log())
	}
}

package integration

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/ops/config"
)

// Bearer tokens the test's introspection endpoint knows. Each is long
// enough and distinct enough to be found in a log if it leaked there.
const (
	tokenAlice   = "ya29.a0AfH6SMAliceGoodToken-8c1f2e_0d9b~77aa"
	tokenExpired = "ya29.a0AfH6SMAliceExpiredToken-3b7d_5e1a~42cc"
)

// introspection is an RFC 7662 token-introspection endpoint, as Dovecot's
// oauth2 passdb asks it (introspection_mode = post).
type introspection struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen []string // tokens asked about
}

func newIntrospection(t *testing.T) *introspection {
	in := &introspection{}
	in.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		tok := r.PostForm.Get("token")
		in.mu.Lock()
		in.seen = append(in.seen, tok)
		in.mu.Unlock()
		resp := map[string]any{"active": false}
		if tok == tokenAlice {
			resp = map[string]any{"active": true, "username": "alice", "scope": "mail", "exp": time.Now().Add(time.Hour).Unix()}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(resp)
	}))
	t.Cleanup(in.srv.Close)
	return in
}

func (in *introspection) asked(tok string) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	n := 0
	for _, s := range in.seen {
		if s == tok {
			n++
		}
	}
	return n
}

func oauthBearerMsg(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("n,a=" + user + ",\x01host=mail.example.com\x01port=143\x01auth=Bearer " + token + "\x01\x01"))
}

func xoauth2Msg(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
}

// The error challenges Dovecot 2.3's oauth2 mechanisms send.
const (
	dovecotOAuthBearerError = `{"status":"invalid_token"}`
	dovecotXOAuth2Error     = `{"status":"401","schemes":"bearer","scope":"mail"}`
)

// OAUTHBEARER and XOAUTH2 through Portico to a real Dovecot whose oauth2
// passdb validates the tokens at the test's introspection endpoint: real
// clients (Python's imaplib with an authenticate() callable, go-imap v2
// with go-sasl's OAUTHBEARER, poplib's raw commands, a raw ManageSieve
// client, as sieve-connect has no bearer mechanism) log in with a good
// token; an expired token gets Dovecot's JSON error relayed, the exchange
// is completed, and a second attempt in the same session logs in. The
// tokens appear in no Portico log line.
func TestOAuthBearerThroughPortico(t *testing.T) {
	in := newIntrospection(t)
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.85", Sieve: true,
		OAuth2: &dovecot.OAuth2{IntrospectionURL: in.srv.URL + "/introspect"}})
	// An nginx auth_http server that knows bearer logins (nginx's
	// OAUTHBEARER/XOAUTH2 patch): it approves alice's good token without
	// Auth-Pass, so Dovecot checks the token again, and refuses others with
	// Auth-Error-SASL.
	var authMu sync.Mutex
	var authReqs []string
	authSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		authMu.Lock()
		authReqs = append(authReqs, r.Header.Get("Auth-Method")+" "+r.Header.Get("Auth-User")+" "+r.Header.Get("Auth-Pass")+" "+r.Header.Get("Auth-Protocol"))
		authMu.Unlock()
		if r.Header.Get("Auth-Method") == "oauthbearer" && r.Header.Get("Auth-User") == "alice" && r.Header.Get("Auth-Pass") == tokenAlice {
			w.Header().Set("Auth-Status", "OK")
			w.Header().Set("Auth-Server", dc.Addr)
			w.Header().Set("Auth-Port", strconv.Itoa(dc.IMAPPort))
			return
		}
		w.Header().Set("Auth-Status", "Invalid token")
		w.Header().Set("Auth-Wait", "1")
		w.Header().Set("Auth-Error-SASL", base64.StdEncoding.EncodeToString([]byte(`{"status":"invalid_token","scope":"imap"}`)))
	}))
	t.Cleanup(authSrv.Close)
	cert, key := demoCert(t)
	p, logs := startPorticoLogged(t, fmt.Sprintf(`
tls:
  certificates: [{cert: %s, key: %s}]
listeners:
  - {name: imap, protocol: imap, address: "127.0.0.1:0", oauth_mechanisms: [oauthbearer, xoauth2]}
  - {name: imaps, protocol: imap, address: "127.0.0.1:0", tls: implicit, oauth_mechanisms: [oauthbearer]}
  - {name: imap-password, protocol: imap, address: "127.0.0.1:0"}
  - {name: imap-authhttp, protocol: imap, address: "127.0.0.1:0", oauth_mechanisms: [oauthbearer], auth: {mode: http, url: "%s/auth"}}
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0", oauth_mechanisms: [oauthbearer, xoauth2]}
  - {name: sieve, protocol: sieve, address: "127.0.0.1:0", oauth_mechanisms: [oauthbearer, xoauth2]}
limits:
  auth_failure_delay: 100ms
  max_auth_failures: 5
  max_errors: 10
backends:
  - {id: dc1, host: %s, imap_port: %d, pop3_port: %d, sieve_port: %d, forward: id}
pools:
  - {name: main, backends: [dc1]}
routes:
  default_pool: main
`, cert, key, authSrv.URL, dc.Addr, dc.IMAPPort, dc.POP3Port, dc.SievePort))

	t.Run("imaplib", func(t *testing.T) {
		py, err := exec.LookPath("python3")
		if err != nil {
			t.Skip("python3 not installed")
		}
		script := fmt.Sprintf(`
import imaplib
h, port = %[1]q.rsplit(":", 1)
m = imaplib.IMAP4(h, int(port))
assert "AUTH=OAUTHBEARER" in m.capabilities and "AUTH=XOAUTH2" in m.capabilities, m.capabilities
challenges = []
def client(mech, user, token):
    def step(challenge):
        if challenge:
            # RFC 7628 3.2.3: the error challenge, answered with the dummy.
            challenges.append(challenge.decode())
            return b"\x01" if mech == "OAUTHBEARER" else b""
        if mech == "OAUTHBEARER":
            return ("n,a=%%s,\x01auth=Bearer %%s\x01\x01" %% (user, token)).encode()
        return ("user=%%s\x01auth=Bearer %%s\x01\x01" %% (user, token)).encode()
    return step
for mech in ("OAUTHBEARER", "XOAUTH2"):
    try:
        m.authenticate(mech, client(mech, "alice", %[2]q))
        raise SystemExit("expired token accepted")
    except imaplib.IMAP4.error as e:
        assert "AUTHENTICATIONFAILED" in str(e), e
# a= names the mailbox: alice's token does not open bob's.
try:
    m.authenticate("OAUTHBEARER", client("OAUTHBEARER", "bob", %[3]q))
    raise SystemExit("alice's token opened bob's mailbox")
except imaplib.IMAP4.error as e:
    assert "AUTHENTICATIONFAILED" in str(e), e
typ, data = m.authenticate("XOAUTH2", client("XOAUTH2", "alice", %[3]q))
assert typ == "OK", (typ, data)
typ, data = m.select("INBOX")
assert typ == "OK", (typ, data)
m.logout()
for c in challenges:
    print("challenge", c)
m = imaplib.IMAP4(h, int(%[4]q.rsplit(":", 1)[1]))
assert "AUTH=OAUTHBEARER" not in m.capabilities and "AUTH=XOAUTH2" not in m.capabilities, m.capabilities
m.logout()
print("ok")
`, p.addr("imap"), tokenExpired, tokenAlice, p.addr("imap-password"))
		out, err := exec.Command(py, "-c", script).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "\nok") {
			t.Fatalf("python: %v\n%s", err, out)
		}
		want := "challenge " + dovecotOAuthBearerError + "\nchallenge " + dovecotXOAuth2Error + "\nchallenge " + dovecotOAuthBearerError + "\n"
		if !strings.Contains(string(out), want) {
			t.Errorf("relayed challenges:\n%s\nwant\n%s", out, want)
		}
	})

	t.Run("go-imap", func(t *testing.T) {
		// Over implicit TLS; go-sasl's client ends the exchange at the error
		// challenge, with the server's JSON status as its error.
		c := dialIMAP(t, p, "imaps", nil)
		err := c.Authenticate(sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: "alice", Token: tokenExpired}))
		var oe *sasl.OAuthBearerError
		if !errors.As(err, &oe) || oe.Status != "invalid_token" {
			t.Fatalf("expired token: %v", err)
		}
		c = dialIMAP(t, p, "imaps", nil)
		if err := c.Authenticate(sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: "alice", Token: tokenAlice, Host: "mail.example.com", Port: 993})); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
		_ = c.Logout().Wait()
	})

	t.Run("poplib", func(t *testing.T) {
		py, err := exec.LookPath("python3")
		if err != nil {
			t.Skip("python3 not installed")
		}
		script := fmt.Sprintf(`
import poplib, base64
h, port = %[1]q.rsplit(":", 1)
p = poplib.POP3(h, int(port))
caps = p.capa()
assert caps["SASL"] == ["PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2"], caps
p._putcmd("AUTH OAUTHBEARER " + %[2]q)
line, _ = p._getline()
assert line.startswith(b"+ "), line
print("challenge", base64.b64decode(line[2:]).decode())
p._putcmd("AQ==")
try:
    p._getresp()
    raise SystemExit("expired token accepted")
except poplib.error_proto as e:
    assert b"[AUTH]" in e.args[0], e
p._putcmd("AUTH XOAUTH2")
line, _ = p._getline()
assert line == b"+ ", line
p._putcmd(%[3]q)
print(p._getresp())
print("stat", p.stat())
p.quit()
print("ok")
`, p.addr("pop3"), oauthBearerMsg("alice", tokenExpired), xoauth2Msg("alice", tokenAlice))
		out, err := exec.Command(py, "-c", script).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "\nok") {
			t.Fatalf("python: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "challenge "+dovecotOAuthBearerError+"\n") {
			t.Errorf("relayed challenge:\n%s", out)
		}
	})

	t.Run("managesieve", func(t *testing.T) {
		conn, err := net.DialTimeout("tcp", p.addr("sieve"), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		br := bufio.NewReader(conn)
		line := func() string {
			t.Helper()
			l, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("read: %v (%q)", err, l)
			}
			return strings.TrimRight(l, "\r\n")
		}
		send := func(s string) {
			t.Helper()
			if _, err := conn.Write([]byte(s + "\r\n")); err != nil {
				t.Fatal(err)
			}
		}
		var caps []string
		for l := line(); !strings.HasPrefix(l, "OK"); l = line() {
			caps = append(caps, l)
		}
		if !strings.Contains(strings.Join(caps, "\n"), `"SASL" "PLAIN LOGIN OAUTHBEARER XOAUTH2"`) {
			t.Fatalf("capabilities %q", caps)
		}
		send(`AUTHENTICATE "XOAUTH2" "` + xoauth2Msg("alice", tokenExpired) + `"`)
		ch := line()
		js, err := base64.StdEncoding.DecodeString(strings.Trim(ch, `"`))
		if err != nil || string(js) != dovecotXOAuth2Error {
			t.Fatalf("challenge %q (%q)", ch, js)
		}
		send(`""`)
		if l := line(); !strings.HasPrefix(l, "NO ") {
			t.Fatalf("after the dummy response: %q", l)
		}
		msg := oauthBearerMsg("alice", tokenAlice)
		send(`AUTHENTICATE "OAUTHBEARER" {` + strconv.Itoa(len(msg)) + "+}\r\n" + msg)
		if l := line(); !strings.HasPrefix(l, "OK") {
			t.Fatalf("good token: %q", l)
		}
		// Now Pigeonhole's own session.
		send("LISTSCRIPTS")
		if l := line(); !strings.HasPrefix(l, "OK") {
			t.Fatalf("LISTSCRIPTS: %q", l)
		}
		send("LOGOUT")
		line()
	})

	t.Run("auth_http", func(t *testing.T) {
		l := dialLine(t, p.addr("imap-authhttp"), false)
		l.line()
		l.send("b1 AUTHENTICATE OAUTHBEARER " + oauthBearerMsg("alice", tokenExpired) + "\r\n")
		ch := l.line()
		js, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(strings.TrimPrefix(ch, "+ ")))
		if string(js) != `{"status":"invalid_token","scope":"imap"}` {
			t.Fatalf("challenge %q", ch)
		}
		l.send("AQ==\r\n")
		if got := l.until("b1 "); !strings.HasPrefix(got, "b1 NO Invalid token") {
			t.Fatalf("refusal %q", got)
		}
		l.send("b2 AUTHENTICATE OAUTHBEARER " + oauthBearerMsg("alice", tokenAlice) + "\r\n")
		if got := l.until("b2 "); !strings.HasPrefix(got, "b2 OK") {
			t.Fatalf("good token %q", got)
		}
		authMu.Lock()
		defer authMu.Unlock()
		want := []string{"oauthbearer alice " + tokenExpired + " imap", "oauthbearer alice " + tokenAlice + " imap"}
		if strings.Join(authReqs, "\n") != strings.Join(want, "\n") {
			t.Errorf("auth_http requests %q, want %q", authReqs, want)
		}
	})

	t.Run("abuse", func(t *testing.T) {
		// Hostile bearer messages are refused by Portico without reaching
		// Dovecot, and the session survives them.
		l := dialLine(t, p.addr("imap"), false)
		l.line()
		bad := func(tag, cmd, want string) {
			t.Helper()
			l.send(tag + " " + cmd + "\r\n")
			if got := l.until(tag + " "); !strings.HasPrefix(got, tag+" "+want) {
				t.Fatalf("%s: got %q, want %q", tag, got, want)
			}
		}
		b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
		bad("a1", "AUTHENTICATE OAUTHBEARER "+oauthBearerMsg("alice", strings.Repeat("A", 64<<10)), "BAD [TOOBIG]")
		bad("a2", "AUTHENTICATE OAUTHBEARER "+b64("n,,\x01auth=Bearer "+tokenAlice+"\x01\x01"), "BAD The bearer token login must name the user")
		bad("a3", "AUTHENTICATE OAUTHBEARER "+b64("p=tls-server-end-point,a=alice,\x01auth=Bearer "+tokenAlice+"\x01\x01"), "BAD Invalid authentication data.")
		bad("a4", "AUTHENTICATE OAUTHBEARER "+b64("n,a=alice\x00bob,\x01auth=Bearer "+tokenAlice+"\x01\x01"), "BAD Invalid authentication data.")
		bad("a5", "AUTHENTICATE XOAUTH2 "+b64("user=alice\x01auth=Bearer "+tokenAlice+"\x01\x01user=bob\x01\x01"), "BAD Invalid authentication data.")
		l.send("a6 AUTHENTICATE XOAUTH2\r\n\x00\xff\x01garbage\r\na7 NOOP\r\n")
		if got := l.until("a6 "); !strings.HasPrefix(got, "a6 BAD Invalid base64 data.") {
			t.Fatalf("pipelined garbage: %q", got)
		}
		if got := l.until("a7 "); !strings.HasPrefix(got, "a7 OK") {
			t.Fatalf("command after the garbage: %q", got)
		}
		bad("a8", "AUTHENTICATE OAUTHBEARER "+oauthBearerMsg("alice", tokenAlice), "OK")
	})

	// Dovecot checked the tokens (they reached the introspection
	// endpoint), and logged the logins with the client's address.
	if in.asked(tokenAlice) < 4 || in.asked(tokenExpired) < 4 {
		t.Errorf("introspection asked about the good token %d times, the expired one %d times", in.asked(tokenAlice), in.asked(tokenExpired))
	}
	dc.WaitLogins("alice", 4, 5*time.Second)
	out := logs.String()
	for _, secret := range []string{tokenAlice, tokenExpired, oauthBearerMsg("alice", tokenAlice), xoauth2Msg("alice", tokenAlice),
		base64.StdEncoding.EncodeToString([]byte(tokenAlice))} {
		if strings.Contains(out, secret) {
			t.Errorf("a token is in Portico's log:\n%s", out)
		}
	}
	if !strings.Contains(out, `"mechanism":"OAUTHBEARER"`) || !strings.Contains(out, `"mechanism":"XOAUTH2"`) {
		t.Errorf("login lines without the mechanism:\n%s", out)
	}

	// The README's Dovecot settings are the ones this test ran.
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	conf, _ := os.ReadFile(dc.ConfigFile)
	ext, _ := os.ReadFile(filepath.Join(dc.Dir, "dovecot-oauth2.conf.ext"))
	for _, l := range []string{"auth_mechanisms = plain login oauthbearer xoauth2", "driver = oauth2", "mechanisms = xoauth2 oauthbearer",
		"mechanisms = plain login", "introspection_mode = post", "username_attribute = username", "active_attribute = active", "active_value = true"} {
		if !strings.Contains(string(readme), "\n"+l+"\n") && !strings.Contains(string(readme), "  "+l) {
			t.Errorf("README lacks %q", l)
		}
		if !strings.Contains(string(conf)+string(ext), l+"\n") {
			t.Errorf("the test's Dovecot configuration lacks %q", l)
		}
	}
}

// The README's OAuth configuration is valid and offers both mechanisms on
// its three listeners.
func TestReadmeOAuthConfiguration(t *testing.T) {
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const marker = "# OAuth bearer tokens beside passwords, on the TLS listeners\n"
	i := strings.Index(string(raw), marker)
	if i < 0 {
		t.Fatal("README: OAuth configuration not found")
	}
	yml := string(raw[i:])
	yml = yml[:strings.Index(yml, "```")]
	cert, key := demoCert(t)
	yml = strings.NewReplacer("/etc/portico/mail.pem", cert, "/etc/portico/mail.key", key).Replace(yml)
	cfg, err := config.Parse([]byte(yml))
	if err != nil {
		t.Fatalf("README OAuth configuration: %v\n%s", err, yml)
	}
	nc := cfg.NodeConfig()
	if len(nc.Listeners) != 3 {
		t.Fatalf("listeners %+v", nc.Listeners)
	}
	for _, l := range nc.Listeners {
		if strings.Join(l.BearerMechanisms, " ") != "OAUTHBEARER XOAUTH2" {
			t.Errorf("listener %s offers %q", l.Name, l.BearerMechanisms)
		}
	}
}

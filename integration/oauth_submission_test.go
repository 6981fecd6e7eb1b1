package integration

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/postfix"
)

// OAUTHBEARER and XOAUTH2 over submission: Python's smtplib through
// Portico to a real Postfix whose SASL goes to Dovecot's auth socket,
// where the oauth2 passdb asks the test's introspection endpoint. An
// expired token gets Dovecot's JSON relayed as a 334 challenge, then 535;
// the session goes on, a good token logs in, and the message is queued
// with the client's address and login.
func TestOAuthBearerSubmission(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	in := newIntrospection(t)
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.86",
		OAuth2:      &dovecot.OAuth2{IntrospectionURL: in.srv.URL + "/introspect"},
		ExtraConfig: "service auth {\n  unix_listener postfix-auth {\n    mode = 0666\n  }\n}\n"})
	pf := postfix.Start(t, postfix.Options{Addr: "127.0.0.86", SASLPath: filepath.Join(dc.Dir, "run", "postfix-auth"),
		XCLIENTHosts: []string{"127.0.0.0/8"}})
	_, port, _ := strings.Cut(pf.Addr, ":")
	p, logs := startPorticoLogged(t, fmt.Sprintf(`
listeners:
  - {name: submission, protocol: submission, address: "127.0.0.1:0", pool: relay, oauth_mechanisms: [oauthbearer, xoauth2]}
limits:
  auth_failure_delay: 100ms
backends:
  - {id: mx1, host: 127.0.0.86, submission_port: %s, forward: id}
pools:
  - {name: relay, backends: [mx1]}
routes:
  default_pool: relay
`, port))
	script := fmt.Sprintf(`
import smtplib, base64
h, port = %[1]q.rsplit(":", 1)
s = smtplib.SMTP(h, int(port))
s.ehlo("client.example")
assert "OAUTHBEARER" in s.esmtp_features["auth"] and "XOAUTH2" in s.esmtp_features["auth"], s.esmtp_features
challenges = []
def client(mech, user, token):
    def step(challenge=None):
        if challenge is None:
            if mech == "OAUTHBEARER":
                return "n,a=%%s,\x01auth=Bearer %%s\x01\x01" %% (user, token)
            return "user=%%s\x01auth=Bearer %%s\x01\x01" %% (user, token)
        challenges.append(challenge.decode())
        return "\x01" if mech == "OAUTHBEARER" else ""
    return step
for mech in ("OAUTHBEARER", "XOAUTH2"):
    try:
        s.auth(mech, client(mech, "alice", %[2]q))
        raise SystemExit("expired token accepted")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e
code, resp = s.auth("XOAUTH2", client("XOAUTH2", "alice", %[3]q))
assert code == 235, (code, resp)
s.sendmail("alice@example.com", ["bob@example.com"], "Subject: bearer via portico\r\n\r\nhello\r\n")
s.quit()
for c in challenges:
    print("challenge", c)
print("ok")
`, p.addr("submission"), tokenExpired, tokenAlice)
	out, err := exec.Command(py, "-c", script).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "\nok") {
		t.Fatalf("python: %v\n%s", err, out)
	}
	if want := "challenge " + dovecotOAuthBearerError + "\nchallenge " + dovecotXOAuth2Error + "\n"; !strings.Contains(string(out), want) {
		t.Errorf("relayed challenges:\n%s\nwant\n%s", out, want)
	}
	msgs := pf.WaitDelivered(1, 10*time.Second)
	if len(msgs) != 1 || !strings.Contains(msgs[0], "Subject: bearer via portico") || !strings.Contains(msgs[0], "(Authenticated sender: alice)") {
		t.Fatalf("delivered %q", msgs)
	}
	if pf.WaitLog(regexp.MustCompile(`sasl_method=XOAUTH2, sasl_username=alice`), 5*time.Second) == nil {
		t.Errorf("postfix log lacks the XOAUTH2 login")
	}
	if in.asked(tokenAlice) < 1 || in.asked(tokenExpired) < 2 {
		t.Errorf("introspection asked %d/%d times", in.asked(tokenAlice), in.asked(tokenExpired))
	}
	for _, secret := range []string{tokenAlice, tokenExpired} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("a token is in Portico's log:\n%s", logs.String())
		}
	}
}

package imap

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

const (
	bearerErrorJSON = `{"status":"invalid_token","schemes":"bearer","scope":"mail"}`
	goodToken       = "ya29.GoodToken-for_alice~"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func oauthbearer(user, token string) string {
	return b64("n,a=" + user + ",\x01host=imap.example.com\x01port=143\x01auth=Bearer " + token + "\x01\x01")
}

func xoauth2(user, token string) string {
	return b64("user=" + user + "\x01auth=Bearer " + token + "\x01\x01")
}

// bearerBackend is an IMAP server that validates bearer tokens as
// Dovecot's oauth2 passdb does: a good token for the named user logs in;
// anything else gets the error challenge, and after the client's
// response, NO.
type bearerBackend struct {
	ln     net.Listener
	saslIR bool
	mu     sync.Mutex
	lines  []string
	wg     sync.WaitGroup
}

func newBearerBackend(t *testing.T, saslIR bool) *bearerBackend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &bearerBackend{ln: ln, saslIR: saslIR}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(func() { ln.Close(); b.wg.Wait() })
	return b
}

func (b *bearerBackend) received() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.lines, "\n")
}

func (b *bearerBackend) serve() {
	defer b.wg.Done()
	caps := "IMAP4rev1 ID AUTH=PLAIN AUTH=OAUTHBEARER AUTH=XOAUTH2"
	if b.saslIR {
		caps += " SASL-IR"
	}
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer c.Close()
			br := bufio.NewReader(c)
			io.WriteString(c, "* OK [CAPABILITY "+caps+"] fake\r\n")
			read := func() (string, bool) {
				line, err := br.ReadString('\n')
				if err != nil {
					return "", false
				}
				line = strings.TrimRight(line, "\r\n")
				b.mu.Lock()
				b.lines = append(b.lines, line)
				b.mu.Unlock()
				return line, true
			}
			for {
				line, ok := read()
				if !ok {
					return
				}
				f := strings.Fields(line)
				if len(f) < 2 {
					continue
				}
				switch strings.ToUpper(f[1]) {
				case "ID":
					io.WriteString(c, "* ID NIL\r\n"+f[0]+" OK ID done\r\n")
				case "AUTHENTICATE":
					mech := strings.ToUpper(f[2])
					ir := ""
					if len(f) == 4 {
						ir = f[3]
					} else {
						io.WriteString(c, "+ \r\n")
						if ir, ok = read(); !ok {
							return
						}
					}
					msg, _ := base64.StdEncoding.DecodeString(ir)
					bm, err := session.ParseBearer(mech, msg)
					if err == nil && bm.Token == goodToken && bm.User == "alice" {
						io.WriteString(c, f[0]+" OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
						continue
					}
					io.WriteString(c, "+ "+b64(bearerErrorJSON)+"\r\n")
					resp, ok := read()
					if !ok {
						return
					}
					if (mech == "OAUTHBEARER" && resp != "AQ==") || (mech == "XOAUTH2" && resp != "") {
						io.WriteString(c, f[0]+" BAD unexpected dummy response\r\n")
						continue
					}
					io.WriteString(c, f[0]+" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
				default:
					io.WriteString(c, f[0]+" BAD what\r\n")
				}
			}
		}()
	}
}

func bearerListener(mechs ...string) *session.Listener {
	l := listener(routing.TLSNone, nil, true)
	l.BearerMechanisms = mechs
	l.Limits.MaxAuthFailures = 10
	return l
}

// The mechanisms are advertised and accepted only where the listener
// enables them.
func TestBearerAdvertised(t *testing.T) {
	fb := newBearerBackend(t, true)
	r := newRig(t, fb.ln.Addr().(*net.TCPAddr).Port, listener(routing.TLSNone, nil, true))
	c, _ := net.Dial("tcp", r.ln.Addr().String())
	defer c.Close()
	runDialog(t, c, []step{
		{"a CAPABILITY\r\n", "* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN ID LITERAL-\r\na OK"},
		{"b AUTHENTICATE OAUTHBEARER " + oauthbearer("alice", goodToken) + "\r\n", "b NO Unsupported authentication mechanism."},
		{"c AUTHENTICATE XOAUTH2\r\n", "c NO Unsupported authentication mechanism."},
	})

	r2 := newRig(t, fb.ln.Addr().(*net.TCPAddr).Port, bearerListener(session.BearerMechanisms...))
	c2, _ := net.Dial("tcp", r2.ln.Addr().String())
	defer c2.Close()
	runDialog(t, c2, []step{
		{"a CAPABILITY\r\n", "* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN AUTH=OAUTHBEARER AUTH=XOAUTH2 ID LITERAL-\r\na OK"},
	})
	// Not before TLS on a listener that refuses plaintext logins: the
	// token is as good as a password.
	lis := bearerListener(session.MechOAuthBearer)
	lis.AllowPlaintextAuth = false
	r3 := newRig(t, fb.ln.Addr().(*net.TCPAddr).Port, lis)
	c3, _ := net.Dial("tcp", r3.ln.Addr().String())
	defer c3.Close()
	runDialog(t, c3, []step{
		{"a CAPABILITY\r\n", "* CAPABILITY IMAP4rev1 LOGINDISABLED ID LITERAL-\r\na OK"},
		{"b AUTHENTICATE OAUTHBEARER " + oauthbearer("alice", goodToken) + "\r\n", "b NO [PRIVACYREQUIRED]"},
	})
}

// A good token logs in with the same mechanism and bytes at the backend,
// with and without SASL-IR on either side.
func TestBearerLogin(t *testing.T) {
	for _, tc := range []struct {
		name    string
		backIR  bool
		mech    string
		message string
		initial bool
	}{
		{"oauthbearer-ir", true, "OAUTHBEARER", oauthbearer("alice", goodToken), true},
		{"oauthbearer-continuation", true, "OAUTHBEARER", oauthbearer("alice", goodToken), false},
		{"xoauth2-ir-backend-without-sasl-ir", false, "XOAUTH2", xoauth2("alice", goodToken), true},
		{"xoauth2-continuation", true, "xoauth2", xoauth2("alice", goodToken), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fb := newBearerBackend(t, tc.backIR)
			var logs bytes.Buffer
			var logMu sync.Mutex
			r := newRigEnv(t, fb.ln.Addr().(*net.TCPAddr).Port, bearerListener(session.BearerMechanisms...), func(e *session.Env) {
				e.Log = slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, nil))
			})
			c, _ := net.Dial("tcp", r.ln.Addr().String())
			defer c.Close()
			steps := []step{{"a AUTHENTICATE " + tc.mech + " " + tc.message + "\r\n", "a OK [CAPABILITY IMAP4rev1 IDLE] Logged in"}}
			if !tc.initial {
				steps = []step{
					{"a AUTHENTICATE " + tc.mech + "\r\n", "+ \r\n"},
					{tc.message + "\r\n", "a OK [CAPABILITY IMAP4rev1 IDLE] Logged in"},
				}
			}
			runDialog(t, c, steps)
			h := <-r.results
			if h == nil || h.User != "alice" {
				t.Fatalf("handoff %+v", h)
			}
			got := fb.received()
			want := "P4 AUTHENTICATE " + strings.ToUpper(tc.mech) + " " + tc.message
			if !tc.backIR {
				want = "P4 AUTHENTICATE " + strings.ToUpper(tc.mech) + "\n" + tc.message
			}
			if !strings.Contains(got, want) {
				t.Errorf("backend got %q, want %q", got, want)
			}
			logMu.Lock()
			defer logMu.Unlock()
			if strings.Contains(logs.String(), goodToken) || strings.Contains(logs.String(), tc.message) {
				t.Errorf("token in the log: %s", logs.String())
			}
			if !strings.Contains(logs.String(), "mechanism="+strings.ToUpper(tc.mech)) {
				t.Errorf("login line without the mechanism: %s", logs.String())
			}
		})
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// A refused token: the backend's error challenge reaches the client, the
// client's dummy response completes the exchange with NO, and the session
// goes on: a second attempt with a good token logs in. A client that
// answers the challenge with "*" or garbage gets BAD instead of the NO.
func TestBearerRefusedThenRetry(t *testing.T) {
	fb := newBearerBackend(t, true)
	r := newRig(t, fb.ln.Addr().(*net.TCPAddr).Port, bearerListener(session.BearerMechanisms...))
	c, _ := net.Dial("tcp", r.ln.Addr().String())
	defer c.Close()
	challenge := "+ " + b64(bearerErrorJSON) + "\r\n"
	runDialog(t, c, []step{
		{"a AUTHENTICATE OAUTHBEARER " + oauthbearer("alice", "expired") + "\r\n", challenge},
		{"AQ==\r\n", "a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"},
		{"b AUTHENTICATE XOAUTH2 " + xoauth2("alice", "expired") + "\r\n", challenge},
		{"\r\n", "b NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"},
		{"c AUTHENTICATE OAUTHBEARER " + oauthbearer("alice", "expired") + "\r\n", challenge},
		{"*\r\n", "c BAD Authentication cancelled.\r\n"},
		{"d AUTHENTICATE OAUTHBEARER " + oauthbearer("alice", "expired") + "\r\n", challenge},
		{"not base64!\r\n", "d BAD Invalid base64 data.\r\n"},
		// a= names the mailbox: a token of alice's for bob is bob's login,
		// which bob's backend refuses.
		{"e AUTHENTICATE OAUTHBEARER " + oauthbearer("bob", goodToken) + "\r\n", challenge},
		{"AQ==\r\n", "e NO [AUTHENTICATIONFAILED]"},
		{"f AUTHENTICATE OAUTHBEARER " + oauthbearer("alice", goodToken) + "\r\n", "f OK [CAPABILITY IMAP4rev1 IDLE] Logged in"},
	})
	if h := <-r.results; h == nil || h.User != "alice" {
		t.Fatalf("handoff %+v", h)
	}
	// The proxy answered each backend challenge with the mechanism's dummy
	// response itself.
	got := fb.received()
	if strings.Count(got, "\nAQ==\n") != 4 || !strings.Contains(got, xoauth2("alice", "expired")+"\n\n") {
		t.Errorf("backend dialogue %q", got)
	}
}

// Hostile and malformed bearer messages: protocol errors (BAD, counted
// toward max_errors), never a backend connection, never a crash.
func TestBearerMalformed(t *testing.T) {
	fb := newBearerBackend(t, true)
	lis := bearerListener(session.BearerMechanisms...)
	lis.Limits.MaxErrors = 20
	lis.Limits.MaxLiteral = 4096
	r := newRig(t, fb.ln.Addr().(*net.TCPAddr).Port, lis)
	c, _ := net.Dial("tcp", r.ln.Addr().String())
	defer c.Close()
	runDialog(t, c, []step{
		{"a AUTHENTICATE OAUTHBEARER " + b64("n,,\x01auth=Bearer "+goodToken+"\x01\x01") + "\r\n", "a BAD The bearer token login must name the user"},
		{"b AUTHENTICATE XOAUTH2 " + b64("auth=Bearer "+goodToken+"\x01\x01") + "\r\n", "b BAD The bearer token login must name the user"},
		{"c AUTHENTICATE OAUTHBEARER " + b64("p=tls-unique,a=alice,\x01auth=Bearer t\x01\x01") + "\r\n", "c BAD Invalid authentication data."},
		{"d AUTHENTICATE OAUTHBEARER " + b64("n,a=al\x00ice,\x01auth=Bearer t\x01\x01") + "\r\n", "d BAD Invalid authentication data."},
		{"e AUTHENTICATE OAUTHBEARER " + b64("n,a=al\r\nice,\x01auth=Bearer t\x01\x01") + "\r\n", "e BAD Invalid authentication data."},
		{"f AUTHENTICATE XOAUTH2 " + b64("user=alice\x01auth=Bearer\x01\x01") + "\r\n", "f BAD Invalid authentication data."},
		{"g AUTHENTICATE OAUTHBEARER =\r\n", "g BAD Invalid authentication data."},
		{"h AUTHENTICATE OAUTHBEARER ###\r\n", "h BAD Invalid base64 data."},
		// A giant token: the line limit, then the session goes on.
		{"i AUTHENTICATE OAUTHBEARER " + oauthbearer("alice", strings.Repeat("A", 20000)) + "\r\n", "BAD [TOOBIG]"},
		// Under the line limit, over the credentials limit.
		{"j AUTHENTICATE XOAUTH2\r\n", "+ \r\n"},
		{xoauth2("alice", strings.Repeat("A", 4100)) + "\r\n", "j BAD Credentials too long."},
		// Pipelined garbage after a continuation request is read as the
		// response, then as commands.
		{"k AUTHENTICATE OAUTHBEARER\r\n\x01\x02garbage\r\nl NOOP\r\n", "l OK"},
	})
	if got := fb.received(); got != "" {
		t.Errorf("the backend was contacted: %q", got)
	}
}

// The throttle counts a bearer login by the user it names and the
// client's network, and a blocked one never reaches the backend.
func TestBearerThrottle(t *testing.T) {
	fb := newBearerBackend(t, true)
	lis := bearerListener(session.BearerMechanisms...)
	th := &fakeThrottle{block: map[string]bool{"mallory": true}}
	r := newRigEnv(t, fb.ln.Addr().(*net.TCPAddr).Port, lis, func(e *session.Env) { e.Throttle = th })
	c, _ := net.Dial("tcp", r.ln.Addr().String())
	defer c.Close()
	runDialog(t, c, []step{
		{"a AUTHENTICATE XOAUTH2 " + xoauth2("mallory", goodToken) + "\r\n", "a NO [UNAVAILABLE] Too many failed logins"},
		{"b AUTHENTICATE OAUTHBEARER " + oauthbearer("alice", "bad") + "\r\n", "+ "},
		{"AQ==\r\n", "b NO [AUTHENTICATIONFAILED]"},
		{"c AUTHENTICATE OAUTHBEARER " + oauthbearer("alice", goodToken) + "\r\n", "c OK"},
	})
	<-r.results
	th.mu.Lock()
	defer th.mu.Unlock()
	if strings.Join(th.failed, ",") != "198.51.100.7 alice" || strings.Join(th.succeeded, ",") != "198.51.100.7 alice" {
		t.Errorf("failed %v succeeded %v", th.failed, th.succeeded)
	}
	if strings.Contains(fb.received(), "mallory") || strings.Contains(fb.received(), xoauth2("mallory", goodToken)) {
		t.Error("blocked login reached the backend")
	}
}

// An auth_http refusal with Auth-Error-SASL (Refusal.Challenge) is relayed
// like a backend's challenge, after the refusal's wait.
func TestBearerRefusalChallenge(t *testing.T) {
	lis := bearerListener(session.BearerMechanisms...)
	lis.Director = scripted{{Kind: session.RefuseAuth, Reply: "Invalid token", Wait: 100 * time.Millisecond, Challenge: []byte(bearerErrorJSON)}}
	r := newRig(t, 1, lis)
	c, _ := net.Dial("tcp", r.ln.Addr().String())
	defer c.Close()
	start := time.Now()
	runDialog(t, c, []step{
		{"a AUTHENTICATE OAUTHBEARER " + oauthbearer("alice", "x") + "\r\n", "+ " + b64(bearerErrorJSON) + "\r\n"},
		{"AQ==\r\n", "a NO Invalid token\r\n"},
		// A password login gets no challenge.
		{"b LOGIN alice x\r\n", "b NO Invalid token\r\n"},
	})
	if time.Since(start) < 200*time.Millisecond {
		t.Error("Auth-Wait not applied")
	}
}

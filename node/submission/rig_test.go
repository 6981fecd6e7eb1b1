package submission

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// ---- fake backend ----

// fakeBackend is a small scripted submission server: EHLO, STARTTLS,
// XCLIENT (when announced), AUTH PLAIN, and after login MAIL, RCPT, DATA,
// BDAT, RSET, NOOP, QUIT with the messages kept.
type fakeBackend struct {
	*testrig.Backend
	Ext       []string          // EHLO extensions; default PIPELINING, 8BITMIME, CHUNKING, AUTH PLAIN LOGIN
	TLS       *tls.Config       // offer STARTTLS
	XCLIENT   string            // if set, announce "XCLIENT <this>"
	Users     map[string]string // default alice/secret
	AuthReply string            // if set, the answer to every AUTH
	// Tokens maps bearer tokens to their user: AUTH OAUTHBEARER and
	// XOAUTH2 log in with a token of the user the message names, anything
	// else gets the error challenge, then 535.
	Tokens   map[string]string
	Greeting string // default "220 fake ESMTP"

	mu   sync.Mutex
	msgs []string // message contents received (DATA, BDAT)
}

func startBackend(t *testing.T, fb *fakeBackend) *fakeBackend {
	t.Helper()
	if fb.Ext == nil {
		fb.Ext = []string{"PIPELINING", "8BITMIME", "CHUNKING", "AUTH PLAIN LOGIN"}
	}
	if fb.Users == nil {
		fb.Users = map[string]string{"alice": "secret"}
	}
	if fb.Greeting == "" {
		fb.Greeting = "220 fake ESMTP"
	}
	fb.Backend = testrig.StartBackend(t, fb.serve)
	return fb
}

func (fb *fakeBackend) messages() []string {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return append([]string(nil), fb.msgs...)
}

func (fb *fakeBackend) serve(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	var conn net.Conn = c
	br := bufio.NewReader(conn)
	bw := bufio.NewWriter(conn)
	send := func(s string) { _, _ = bw.WriteString(s + "\r\n") }
	flush := func() { _ = bw.Flush() }
	isTLS, authed, ok := false, false, false
	var chunks strings.Builder
	ehlo := func(name string) {
		lines := []string{"fake greets " + name}
		lines = append(lines, fb.Ext...)
		if fb.TLS != nil && !isTLS {
			lines = append(lines, "STARTTLS")
		}
		if fb.XCLIENT != "" {
			lines = append(lines, "XCLIENT "+fb.XCLIENT)
		}
		for i, l := range lines {
			sep := "-"
			if i == len(lines)-1 {
				sep = " "
			}
			send("250" + sep + l)
		}
	}
	send(fb.Greeting)
	flush()
	for {
		if br.Buffered() == 0 {
			flush()
		}
		l, err := br.ReadString('\n')
		if err != nil {
			flush()
			return
		}
		l = strings.TrimRight(l, "\r\n")
		if isTLS {
			fb.Record("tls: " + l)
		} else {
			fb.Record(l)
		}
		verb, arg, _ := strings.Cut(l, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			ehlo(arg)
		case "STARTTLS":
			send("220 2.0.0 Ready to start TLS")
			flush()
			tc := tls.Server(c, fb.TLS)
			if tc.Handshake() != nil {
				return
			}
			conn, isTLS = tc, true
			br, bw = bufio.NewReader(tc), bufio.NewWriter(tc)
		case "XCLIENT":
			if fb.XCLIENT == "" {
				send("550 5.7.0 Error: insufficient authorization")
				continue
			}
			if strings.Contains(arg, "LOGIN=") {
				authed = true
			}
			send(fb.Greeting)
		case "AUTH":
			if fb.AuthReply != "" {
				send(fb.AuthReply)
				continue
			}
			mech, ir, _ := strings.Cut(arg, " ")
			if mech == "OAUTHBEARER" || mech == "XOAUTH2" {
				readLine := func() (string, bool) {
					flush()
					l, err := br.ReadString('\n')
					if err != nil {
						return "", false
					}
					l = strings.TrimRight(l, "\r\n")
					fb.Record(l)
					return l, true
				}
				if ir == "" {
					send("334 ")
					if ir, ok = readLine(); !ok {
						return
					}
				}
				dec, _ := base64.StdEncoding.DecodeString(ir)
				if m, err := session.ParseBearer(mech, dec); err == nil && fb.Tokens[m.Token] == m.User {
					authed = true
					send("235 2.7.0 Authentication successful")
					continue
				}
				send("334 " + base64.StdEncoding.EncodeToString([]byte(`{"status":"invalid_token"}`)))
				if _, ok = readLine(); !ok {
					return
				}
				send("535 5.7.8 Error: authentication failed: invalid token")
				continue
			}
			dec, err := base64.StdEncoding.DecodeString(ir)
			parts := strings.Split(string(dec), "\x00")
			if mech != "PLAIN" || err != nil || len(parts) != 3 || parts[1] == "" || fb.Users[parts[1]] != parts[2] {
				send("535 5.7.8 Error: authentication failed: bad credentials")
				continue
			}
			authed = true
			send("235 2.7.0 Authentication successful")
		case "MAIL":
			if !authed {
				send("530 5.7.0 Authentication required")
				continue
			}
			send("250 2.1.0 Ok")
		case "RCPT":
			send("250 2.1.5 Ok")
		case "DATA":
			send("354 End data with <CR><LF>.<CR><LF>")
			flush()
			var msg strings.Builder
			for {
				dl, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if dl == ".\r\n" {
					break
				}
				msg.WriteString(strings.TrimPrefix(dl, "."))
			}
			fb.mu.Lock()
			fb.msgs = append(fb.msgs, msg.String())
			fb.mu.Unlock()
			send("250 2.0.0 Ok: queued")
		case "BDAT":
			a := strings.Fields(arg)
			n, _ := strconv.Atoi(a[0])
			buf := make([]byte, n)
			if _, err := io.ReadFull(br, buf); err != nil {
				return
			}
			chunks.Write(buf)
			if len(a) > 1 {
				fb.mu.Lock()
				fb.msgs = append(fb.msgs, chunks.String())
				fb.mu.Unlock()
				chunks.Reset()
				send("250 2.0.0 Ok: queued")
			} else {
				send(fmt.Sprintf("250 2.0.0 Ok: %d bytes", n))
			}
		case "RSET", "NOOP":
			send("250 2.0.0 Ok")
		case "QUIT":
			send("221 2.0.0 Bye")
			flush()
			return
		default:
			send("502 5.5.2 Error: command not recognized")
		}
	}
}

// ---- proxy rig ----

// rig runs the handler on a TCP listener (testrig.Proxy).
type rig = testrig.Proxy

func testListener(mode routing.TLSMode, cfg *tls.Config, allowPlain bool) *session.Listener {
	lis := testrig.Listener(routing.Submission, mode, cfg, allowPlain)
	lis.Limits.MaxLine = 1024
	lis.Limits.MaxLiteral = 1024
	return lis
}

func backendAt(port int, forward routing.ForwardMode) routing.Backend {
	return routing.Backend{ID: "b1", Host: "127.0.0.1", SubmissionPort: port, Forward: forward}
}

func newRig(t *testing.T, lis *session.Listener, backends ...routing.Backend) *rig {
	t.Helper()
	return testrig.NewProxy(t, lis, New(Options{Hostname: "proxy.example"}), netip.MustParseAddrPort("192.0.2.1:587"), backends...)
}

// ---- test client ----

type client struct{ *testrig.Client }

// dial connects and reads the greeting.
func dial(t *testing.T, addr string) *client {
	t.Helper()
	cl := &client{testrig.Dial(t, addr)}
	cl.expect("220 proxy.example ESMTP")
	return cl
}

// reply reads one reply; it returns its lines (without CRLF).
func (c *client) reply() []string {
	c.T.Helper()
	var lines []string
	for {
		s, err := c.R.ReadString('\n')
		if err != nil {
			c.T.Fatalf("read: %v (%q after %q)", err, s, lines)
		}
		s = strings.TrimRight(s, "\r\n")
		lines = append(lines, s)
		if len(s) < 4 || s[3] != '-' {
			return lines
		}
	}
}

// cmd sends a line (CRLF added) and checks that the reply's last line
// starts with want.
func (c *client) cmd(send, want string) []string {
	c.T.Helper()
	c.Send(send + "\r\n")
	return c.expect(want)
}

func (c *client) expect(want string) []string {
	c.T.Helper()
	r := c.reply()
	if !strings.HasPrefix(r[len(r)-1], want) {
		c.T.Fatalf("got %q, want prefix %q", r, want)
	}
	return r
}

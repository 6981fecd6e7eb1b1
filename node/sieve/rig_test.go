package sieve

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// ---- fake backend ----

// fakeBackend is a small scripted ManageSieve server.
type fakeBackend struct {
	*testrig.Backend
	Caps      []string          // capability lines; default IMPLEMENTATION, SASL "PLAIN"
	TLS       *tls.Config       // offer STARTTLS
	XCLIENT   bool              // announce XCLIENT
	Users     map[string]string // default alice/secret
	AuthReply string            // if set, the answer to every AUTHENTICATE
	// Tokens maps bearer tokens to their user: AUTHENTICATE "OAUTHBEARER"
	// and "XOAUTH2" log in with a token of the user the message names,
	// and anything else gets the error challenge (a literal when
	// LiteralChallenge), then NO.
	Tokens           map[string]string
	LiteralChallenge bool
}

func startBackend(t *testing.T, fb *fakeBackend) *fakeBackend {
	t.Helper()
	if fb.Caps == nil {
		fb.Caps = []string{`"IMPLEMENTATION" "fake"`, `"SASL" "PLAIN"`, `"VERSION" "1.0"`}
	}
	if fb.Users == nil {
		fb.Users = map[string]string{"alice": "secret"}
	}
	fb.Backend = testrig.StartBackend(t, fb.serve)
	return fb
}

func (fb *fakeBackend) serve(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var conn net.Conn = c
	br := bufio.NewReader(conn)
	send := func(s string) { _, _ = io.WriteString(conn, s+"\r\n") }
	isTLS := false
	caps := func() {
		for _, l := range fb.Caps {
			send(l)
		}
		if fb.TLS != nil && !isTLS {
			send(`"STARTTLS"`)
		}
		if fb.XCLIENT {
			send(`"XCLIENT"`)
		}
	}
	caps()
	send(`OK "fake ready."`)
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return
		}
		l = strings.TrimRight(l, "\r\n")
		// Read a literal the line announces (the AUTHENTICATE response).
		if n, ok := trailingLiteral([]byte(l)); ok {
			b := make([]byte, n)
			if _, err := io.ReadFull(br, b); err != nil {
				return
			}
			rest, _ := br.ReadString('\n')
			l = l[:strings.LastIndexByte(l, '{')] + strconv.Quote(string(b)) + strings.TrimRight(rest, "\r\n")
		}
		if isTLS {
			fb.Record("tls: " + l)
		} else {
			fb.Record(l)
		}
		cmd, arg, _ := strings.Cut(l, " ")
		switch strings.ToUpper(cmd) {
		case "STARTTLS":
			send(`OK "Begin TLS negotiation now."`)
			tc := tls.Server(c, fb.TLS)
			if tc.Handshake() != nil {
				return
			}
			conn, br, isTLS = tc, bufio.NewReader(tc), true
			caps()
			send(`OK "TLS negotiation successful."`)
		case "XCLIENT":
			send(`OK "Updated"`)
		case "AUTHENTICATE":
			if fb.AuthReply != "" {
				send(fb.AuthReply)
				continue
			}
			mech, ir, _ := strings.Cut(arg, " ")
			ir, _ = strconv.Unquote(ir)
			if m, _ := strconv.Unquote(mech); m == "OAUTHBEARER" || m == "XOAUTH2" {
				dec, _ := base64.StdEncoding.DecodeString(ir)
				if bm, err := session.ParseBearer(m, dec); err == nil && fb.Tokens[bm.Token] == bm.User {
					send(`OK "Logged in."`)
					continue
				}
				ch := base64.StdEncoding.EncodeToString([]byte(`{"status":"invalid_token"}`))
				if fb.LiteralChallenge {
					send("{" + strconv.Itoa(len(ch)) + "}")
					send(ch)
				} else {
					send(`"` + ch + `"`)
				}
				d, err := br.ReadString('\n')
				if err != nil {
					return
				}
				fb.Record(strings.TrimRight(d, "\r\n"))
				send(`NO "Authentication failed."`)
				continue
			}
			dec, err := base64.StdEncoding.DecodeString(ir)
			parts := strings.Split(string(dec), "\x00")
			if mech != `"PLAIN"` || err != nil || len(parts) != 3 || fb.Users[parts[1]] != parts[2] || parts[1] == "" {
				send(`NO "Authentication failed."`)
				continue
			}
			send(`OK "Logged in."`)
		case "LISTSCRIPTS":
			send(`"a" ACTIVE`)
			send(`{3}`)
			_, _ = io.WriteString(conn, "b\"c\r\n")
			send(`OK "Listscripts completed."`)
		case "LOGOUT":
			send(`OK "Logout completed."`)
			return
		default:
			send(`NO "Unknown command."`)
		}
	}
}

// ---- proxy rig ----

// rig runs the handler on a TCP listener (testrig.Proxy).
type rig = testrig.Proxy

func testListener(mode routing.TLSMode, cfg *tls.Config, allowPlain bool) *session.Listener {
	lis := testrig.Listener(routing.Sieve, mode, cfg, allowPlain)
	lis.Limits.MaxLine = 1024
	lis.Limits.MaxLiteral = 1024
	return lis
}

func backendAt(port int, forward routing.ForwardMode) routing.Backend {
	return routing.Backend{ID: "b1", Host: "127.0.0.1", SievePort: port, Forward: forward}
}

func newRig(t *testing.T, lis *session.Listener, backends ...routing.Backend) *rig {
	t.Helper()
	return testrig.NewProxy(t, lis, New(Options{}), netip.MustParseAddrPort("192.0.2.1:4190"), backends...)
}

// ---- test client ----

type client struct{ *testrig.Client }

// dial connects and reads the greeting's capabilities up to its OK.
func dial(t *testing.T, addr string) (*client, []string) {
	t.Helper()
	cl := &client{testrig.Dial(t, addr)}
	caps, ok := cl.response()
	if !strings.HasPrefix(ok, "OK ") {
		t.Fatalf("greeting ended with %q", ok)
	}
	return cl, caps
}

// line reads one line, without its CRLF.
func (c *client) line() string {
	c.T.Helper()
	return strings.TrimRight(c.ReadLine(), "\r\n")
}

// response reads lines up to a status line; it returns the lines before
// it and the status line.
func (c *client) response() ([]string, string) {
	c.T.Helper()
	var data []string
	for {
		l := c.line()
		if isStatus([]byte(l)) {
			return data, l
		}
		data = append(data, l)
	}
}

// cmd sends a line (CRLF added) and checks the status line starts with
// want.
func (c *client) cmd(send, want string) ([]string, string) {
	c.T.Helper()
	c.Send(send + "\r\n")
	return c.expect(want)
}

func (c *client) expect(want string) ([]string, string) {
	c.T.Helper()
	data, st := c.response()
	if !strings.HasPrefix(st, want) {
		c.T.Fatalf("got %q (after %q), want prefix %q", st, data, want)
	}
	return data, st
}

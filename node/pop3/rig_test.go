package pop3

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeBackend is a small scripted POP3 server.
type fakeBackend struct {
	*testrig.Backend
	Greeting     string            // default "+OK fake ready"
	Capa         []string          // default USER and SASL PLAIN; STLS is added when TLS is set
	NoCapa       bool              // answer CAPA with -ERR
	TLS          *tls.Config       // offer STLS
	Users        map[string]string // default alice/secret, bob/"my secret pw"
	AuthReply    string            // if set, the answer to every PASS / AUTH
	XCLIENTReply string            // default "+OK Updated"
	Mode         string            // "" (normal), "silent", "garbage"
	// Tokens maps bearer tokens to their user: AUTH OAUTHBEARER and
	// XOAUTH2 log in with a token of the user the message names, and
	// anything else gets the error challenge, then -ERR.
	Tokens map[string]string
}

func startBackend(t *testing.T, fb *fakeBackend) *fakeBackend {
	t.Helper()
	if fb.Greeting == "" {
		fb.Greeting = "+OK fake ready"
	}
	if fb.Capa == nil {
		fb.Capa = []string{"USER", "SASL PLAIN"}
	}
	if fb.Users == nil {
		fb.Users = map[string]string{"alice": "secret", "bob": "my secret pw"}
	}
	if fb.XCLIENTReply == "" {
		fb.XCLIENTReply = "+OK Updated"
	}
	fb.Backend = testrig.StartBackend(t, fb.serve)
	return fb
}

func (fb *fakeBackend) serve(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	switch fb.Mode {
	case "silent":
		_, _ = io.Copy(io.Discard, c)
		return
	case "garbage":
		_, _ = c.Write([]byte(strings.Repeat("\x00\xff garbage", 2000)))
		_, _ = io.Copy(io.Discard, c)
		return
	}
	var conn net.Conn = c
	br := bufio.NewReader(conn)
	send := func(s string) { _, _ = io.WriteString(conn, s+"\r\n") }
	send(fb.Greeting)
	isTLS, user := false, ""
	check := func(u, p string) {
		switch {
		case fb.AuthReply != "":
			send(fb.AuthReply)
		case u != "" && fb.Users[u] == p:
			send("+OK Logged in.")
		default:
			send("-ERR [AUTH] Authentication failed.")
		}
	}
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return
		}
		l = strings.TrimRight(l, "\r\n")
		if isTLS {
			fb.Record("tls: " + l)
		} else {
			fb.Record(l)
		}
		cmd, arg, _ := strings.Cut(l, " ")
		switch strings.ToUpper(cmd) {
		case "CAPA":
			if fb.NoCapa {
				send("-ERR Unknown command.")
				continue
			}
			send("+OK")
			for _, c := range fb.Capa {
				send(c)
			}
			if fb.TLS != nil && !isTLS {
				send("STLS")
			}
			send(".")
		case "STLS":
			if fb.TLS == nil || isTLS {
				send("-ERR no")
				continue
			}
			send("+OK Begin TLS negotiation now.")
			tc := tls.Server(c, fb.TLS)
			if tc.Handshake() != nil {
				return
			}
			conn, br, isTLS, user = tc, bufio.NewReader(tc), true, ""
		case "XCLIENT":
			send(fb.XCLIENTReply)
		case "AUTH":
			mech, ir, _ := strings.Cut(arg, " ")
			if mech = strings.ToUpper(mech); mech == "OAUTHBEARER" || mech == "XOAUTH2" {
				if ir == "" {
					send("+ ")
					if ir, err = br.ReadString('\n'); err != nil {
						return
					}
					ir = strings.TrimRight(ir, "\r\n")
					fb.Record(ir)
				}
				dec, _ := base64.StdEncoding.DecodeString(ir)
				if m, err := session.ParseBearer(mech, dec); err == nil && fb.Tokens[m.Token] == m.User {
					send("+OK Logged in.")
					continue
				}
				send("+ " + base64.StdEncoding.EncodeToString([]byte(`{"status":"invalid_token"}`)))
				d, err := br.ReadString('\n')
				if err != nil {
					return
				}
				fb.Record(strings.TrimRight(d, "\r\n"))
				send("-ERR [AUTH] Authentication failed.")
				continue
			}
			dec, err := base64.StdEncoding.DecodeString(ir)
			parts := strings.Split(string(dec), "\x00")
			if !strings.EqualFold(mech, "PLAIN") || err != nil || len(parts) != 3 {
				send("-ERR [AUTH] Invalid")
				continue
			}
			check(parts[1], parts[2])
		case "USER":
			user = arg
			send("+OK")
		case "PASS":
			check(user, arg)
		case "STAT":
			send("+OK 0 0")
		case "QUIT":
			send("+OK bye")
			return
		default:
			send("-ERR Unknown command.")
		}
	}
}

// ---- proxy rig ----

// rig runs the handler on a TCP listener (testrig.Proxy).
type rig = testrig.Proxy

func testListener(mode routing.TLSMode, cfg *tls.Config, allowPlain bool) *session.Listener {
	return testrig.Listener(routing.POP3, mode, cfg, allowPlain)
}

// backendAt is a backend entry for a fake backend (or any port).
func backendAt(port int, forward routing.ForwardMode) routing.Backend {
	return routing.Backend{ID: "b1", Host: "127.0.0.1", POP3Port: port, Forward: forward}
}

// newRig routes every user to the given backends; with none, no user has
// a route.
func newRig(t *testing.T, lis *session.Listener, opts Options, backends ...routing.Backend) *rig {
	t.Helper()
	return testrig.NewProxy(t, lis, New(opts), netip.MustParseAddrPort("192.0.2.1:110"), backends...)
}

// ---- test client ----

type client struct{ *testrig.Client }

// dial connects and reads the greeting.
func dial(t *testing.T, addr string) *client {
	t.Helper()
	cl := &client{testrig.Dial(t, addr)}
	if g := cl.ReadLine(); !strings.HasPrefix(g, "+OK ") {
		t.Fatalf("greeting %q", g)
	}
	return cl
}

// cmd sends a line (CRLF added) and checks the reply starts with want.
func (c *client) cmd(send, want string) string {
	c.T.Helper()
	c.Send(send + "\r\n")
	return c.expect(want)
}

func (c *client) expect(want string) string {
	c.T.Helper()
	got := c.ReadLine()
	if !strings.HasPrefix(got, want) {
		c.T.Fatalf("got %q, want prefix %q", got, want)
	}
	return got
}

func (c *client) multiline() []string {
	c.T.Helper()
	var out []string
	for {
		l := strings.TrimSuffix(c.ReadLine(), "\r\n")
		if l == "." {
			return out
		}
		out = append(out, l)
	}
}

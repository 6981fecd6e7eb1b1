package pop3

import (
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

const replyUnavailableText = "-ERR [SYS/TEMP] Backend server unavailable, try again later.\r\n"

func TestBackendUnreachableSessionStaysOpen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	r := newRig(t, testListener(routing.TLSNone, nil, true), Options{}, backendAt(port, routing.ForwardNone))
	c := dial(t, r.Addr())
	for i := 0; i < 4; i++ { // more than MaxAuthFailures: not counted
		c.cmd("USER alice", "+OK")
		c.cmd("PASS secret", replyUnavailableText)
	}
	c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), replyUnavailableText)
	c.cmd("QUIT", "+OK Logging out.")
	if res := r.Result(); res.Handoff != nil || res.End.Reason != session.EndLogout || res.End.Err != nil {
		t.Fatalf("%+v", res)
	}
}

func TestBackendMisbehaves(t *testing.T) {
	cases := []struct {
		name    string
		fb      *fakeBackend
		timeout time.Duration
		errHas  string
		maxWait time.Duration
	}{
		// A stream of bytes without a line end: given up after 4 KiB, not
		// at the timeout.
		{"garbage", &fakeBackend{Mode: "garbage"}, 5 * time.Second, "reading greeting: line too long", 2 * time.Second},
		{"silent", &fakeBackend{Mode: "silent"}, 300 * time.Millisecond, "reading greeting", 3 * time.Second},
		{"not POP3", &fakeBackend{Greeting: "* OK IMAP4rev1 ready"}, 5 * time.Second, "unexpected backend greeting", 2 * time.Second},
		{"refuses", &fakeBackend{Greeting: "-ERR [SYS/TEMP] Too many connections"}, 5 * time.Second, "reading greeting", 2 * time.Second},
		{"asks for more after PLAIN", &fakeBackend{AuthReply: "+ "}, 5 * time.Second, "AUTH: backend asked for more", 2 * time.Second},
		{"odd login reply", &fakeBackend{AuthReply: "* BYE"}, 5 * time.Second, "AUTH: unexpected reply", 2 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fb := startBackend(t, tc.fb)
			lis := testListener(routing.TLSNone, nil, true)
			lis.Limits.BackendTimeout = tc.timeout
			r := newRig(t, lis, Options{}, backendAt(fb.Port(), routing.ForwardNone))
			c := dial(t, r.Addr())
			c.cmd("USER alice", "+OK")
			start := time.Now()
			c.cmd("PASS secret", replyUnavailableText)
			if d := time.Since(start); d > tc.maxWait {
				t.Errorf("answered after %v", d)
			}
			if e := r.LastEventErr(); !strings.Contains(e, tc.errHas) {
				t.Errorf("login error %q, want %q", e, tc.errHas)
			}
			if tc.name == "not POP3" {
				if ev := r.LoginEvents(); !errors.Is(ev[len(ev)-1].Err, session.ErrBackendGreeting) {
					t.Errorf("error %v does not wrap ErrBackendGreeting", ev[len(ev)-1].Err)
				}
			}
			c.cmd("QUIT", "+OK")
			r.Result()
		})
	}
}

func TestXCLIENT(t *testing.T) {
	const xclient = "XCLIENT ADDR=198.51.100.7 PORT=4242 SESSION=SID1"
	cases := []struct {
		name     string
		fb       *fakeBackend
		forward  routing.ForwardMode
		sent     bool
		loginErr string // "" for success
	}{
		{"announced in greeting (Dovecot)", &fakeBackend{Greeting: "+OK [XCLIENT] Dovecot ready."}, routing.ForwardID, true, ""},
		{"announced in CAPA", &fakeBackend{Capa: []string{"SASL PLAIN", "XCLIENT"}}, routing.ForwardID, true, ""},
		{"not announced", &fakeBackend{}, routing.ForwardID, false, ""},
		{"forwarding off", &fakeBackend{Greeting: "+OK [XCLIENT] ready."}, routing.ForwardNone, false, ""},
		{"refused", &fakeBackend{Greeting: "+OK [XCLIENT] ready.", XCLIENTReply: "-ERR Invalid parameters"}, routing.ForwardID, true, "XCLIENT: backend answered"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fb := startBackend(t, tc.fb)
			r := newRig(t, testListener(routing.TLSNone, nil, true), Options{}, backendAt(fb.Port(), tc.forward))
			c := dial(t, r.Addr())
			c.cmd("USER alice", "+OK")
			if tc.loginErr != "" {
				c.cmd("PASS secret", replyUnavailableText)
				c.cmd("QUIT", "+OK")
				if e := r.LastEventErr(); !strings.Contains(e, tc.loginErr) {
					t.Errorf("login error %q, want %q", e, tc.loginErr)
				}
			} else {
				c.cmd("PASS secret", "+OK Logged in.")
			}
			r.Result()
			got := fb.Received()
			sent := false
			for i, l := range got {
				if l == xclient {
					sent = true
					if i == 0 || (tc.loginErr == "") != (i+1 < len(got) && strings.HasPrefix(got[i+1], "AUTH PLAIN ")) {
						t.Errorf("XCLIENT out of place: %q", got)
					}
				}
			}
			if sent != tc.sent {
				t.Errorf("XCLIENT sent %v, want %v: %q", sent, tc.sent, got)
			}
		})
	}
}

func TestBackendSTLS(t *testing.T) {
	fb := startBackend(t, &fakeBackend{
		Greeting: "+OK [XCLIENT] ready.",
		Capa:     []string{"USER"}, // PLAIN only after TLS: the second CAPA decides
		TLS:      &tls.Config{Certificates: []tls.Certificate{testrig.SelfSigned(t)}},
	})
	be := backendAt(fb.Port(), routing.ForwardID)
	be.TLS, be.InsecureSkipVerify = routing.TLSStartTLS, true
	r := newRig(t, testListener(routing.TLSNone, nil, true), Options{}, be)
	fb.Capa = []string{"USER", "SASL PLAIN"}
	c := dial(t, r.Addr())
	c.cmd("USER alice", "+OK")
	c.cmd("PASS secret", "+OK Logged in.")
	res := r.Result()
	if res.Handoff == nil || res.Handoff.Backend.TLS() == nil {
		t.Fatalf("%+v", res)
	}
	got := fb.Received()
	want := []string{"CAPA", "STLS", "tls: CAPA", "tls: XCLIENT ADDR=198.51.100.7 PORT=4242 SESSION=SID1", "tls: AUTH PLAIN " + testrig.PlainIR("", "alice", "secret")}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("backend got %q, want %q", got, want)
	}
}

func TestBackendSTLSProblems(t *testing.T) {
	cfg := &tls.Config{Certificates: []tls.Certificate{testrig.SelfSigned(t)}}
	cases := []struct {
		name     string
		fb       *fakeBackend
		insecure bool
		errHas   string
	}{
		{"not offered", &fakeBackend{}, true, "STLS: backend does not offer STLS"},
		{"unverified certificate", &fakeBackend{TLS: cfg}, false, "STLS: TLS handshake"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fb := startBackend(t, tc.fb)
			be := backendAt(fb.Port(), routing.ForwardNone)
			be.TLS, be.InsecureSkipVerify = routing.TLSStartTLS, tc.insecure
			r := newRig(t, testListener(routing.TLSNone, nil, true), Options{}, be)
			c := dial(t, r.Addr())
			c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), replyUnavailableText)
			c.cmd("QUIT", "+OK")
			r.Result()
			if e := r.LastEventErr(); !strings.Contains(e, tc.errHas) {
				t.Errorf("login error %q, want %q", e, tc.errHas)
			}
			for _, l := range fb.Received() {
				if strings.Contains(l, "AUTH") || strings.Contains(l, "USER") {
					t.Errorf("credentials sent without TLS: %q", l)
				}
			}
		})
	}
}

func TestBackendRejections(t *testing.T) {
	cases := []struct {
		name      string
		authReply string
		client    string // the reply the client sees
		result    session.Result
	}{
		{"wrong password", "-ERR [AUTH] Authentication failed.", "-ERR [AUTH] Authentication failed.\r\n", session.ResultBadCreds},
		{"no code", "-ERR Bad login", "-ERR Bad login\r\n", session.ResultBadCreds},
		// The backend's internal failure: not the user's fault, and the
		// backend's text (host name, time) stays inside.
		{"sys/temp", "-ERR [SYS/TEMP] Temporary authentication failure. [fake:2024-01-01 00:00:00]", replyUnavailableText, session.ResultUnavailable},
		{"sys/perm", "-ERR [SYS/PERM] Broken", replyUnavailableText, session.ResultUnavailable},
		{"in-use", "-ERR [IN-USE] Mailbox is locked by another POP3 session.", "-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n", session.ResultUnavailable},
		{"success text passes", "+OK Welcome alice, 3 messages.", "+OK Welcome alice, 3 messages.\r\n", session.ResultOK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fb := startBackend(t, &fakeBackend{AuthReply: tc.authReply})
			r := newRig(t, testListener(routing.TLSNone, nil, true), Options{}, backendAt(fb.Port(), routing.ForwardNone))
			c := dial(t, r.Addr())
			n := 1
			if tc.result == session.ResultUnavailable {
				n = 4 // beyond MaxAuthFailures: not counted as failures
			}
			for i := 0; i < n; i++ {
				c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), tc.client)
				if tc.result == session.ResultOK {
					break
				}
			}
			if tc.result != session.ResultOK {
				c.cmd("QUIT", "+OK Logging out.")
			}
			r.Result()
			ev := r.LoginEvents()
			if ev[len(ev)-1].Result != tc.result {
				t.Errorf("result %s, want %s", ev[len(ev)-1].Result, tc.result)
			}
		})
	}
}

func TestBackendUserPassFallback(t *testing.T) {
	fb := startBackend(t, &fakeBackend{NoCapa: true})
	r := newRig(t, testListener(routing.TLSNone, nil, true), Options{}, backendAt(fb.Port(), routing.ForwardNone))
	c := dial(t, r.Addr())
	// Credentials USER/PASS cannot carry are refused without being sent.
	c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "sec\r\nQUIT"), "-ERR [AUTH] Authentication failed.")
	c.cmd("USER alice", "+OK")
	c.cmd("PASS se\x00cret", "-ERR [AUTH] Authentication failed.")
	// An authorization identity needs PLAIN at the backend.
	c.cmd("AUTH PLAIN "+testrig.PlainIR("bob", "alice", "secret"), replyUnavailableText)
	if e := r.LastEventErr(); !strings.Contains(e, "AUTH: backend does not offer SASL PLAIN") {
		t.Errorf("login error %q", e)
	}
	c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "+OK Logged in.")
	r.Result()
	got := strings.Join(fb.Received(), "|")
	if want := "CAPA|CAPA|CAPA|CAPA|USER alice|PASS secret"; got != want {
		t.Fatalf("backend got %q, want %q", got, want)
	}
}

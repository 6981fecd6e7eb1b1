package pop3

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/routing"
)

// TestDovecot logs in through the handler to a real Dovecot 2.3 POP3
// server (skipped when Dovecot cannot run here, failed instead with
// PORTICO_REQUIRE_DOVECOT=1): STLS and XCLIENT toward the backend,
// USER/PASS, AUTH PLAIN and AUTH LOGIN from the client, a wrong password,
// and commands pipelined behind the login reaching Dovecot through a relay.
func TestDovecot(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{ImplicitTLS: true})
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, dc.CACertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	backend := func(tls routing.TLSMode, port int) routing.Backend {
		return routing.Backend{ID: "dovecot", Host: dc.Addr, POP3Port: port, TLS: tls,
			TLSCAFile: ca, TLSServerName: dc.Addr, Forward: routing.ForwardID}
	}
	logins := 0
	checkLogin := func(t *testing.T, wantTLS bool) {
		t.Helper()
		logins++
		if n := dc.WaitLogins("alice", logins, 5*time.Second); n != logins {
			t.Fatalf("dovecot logged %d logins of alice, want %d", n, logins)
		}
		recs := dc.LoginRecords()
		rec := recs[len(recs)-1]
		if rec.Protocol != "pop3" || rec.RemoteIP != "198.51.100.7" || !strings.Contains(rec.Line, "session=<SID1>") {
			t.Errorf("dovecot login record %+v: want pop3, rip=198.51.100.7 (XCLIENT), session=<SID1>", rec)
		}
		if wantTLS != strings.Contains(rec.Line, "TLS") {
			t.Errorf("dovecot login record %q: TLS %v", rec.Line, wantTLS)
		}
	}

	t.Run("starttls backend, USER/PASS, pipelined STAT", func(t *testing.T) {
		r := newRig(t, testListener(routing.TLSNone, nil, true), Options{}, backend(routing.TLSStartTLS, dc.POP3Port))
		r.Relay = true
		c := dial(t, r.Addr())
		c.cmd("USER alice", "+OK")
		c.cmd("PASS wrong", "-ERR [AUTH] Authentication failed.\r\n")
		c.Send("USER alice\r\nPASS secret\r\nSTAT\r\n")
		c.expect("+OK\r\n")
		c.expect("+OK Logged in.\r\n")
		c.expect("+OK 0 0\r\n") // from Dovecot, through the relay
		c.cmd("QUIT", "+OK Logging out.")
		c.EOF()
		if res := r.Result(); res.Handoff == nil || string(res.Pending) != "STAT\r\n" {
			t.Fatalf("%+v pending %q", res, res.Pending)
		}
		checkLogin(t, true)
	})

	t.Run("implicit TLS backend, AUTH PLAIN and LOGIN", func(t *testing.T) {
		r := newRig(t, testListener(routing.TLSNone, nil, true), Options{}, backend(routing.TLSImplicit, portOf(t, dc.POP3SAddr)))
		r.Relay = true
		c := dial(t, r.Addr())
		c.cmd("AUTH PLAIN "+testrig.PlainIR("", "alice", "secret"), "+OK Logged in.")
		c.cmd("CAPA", "+OK") // Dovecot's post-login CAPA
		if caps := strings.Join(c.multiline(), ","); !strings.Contains(caps, "UIDL") {
			t.Errorf("backend CAPA %q", caps)
		}
		c.cmd("QUIT", "+OK Logging out.")
		r.Result()
		checkLogin(t, true)

		c = dial(t, r.Addr())
		c.cmd("AUTH LOGIN", "+ VXNlcm5hbWU6")
		c.cmd("YWxpY2U=", "+ UGFzc3dvcmQ6")
		c.cmd("c2VjcmV0", "+OK Logged in.")
		c.cmd("QUIT", "+OK Logging out.")
		r.Result()
		checkLogin(t, true)
	})

	t.Run("plaintext backend", func(t *testing.T) {
		r := newRig(t, testListener(routing.TLSNone, nil, true), Options{}, backend(routing.TLSNone, dc.POP3Port))
		c := dial(t, r.Addr())
		c.cmd("USER alice", "+OK")
		c.cmd("PASS secret", "+OK Logged in.")
		r.Result()
		checkLogin(t, false)
	})
}

func portOf(t *testing.T, addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

package sieve

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// TestDovecot logs in through the handler to a real Dovecot Pigeonhole
// managesieve-login (skipped when Dovecot cannot run here): STARTTLS and
// XCLIENT toward the backend, AUTHENTICATE PLAIN from the client, a wrong
// password passed through, and commands pipelined behind the login
// reaching Dovecot through a relay. The probe runs against it too.
func TestDovecot(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{TLS: true, Sieve: true})
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, dc.CACertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	be := routing.Backend{ID: "dovecot", Host: dc.Addr, SievePort: dc.SievePort, TLS: routing.TLSStartTLS,
		TLSCAFile: ca, TLSServerName: dc.Addr, Forward: routing.ForwardID}
	r := newRig(t, testListener(routing.TLSNone, nil, true), be)
	r.Relay = true
	c, _ := dial(t, r.Addr())
	_, st := c.cmd(`AUTHENTICATE "PLAIN" "`+testrig.PlainIR("", "alice", "wrong")+`"`, "NO ")
	t.Logf("wrong password: %s", st)
	script := "require \"fileinto\";\r\nfileinto \"INBOX\";\r\n"
	c.Send(`AUTHENTICATE "PLAIN" "` + testrig.PlainIR("", "alice", "secret") + "\"\r\n" +
		"PUTSCRIPT \"t1\" {" + strconv.Itoa(len(script)) + "+}\r\n" + script + "\r\n")
	c.expect("OK ")
	c.expect("OK ") // PUTSCRIPT, from Dovecot through the relay
	c.cmd(`SETACTIVE "t1"`, "OK ")
	data, _ := c.cmd("LISTSCRIPTS", "OK ")
	if len(data) != 1 || data[0] != `"t1" ACTIVE` {
		t.Fatalf("LISTSCRIPTS %q", data)
	}
	c.cmd("LOGOUT", "OK ")
	if res := r.Result(); res.Handoff == nil {
		t.Fatalf("no hand-off: %+v", res.End)
	}
	if n := dc.WaitLogins("alice", 1, 5*time.Second); n != 1 {
		t.Fatalf("dovecot logged %d logins", n)
	}
	recs := dc.LoginRecords()
	rec := recs[len(recs)-1]
	if rec.Protocol != "sieve" || rec.RemoteIP != "198.51.100.7" || !strings.Contains(rec.Line, "TLS") {
		t.Errorf("dovecot login record %+v: want sieve, rip=198.51.100.7 (XCLIENT), TLS", rec)
	}

	// The health probe: greeting, STARTTLS, LOGOUT.
	d := &session.Dialer{}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, b := range []routing.Backend{be, func() routing.Backend { b := be; b.TLSServerName = "wrong.example"; return b }()} {
		s, err := d.Dial(ctx, &b, routing.Sieve, netip.AddrPort{}, netip.AddrPort{})
		if err != nil {
			t.Fatal(err)
		}
		_ = s.SetDeadline(time.Now().Add(5 * time.Second))
		err = Probe(ctx, s, &b, d.TLSConfig)
		s.Close()
		if wrong := b.TLSServerName != dc.Addr; (err != nil) != wrong {
			t.Errorf("probe with server name %s: %v", b.TLSServerName, err)
		}
	}
}

// forward: proxy: a PROXY v2 header carries the client's address to a
// managesieve-login listener with haproxy = yes.
func TestDovecotPROXYHeader(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Sieve: true, HAProxy: true})
	be := routing.Backend{ID: "dovecot", Host: dc.Addr, SievePort: dc.SievePort, Forward: routing.ForwardProxy}
	r := newRig(t, testListener(routing.TLSNone, nil, true), be)
	c, _ := dial(t, r.Addr())
	c.cmd(`AUTHENTICATE "PLAIN" "`+testrig.PlainIR("", "alice", "secret")+`"`, "OK ")
	if res := r.Result(); res.Handoff == nil {
		t.Fatalf("no hand-off: %+v", res.End)
	}
	if n := dc.WaitLogins("alice", 1, 5*time.Second); n != 1 {
		t.Fatalf("dovecot logged %d logins", n)
	}
	recs := dc.LoginRecords()
	if rec := recs[len(recs)-1]; rec.Protocol != "sieve" || rec.RemoteIP != "198.51.100.7" {
		t.Errorf("dovecot login record %+v: want sieve, rip=198.51.100.7 (PROXY v2)", rec)
	}
}

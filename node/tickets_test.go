package node

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/testcert"
	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// ticketServer runs one implicit-TLS listener "imaps" whose tickets keys
// seal (nil: crypto/tls's own), with the certificate of certDir.
func ticketServer(t *testing.T, certDir string, keys *TicketKeys, off bool) *Server {
	t.Helper()
	certs := &CertStore{}
	if err := certs.Load([]CertPair{{CertFile: filepath.Join(certDir, testcert.CertFileName), KeyFile: filepath.Join(certDir, testcert.KeyFileName)}}); err != nil {
		t.Fatal(err)
	}
	engine, err := relay.NewEngine()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Tickets: keys, Listeners: []ListenerConfig{{
		Name: "imaps", Protocol: routing.IMAP, Address: "127.0.0.1:0", TLS: routing.TLSImplicit,
		Limits: session.DefaultLimits(routing.IMAP), TLSPolicy: TLSPolicy{SessionTicketsOff: off},
	}}}
	env := &session.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s := NewServer(cfg, env, map[routing.Protocol]session.Handler{routing.IMAP: echoHandler{echoBackend(t)}}, certs, engine)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		engine.Close()
	})
	return s
}

func ticketCertDir(t *testing.T) string {
	dir := t.TempDir()
	if _, _, _, err := testcert.Write(dir, "mail.test"); err != nil {
		t.Fatal(err)
	}
	return dir
}

// resumes connects to from (receiving a ticket) and then to to with the
// same client session cache, and reports whether the second handshake
// resumed.
func resumes(t *testing.T, from, to *Server, version uint16) bool {
	t.Helper()
	cfg := &tls.Config{ServerName: "mail.test", ClientSessionCache: tls.NewLRUClientSessionCache(4), MinVersion: version, MaxVersion: version}
	if st, err := handshake(t, from.Addrs()["imaps"].String(), cfg); err != nil || st.DidResume {
		t.Fatalf("first handshake: resumed %v, %v", st.DidResume, err)
	}
	st, err := handshake(t, to.Addrs()["imaps"].String(), cfg)
	if err != nil {
		t.Fatalf("second handshake: %v", err)
	}
	return st.DidResume
}

func key(b byte) [32]byte {
	var k [32]byte
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

func handshakes(s *Server) (full, resumed uint64) {
	for _, st := range s.ListenerStats() {
		full += st.TLSFull.Load()
		resumed += st.TLSResumed.Load()
	}
	return
}

// A ticket sealed by one server resumes on another that has the same keys
// (TLS 1.3 and 1.2), and is counted as resumed there; with other keys
// (each process's own, as crypto/tls's default) it does not.
func TestTicketKeysShared(t *testing.T) {
	certs := ticketCertDir(t)
	ring := [][32]byte{key(1), key(2), key(3)}
	ka, kb := NewTicketKeys(), NewTicketKeys()
	a, b := ticketServer(t, certs, ka, false), ticketServer(t, certs, kb, false)
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		ka.Set(NewTicketKeys().Keys())
		kb.Set(NewTicketKeys().Keys())
		if resumes(t, a, b, v) {
			t.Fatalf("version %x: resumed with another process's keys", v)
		}
		if !resumes(t, a, a, v) {
			t.Fatalf("version %x: no resumption on the same server", v)
		}
		ka.Set(ring)
		kb.Set(ring)
		if !resumes(t, a, b, v) {
			t.Fatalf("version %x: no resumption across servers with the same keys", v)
		}
	}
	if full, resumed := handshakes(b); full != 2 || resumed != 2 {
		t.Fatalf("b counted %d full and %d resumed handshakes", full, resumed)
	}
	// Servers without shared keys (crypto/tls's own) never resume each
	// other's tickets.
	c, d := ticketServer(t, certs, nil, false), ticketServer(t, certs, nil, false)
	if resumes(t, c, d, tls.VersionTLS13) || !resumes(t, c, c, tls.VersionTLS13) {
		t.Fatal("crypto/tls's own keys")
	}
}

// The ring's rules, end to end: the server that rotated first seals with
// the key that was pending, which a server that has not rotated yet
// already accepts; a previous key is still accepted; a key that left the
// ring is not.
func TestTicketKeysRotation(t *testing.T) {
	certs := ticketCertDir(t)
	ka, kb := NewTicketKeys(), NewTicketKeys()
	a, b := ticketServer(t, certs, ka, false), ticketServer(t, certs, kb, false)
	var r *routing.TicketRing
	rotate := func(k byte) {
		var err error
		r, err = r.Rotate(routing.TicketRotation{Keys: []routing.TicketKey{routing.TicketKey(key(k))}, Keep: 3, At: int64(k)})
		if err != nil {
			t.Fatal(err)
		}
	}
	r, _ = r.Rotate(routing.TicketRotation{Keys: []routing.TicketKey{routing.TicketKey(key(20)), routing.TicketKey(key(10))}, Keep: 3})
	ka.Set(r.ServerKeys())
	kb.Set(r.ServerKeys())
	// a rotates first: it seals with key 20, pending on b.
	rotate(30)
	ka.Set(r.ServerKeys())
	if !resumes(t, a, b, tls.VersionTLS13) {
		t.Fatal("b refused a ticket sealed with its pending key")
	}
	client := func() *tls.Config {
		return &tls.Config{ServerName: "mail.test", ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	}
	// x and y hold tickets a sealed with key 20.
	x, y := client(), client()
	for _, c := range []*tls.Config{x, y} {
		if _, err := handshake(t, a.Addrs()["imaps"].String(), c); err != nil {
			t.Fatal(err)
		}
	}
	// 20 is a previous key on b (ring 40, 30, 20): x resumes.
	rotate(40)
	kb.Set(r.ServerKeys())
	if st, err := handshake(t, b.Addrs()["imaps"].String(), x); err != nil || !st.DidResume {
		t.Fatalf("a previous key: resumed %v %v", st.DidResume, err)
	}
	// 20 has left b's ring (50, 40, 30): y does not.
	rotate(50)
	kb.Set(r.ServerKeys())
	if st, err := handshake(t, b.Addrs()["imaps"].String(), y); err != nil || st.DidResume {
		t.Fatalf("a key out of the ring: resumed %v %v", st.DidResume, err)
	}
}

// tls.session_tickets: off issues no ticket, so nothing resumes, even
// with shared keys.
func TestSessionTicketsOff(t *testing.T) {
	certs := ticketCertDir(t)
	k := NewTicketKeys()
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		s := ticketServer(t, certs, k, true)
		if resumes(t, s, s, v) {
			t.Fatalf("version %x resumed with tickets off", v)
		}
		if full, resumed := handshakes(s); full != 2 || resumed != 0 {
			t.Fatalf("counted %d full, %d resumed", full, resumed)
		}
	}
}

func TestTicketKeysSet(t *testing.T) {
	k := NewTicketKeys()
	own := k.Keys()
	if len(own) != 1 || own[0] == ([32]byte{}) {
		t.Fatalf("own keys %v", own)
	}
	k.Set(nil)
	if got := k.Keys(); len(got) != 1 || got[0] != own[0] {
		t.Fatal("an empty set replaced the keys")
	}
	in := [][32]byte{key(1), key(2)}
	k.Set(in)
	in[0] = key(9)
	if got := k.Keys(); got[0] != key(1) || len(got) != 2 {
		t.Fatal("Set kept the caller's slice")
	}
}

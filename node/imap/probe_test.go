package imap

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/imap/imapwire"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// probeBackend is a backend that runs script on each connection and records
// the lines it read.
type probeBackend struct {
	ln    net.Listener
	mu    sync.Mutex
	lines []string
	wg    sync.WaitGroup
}

func newProbeBackend(t *testing.T, script func(s *probeBackend, c net.Conn, r *bufio.Reader)) *probeBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &probeBackend{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				script(s, c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

// read reads one line and records it.
func (s *probeBackend) read(r *bufio.Reader) string {
	l, _ := r.ReadString('\n')
	l = strings.TrimRight(l, "\r\n")
	s.mu.Lock()
	s.lines = append(s.lines, l)
	s.mu.Unlock()
	return l
}

func (s *probeBackend) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

func (s *probeBackend) backend(mode routing.TLSMode) *routing.Backend {
	return &routing.Backend{ID: "b", Host: "127.0.0.1", IMAPPort: s.ln.Addr().(*net.TCPAddr).Port,
		TLS: mode, TLSServerName: "test", Forward: routing.ForwardNone}
}

// probe connects and probes as the daemon does (session.Dialer, the
// deadline on the connection).
func probe(t *testing.T, b *routing.Backend, d *session.Dialer, timeout time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s, err := d.Dial(ctx, b, routing.IMAP, netip.AddrPort{}, netip.AddrPort{})
	if err != nil {
		return err
	}
	defer s.Close()
	dl, _ := ctx.Deadline()
	_ = s.SetDeadline(dl)
	return Probe(ctx, s, b, d.TLSConfig)
}

// logoutOK answers a LOGOUT as Dovecot does.
func logoutOK(s *probeBackend, c net.Conn, r *bufio.Reader) {
	if l := s.read(r); l == "P5 LOGOUT" {
		c.Write([]byte("* BYE Logging out\r\nP5 OK Logout completed.\r\n"))
	}
}

func TestProbeHealthy(t *testing.T) {
	// Capabilities in the greeting: no CAPABILITY command.
	s := newProbeBackend(t, func(s *probeBackend, c net.Conn, r *bufio.Reader) {
		c.Write([]byte("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n"))
		logoutOK(s, c, r)
	})
	if err := probe(t, s.backend(routing.TLSNone), &session.Dialer{}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := s.received(); len(got) != 1 || got[0] != "P5 LOGOUT" {
		t.Fatalf("backend received %q", got)
	}

	// Without them: CAPABILITY first, as a login does. A server that
	// closes right after its BYE has answered too.
	s = newProbeBackend(t, func(s *probeBackend, c net.Conn, r *bufio.Reader) {
		c.Write([]byte("* OK ready\r\n"))
		if s.read(r) == "P2 CAPABILITY" {
			c.Write([]byte("* CAPABILITY IMAP4rev1\r\nP2 OK done\r\n"))
		}
		if s.read(r) == "P5 LOGOUT" {
			c.Write([]byte("* BYE bye\r\n"))
		}
	})
	if err := probe(t, s.backend(routing.TLSNone), &session.Dialer{}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := s.received(); len(got) != 2 || got[0] != "P2 CAPABILITY" || got[1] != "P5 LOGOUT" {
		t.Fatalf("backend received %q", got)
	}
}

// A backend that would not take a login is down, and says why; hostile or
// stuck backends cannot hold a probe past its deadline or make it buffer
// without bound.
func TestProbeFailures(t *testing.T) {
	huge := strings.Repeat("x", 64<<10)
	cases := []struct {
		name    string
		script  func(s *probeBackend, c net.Conn, r *bufio.Reader)
		timeout time.Duration
		errHas  string
		within  time.Duration
	}{
		{"preauth", func(s *probeBackend, c net.Conn, r *bufio.Reader) {
			c.Write([]byte("* PREAUTH [CAPABILITY IMAP4rev1] logged in\r\n"))
		}, 5 * time.Second, "reading greeting: unexpected backend greeting", 2 * time.Second},
		{"bye", func(s *probeBackend, c net.Conn, r *bufio.Reader) {
			c.Write([]byte("* BYE [UNAVAILABLE] too many connections\r\n"))
		}, 5 * time.Second, "reading greeting", 2 * time.Second},
		{"pop3 on the imap port", func(s *probeBackend, c net.Conn, r *bufio.Reader) {
			c.Write([]byte("+OK POP3 ready\r\n"))
		}, 5 * time.Second, "reading greeting", 2 * time.Second},
		{"silent", func(s *probeBackend, c net.Conn, r *bufio.Reader) {
			s.read(r) // waits for the probe to give up
		}, 300 * time.Millisecond, "reading greeting", 3 * time.Second},
		{"endless greeting", func(s *probeBackend, c net.Conn, r *bufio.Reader) {
			c.Write([]byte("* OK " + huge))
			s.read(r)
		}, 5 * time.Second, "reading greeting: " + imapwire.ErrLineTooLong.Error(), 2 * time.Second},
		{"logout refused", func(s *probeBackend, c net.Conn, r *bufio.Reader) {
			c.Write([]byte("* OK [CAPABILITY IMAP4rev1] ready\r\n"))
			if s.read(r) == "P5 LOGOUT" {
				c.Write([]byte("P5 BAD no\r\n"))
			}
		}, 5 * time.Second, "LOGOUT: backend answered", 2 * time.Second},
		{"closed before answering logout", func(s *probeBackend, c net.Conn, r *bufio.Reader) {
			c.Write([]byte("* OK [CAPABILITY IMAP4rev1] ready\r\n"))
			s.read(r)
		}, 5 * time.Second, "LOGOUT", 2 * time.Second},
		{"no starttls offered", func(s *probeBackend, c net.Conn, r *bufio.Reader) {
			c.Write([]byte("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n"))
			s.read(r)
		}, 5 * time.Second, "STARTTLS: backend does not offer STARTTLS", 2 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newProbeBackend(t, tc.script)
			mode := routing.TLSNone
			if strings.Contains(tc.name, "starttls") {
				mode = routing.TLSStartTLS
			}
			start := time.Now()
			err := probe(t, s.backend(mode), &session.Dialer{}, tc.timeout)
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("probe: %v, want an error with %q", err, tc.errHas)
			}
			if d := time.Since(start); d > tc.within {
				t.Fatalf("probe took %v", d)
			}
		})
	}
}

// STARTTLS as configured: the backend's certificate is verified as a
// login verifies it (tls_ca_file, tls_server_name), and a backend whose
// certificate does not verify is down: logins to it would fail too.
func TestProbeStartTLS(t *testing.T) {
	cert := selfSigned(t)
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	srvCfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	s := newProbeBackend(t, func(s *probeBackend, c net.Conn, r *bufio.Reader) {
		c.Write([]byte("* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n"))
		if s.read(r) != "P1 STARTTLS" {
			return
		}
		c.Write([]byte("P1 OK Begin TLS negotiation now.\r\n"))
		tc := tls.Server(c, srvCfg)
		if tc.Handshake() != nil {
			return
		}
		tr := bufio.NewReader(tc)
		if s.read(tr) == "P2 CAPABILITY" {
			tc.Write([]byte("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nP2 OK done\r\n"))
		}
		logoutOK(s, tc, tr)
	})
	// The test CA is not trusted: down, with the reason.
	err = probe(t, s.backend(routing.TLSStartTLS), &session.Dialer{}, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "STARTTLS handshake") {
		t.Fatalf("untrusted certificate: %v", err)
	}
	// Trusted through tls_ca_file: healthy.
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	b := s.backend(routing.TLSStartTLS)
	b.TLSCAFile = ca
	if err := probe(t, b, &session.Dialer{}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	got := s.received()
	if want := []string{"P1 STARTTLS", "P1 STARTTLS", "P2 CAPABILITY", "P5 LOGOUT"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("backend received %q, want %q", got, want)
	}
}

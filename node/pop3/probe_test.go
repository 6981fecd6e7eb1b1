package pop3

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// probeFake connects to a fake backend and probes it as the daemon does
// (session.Dialer, the deadline on the connection).
func probeFake(t *testing.T, b routing.Backend, timeout time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d := &session.Dialer{}
	s, err := d.Dial(ctx, &b, routing.POP3, netip.AddrPort{}, netip.AddrPort{})
	if err != nil {
		return err
	}
	defer s.Close()
	dl, _ := ctx.Deadline()
	_ = s.SetDeadline(dl)
	return Probe(ctx, s, &b, d.TLSConfig)
}

func TestProbeHealthy(t *testing.T) {
	fb := startBackend(t, &fakeBackend{})
	if err := probeFake(t, backendAt(fb.Port(), routing.ForwardNone), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(fb.Received(), "|"); got != "CAPA|QUIT" {
		t.Fatalf("backend received %q, want CAPA then QUIT (no login)", got)
	}
	// A backend without CAPA is still healthy (logins fall back to USER/PASS).
	fb = startBackend(t, &fakeBackend{NoCapa: true})
	if err := probeFake(t, backendAt(fb.Port(), routing.ForwardNone), 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestProbeFailures(t *testing.T) {
	cases := []struct {
		name    string
		fb      *fakeBackend
		tls     routing.TLSMode
		timeout time.Duration
		errHas  string
		within  time.Duration
	}{
		{"refuses", &fakeBackend{Greeting: "-ERR [SYS/TEMP] Too many connections"}, routing.TLSNone, 5 * time.Second, "reading greeting: unexpected backend greeting", 2 * time.Second},
		{"imap on the pop3 port", &fakeBackend{Greeting: "* OK IMAP4rev1 ready"}, routing.TLSNone, 5 * time.Second, "reading greeting", 2 * time.Second},
		// No line end within 4 KiB: given up at once, not at the deadline.
		{"garbage", &fakeBackend{Mode: "garbage"}, routing.TLSNone, 5 * time.Second, "reading greeting: " + ErrLineTooLong.Error(), 2 * time.Second},
		{"silent", &fakeBackend{Mode: "silent"}, routing.TLSNone, 300 * time.Millisecond, "reading greeting", 3 * time.Second},
		{"no stls offered", &fakeBackend{}, routing.TLSStartTLS, 5 * time.Second, "STLS: backend does not offer STLS", 2 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fb := startBackend(t, tc.fb)
			b := backendAt(fb.Port(), routing.ForwardNone)
			b.TLS = tc.tls
			start := time.Now()
			err := probeFake(t, b, tc.timeout)
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("probe: %v, want an error with %q", err, tc.errHas)
			}
			if d := time.Since(start); d > tc.within {
				t.Fatalf("probe took %v", d)
			}
		})
	}
}

// STLS is verified as a login verifies it: an untrusted certificate is a
// failed probe; with tls_ca_file the probe upgrades, asks CAPA again and
// quits inside TLS.
func TestProbeSTLS(t *testing.T) {
	cert := testrig.SelfSigned(t)
	fb := startBackend(t, &fakeBackend{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	b := backendAt(fb.Port(), routing.ForwardNone)
	b.TLS = routing.TLSStartTLS
	if err := probeFake(t, b, 5*time.Second); err == nil || !strings.Contains(err.Error(), "STLS: TLS handshake") {
		t.Fatalf("untrusted certificate: %v", err)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	b.TLSCAFile = ca
	if err := probeFake(t, b, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	got := fb.Received()
	if want := "CAPA|STLS|tls: CAPA|tls: QUIT"; !strings.HasSuffix(strings.Join(got, "|"), want) {
		t.Fatalf("backend received %q, want it to end with %q", got, want)
	}
}

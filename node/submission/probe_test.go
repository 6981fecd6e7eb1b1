package submission

import (
	"context"
	"crypto/tls"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

func probe(t *testing.T, b routing.Backend) error {
	t.Helper()
	d := &session.Dialer{}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := d.Dial(ctx, &b, routing.Submission, netip.AddrPort{}, netip.AddrPort{})
	if err != nil {
		return err
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	return Probe(ctx, s, &b, "probe.example", func(b *routing.Backend) (*tls.Config, error) { return d.TLSConfig(b) })
}

// The health probe: greeting, EHLO, STARTTLS and EHLO again when
// configured, QUIT; a refusing greeting or a missing STARTTLS fails it
// with the phase named.
func TestProbe(t *testing.T) {
	fb := startBackend(t, &fakeBackend{TLS: testrig.TLSServerConfig(t)})
	b := backendAt(fb.Port(), routing.ForwardNone)
	b.TLS, b.InsecureSkipVerify = routing.TLSStartTLS, true
	if err := probe(t, b); err != nil {
		t.Fatal(err)
	}
	if got := fb.Received(); !slices.Equal(got, []string{"EHLO probe.example", "STARTTLS", "tls: EHLO probe.example", "tls: QUIT"}) {
		t.Fatalf("backend saw %q", got)
	}

	bad := startBackend(t, &fakeBackend{Greeting: "554 5.3.2 not now"})
	if err := probe(t, backendAt(bad.Port(), routing.ForwardNone)); err == nil || !strings.Contains(err.Error(), "reading greeting") {
		t.Fatalf("refusing greeting: %v", err)
	}
	plain := startBackend(t, &fakeBackend{})
	b2 := backendAt(plain.Port(), routing.ForwardNone)
	b2.TLS = routing.TLSStartTLS
	if err := probe(t, b2); err == nil || !strings.Contains(err.Error(), "STARTTLS: backend does not offer STARTTLS") {
		t.Fatalf("no STARTTLS: %v", err)
	}
}

package cluster

import (
	"context"
	"fmt"
	"net"

	"github.com/portico-mail/portico/routing"
)

// ProbeFunc checks one backend: nil when a login could use it now. It
// must return by ctx's deadline (HealthConfig.Timeout) and must stop
// early when ctx is cancelled (Health.Stop).
//
// The cluster package does not speak IMAP or POP3: the node injects a
// probe that connects and talks to a backend exactly as a login does
// (ops/daemon builds it from node/session's Dialer and the protocol
// packages' Probe), so that a backend behind a PROXY header, STARTTLS or
// a certificate that does not verify is judged as logins would find it.
// The dependency runs that way round because the proxy's packages already
// depend on routing, and the cluster must not depend on the proxy.
type ProbeFunc func(ctx context.Context, b *routing.Backend) error

// ConnectProbe is the probe used when HealthConfig.Probe is nil: a TCP
// connection to the backend's IMAP (else POP3, else ManageSieve, else
// submission) port, closed at once. It
// knows nothing of the protocols, so it cannot tell a backend that would
// refuse logins from one that would take them; nodes always inject a real
// probe.
func ConnectProbe(ctx context.Context, b *routing.Backend) error {
	addr := probeAddr(b)
	if addr == "" {
		return fmt.Errorf("backend %s has no IMAP, POP3, ManageSieve or submission port", b.ID)
	}
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// probeAddr is the address a backend is probed at: IMAP when it serves
// IMAP, else POP3, else ManageSieve, else submission (one protocol per
// backend: a backend is up or down as a
// whole).
func probeAddr(b *routing.Backend) string {
	if a := b.Addr(routing.IMAP); a != "" {
		return a
	}
	if a := b.Addr(routing.POP3); a != "" {
		return a
	}
	if a := b.Addr(routing.Sieve); a != "" {
		return a
	}
	return b.Addr(routing.Submission)
}

// probe runs the configured probe on b within the probe timeout, and
// gives up at once when health checking stops.
func (h *Health) probe(b *routing.Backend) error {
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.Timeout)
	defer cancel()
	go func() {
		select {
		case <-h.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	f := h.cfg.Probe
	if f == nil {
		f = ConnectProbe
	}
	return f(ctx, b)
}

package daemon

import (
	"context"
	"net/netip"
	"time"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/node/imap"
	"github.com/portico-mail/portico/node/pop3"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/node/sieve"
	"github.com/portico-mail/portico/node/submission"
	"github.com/portico-mail/portico/routing"
)

// backendProbe is the cluster's health probe: it reaches a backend exactly
// as a login does, through the node's own Dialer (PROXY v2 header for
// forward: proxy, LOCAL since the node connects on its own behalf;
// implicit TLS verified with the backend's tls_ca_file and
// tls_server_name; the same TLS session cache), then runs the protocol's
// Probe (greeting, STARTTLS/STLS as configured, LOGOUT/QUIT). IMAP when
// the backend serves it, else POP3, else ManageSieve, else submission.
func backendProbe(d *session.Dialer) cluster.ProbeFunc {
	return func(ctx context.Context, b *routing.Backend) error {
		p := routing.IMAP
		switch {
		case b.IMAPPort != 0:
		case b.POP3Port != 0:
			p = routing.POP3
		case b.SievePort != 0:
			p = routing.Sieve
		default:
			p = routing.Submission
		}
		s, err := d.Dial(ctx, b, p, netip.AddrPort{}, netip.AddrPort{})
		if err != nil {
			return err
		}
		defer s.Close()
		// The dialogue runs under ctx's deadline, and stops when ctx is
		// cancelled (health checking stopped).
		if dl, ok := ctx.Deadline(); ok {
			_ = s.SetDeadline(dl)
		}
		stop := context.AfterFunc(ctx, func() { _ = s.SetDeadline(time.Now()) })
		defer stop()
		switch p {
		case routing.IMAP:
			return imap.Probe(ctx, s, b, d.TLSConfig)
		case routing.POP3:
			return pop3.Probe(ctx, s, b, d.TLSConfig)
		case routing.Sieve:
			return sieve.Probe(ctx, s, b, d.TLSConfig)
		}
		return submission.Probe(ctx, s, b, "", d.TLSConfig)
	}
}

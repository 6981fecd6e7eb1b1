package submission

import (
	"context"
	"crypto/tls"
	"fmt"

	"github.com/portico-mail/portico/node/internal/upstream"
	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/routing"
)

// Probe checks that a submission backend would take a login, by the same
// path a login takes, without logging in. be is a connection made by
// session.Dialer (PROXY header, implicit TLS); Probe runs the login's
// prelude with its bounds (greeting, EHLO with hostname, default the
// system's host name, STARTTLS when
// b.TLS is starttls, verified with tlsConfig as logins are) and ends with
// QUIT. Every read runs under be's deadline, which the caller sets. The
// error names the phase that failed.
func Probe(ctx context.Context, be *netx.Stream, b *routing.Backend, hostname string, tlsConfig func(*routing.Backend) (*tls.Config, error)) error {
	hostname = hostnameOr(hostname)
	bk := &backend{
		r: be.R, w: be.W, stream: be,
		tlsConfig: func() (*tls.Config, error) { return tlsConfig(b) },
	}
	if err := bk.prelude(ctx, b, hostname); err != nil {
		return err
	}
	r, err := bk.command("QUIT")
	switch {
	case err != nil:
		return phaseError(phaseQUIT, err)
	case r.class() != 2:
		return phaseError(phaseQUIT, fmt.Errorf("backend answered %q", upstream.Trunc(r.raw)))
	}
	return nil
}

package pop3

import (
	"context"
	"crypto/tls"
	"fmt"

	"github.com/portico-mail/portico/node/internal/upstream"
	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/routing"
)

const phaseQUIT = "QUIT"

// Probe checks that a POP3 backend would take a login, by the same path a
// login takes, without logging in. be is a connection made by
// session.Dialer (PROXY header, implicit TLS); Probe runs the login's
// prelude with its bounds (greeting, CAPA, STLS when b.TLS is starttls,
// verified with tlsConfig as logins are; every line at most
// backendMaxLine bytes) and ends with QUIT. Every read runs under be's
// deadline, which the caller sets. The error names the phase that failed.
func Probe(ctx context.Context, be *netx.Stream, b *routing.Backend, tlsConfig func(*routing.Backend) (*tls.Config, error)) error {
	bk := &backend{
		r: be.R, w: be.W, stream: be,
		tlsConfig: func() (*tls.Config, error) { return tlsConfig(b) },
	}
	if err := bk.prelude(ctx, b); err != nil {
		return err
	}
	r, err := bk.command("QUIT")
	if err != nil {
		return phaseError(phaseQUIT, err)
	}
	if !isOK(r) {
		return phaseError(phaseQUIT, fmt.Errorf("backend answered %q", upstream.Shorten(r)))
	}
	return nil
}

package imap

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/routing"
)

// tagLogout tags the probe's LOGOUT.
const tagLogout = "P5"

// Probe checks that an IMAP backend would take a login, by the same path
// a login takes, without logging in. be is a connection made by
// session.Dialer (so a forward: proxy backend has had its PROXY header and
// an implicit-TLS one its verified handshake); Probe reads the greeting and
// capabilities with the login's bounds (one response at most
// backendMaxLine bytes plus backendMaxLiterals of literals), upgrades with
// STARTTLS when b.TLS says so (verified with tlsConfig, as logins are),
// and ends with LOGOUT. Every read runs under be's deadline, which the
// caller sets. The error names the phase that failed.
func Probe(ctx context.Context, be *netx.Stream, b *routing.Backend, tlsConfig func(*routing.Backend) (*tls.Config, error)) error {
	bk := newBackend(nil, be, tlsConfig)
	if err := bk.greeting(); err != nil {
		return err
	}
	if b.TLS == routing.TLSStartTLS {
		if err := bk.starttls(ctx, b); err != nil {
			return err
		}
	}
	return bk.logout()
}

// logout says LOGOUT and reads to its tagged OK. A server that closes
// right after its "* BYE" has still answered (RFC 9051 §6.1.3 requires
// the BYE first).
func (b *backend) logout() error {
	if _, err := b.be.WriteString(tagLogout + " LOGOUT\r\n"); err != nil {
		return phaseError("LOGOUT", err)
	}
	if err := b.be.Flush(); err != nil {
		return phaseError("LOGOUT", err)
	}
	bye := false
	for n := 0; n <= backendMaxUntagged; n++ {
		r, err := b.rr.Read()
		switch {
		case err != nil && bye && errors.Is(err, io.EOF):
			return nil
		case err != nil:
			return phaseError("LOGOUT", err)
		case r.Tag == "*" && r.Status == "BYE":
			bye = true
		case r.Tag == "*":
		case r.Tag == tagLogout && r.Status == "OK":
			return nil
		case r.Tag == tagLogout:
			return phaseError("LOGOUT", fmt.Errorf("backend answered %q", trunc(r.Raw)))
		default:
			return phaseError("LOGOUT", fmt.Errorf("unexpected response %q", trunc(r.Raw)))
		}
	}
	return phaseError("LOGOUT", errors.New("too many untagged responses"))
}

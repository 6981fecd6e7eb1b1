package ldapsrc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
)

// Connection pool bounds: a few idle connections serve the on-miss
// lookups of a busy node without a connect and bind each; one idle for
// long may have been dropped by a firewall without a word, so it is
// closed rather than trusted.
const (
	maxIdle     = 4
	maxIdleTime = 30 * time.Second
)

// conn is one bound connection: the LDAP client and the socket under it,
// which is what a cancelled context closes.
type conn struct {
	l         *ldap.Conn
	raw       net.Conn
	idleSince time.Time
}

func (c *conn) close() {
	c.raw.Close()
	c.l.Close()
}

// errClosed is returned once Close was called.
var errClosed = errors.New("source closed")

// get returns an idle connection (reused) or a new one.
func (d *Directory) get(ctx context.Context) (c *conn, reused bool, err error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, false, errClosed
	}
	var stale []*conn
	for len(d.idle) > 0 {
		c = d.idle[len(d.idle)-1]
		d.idle = d.idle[:len(d.idle)-1]
		if !c.l.IsClosing() && time.Since(c.idleSince) < maxIdleTime {
			d.inUse[c] = struct{}{}
			break
		}
		stale = append(stale, c)
		c = nil
	}
	d.mu.Unlock()
	for _, s := range stale {
		s.close()
	}
	if c != nil {
		return c, true, nil
	}
	c, err = d.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		c.close()
		return nil, false, errClosed
	}
	d.inUse[c] = struct{}{}
	d.mu.Unlock()
	return c, false, nil
}

// release returns c to the pool when keep is set and there is room, and
// closes it otherwise.
func (d *Directory) release(c *conn, keep bool) {
	d.mu.Lock()
	delete(d.inUse, c)
	if keep && !d.closed && len(d.idle) < maxIdle && !c.l.IsClosing() {
		c.idleSince = time.Now()
		d.idle = append(d.idle, c)
		c = nil
	}
	d.mu.Unlock()
	if c != nil {
		c.close()
	}
}

// dial connects, upgrades with StartTLS if configured, and binds, all
// within the timeout and ctx.
func (d *Directory) dial(ctx context.Context) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	network, addr, implicitTLS := d.address()
	var (
		raw net.Conn
		err error
	)
	nd := &net.Dialer{}
	if implicitTLS {
		raw, err = (&tls.Dialer{NetDialer: nd, Config: d.tls}).DialContext(ctx, network, addr)
	} else {
		raw, err = nd.DialContext(ctx, network, addr)
	}
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	l := ldap.NewConn(raw, implicitTLS)
	l.Start()
	l.SetTimeout(d.cfg.Timeout)
	c := &conn{l: l, raw: raw}
	// The client's own calls (StartTLS, Bind) take no context: closing
	// the socket is what ends them when ctx ends or the timeout passes.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	err = d.setup(c)
	if !stop() {
		c.close()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("connect: no answer within %v: %w", d.cfg.Timeout, ctx.Err())
		}
		return nil, fmt.Errorf("connect: %w", ctx.Err())
	}
	if err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func (d *Directory) setup(c *conn) error {
	if d.cfg.StartTLS {
		if err := c.l.StartTLS(d.tls); err != nil {
			return fmt.Errorf("starttls: %w", err)
		}
	}
	if d.cfg.BindDN == "" {
		return nil
	}
	pw, err := d.cfg.password()
	if err != nil {
		return err
	}
	if _, err := c.l.SimpleBind(ldap.NewSimpleBindRequest(d.cfg.BindDN, pw, nil)); err != nil {
		// go-ldap's errors carry the result code and the server's
		// diagnostic message, never the request: the password stays out.
		return fmt.Errorf("bind as %s: %w", d.cfg.BindDN, err)
	}
	return nil
}

// address is where to connect: network, address, and whether TLS starts
// at once (ldaps).
func (d *Directory) address() (network, addr string, implicitTLS bool) {
	raw := d.cfg.URL
	scheme, rest, _ := strings.Cut(raw, "://")
	if strings.EqualFold(scheme, "ldapi") {
		host, _, _ := strings.Cut(rest, "/")
		path, err := url.PathUnescape(host)
		if err != nil || path == "" {
			path = "/var/run/slapd/ldapi"
		}
		return "unix", path, false
	}
	u, _ := url.Parse(raw) // Check parsed it
	port := u.Port()
	implicitTLS = strings.EqualFold(u.Scheme, "ldaps")
	if port == "" {
		port = ldap.DefaultLdapPort
		if implicitTLS {
			port = ldap.DefaultLdapsPort
		}
	}
	return "tcp", net.JoinHostPort(u.Hostname(), port), implicitTLS
}

// run runs op on a pooled connection, within ctx: a cancelled ctx closes
// the connection (the directory abandons what it was doing) and run
// returns ctx's error. An op that failed on a reused connection because
// that connection was gone (the directory restarted, an idle timeout) is
// run once more on a new one, unless it made progress (called put).
func (d *Directory) run(ctx context.Context, op func(c *conn) (progress bool, err error)) error {
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		c, reused, err := d.get(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		stop := context.AfterFunc(ctx, func() { c.raw.Close() })
		progress, err := op(c)
		cancelled := !stop()
		lost := c.l.IsClosing()
		d.release(c, !cancelled && !lost && (err == nil || isResult(err)))
		switch {
		case cancelled:
			return ctx.Err()
		case err == nil:
			return nil
		case d.isClosed():
			return errClosed
		case attempt == 0 && reused && !progress && (lost || ldap.IsErrorWithCode(err, ldap.ErrorNetwork)):
			d.log.Debug("ldap source: connection lost, reconnecting", "err", err)
			continue
		}
		return err
	}
}

// isResult tells an error the directory answered with (a result code:
// the connection is fine) from one of the connection or the client.
func isResult(err error) bool {
	var le *ldap.Error
	return errors.As(err, &le) && le.ResultCode < ldap.ErrorNetwork
}

func (d *Directory) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// criticalPaging is the Simple Paged Results control marked critical: a
// directory that cannot page refuses the search (unavailableCriticalExtension)
// instead of ignoring the control and answering up to its size limit,
// which would look like a complete, smaller directory.
type criticalPaging struct{ ldap.ControlPaging }

func (c *criticalPaging) Encode() *ber.Packet {
	plain := c.ControlPaging.Encode() // type, value
	p := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "Control")
	p.AppendChild(plain.Children[0])
	p.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, true, "Criticality"))
	p.AppendChild(plain.Children[1])
	return p
}

// search runs a paged subtree search of filter under the base and calls
// each for every entry, a page at a time (a page, at most page_size
// entries, is what is held in memory). It ends with an error unless the
// directory completed the search: a size or time limit, a lost
// connection or a page without the paging control is an error, never a
// shorter result.
func (d *Directory) search(ctx context.Context, filter string, each func(*ldap.Entry) error) error {
	var eachErr error
	err := d.run(ctx, func(c *conn) (progress bool, err error) {
		paging := &criticalPaging{ControlPaging: ldap.ControlPaging{PagingSize: uint32(d.cfg.PageSize)}}
		for {
			req := ldap.NewSearchRequest(d.cfg.Base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
				0, d.timeLimit(), false, filter, d.attrs, []ldap.Control{paging})
			res, err := c.l.Search(req)
			if err != nil {
				return progress, err
			}
			for _, e := range res.Entries {
				if err := ctx.Err(); err != nil {
					return progress, err
				}
				progress = true
				if err := each(e); err != nil {
					eachErr = err
					return progress, err
				}
			}
			if n := len(res.Referrals); n > 0 {
				d.log.Debug("ldap source: search references ignored", "count", n)
			}
			ctrl, ok := ldap.FindControl(res.Controls, ldap.ControlTypePaging).(*ldap.ControlPaging)
			if !ok {
				return progress, errors.New("the directory ended a page without the paged results control")
			}
			if len(ctrl.Cookie) == 0 {
				return progress, nil
			}
			paging.SetCookie(ctrl.Cookie)
		}
	})
	if eachErr != nil {
		return eachErr
	}
	return err
}

// timeLimit is the server-side time limit of a search request, in whole
// seconds: the directory stops working on a search the client gave up.
func (d *Directory) timeLimit() int {
	return int((d.cfg.Timeout + time.Second - 1) / time.Second)
}

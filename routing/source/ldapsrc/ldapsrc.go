// Package ldapsrc is the LDAP directory source: the user -> mail server
// mapping as a directory holds it (a mailHost-style attribute, as
// Perdition's LDAP map and Dovecot's passdb proxy host= field read it),
// which the raft leader mirrors into the replicated table and a node may
// ask on a login the table misses.
//
// It speaks LDAPv3 (RFC 4511) over ldap://, ldaps:// or ldapi://, with
// StartTLS (RFC 4513 section 3) and simple bind (section 5.1.3), and reads
// with subtree searches under one base (RFC 4511 section 4.5):
//
//   - Full walks every entry the filter selects with the Simple Paged
//     Results control (RFC 2696), a page at a time, so a million entries
//     pass through page_size entries of memory and below the directory's
//     size limit. The control is marked critical: a directory that cannot
//     page refuses rather than answering up to its size limit, and a
//     size or time limit, a lost connection or a page without the control
//     fails the walk: a truncated directory never looks like a smaller one.
//   - Changes reads the entries whose modifyTimestamp is at or after the
//     watermark. LDAP reports no deletions this way (nor an entry that
//     stopped matching the filter): those are found by the next full sync.
//   - Lookup is one equality search by the user attribute, the client's
//     name escaped (RFC 4515 section 3), so no name can add filter syntax.
//
// # Watermark
//
// The watermark is a time on the directory's clock (GeneralizedTime,
// RFC 4517 section 3.3.13), never on Portico's, so the two clocks may
// disagree. A sync that ran for d and saw the newest modifyTimestamp m
// started no later than m-d on the directory's clock (every stamp it saw
// was written before it ended), so every entry changed during or after it
// has a stamp of at least m-d: the next watermark is m-d less
// changes_overlap (room for replication delay and skew between the
// directory's own providers), rounded down to the second, and never
// before the previous one. The filter is ">=": modifyTimestamp has whole
// seconds, and an entry changed in the same second as the watermark must
// be read again; reading an entry twice is harmless (the syncer writes
// differences). A full sync whose entries carry no readable
// modifyTimestamp returns no watermark (every sync is then a full one); an
// empty one starts from its base entry's stamp. The watermark also
// carries a fingerprint of the base, filter and attributes: after they
// change, Changes answers ErrNoChanges and the syncer reads in full.
//
// # Entries
//
// An entry without the user or target attribute, with an empty one or
// with several values of one (or of the login attribute) says nothing
// usable: it is skipped, counted by reason (Skipped) and logged once per
// sync with a few examples, never taken half. On Lookup such an entry, or
// two entries for one name, is an error (the directory answered, but not
// with a route), and ErrNotFound means the directory answered with no
// entry at all.
//
// # Connections
//
// A small pool of bound connections serves the methods concurrently. A
// connection the directory dropped (a restart, an idle timeout) is
// replaced once, transparently, when nothing was delivered yet; a
// cancelled context closes the connection its operation runs on, which
// makes the directory abandon the operation. Errors name the directory
// (scheme and host) and the step (connect, starttls, bind, search),
// never the password.
package ldapsrc

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"

	"github.com/portico-mail/portico/routing/source"
)

// timestampAttribute is what Changes filters on: the operational attribute
// every LDAPv3 directory maintains (RFC 4512 section 3.4.3).
const timestampAttribute = "modifyTimestamp"

// Directory reads one LDAP directory.
type Directory struct {
	cfg    Config
	log    *slog.Logger
	server string      // scheme://host, for errors
	tls    *tls.Config // ldaps or StartTLS
	attrs  []string    // requested attributes
	fp     string      // fingerprint of what is searched, in watermarks

	mu      sync.Mutex
	idle    []*conn
	inUse   map[*conn]struct{}
	closed  bool
	skipped map[string]uint64
	noStamp bool // logged that entries carry no readable timestamp
}

// Open returns the source of cfg (after Check). It does not connect: the
// first operation does.
func Open(cfg Config, log *slog.Logger) (source.Fetcher, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Directory{
		cfg:     cfg,
		server:  cfg.server(),
		inUse:   map[*conn]struct{}{},
		skipped: map[string]uint64{},
	}
	d.log = log.With("ldap", d.server)
	if _, err := cfg.password(); err != nil {
		return nil, err
	}
	network, addr, implicitTLS := d.address()
	if implicitTLS || cfg.StartTLS {
		host, _, _ := net.SplitHostPort(addr)
		d.tls = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureSkipVerify}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("ca_file: %w", err)
			}
			d.tls.RootCAs = x509.NewCertPool()
			if !d.tls.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("ca_file %s: no PEM certificate in it", cfg.CAFile)
			}
		}
		if cfg.InsecureSkipVerify {
			d.log.Warn("ldap source: insecure_skip_verify is set: the directory's certificate is not verified, and the bind password goes to whoever answers")
		}
	} else if cfg.BindDN != "" && network == "tcp" {
		if host, _, _ := net.SplitHostPort(addr); !isLoopback(host) {
			d.log.Warn("ldap source: the bind password crosses the network in clear: use ldaps:// or start_tls")
		}
	}
	d.attrs = []string{cfg.UserAttribute, cfg.TargetAttribute, timestampAttribute}
	if cfg.LoginAttribute != "" {
		d.attrs = append(d.attrs, cfg.LoginAttribute)
	}
	sum := sha256.Sum256([]byte(strings.Join([]string{
		strings.ToLower(cfg.Base), cfg.Filter,
		strings.ToLower(cfg.UserAttribute), strings.ToLower(cfg.TargetAttribute), strings.ToLower(cfg.LoginAttribute),
	}, "\x00")))
	d.fp = hex.EncodeToString(sum[:4])
	return d, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// wrap names the directory and the step in an error that is not ctx's
// own or a put's.
func (d *Directory) wrap(step string, err error) error {
	return fmt.Errorf("ldap %s: %s: %w", d.server, step, err)
}

// Full implements source.Fetcher.
func (d *Directory) Full(ctx context.Context, put func(source.Entry) error) (string, error) {
	p := d.newPass("full")
	start := time.Now()
	if err := p.search(ctx, d.cfg.Filter, "full sync under "+d.cfg.Base, put); err != nil {
		return "", err
	}
	took := time.Since(start)
	switch {
	case p.stamped:
		return d.watermark(p.newest, took), nil
	case p.seen > 0:
		d.mu.Lock()
		first := !d.noStamp
		d.noStamp = true
		d.mu.Unlock()
		if first {
			d.log.Warn("ldap source: the entries carry no readable " + timestampAttribute + " (an ACL?): no incremental sync, every sync is a full one")
		}
		return "", nil
	}
	// No entry: start from the base entry's own stamp, a time the
	// directory's clock passed before this sync.
	stamp, err := d.baseStamp(ctx)
	if err != nil || stamp.IsZero() {
		return "", nil
	}
	return d.watermark(stamp, took), nil
}

// baseStamp reads the base entry's modifyTimestamp.
func (d *Directory) baseStamp(ctx context.Context) (time.Time, error) {
	var t time.Time
	err := d.run(ctx, func(c *conn) (bool, error) {
		res, err := c.l.Search(ldap.NewSearchRequest(d.cfg.Base, ldap.ScopeBaseObject, ldap.NeverDerefAliases,
			1, d.timeLimit(), false, "(objectClass=*)", []string{timestampAttribute}, nil))
		if err != nil {
			return false, err
		}
		if len(res.Entries) == 1 {
			t, _ = parseStamp(res.Entries[0].GetEqualFoldAttributeValue(timestampAttribute))
		}
		return false, nil
	})
	return t, err
}

// Changes implements source.Fetcher.
func (d *Directory) Changes(ctx context.Context, watermark string, put func(source.Change) error) (string, error) {
	since, ok := d.parseWatermark(watermark)
	if !ok {
		return "", source.ErrNoChanges
	}
	p := d.newPass("changes")
	start := time.Now()
	filter := fmt.Sprintf("(&%s(%s>=%s))", d.cfg.Filter, timestampAttribute, formatStamp(since))
	err := p.search(ctx, filter, "changes since "+formatStamp(since), func(en source.Entry) error {
		return put(source.Change{Entry: en})
	})
	if err != nil {
		return "", err
	}
	if !p.stamped {
		return d.formatWatermark(since), nil
	}
	next := d.next(p.newest, time.Since(start))
	if next.Before(since) {
		next = since
	}
	return d.formatWatermark(next), nil
}

// Lookup implements source.Fetcher.
func (d *Directory) Lookup(ctx context.Context, user string) (source.Entry, error) {
	if user == "" {
		return source.Entry{}, d.wrap("lookup", errors.New("empty user name"))
	}
	filter := fmt.Sprintf("(&%s(%s=%s))", d.cfg.Filter, d.cfg.UserAttribute, ldap.EscapeFilter(user))
	var entries []*ldap.Entry
	err := d.run(ctx, func(c *conn) (bool, error) {
		// A size limit of 2: one entry is the answer, a second one
		// makes it ambiguous, and more are not worth reading.
		res, err := c.l.Search(ldap.NewSearchRequest(d.cfg.Base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
			2, d.timeLimit(), false, filter, d.attrs, nil))
		if res != nil {
			entries = res.Entries
		}
		if ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) && len(entries) == 2 {
			return false, nil
		}
		return false, err
	})
	if err != nil {
		return source.Entry{}, d.wrap("lookup", err)
	}
	switch len(entries) {
	case 0:
		return source.Entry{}, source.ErrNotFound
	case 1:
	default:
		return source.Entry{}, d.wrap("lookup", fmt.Errorf("%w: several entries (%s, %s) for one user", ErrBadEntry, entries[0].DN, entries[1].DN))
	}
	en, reason := d.entry(entries[0])
	if reason != "" {
		d.count(reason, 1)
		return source.Entry{}, d.wrap("lookup", fmt.Errorf("%w: %s: %s", ErrBadEntry, entries[0].DN, reason))
	}
	return en, nil
}

// ErrBadEntry is wrapped by Lookup's error when the directory answered
// with an entry that gives no route (a missing or multi-valued attribute,
// or several entries for the name): not ErrNotFound, since the user may
// exist, and not a route either.
var ErrBadEntry = errors.New("unusable directory entry")

// Close implements source.Fetcher: it closes every connection, which ends
// operations in flight.
func (d *Directory) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	all := d.idle
	d.idle = nil
	for c := range d.inUse {
		all = append(all, c)
	}
	d.mu.Unlock()
	for _, c := range all {
		c.close()
	}
	return nil
}

// SkippedByReason implements source.SkipCounter (Skipped).
func (d *Directory) SkippedByReason() map[string]uint64 { return d.Skipped() }

// Skipped returns how many entries each sync and lookup skipped since
// Open, by reason (a small fixed set, fit for a metric label).
func (d *Directory) Skipped() map[string]uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := make(map[string]uint64, len(d.skipped))
	for k, v := range d.skipped {
		m[k] = v
	}
	return m
}

func (d *Directory) count(reason string, n uint64) {
	d.mu.Lock()
	d.skipped[reason] += n
	d.mu.Unlock()
}

// Reasons an entry is skipped.
const (
	SkipNoUser       = "no user attribute"
	SkipManyUsers    = "several user attribute values"
	SkipNoTarget     = "no target attribute"
	SkipManyTargets  = "several target attribute values"
	SkipManyLogins   = "several login attribute values"
	maxSkipsExamples = 5
)

// entry reads the route out of e, or says why it has none.
func (d *Directory) entry(e *ldap.Entry) (source.Entry, string) {
	// one returns an attribute's value and how many non-empty values it
	// has. Every attribute of the name counts: slapd may return one
	// attribute in several parts (an entry loaded by slapadd -q with its
	// values apart), which is still one attribute with several values.
	one := func(attr string) (string, int) {
		var v string
		n := 0
		for _, a := range e.Attributes {
			if !strings.EqualFold(a.Name, attr) {
				continue
			}
			for _, s := range a.Values {
				if s = strings.TrimSpace(s); s != "" && s != v {
					v = s
					n++
				}
			}
		}
		return v, n
	}
	user, n := one(d.cfg.UserAttribute)
	switch {
	case n == 0:
		return source.Entry{}, SkipNoUser
	case n > 1:
		return source.Entry{}, SkipManyUsers
	}
	target, n := one(d.cfg.TargetAttribute)
	switch {
	case n == 0:
		return source.Entry{}, SkipNoTarget
	case n > 1:
		return source.Entry{}, SkipManyTargets
	}
	var login string
	if d.cfg.LoginAttribute != "" {
		if login, n = one(d.cfg.LoginAttribute); n > 1 {
			return source.Entry{}, SkipManyLogins
		}
	}
	return source.Entry{User: user, Target: target, Login: login}, ""
}

// pass tallies one sync: entries delivered and skipped, and the newest
// timestamp seen.
type pass struct {
	d        *Directory
	kind     string
	n, seen  int
	skips    map[string]uint64
	examples []string
	stamped  bool
	newest   time.Time
}

func (d *Directory) newPass(kind string) *pass {
	return &pass{d: d, kind: kind, skips: map[string]uint64{}}
}

// search is the pass's walk over the entries that match filter: each
// one's stamp is noted; one that makes no route is skipped (and counted),
// the others go to put. put's error ends it and is returned as it is; the
// directory's is labelled with step. A pass that went through is logged
// (done).
func (p *pass) search(ctx context.Context, filter, step string, put func(source.Entry) error) error {
	var putErr error
	err := p.d.search(ctx, filter, func(e *ldap.Entry) error {
		p.stamp(e)
		en, reason := p.d.entry(e)
		if reason != "" {
			p.skip(e.DN, reason)
			return nil
		}
		p.n++
		if err := put(en); err != nil {
			putErr = err
			return err
		}
		return nil
	})
	if putErr != nil {
		return putErr
	}
	if err != nil {
		return p.d.wrap(step, err)
	}
	p.done()
	return nil
}

func (p *pass) stamp(e *ldap.Entry) {
	p.seen++
	t, ok := parseStamp(e.GetEqualFoldAttributeValue(timestampAttribute))
	if !ok {
		return
	}
	if !p.stamped || t.After(p.newest) {
		p.newest = t
	}
	p.stamped = true
}

func (p *pass) skip(dn, reason string) {
	p.skips[reason]++
	if len(p.examples) < maxSkipsExamples {
		p.examples = append(p.examples, dn+" ("+reason+")")
	}
}

func (p *pass) done() {
	if len(p.skips) == 0 {
		p.d.log.Debug("ldap source: "+p.kind, "entries", p.n)
		return
	}
	reasons := make([]string, 0, len(p.skips))
	total := uint64(0)
	for r, n := range p.skips {
		reasons = append(reasons, fmt.Sprintf("%s: %d", r, n))
		total += n
		p.d.count(r, n)
	}
	sort.Strings(reasons)
	p.d.log.Warn("ldap source: "+p.kind+": entries skipped", "entries", p.n, "skipped", total,
		"reasons", strings.Join(reasons, ", "), "examples", strings.Join(p.examples, "; "))
}

// ---- watermarks ----

// stampLayout is how the watermark and the filter write a time.
const stampLayout = "20060102150405Z"

func parseStamp(s string) (time.Time, bool) {
	if s == "" {
		return time.Time{}, false
	}
	t, err := ber.ParseGeneralizedTime([]byte(s))
	if err != nil {
		return time.Time{}, false
	}
	return t.UTC(), true
}

func formatStamp(t time.Time) string { return t.UTC().Format(stampLayout) }

// next is the watermark after a sync that took took and saw newest as the
// newest stamp (see the package documentation).
func (d *Directory) next(newest time.Time, took time.Duration) time.Time {
	return newest.Add(-took - d.cfg.ChangesOverlap).Truncate(time.Second)
}

func (d *Directory) watermark(newest time.Time, took time.Duration) string {
	return d.formatWatermark(d.next(newest, took))
}

// formatWatermark writes "<GeneralizedTime>#<fingerprint>".
func (d *Directory) formatWatermark(t time.Time) string { return formatStamp(t) + "#" + d.fp }

// parseWatermark reads a watermark of this source as configured now.
func (d *Directory) parseWatermark(w string) (time.Time, bool) {
	ts, fp, ok := strings.Cut(w, "#")
	if !ok || fp != d.fp {
		return time.Time{}, false
	}
	t, err := time.Parse(stampLayout, ts)
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}

var _ source.Fetcher = (*Directory)(nil)

package syncer

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source"
)

// NewBackends says what backend a source's entry creates when its target
// is a host, or host:port, that no backend has (Perdition connects to any
// server its popmap names; Portico routes only to backends of the table,
// so it adds one).
type NewBackends struct {
	// Off: such an entry is invalid instead (counted, skipped).
	Off bool
	// Ports of a backend created for a bare host; 0 leaves the protocol
	// out.
	IMAPPort, POP3Port, SievePort int
	// PortProtocol is the protocol an explicit port is for: a backend
	// created for host:port serves that protocol only, at that port.
	PortProtocol routing.Protocol
	TLS          routing.TLSMode
	Forward      routing.ForwardMode
}

// DefaultNewBackends: plain IMAP 143, POP3 110 and ManageSieve 4190 for a
// bare host; an explicit port is IMAP's.
func DefaultNewBackends() NewBackends {
	return NewBackends{IMAPPort: 143, POP3Port: 110, SievePort: 4190, PortProtocol: routing.IMAP, TLS: routing.TLSNone, Forward: routing.ForwardNone}
}

// resolver maps entries to targets on one table, remembering the
// backends it decided to create so that every entry naming one new host
// shares one backend.
type resolver struct {
	t       *routing.Table
	nb      NewBackends
	created map[string]*routing.Backend // by the target as written
	ids     map[string]bool             // ids taken by created backends
	order   []*routing.Backend
}

func newResolver(t *routing.Table, nb NewBackends) *resolver {
	return &resolver{t: t, nb: nb, created: map[string]*routing.Backend{}, ids: map[string]bool{}}
}

// resolve returns e's target (backend or pool, and its rename); a target
// naming an unknown host gives a backend to create first.
func (r *resolver) resolve(e source.Entry) (routing.Target, error) {
	tg := routing.Target{Login: e.Login}
	if e.Target == "" {
		return tg, errors.New("no target")
	}
	var err error
	tg.Backend, tg.Pool, err = r.t.ResolveServer(e.Target)
	if err == nil {
		return tg, nil
	}
	if !errors.Is(err, routing.ErrUnknownServer) || r.nb.Off {
		return tg, err
	}
	if b := r.created[e.Target]; b != nil {
		tg.Backend = b.ID
		return tg, nil
	}
	b, err := r.newBackend(e.Target)
	if err != nil {
		return tg, err
	}
	r.created[e.Target] = b
	r.ids[b.ID] = true
	r.order = append(r.order, b)
	tg.Backend = b.ID
	return tg, nil
}

// newBackend builds the backend for a host or host:port no backend has.
// Its id is the host with every character a backend id cannot hold
// replaced by '_', and "_PORT" for an explicit port; if a backend (with
// another address) already has that id, "-2", "-3"... follow. The table
// alone decides, so every leader names it alike.
func (r *resolver) newBackend(target string) (*routing.Backend, error) {
	host, port, err := splitTarget(target)
	if err != nil {
		return nil, err
	}
	b := &routing.Backend{Host: host, TLS: r.nb.TLS, Forward: r.nb.Forward}
	if port == 0 {
		b.IMAPPort, b.POP3Port, b.SievePort = r.nb.IMAPPort, r.nb.POP3Port, r.nb.SievePort
	} else {
		switch r.nb.PortProtocol {
		case routing.POP3:
			b.POP3Port = port
		case routing.Sieve:
			b.SievePort = port
		default:
			b.IMAPPort = port
		}
	}
	base := idOf(host)
	if port != 0 {
		base += "_" + strconv.Itoa(port)
	}
	id := base
	for i := 2; r.t.Backend(id) != nil || r.ids[id]; i++ {
		id = fmt.Sprintf("%s-%d", base, i)
	}
	b.ID = id
	// The table's own validation (ports, host).
	if _, err := r.t.WithBackend(*b); err != nil {
		return nil, fmt.Errorf("server %q: %w", target, err)
	}
	return b, nil
}

// splitTarget reads "host", "host:port", "[v6]:port" or a bare IPv6
// address.
func splitTarget(s string) (host string, port int, err error) {
	p := ""
	switch {
	case strings.HasPrefix(s, "["):
		h, pp, err := net.SplitHostPort(s)
		if err != nil {
			if !strings.HasSuffix(s, "]") {
				return "", 0, fmt.Errorf("server %q: %v", s, err)
			}
			h = s[1 : len(s)-1]
		}
		host, p = h, pp
	case strings.Count(s, ":") == 1:
		host, p, _ = strings.Cut(s, ":")
	default:
		host = s // a name, or a bare IPv6 address
	}
	if err := validHost(host); err != nil {
		return "", 0, err
	}
	if p == "" && !strings.HasSuffix(s, ":") {
		return host, 0, nil
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, fmt.Errorf("server %q: bad port %q", s, p)
	}
	return host, n, nil
}

func validHost(h string) error {
	if h == "" || len(h) > 255 || strings.ContainsAny(h, " \t/@[]\x00\r\n") {
		return fmt.Errorf("bad host %q", h)
	}
	return nil
}

// idOf makes a backend id out of a host name.
func idOf(host string) string {
	var b strings.Builder
	for _, c := range host {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	id := b.String()
	if len(id) > 100 {
		id = id[:100]
	}
	return id
}

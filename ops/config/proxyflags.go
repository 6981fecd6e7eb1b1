package config

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
)

// ProxyFlags is the config-free quick start: `portico proxy --from URL ...
// --to URL ...`, with the URL schemes curl uses.
type ProxyFlags struct {
	From           []string // imap://ADDR imaps://ADDR pop3://ADDR pop3s://ADDR sieve://ADDR submission://ADDR submissions://ADDR
	To             []string // imap://HOST:PORT imaps://... pop3://... pop3s://... sieve://... submission://... submissions://...
	Cert, Key      string
	AllowPlaintext bool   // allow login before STARTTLS on imap:// and pop3:// listeners
	EventLoop      bool   // every listener on the event loops (Listener.EventLoop)
	Forward        string // client address forwarding to the backends: none, id, proxy
	Insecure       bool   // do not verify backend TLS certificates
	CAFile         string // verify backend TLS certificates against this bundle
	// MaxConnections and MaxConnectionsPerIP are limits.max_connections
	// and limits.max_connections_per_ip (0: the default, -1: none).
	MaxConnections, MaxConnectionsPerIP int
	// Admin is admin.address: host:port, or "" or "off" for none (the
	// default, so that any number of proxies run side by side on a host).
	Admin string
}

var defaultPorts = map[string]int{"imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995, "sieve": 4190,
	"submission": 587, "submissions": 465}

func parseMailURL(s string) (scheme, host string, port int, err error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "", "", 0, fmt.Errorf("%q is not a URL like imap://127.0.0.1:143", s)
	}
	scheme = strings.ToLower(u.Scheme)
	if _, ok := defaultPorts[scheme]; !ok {
		return "", "", 0, fmt.Errorf("%q: scheme must be imap, imaps, pop3, pop3s, sieve, submission or submissions", s)
	}
	if u.Path != "" && u.Path != "/" || u.User != nil || u.RawQuery != "" {
		return "", "", 0, fmt.Errorf("%q: only scheme://host:port is allowed", s)
	}
	host = u.Hostname()
	port = defaultPorts[scheme]
	if p := u.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil || port < 0 || port > 65535 {
			return "", "", 0, fmt.Errorf("%q: bad port", s)
		}
	}
	return scheme, host, port, nil
}

// FromProxyFlags builds the same Config a file would, and validates it.
func FromProxyFlags(f ProxyFlags) (*Config, error) {
	if len(f.From) == 0 || len(f.To) == 0 {
		return nil, fmt.Errorf("need at least one --from and one --to")
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, fmt.Errorf("--cert and --key go together")
	}
	c := &Config{Standalone: true}
	c.Admin.Address = "off"
	if f.Admin != "" {
		c.Admin.Address = f.Admin
	}
	// Absolute file names: the printed configuration (--print-config)
	// names the same files wherever it is saved.
	for _, p := range []*string{&f.Cert, &f.Key, &f.CAFile} {
		if *p != "" {
			a, err := filepath.Abs(*p)
			if err != nil {
				return nil, err
			}
			*p = a
		}
	}
	if f.Cert != "" {
		c.TLS.Certificates = []Certificate{{Cert: f.Cert, Key: f.Key}}
	}
	forward := f.Forward
	if forward == "" {
		forward = "id"
	}
	// One backend per --to host; a host may serve both protocols.
	byHost := map[string]*Backend{}
	var order []string
	for _, to := range f.To {
		scheme, host, port, err := parseMailURL(to)
		if err != nil {
			return nil, fmt.Errorf("--to %w", err)
		}
		b := byHost[host]
		if b == nil {
			b = &Backend{ID: fmt.Sprintf("backend%d", len(order)+1), Host: host, Forward: forward,
				InsecureSkipVerify: f.Insecure, TLSCAFile: f.CAFile}
			byHost[host] = b
			order = append(order, host)
		}
		proto, tls := strings.TrimSuffix(scheme, "s"), "none"
		if strings.HasSuffix(scheme, "s") {
			tls = "implicit"
		}
		if b.TLS != "" && b.TLS != tls {
			return nil, fmt.Errorf("--to %s: mixing TLS and plaintext on one backend host is not supported by --to; use a config file", to)
		}
		b.TLS = tls
		switch proto {
		case "imap":
			if b.IMAPPort != 0 {
				return nil, fmt.Errorf("--to %s: a second IMAP backend; use a config file for pools", to)
			}
			b.IMAPPort = port
		case "pop3":
			if b.POP3Port != 0 {
				return nil, fmt.Errorf("--to %s: a second POP3 backend; use a config file for pools", to)
			}
			b.POP3Port = port
		case "sieve":
			if b.SievePort != 0 {
				return nil, fmt.Errorf("--to %s: a second ManageSieve backend; use a config file for pools", to)
			}
			b.SievePort = port
		case "submission":
			if b.SubmissionPort != 0 {
				return nil, fmt.Errorf("--to %s: a second submission backend; use a config file for pools", to)
			}
			b.SubmissionPort = port
		}
	}
	c.Limits.MaxConnections = f.MaxConnections
	c.Limits.MaxConnectionsPerIP = f.MaxConnectionsPerIP
	pool := Pool{Name: "default"}
	for _, h := range order {
		c.Backends = append(c.Backends, *byHost[h])
		pool.Backends = append(pool.Backends, byHost[h].ID)
	}
	c.Pools = []Pool{pool}
	c.Routes.DefaultPool = "default"

	serves := func(proto string) bool {
		for _, b := range c.Backends {
			if proto == "imap" && b.IMAPPort != 0 || proto == "pop3" && b.POP3Port != 0 || proto == "sieve" && b.SievePort != 0 ||
				proto == "submission" && b.SubmissionPort != 0 {
				return true
			}
		}
		return false
	}
	for _, from := range f.From {
		scheme, host, port, err := parseMailURL(from)
		if err != nil {
			return nil, fmt.Errorf("--from %w", err)
		}
		proto := strings.TrimSuffix(scheme, "s")
		if !serves(proto) {
			return nil, fmt.Errorf("--from %s: no --to %s:// backend", from, proto)
		}
		l := Listener{Name: scheme + "-" + strconv.Itoa(len(c.Listeners)+1), Protocol: proto,
			Address: net.JoinHostPort(host, strconv.Itoa(port)), EventLoop: f.EventLoop}
		switch {
		case strings.HasSuffix(scheme, "s"):
			if f.Cert == "" {
				return nil, fmt.Errorf("--from %s: implicit TLS needs --cert and --key", from)
			}
			l.TLS = "implicit"
		case f.Cert != "":
			l.TLS = "starttls"
			allow := f.AllowPlaintext
			l.AllowPlaintextAuth = &allow
		default:
			l.TLS = "none"
		}
		c.Listeners = append(c.Listeners, l)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

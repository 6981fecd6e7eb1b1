package admin

import (
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The guard runs before every handler (and before authentication). It
// answers what a browser can be made to send and a legitimate client never
// does:
//
//   - DNS rebinding: a page on attacker.example makes its own name resolve
//     to the admin address; the browser then treats the admin API as
//     attacker.example and lets the page read the answers. The browser
//     still sends "Host: attacker.example", so a Host that does not name
//     this listener is refused (421 Misdirected Request), on every path:
//     /metrics and /v1/status would leak to the page as well.
//   - Cross-site request forgery: any page can make a browser POST a form
//     (application/x-www-form-urlencoded, multipart/form-data, text/plain)
//     to any address, without a preflight and with the user's network
//     position. Requiring application/json on every method but GET and
//     HEAD means a cross-origin browser request needs a CORS preflight,
//     which this server never approves (it sends no CORS headers). A
//     foreign Origin, or Sec-Fetch-Site other than same-origin or none, is
//     refused outright as a second, independent check (older browsers
//     send no Sec-Fetch-Site; every current one sends Origin on POST).
//
// Both hold with and without a token: a token stops a browser only when
// the attacker does not have it, and the single-node default has none.

// hostEntry is an accepted Host: name (lower case) or IP, and a port
// (0: any).
type hostEntry struct {
	host string
	port int
}

// hostSet is what the Host check accepts besides the address the
// connection reached: the configured address's host, allowed_hosts
// entries and AllowHost additions.
type hostSet struct {
	cfgHost string // host of the configured address ("" when a wildcard)
	entries []hostEntry
}

func newHostSet(address string, allowed []string, extra []hostEntry) (*hostSet, error) {
	hs := &hostSet{}
	if h, _, err := net.SplitHostPort(address); err == nil {
		if ip, err := netip.ParseAddr(h); err == nil {
			if !ip.IsUnspecified() {
				hs.cfgHost = ip.Unmap().String()
			}
		} else {
			hs.cfgHost = strings.ToLower(h)
		}
	}
	for _, a := range allowed {
		host, port, err := ParseHost(a)
		if err != nil {
			return nil, fmt.Errorf("admin.allowed_hosts: %w", err)
		}
		hs.entries = append(hs.entries, hostEntry{host, port})
	}
	hs.entries = append(hs.entries, extra...)
	return hs, nil
}

// ParseHost splits an allowed_hosts entry or a Host header into a lower
// case host (a name, or an IP address without brackets) and a port (0 when
// absent). It accepts "name", "name:port", "1.2.3.4", "1.2.3.4:port",
// "::1", "[::1]" and "[::1]:port"; no scheme, path, user or wildcard.
func ParseHost(s string) (host string, port int, err error) {
	orig := s
	s = strings.ToLower(s)
	bad := func(why string) (string, int, error) {
		return "", 0, fmt.Errorf("%q is not a host or host:port (%s)", orig, why)
	}
	var portStr string
	switch {
	case s == "":
		return bad("empty")
	case s[0] == '[':
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return bad("unclosed [")
		}
		host = s[1:end]
		rest := s[end+1:]
		if ip, err := netip.ParseAddr(host); err != nil || !ip.Is6() {
			return bad("not an IPv6 address in brackets")
		}
		if rest != "" {
			if rest[0] != ':' {
				return bad("junk after ]")
			}
			portStr = rest[1:]
			if portStr == "" {
				return bad("empty port")
			}
		}
	default:
		if ip, err := netip.ParseAddr(s); err == nil && ip.Is6() {
			return ip.Unmap().String(), 0, nil // bare IPv6, no port
		}
		host = s
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			host, portStr = s[:i], s[i+1:]
			if portStr == "" {
				return bad("empty port")
			}
		}
		if host == "" {
			return bad("empty host")
		}
		for _, c := range host {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
				return bad(fmt.Sprintf("character %q", c))
			}
		}
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.Unmap().String()
	}
	if portStr != "" {
		for _, c := range portStr {
			if c < '0' || c > '9' {
				return bad("port is not a number")
			}
		}
		n, err := strconv.Atoi(portStr)
		if err != nil || n < 1 || n > 65535 {
			return bad("port outside 1..65535")
		}
		port = n
	}
	return host, port, nil
}

// SetAllowedHosts replaces the admin.allowed_hosts entries (reload);
// AllowHost additions stay.
func (s *Server) SetAllowedHosts(allowed []string) error {
	s.hostsMu.Lock()
	defer s.hostsMu.Unlock()
	hs, err := newHostSet(s.addr, allowed, s.extraHosts)
	if err != nil {
		return err
	}
	s.allowed = allowed
	s.hosts.Store(hs)
	return nil
}

// AllowHost accepts hostport ("host:port") in the Host header for the life
// of the server: the address the cluster advertises for this API, which a
// peer behind NAT reaches under a name or IP this host does not have.
func (s *Server) AllowHost(hostport string) error {
	host, port, err := ParseHost(hostport)
	if err != nil {
		return err
	}
	s.hostsMu.Lock()
	defer s.hostsMu.Unlock()
	s.extraHosts = append(s.extraHosts, hostEntry{host, port})
	hs, err := newHostSet(s.addr, s.allowed, s.extraHosts)
	if err != nil {
		return err
	}
	s.hosts.Store(hs)
	return nil
}

// hostAllowed reports whether r's Host names this listener.
func (s *Server) hostAllowed(r *http.Request) bool {
	return s.hosts.Load().allows(r, s.effectivePort(0))
}

// allows reports whether r's Host names the listener r reached: one of
// hs's entries (a Host without a port stands for defaultPort, the
// scheme's), the configured address's host, the address the connection
// reached, or localhost when that address is a loopback one.
func (hs *hostSet) allows(r *http.Request, defaultPort int) bool {
	if r.Host == "" {
		return true // HTTP/1.0 without Host: no browser sends that
	}
	host, port, err := ParseHost(r.Host)
	if err != nil {
		return false
	}
	effective := port
	if effective == 0 {
		effective = defaultPort
	}
	for _, e := range hs.entries {
		if e.host == host && (e.port == 0 || e.port == effective) {
			return true
		}
	}
	local := localAddr(r)
	if port != 0 && local.IsValid() && port != int(local.Port()) {
		return false
	}
	if host == hs.cfgHost {
		return true
	}
	if !local.IsValid() {
		return false
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		// An IP literal cannot be rebound; this one is the address the
		// client actually reached.
		return ip.WithZone("") == local.Addr().Unmap().WithZone("")
	}
	return host == "localhost" && local.Addr().IsLoopback()
}

// effectivePort is a Host port, or the scheme's default port when the
// Host has none (as browsers and curl send it for 80 and 443).
func (s *Server) effectivePort(port int) int {
	if port != 0 {
		return port
	}
	if s.TLS() {
		return 443
	}
	return 80
}

func localAddr(r *http.Request) netip.AddrPort {
	a, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if a == nil {
		return netip.AddrPort{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// crossSite returns why r looks like a request a browser sent on behalf
// of another site ("" if it does not).
func (s *Server) crossSite(r *http.Request) string {
	if v := r.Header.Values("Sec-Fetch-Site"); len(v) > 0 {
		if len(v) > 1 || (v[0] != "same-origin" && v[0] != "none") {
			return fmt.Sprintf("cross-site request refused (Sec-Fetch-Site: %s)", strings.Join(v, ", "))
		}
	}
	if o := r.Header.Values("Origin"); len(o) > 0 {
		if len(o) > 1 || !s.sameOrigin(o[0], r.Host) {
			return fmt.Sprintf("cross-origin request refused (Origin %q is not this admin listener)", strings.Join(o, ", "))
		}
	}
	return ""
}

// sameOrigin reports whether origin is scheme://Host of this listener.
func (s *Server) sameOrigin(origin, host string) bool {
	if host == "" {
		return false
	}
	u, err := url.Parse(origin)
	if err != nil || u.Scheme != s.Scheme() || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return false
	}
	oh, op, err := ParseHost(u.Host)
	if err != nil {
		return false
	}
	hh, hp, err := ParseHost(host)
	if err != nil {
		return false
	}
	return oh == hh && s.effectivePort(op) == s.effectivePort(hp)
}

// jsonBody reports whether r declares a JSON body.
func jsonBody(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return false
	}
	return mt == "application/json"
}

// guard wraps the whole mux (see the comment at the top of this file).
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.hostAllowed(r) {
			s.refuse(w, r, http.StatusMisdirectedRequest, fmt.Sprintf(
				"Host %q is not an address or name of this admin listener (names in front of it go in admin.allowed_hosts)", r.Host))
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if why := s.crossSite(r); why != "" {
				s.refuse(w, r, http.StatusForbidden, why)
				return
			}
			if !jsonBody(r) {
				s.refuse(w, r, http.StatusUnsupportedMediaType,
					fmt.Sprintf("%s needs Content-Type: application/json (even without a body)", r.Method))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// refuse answers a guarded request and logs it, at most once a second so
// that a hostile page cannot flood the log.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, code int, msg string) {
	refuseRequest(w, r, s.log, &s.refused, "admin API", code, msg)
}

// refuseRequest answers a guarded request of the listener called what,
// and logs it at most once a second (last: unix nanos of the last line).
func refuseRequest(w http.ResponseWriter, r *http.Request, log *slog.Logger, last *atomic.Int64, what string, code int, msg string) {
	now := time.Now().UnixNano()
	if l := last.Load(); now-l >= int64(time.Second) && last.CompareAndSwap(l, now) {
		log.Warn(what+" request refused", "status", code, "method", r.Method, "path", r.URL.Path,
			"remote", r.RemoteAddr, "host", r.Host, "origin", r.Header.Get("Origin"), "reason", msg)
	}
	w.Header().Set("Connection", "close")
	Error(w, code, msg)
}

// GuardListener puts the browser guard in front of next for another
// plain-HTTP listener of the node that has no token and only serves GETs
// to tools (`portico serve --pprof`), listening on address (host:port)
// and called what in its log lines:
//
//   - Host: as on the admin listener (hostAllowed), the address the
//     connection reached, the configured address's host, or localhost on
//     a loopback address; else 421 (DNS rebinding). There is no
//     allowed_hosts: reach such a listener by its address, or through a
//     tunnel to the same port.
//   - Cross-site: a request a browser marks as made on behalf of another
//     page (Sec-Fetch-Site other than same-origin or none) is refused
//     with 403 on every method, GET included: no page may make the node
//     run a CPU profile or an execution trace by linking to it. Tools
//     (go tool pprof, curl) send no Sec-Fetch-Site.
//
// Refusals are logged at most once a second.
func GuardListener(what, address string, log *slog.Logger, next http.Handler) (http.Handler, error) {
	if _, _, err := net.SplitHostPort(address); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	hs, err := newHostSet(address, nil, nil)
	if err != nil {
		return nil, err
	}
	var last atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hs.allows(r, 80) {
			refuseRequest(w, r, log, &last, what, http.StatusMisdirectedRequest, fmt.Sprintf(
				"Host %q is not an address of this %s listener (use its IP address, or localhost on loopback)", r.Host, what))
			return
		}
		if v := r.Header.Values("Sec-Fetch-Site"); len(v) > 0 && (len(v) > 1 || v[0] != "same-origin" && v[0] != "none") {
			refuseRequest(w, r, log, &last, what, http.StatusForbidden, fmt.Sprintf(
				"cross-site request refused (Sec-Fetch-Site: %s)", strings.Join(v, ", ")))
			return
		}
		next.ServeHTTP(w, r)
	}), nil
}

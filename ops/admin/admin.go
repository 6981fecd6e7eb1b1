// Package admin is the node's HTTP admin listener: the JSON API under /v1/,
// Prometheus metrics at /metrics, and /healthz and /readyz.
//
// Every request, public or not, first passes the guard (guard.go):
//
//   - Host: the Host header must name this listener (the address the
//     connection reached, the configured address, localhost on loopback,
//     or an operator's admin.allowed_hosts entry), else 421. This defeats
//     DNS rebinding, where a browser page's own name is made to resolve to
//     the admin address.
//   - Cross-site requests: a method other than GET and HEAD needs
//     Content-Type application/json (a browser sends that cross-origin only
//     after a CORS preflight, which this server never approves), no Origin
//     other than the listener's own (403) and no Sec-Fetch-Site other than
//     same-origin or none (403). These hold with and without a token.
//
// Authentication: a bearer token from the configuration, compared in
// constant time. With no token the listener must be on a loopback address
// (enforced by configuration validation). A bad or missing token is a 401
// and nothing changes. /healthz, /readyz and /metrics need no token, so that
// load balancers and Prometheus can reach them.
//
// TLS (tls.go): with a certificate and key the listener serves HTTPS only,
// TLS 1.2 or later; the pair can be replaced while running (reload).
package admin

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// MaxBody caps request bodies (bulk imports use their own larger cap).
const MaxBody = 1 << 20

// Config configures a Server.
type Config struct {
	// Address is the host:port to listen on.
	Address string
	// Token is the bearer token for the /v1/ API; "" disables
	// authentication.
	Token string
	// AllowedHosts are further values accepted in the Host header besides
	// the listener's own addresses: "name" (any port) or "name:port".
	AllowedHosts []string
	// CertFile and KeyFile, when set, make the listener serve HTTPS.
	CertFile, KeyFile string
}

// DefaultConfig returns the defaults documented in the README: the admin
// API on 127.0.0.1:7143 (loopback, so no token is required), plain HTTP.
// New takes the address as given; the configuration fills it.
func DefaultConfig() Config {
	return Config{Address: "127.0.0.1:7143"}
}

// Server is the admin HTTP server.
type Server struct {
	addr  string
	token string
	log   *slog.Logger
	mux   *http.ServeMux
	srv   *http.Server
	ln    net.Listener
	done  chan struct{} // closed when Start's serving goroutine returns

	hostsMu    sync.Mutex // serializes changes to hosts
	hosts      atomic.Pointer[hostSet]
	allowed    []string                        // admin.allowed_hosts
	extraHosts []hostEntry                     // AllowHost
	cert       atomic.Pointer[tls.Certificate] // nil: plain HTTP
	refused    atomic.Int64                    // unix nanos of the last logged refusal

	// Inherit, if set, is asked first for the listening socket (in-place
	// upgrade: the socket the previous process served on); nil, nil when
	// it has none.
	Inherit func(addr string) (net.Listener, error)
}

// New returns a server for c. It fails if an allowed host is malformed or
// the TLS pair does not load.
func New(c Config, log *slog.Logger) (*Server, error) {
	s := &Server{addr: c.Address, token: c.Token, log: log, mux: http.NewServeMux(), allowed: c.AllowedHosts}
	hs, err := newHostSet(c.Address, c.AllowedHosts, nil)
	if err != nil {
		return nil, err
	}
	s.hosts.Store(hs)
	if c.CertFile != "" || c.KeyFile != "" {
		cert, err := LoadKeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, err
		}
		s.cert.Store(cert)
	}
	s.srv = &http.Server{
		Handler:           s.guard(s.mux),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       5 * time.Minute, // bulk imports
		WriteTimeout:      5 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// TLS reports whether the listener serves HTTPS.
func (s *Server) TLS() bool { return s.cert.Load() != nil }

// Scheme is "https" or "http".
func (s *Server) Scheme() string {
	if s.TLS() {
		return "https"
	}
	return "http"
}

// Handle registers an authenticated handler (the /v1/ API).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, s.auth(h)) }

// HandleFunc registers an authenticated handler function.
func (s *Server) HandleFunc(pattern string, f func(http.ResponseWriter, *http.Request)) {
	s.Handle(pattern, http.HandlerFunc(f))
}

// HandlePublic registers a handler that needs no token (health, metrics).
// The guard (Host, cross-site) still applies.
func (s *Server) HandlePublic(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

func (s *Server) auth(h http.Handler) http.Handler {
	if s.token == "" {
		return h
	}
	want := []byte("Bearer " + s.token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="portico"`)
			Error(w, http.StatusUnauthorized, "missing or invalid bearer token")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Listen binds the listener (so that its address is known before Start).
func (s *Server) Listen() error {
	if s.ln != nil {
		return nil
	}
	if s.Inherit != nil {
		ln, err := s.Inherit(s.addr)
		if err != nil {
			return fmt.Errorf("admin listener: %w", err)
		}
		if ln != nil {
			s.ln = ln
			return nil
		}
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	s.ln = ln
	return nil
}

// Start binds the listener (if Listen was not called) and serves in the
// background.
func (s *Server) Start() error {
	if err := s.Listen(); err != nil {
		return err
	}
	ln := s.ln
	serve := s.srv.Serve
	if s.TLS() {
		s.srv.TLSConfig = s.serverTLS()
		serve = func(ln net.Listener) error { return s.srv.ServeTLS(ln, "", "") }
	}
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		if err := serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			s.log.Error("admin server", "error", err)
		}
	}()
	s.log.Info("admin API listening", "address", ln.Addr().String(), "scheme", s.Scheme(), "auth", s.token != "")
	return nil
}

// Addr returns the bound address (after Start).
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// File returns a duplicate of the listening socket (to pass to a new
// process at an in-place upgrade).
func (s *Server) File() (*os.File, error) {
	tl, ok := s.ln.(*net.TCPListener)
	if !ok {
		return nil, fmt.Errorf("admin listener is %T, not TCP", s.ln)
	}
	return tl.File()
}

// ConfiguredAddr is the address from the configuration (which may have
// port 0; Addr is the bound one).
func (s *Server) ConfiguredAddr() string { return s.addr }

// StopListening closes the listener: no new connections; requests in
// flight complete.
func (s *Server) StopListening() {
	if s.ln != nil {
		_ = s.ln.Close()
	}
}

// Shutdown stops the server (requests in flight may complete until ctx
// ends) and closes its listener, also one bound by Listen and never
// served (a node that failed to start).
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if s.ln != nil {
		_ = s.ln.Close()
	}
	if s.done != nil {
		<-s.done
	}
	return err
}

// ErrorBody is the JSON shape of every error response.
type ErrorBody struct {
	Error string `json:"error"`
}

// Error writes a JSON error with status code.
func Error(w http.ResponseWriter, code int, msg string) {
	JSON(w, code, ErrorBody{Error: msg})
}

// JSON writes v as JSON with status code.
func JSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Decode reads a JSON body into v strictly (unknown fields are errors),
// capped at limit bytes. On error it has already answered the request.
func Decode(w http.ResponseWriter, r *http.Request, limit int64, v any) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		Error(w, http.StatusUnsupportedMediaType, "body must be application/json")
		return false
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			Error(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", limit))
		case errors.Is(err, io.EOF):
			Error(w, http.StatusBadRequest, "empty body")
		default:
			Error(w, http.StatusBadRequest, "invalid JSON: "+err.Error())
		}
		return false
	}
	if dec.More() {
		Error(w, http.StatusBadRequest, "invalid JSON: trailing data after the object")
		return false
	}
	return true
}

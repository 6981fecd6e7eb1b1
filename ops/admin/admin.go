// Package admin is the node's HTTP admin listener: the JSON API under /v1/,
// Prometheus metrics at /metrics, and /healthz and /readyz.
//
// Authentication: a bearer token from the configuration, compared in
// constant time. With no token the listener must be on a loopback address
// (enforced by configuration validation). A bad or missing token is a 401
// and nothing changes. /healthz, /readyz and /metrics need no token, so that
// load balancers and Prometheus can reach them.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// MaxBody caps request bodies (bulk imports use their own larger cap).
const MaxBody = 1 << 20

// Server is the admin HTTP server.
type Server struct {
	addr  string
	token string
	log   *slog.Logger
	mux   *http.ServeMux
	srv   *http.Server
	ln    net.Listener

	// Inherit, if set, is asked first for the listening socket (in-place
	// upgrade: the socket the previous process served on); nil, nil when
	// it has none.
	Inherit func(addr string) (net.Listener, error)
}

// New returns a server for addr; token "" disables authentication.
func New(addr, token string, log *slog.Logger) *Server {
	s := &Server{addr: addr, token: token, log: log, mux: http.NewServeMux()}
	s.srv = &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       5 * time.Minute, // bulk imports
		WriteTimeout:      5 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s
}

// Handle registers an authenticated handler (the /v1/ API).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, s.auth(h)) }

// HandleFunc registers an authenticated handler function.
func (s *Server) HandleFunc(pattern string, f func(http.ResponseWriter, *http.Request)) {
	s.Handle(pattern, http.HandlerFunc(f))
}

// HandlePublic registers a handler that needs no token (health, metrics).
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
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			s.log.Error("admin server", "error", err)
		}
	}()
	s.log.Info("admin API listening", "address", ln.Addr().String(), "auth", s.token != "")
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

// Shutdown stops the server.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

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

package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"

	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/ops/daemon"
)

// startPprof serves Go's profiling endpoints on addr (if set), for
// operators chasing CPU or memory: go tool pprof http://ADDR/debug/pprof/heap
//
// There is no authentication: the address is meant to be a loopback one,
// reached from the host itself or through an SSH tunnel. The admin
// listener's browser guard (admin.GuardListener) stands in front of it, so
// that a web page in the operator's browser can neither read it through
// DNS rebinding (a Host that is not this listener's address is refused)
// nor make the node profile itself (a cross-site request is refused). A
// non-loopback address is served as asked, with a warning in the log.
//
// It returns the address it listens on and a function that stops serving
// (tests; the process otherwise serves until it exits).
func startPprof(addr string, log *slog.Logger) (bound string, stop func(), err error) {
	if addr == "" {
		return "", func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("--pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	h, err := admin.GuardListener("pprof", addr, log, mux)
	if err != nil {
		ln.Close()
		return "", nil, fmt.Errorf("--pprof: %w", err)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second, // no write timeout: a profile takes ?seconds=N
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	bound = ln.Addr().String()
	if ap, err := net.ResolveTCPAddr("tcp", bound); err == nil && !ap.IP.IsLoopback() {
		log.Warn("--pprof listens on an address that is not a loopback one: the profiling endpoints have no authentication, "+
			"and anyone who can reach this address can read this process's profiles and goroutine stacks and make it run CPU profiles and traces; "+
			"bind it to 127.0.0.1 (or [::1]) and reach it through an SSH tunnel", "address", bound)
	} else {
		log.Info("profiling endpoints listening", "address", bound)
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("--pprof", "error", err)
		}
	}()
	return bound, func() { _ = srv.Close() }, nil
}

// pprofLog is the logger of the profiling listener, in the configured
// format and level, on stderr: the listener starts before the node's own
// logger exists.
func pprofLog(c config.Log) *slog.Logger {
	lv := new(slog.LevelVar)
	daemon.SetLevel(lv, c.Level)
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if c.Format == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	return slog.New(h).With("component", "pprof")
}

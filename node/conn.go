package node

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/node/session"
	"log/slog"
)

// serve runs one client connection from accept until the relay takes it,
// or its end. What it holds (the socket or the client's stream, its place
// in the connection limits, its count as a pre-login session) is given
// back by one deferred cleanup, whichever way it ends, a panic included.
//
// lp is the event loop the session runs on as a task (loop.go), or nil: a
// goroutine of its own.
func (s *Server) serve(l *listener, tc acceptedConn, lp *loopExec) {
	defer s.preWG.Done()
	growStack()
	l.stats.Accepted.Add(1)
	var (
		adm     = &admission{s: s}
		c       *session.Client // set once the session starts
		end     session.End     // how it ended, if it did not log in
		relayed bool            // the relay owns the connection
	)
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic serving connection", "listener", l.conf().Name, "panic", fmt.Sprint(r))
			end = session.End{Reason: session.EndError, Err: fmt.Errorf("panic: %v", r)}
		}
		switch {
		case relayed:
			return
		case c == nil:
			_ = tc.Close()
		default:
			_ = c.Stream.Close()
			s.preauthEnded(l, c, end)
			s.preLocalDone(c.Local.Addr())
		}
		adm.release()
	}()

	o, ok := s.admit(l, tc, adm)
	if !ok {
		return
	}
	var nc *netx.Conn
	if lp != nil {
		raw, _ := tc.SyscallConn()
		nc = netx.NewSocketConn(tc, raw, o.prefix)
	} else {
		var err error
		if nc, err = netx.NewConn(tc.(*net.TCPConn), o.prefix); err != nil {
			return
		}
	}
	c = &session.Client{
		ID: session.NewSessionID(), Listener: l.info(), Env: s.env,
		Stream: netx.NewStream(nc), Remote: o.remote, Local: o.local, Peer: o.peer, Proxied: o.proxied,
		Started: time.Now(),
	}
	c.Log = s.log.With("session", c.ID)
	session.LogAttrs(c.Log, slog.LevelInfo, "session start", slog.String("listener", l.conf().Name),
		slog.String("protocol", string(l.conf().Protocol)), slog.String("client", o.remote.String()))
	l.stats.Preauth.Add(1)
	s.preLocalAdd(c.Local.Addr())

	ctx, ok := s.sessionContext()
	if !ok {
		end = session.End{Reason: session.EndShutdown}
		return
	}
	if lp != nil {
		var h *session.Handoff
		h, end = s.handlers[l.conf().Protocol].Serve(netx.WithExecutor(ctx, lp), c)
		if h == nil {
			return
		}
		// Both sockets leave the loop for the relay.
		err := s.unloop(c.Stream.Base())
		if err == nil {
			err = s.unloop(h.Backend.Base())
		}
		if err != nil {
			_ = h.Backend.Close()
			end = session.End{Reason: session.EndError, Err: fmt.Errorf("hand-off to the relay: %w", err)}
			return
		}
		relayed = true
		s.preLocalDone(c.Local.Addr())
		s.startRelay(l, c, h, adm.release)
		return
	}
	// Computing before the login takes a slot of the gate, given back
	// whenever the session waits (netx.Gate).
	hold := s.gate.Hold(ctx.Done())
	defer hold.Close()
	hold.Acquire()
	nc.SetHold(hold)
	ctx = netx.WithHold(ctx, hold)
	var h *session.Handoff
	h, end = s.handlers[l.conf().Protocol].Serve(ctx, c)
	if h == nil {
		return
	}
	nc.SetHold(nil)
	h.Backend.Base().SetHold(nil)
	hold.Close()
	relayed = true
	s.preLocalDone(c.Local.Addr())
	s.startRelay(l, c, h, adm.release)
}

// preLocalAdd and preLocalDone count a pre-login session on its local
// address (PreauthOn).
func (s *Server) preLocalAdd(a netip.Addr) {
	s.preMu.Lock()
	if s.preLocal == nil {
		s.preLocal = map[netip.Addr]int{}
	}
	s.preLocal[a]++
	s.preMu.Unlock()
}

func (s *Server) preLocalDone(a netip.Addr) {
	s.preMu.Lock()
	if s.preLocal[a]--; s.preLocal[a] <= 0 {
		delete(s.preLocal, a)
	}
	s.preMu.Unlock()
}

// PreauthOn returns how many sessions that have not logged in yet (or
// are logging in) came in on a local address for which match is true.
func (s *Server) PreauthOn(match func(local netip.Addr) bool) int {
	s.preMu.Lock()
	defer s.preMu.Unlock()
	n := 0
	for a, k := range s.preLocal {
		if match(a) {
			n += k
		}
	}
	return n
}

// sessionContext is the context for a new pre-login session: done when
// the server shuts down or pauses (the session then says goodbye and
// ends). ok is false once the server is shutting down.
func (s *Server) sessionContext() (ctx context.Context, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Not when paused: a connection accepted just before the listeners
	// closed (drain, in-place upgrade) is served like any other; it was
	// in no one else's queue.
	if s.closing {
		return nil, false
	}
	return s.preCtx, true
}

// startRelay hands a logged-in session to the relay, which owns it from
// then on and calls release when it closes. A session in a shared_storage
// pool binds the user's affinity to its backend while it lasts.
func (s *Server) startRelay(l *listener, c *session.Client, h *session.Handoff, release func()) {
	ls := l.stats
	ls.Preauth.Add(-1)
	ls.Relayed.Add(1)
	s.obs.SessionStarted(ls, h)
	unbind := func() {}
	if a := s.env.Affinity; a != nil && h.SharedStorage {
		unbind = a.Bind(h.User, h.BackendID, h.Steered)
	}
	toBackend := c.Stream.Detach()
	toClient := h.Backend.Detach()
	cs := relay.Side{Conn: c.Stream.Base(), TLS: c.Stream.TLS()}
	bs := relay.Side{Conn: h.Backend.Base(), TLS: h.Backend.TLS()}
	framer := h.Framer
	if f, ok := s.handlers[c.Listener.Protocol].(interface{ NewFramer() relay.Framer }); ok && framer == nil {
		framer = f.NewFramer()
	}
	s.engine.Start(cs, bs, toBackend, toClient, relay.Options{
		IdleTimeout: c.Listener.Limits.IdleTimeout,
		Counters:    &ls.Bytes,
		Framer:      framer,
		Tag:         &relayed{client: c, handoff: h},
		OnClose: func(st relay.Stats) {
			unbind()
			release()
			ls.Relayed.Add(-1)
			s.obs.SessionEnded(ls, h, st)
			attrs := []slog.Attr{slog.String("user", h.User), slog.String("backend", h.BackendID), slog.String("reason", string(st.Reason)),
				slog.Int64("bytes_in", st.ClientToBackend), slog.Int64("bytes_out", st.BackendToClient),
				slog.Duration("duration", time.Since(c.Started).Round(time.Millisecond))}
			if st.Err != nil {
				attrs = append(attrs, slog.String("error", st.Err.Error()))
			}
			session.LogAttrs(c.Log, slog.LevelInfo, "session end", attrs...)
		},
	})
}

// growStack grows the calling goroutine's stack once, up front, to the size
// the pre-login phase needs (TLS handshake, logging). A new goroutine
// starts with 2 KiB and would otherwise double and copy its stack several
// times per login; that copying was about a tenth of a login's CPU.
//
//go:noinline
func growStack() {
	var frame [12 << 10]byte
	touchFrame(&frame) // keeps the frame from being optimised away
}

//go:noinline
func touchFrame(*[12 << 10]byte) {}

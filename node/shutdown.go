package node

import (
	"context"
	"net/netip"
	"time"

	"github.com/portico-mail/portico/node/relay"
)

// Shutdown stops accepting, ends sessions that have not logged in (each
// handler says goodbye), lets relayed sessions run until ctx is done or
// Config.ShutdownGrace passes, then closes them.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	lns := s.listeners
	s.mu.Unlock()
	closeAll(lns)
	// Sessions that have not logged in see their context done: a handler
	// blocked in a read (or in a write to a client that does not read)
	// wakes at once, says BYE / -ERR and closes.
	s.cancel()
	s.wg.Wait()
	s.preWG.Wait()
	s.closeLoops()

	grace := s.conf().ShutdownGrace
	deadline := time.Now().Add(grace)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for s.engine.Len() > 0 && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			deadline = time.Now()
		case <-t.C:
		}
	}
	if n := s.engine.Len(); n > 0 {
		s.log.Info("ending relayed sessions after shutdown grace", "sessions", n, "grace", grace)
		s.EndSessions(context.Background(), nil, "Server shutting down, please reconnect.", s.conf().EndSpread)
	}
	s.engine.CloseAll(relay.ReasonShutdown)
	s.closeWaiter()
	return nil
}

// EndSessions ends the relayed sessions whose local address matches (all
// if match is nil): each at a response boundary (IMAP: "* BYE
// [UNAVAILABLE] text" after the last complete response; POP3: closed
// between responses), spread evenly over spread; a session not at a
// boundary within Config.EndTimeout after that (or when ctx is done) is
// closed anyway. It returns how many sessions it ended, once all are
// closed.
func (s *Server) EndSessions(ctx context.Context, match func(local netip.AddrPort) bool, text string, spread time.Duration) int {
	ctx, cancel := context.WithTimeout(ctx, spread+s.conf().EndTimeout)
	defer cancel()
	var m func(*relay.Session) bool
	if match != nil {
		m = func(rs *relay.Session) bool { return match(addrPort(rs.LocalAddr())) }
	}
	return s.engine.EndAll(ctx, m, text, spread)
}

// EndActive ends, like EndSessions without a spread, the sessions on a
// local address for which match is true that moved a byte within the last
// within, the most recently active first, at most limit of them; it
// returns how many. A planned VIP move ends these while the node still
// holds the address (a client in the middle of a command gets its
// response and the BYE), and the idle rest after the handover.
func (s *Server) EndActive(ctx context.Context, match func(local netip.AddrPort) bool, within time.Duration, limit int, text string) int {
	ctx, cancel := context.WithTimeout(ctx, s.conf().EndTimeout)
	defer cancel()
	var m func(*relay.Session) bool
	if match != nil {
		m = func(rs *relay.Session) bool { return match(addrPort(rs.LocalAddr())) }
	}
	pick := s.engine.Recent(m, time.Now().Add(-within), limit)
	if len(pick) == 0 {
		return 0
	}
	set := make(map[*relay.Session]bool, len(pick))
	for _, rs := range pick {
		set[rs] = true
	}
	return s.engine.EndAll(ctx, func(rs *relay.Session) bool { return set[rs] }, text, 0)
}

// CountSessions returns how many relayed sessions are on a local address
// for which match is true (all if match is nil). A planned VIP move in
// the spread mode reports how many it leaves to end after the handover.
func (s *Server) CountSessions(match func(local netip.AddrPort) bool) int {
	n := 0
	for _, rs := range s.engine.Sessions() {
		if !rs.Closed() && (match == nil || match(addrPort(rs.LocalAddr()))) {
			n++
		}
	}
	return n
}

// EndSpread is the configured window over which EndSessions spreads a
// drain.
func (s *Server) EndSpread() time.Duration { return s.conf().EndSpread }

// Pause stops accepting: the listeners close (the kernel refuses new
// connections) and sessions that have not logged in end (each handler
// says goodbye). Relayed sessions carry on. Resume binds the listeners
// again.
func (s *Server) Pause() { s.stopAccepting(true) }

// stopAccepting closes the listeners and, if endPreauth, ends the
// sessions that have not logged in yet.
func (s *Server) stopAccepting(endPreauth bool) {
	s.mu.Lock()
	if s.paused || s.closing {
		s.mu.Unlock()
		return
	}
	s.paused = true
	lns := s.listeners
	if endPreauth {
		s.preCancel()
		s.preCtx, s.preCancel = context.WithCancel(s.ctx)
	}
	s.mu.Unlock()
	closeAll(lns)
	s.log.Info("stopped accepting")
}

// Resume undoes Pause: the listeners are bound again.
func (s *Server) Resume() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.paused || s.closing {
		return nil
	}
	lns, err := s.bind(s.conf().Listeners, nil)
	if err != nil {
		return err
	}
	s.listeners, s.paused = lns, false
	for _, l := range lns {
		s.startAccepting(l)
	}
	return nil
}

// StopAccepting closes the listeners like Pause, but sessions that have
// not logged in yet carry on (an in-place upgrade: the new process has the
// listening sockets, and this one finishes what it started).
func (s *Server) StopAccepting() { s.stopAccepting(false) }

// Paused reports whether the server is paused (not accepting).
func (s *Server) Paused() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paused
}

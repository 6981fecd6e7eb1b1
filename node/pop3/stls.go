package pop3

import "fmt"

// stls upgrades the client connection (RFC 2595 §4). Bytes the client
// pipelined after STLS are still in the read buffer: StartTLS feeds them to
// the handshake, so they can never be run as plaintext commands. A failed
// handshake ends the session (the stream is then unusable).
func (s *conn) stls(cmd Command) (end bool, err error) {
	if cmd.Arg != "" || !s.c.Listener.StartTLSOffered(s.c.IsTLS()) {
		s.errors++
		s.write(replySTLSNotAvail)
		return false, nil
	}
	s.write(replySTLSBegin)
	if err := s.flush(); err != nil {
		return true, err
	}
	if err := s.c.StartTLS(s.ctx); err != nil {
		return true, fmt.Errorf("STLS: TLS handshake: %w", err)
	}
	// Nothing learnt before TLS survives it.
	s.user = ""
	return false, nil
}

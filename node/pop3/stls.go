package pop3

// stls upgrades the client connection (RFC 2595 §4). Bytes the client
// pipelined after STLS are still in the read buffer: the handshake gets
// them, so they can never be run as plaintext commands. A failed handshake
// ends the session (the stream is then unusable).
func (s *conn) stls(cmd Command) error {
	if cmd.Arg != "" || !s.c.Listener.StartTLSOffered(s.c.IsTLS()) {
		return errSTLSNotAvail
	}
	s.write(replySTLSBegin)
	if err := s.d.Flush(); err != nil {
		return err
	}
	if err := s.d.StartTLS("STLS"); err != nil {
		return err
	}
	// Nothing learnt before TLS survives it.
	s.user = ""
	return nil
}

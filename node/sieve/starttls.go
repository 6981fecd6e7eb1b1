package sieve

// starttls implements STARTTLS (RFC 5804 §2.2). Whatever the client sent
// after the command line is already buffered; netx feeds it to the TLS
// handshake, so an injected plaintext command is never executed. Over TLS
// the server re-issues its capabilities followed by OK, as §2.2 requires
// (the SASL list may have changed: plaintext authentication may now be
// allowed).
func (s *conn) starttls(cmd Command) error {
	switch {
	case len(cmd.Args) != 0:
		return errSyntax
	case s.c.IsTLS(), !s.c.Listener.StartTLSOffered(false):
		return errTLSNotAvail
	}
	s.write(replyTLSBegin)
	if err := s.d.Flush(); err != nil {
		return err
	}
	if err := s.d.StartTLS("STARTTLS"); err != nil {
		return err
	}
	s.newWire()
	s.write(s.capabilities() + "OK \"TLS negotiation successful.\"\r\n")
	return nil
}

package submission

// starttls implements STARTTLS (RFC 3207 §4). Whatever the client sent
// after the command line is already buffered; netx feeds it to the TLS
// handshake, so an injected plaintext command is never executed. Over TLS
// the client must start again with EHLO (§4.2: the server discards what it
// knew of the client); the EHLO reply then lists AUTH.
func (s *conn) starttls(cmd Command) error {
	switch {
	case cmd.Arg != "":
		return errNoArgs
	case s.c.IsTLS():
		return errTLSActive
	case !s.c.Listener.StartTLSOffered(false):
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
	s.helo, s.esmtp = "", false
	return nil
}

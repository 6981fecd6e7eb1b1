package imap

import (
	"github.com/portico-mail/portico/node/imap/imapwire"
)

// starttls implements STARTTLS (RFC 9051 §6.2.1). Whatever the client sent
// after the command line is already buffered; netx feeds it to the TLS
// handshake, so an injected plaintext command is never executed.
func (s *conn) starttls(cmd *imapwire.Command) error {
	switch {
	case len(cmd.Args) != 0:
		return bad(cmd.Tag, "STARTTLS takes no arguments.")
	case s.c.IsTLS():
		return bad(cmd.Tag, "TLS is already active.")
	case !s.c.Listener.StartTLSOffered(false):
		return bad(cmd.Tag, "STARTTLS is not available.")
	}
	s.writef("%s OK Begin TLS negotiation now.\r\n", cmd.Tag)
	if err := s.d.Flush(); err != nil {
		return err
	}
	if err := s.d.StartTLS("STARTTLS"); err != nil {
		return err
	}
	// Forget what was learnt in plaintext (RFC 9051 §6.2.1).
	s.id = nil
	s.newReader()
	return nil
}

package imap

import (
	"context"
	"fmt"

	"github.com/portico-mail/portico/node/imap/imapwire"
	"github.com/portico-mail/portico/node/session"
)

var sprintf = fmt.Sprintf

// starttls implements STARTTLS (RFC 9051 §6.2.1). Whatever the client sent
// after the command line is already buffered; netx feeds it to the TLS
// handshake, so an injected plaintext command is never executed.
func (s *conn) starttls(ctx context.Context, cmd *imapwire.Command) (*session.Handoff, bool, error) {
	switch {
	case len(cmd.Args) != 0:
		return s.bad(cmd.Tag, "STARTTLS takes no arguments.")
	case s.c.IsTLS():
		return s.bad(cmd.Tag, "TLS is already active.")
	case !s.c.Listener.StartTLSOffered(false):
		return s.bad(cmd.Tag, "STARTTLS is not available.")
	}
	s.writef("%s OK Begin TLS negotiation now.\r\n", cmd.Tag)
	if err := s.flush(); err != nil {
		return nil, true, err
	}
	if err := s.c.StartTLS(ctx); err != nil {
		return nil, true, fmt.Errorf("STARTTLS handshake: %w", err)
	}
	// Forget what was learnt in plaintext (RFC 9051 §6.2.1).
	s.id = nil
	s.newReader()
	return nil, false, nil
}

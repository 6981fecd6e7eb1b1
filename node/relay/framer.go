package relay

// Framer follows a protocol's response boundaries in a relayed session so
// that the session can be ended between two complete responses: an IMAP
// client gets "* BYE" after the last complete backend response, never in
// the middle of one (a FETCH literal in flight is not cut); a POP3 client
// is closed between responses.
//
// The relay feeds the framer every byte the backend sends to the client,
// except bytes the framer declares opaque (an IMAP literal's body), which
// the relay may splice inside the kernel without showing them. A framer
// that wants the client's bytes too (POP3: whether a response is
// multi-line depends on the command) says so, and the client->backend
// direction is then copied through user space.
//
// ServerData and Opaque/Skip are only called by the backend->client
// direction; ClientData only by the client->backend direction, which may
// run at the same time.
type Framer interface {
	// ServerData consumes backend bytes. It returns the largest k in
	// [0, len(b)] such that the stream up to b[:k] ends at a response
	// boundary, or -1 if there is none in b (counting position 0 only if
	// the stream was at a boundary before b).
	ServerData(b []byte) int
	// Opaque returns how many of the next backend bytes the framer need
	// not see (a literal's body); the relay reports the ones it moved
	// unseen with Skip.
	Opaque() int64
	Skip(n int64)
	// AtBoundary: the backend bytes so far end at a response boundary.
	AtBoundary() bool
	// WantsClientData: ClientData must see the client's bytes.
	WantsClientData() bool
	ClientData(b []byte)
	// Bye returns what to send the client before closing, given the text
	// of the reason (IMAP: an untagged BYE), or nil (POP3: just close).
	Bye(text string) []byte
}

// ClientGuard is a Framer that may refuse what the client sends: a command
// the backend would take from the proxy but must not take from a client
// (SMTP XCLIENT, which a backend that trusts the proxy's address honours
// on every connection from it), or bytes the framer can no longer follow.
// The relay asks after each ClientData; an error closes the session
// (ReasonClient) before those bytes reach the backend. Only a framer that
// wants the client's bytes (WantsClientData) is asked.
type ClientGuard interface {
	ClientRefused() error
}

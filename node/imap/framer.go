package imap

import (
	"math"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/portico-mail/portico/node/internal/linescan"
	"github.com/portico-mail/portico/node/relay"
)

// Framer follows response boundaries in the backend->client stream of a
// relayed IMAP session (relay.Framer). A response ends with a CRLF that
// does not announce a literal; a line ending in "{N}" or "{N+}" (also
// "~{N}", literal8) is followed by N bytes of literal, after which the
// same response continues. Literal bodies are opaque: the relay may
// splice them without showing them here.
//
// It also reads the client's commands, for one reason: COMPRESS=DEFLATE
// (RFC 4978). Once the server accepts a client's COMPRESS, both streams are
// compressed: the framer can no longer see responses, and a BYE inserted
// in plain text would corrupt the client's stream. From then on the
// session has no boundary (a drain closes it when its wait ends) and the
// whole backend stream is opaque (spliced).
//
// The state is two linescan.Scanners (a few integers and a short line
// head each) per session.
type Framer struct {
	server linescan.Scanner
	client linescan.Scanner

	mu          sync.Mutex
	compressTag string // the tag of a COMPRESS command awaiting its answer
	compressed  atomic.Bool
}

// NewFramer returns a framer for one session, at a boundary (the relay
// starts right after the backend's tagged login reply).
func NewFramer() relay.Framer { return &Framer{} }

// feed scans b and calls line with the start of every complete line (at
// a response or command boundary). It returns the offset in b of the
// last such line's end, 0 if the stream was at a boundary before b and
// none ends in b, or -1.
func feed(sc *linescan.Scanner, b []byte, line func(head []byte)) int {
	last := -1
	if sc.AtLineStart() {
		last = 0
	}
	for i := 0; i < len(b); {
		n, ended := sc.Scan(b[i:], false, linescan.HeadMax)
		i += n
		if ended {
			last = i
			line(sc.Head())
		}
	}
	return last
}

// ServerData implements relay.Framer.
func (f *Framer) ServerData(b []byte) int {
	if f.compressed.Load() {
		return -1
	}
	last := feed(&f.server, b, func(head []byte) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.compressTag == "" {
			return
		}
		tag, rest, _ := strings.Cut(string(head), " ")
		if tag != f.compressTag {
			return
		}
		f.compressTag = ""
		if len(rest) >= 2 && strings.EqualFold(rest[:2], "OK") {
			// What follows this line is compressed.
			f.compressed.Store(true)
		}
	})
	if f.compressed.Load() {
		return -1
	}
	return last
}

// ClientData implements relay.Framer: it looks for COMPRESS commands.
func (f *Framer) ClientData(b []byte) {
	if f.compressed.Load() {
		return
	}
	feed(&f.client, b, func(head []byte) {
		fields := strings.Fields(string(head))
		if len(fields) >= 2 && strings.EqualFold(fields[1], "COMPRESS") {
			f.mu.Lock()
			f.compressTag = fields[0]
			f.mu.Unlock()
		}
	})
}

// Opaque implements relay.Framer.
func (f *Framer) Opaque() int64 {
	if f.compressed.Load() {
		return math.MaxInt64
	}
	return f.server.Literal()
}

// Skip implements relay.Framer.
func (f *Framer) Skip(n int64) {
	if f.compressed.Load() {
		return
	}
	f.server.Skip(n)
}

// AtBoundary implements relay.Framer.
func (f *Framer) AtBoundary() bool {
	return !f.compressed.Load() && f.server.AtLineStart()
}

// WantsClientData implements relay.Framer: to see COMPRESS commands.
func (f *Framer) WantsClientData() bool { return true }

// Bye implements relay.Framer: an untagged BYE with the UNAVAILABLE
// response code (RFC 5530), so that clients reconnect.
func (f *Framer) Bye(text string) []byte {
	return []byte("* BYE [UNAVAILABLE] " + linescan.ByeText(text) + "\r\n")
}

// NewFramer returns the framer for a session this handler hands off.
func (h *Handler) NewFramer() relay.Framer { return NewFramer() }

package sieve

import (
	"strings"

	"github.com/portico-mail/portico/node/internal/linescan"
	"github.com/portico-mail/portico/node/relay"
)

// Framer follows response boundaries in the backend->client stream of a
// relayed ManageSieve session (relay.Framer). Every response ends with a
// status line, one that begins with OK, NO or BYE (RFC 5804 §1.2; the data
// lines before it, capabilities or LISTSCRIPTS entries, begin with a
// string). A line ending in "{n}" or "{n+}" is followed by n bytes of
// literal (a GETSCRIPT body, a quoted-unsafe script name, a long response
// text), after which the same line continues; literal bodies are opaque,
// so the relay may splice them unseen.
//
// Unlike POP3 the shape of a response never depends on the command, so
// the framer needs only the backend's bytes; all its methods are called by
// the backend->client direction of the relay, one at a time.
type Framer struct {
	sc     linescan.Scanner
	inResp bool // bytes of the current response seen
}

// NewFramer returns a framer for one session, at a boundary (the relay
// starts right after the backend's OK to AUTHENTICATE).
func NewFramer() relay.Framer { return &Framer{} }

// ServerData implements relay.Framer. A line may end at LF alone.
func (f *Framer) ServerData(b []byte) int {
	last := -1
	if !f.inResp && f.sc.Literal() == 0 {
		last = 0
	}
	for i := 0; i < len(b); {
		n, ended := f.sc.Scan(b[i:], true, statusHead)
		i += n
		f.inResp = true
		if ended && isStatus(f.sc.Head()) {
			f.inResp = false
			last = i
		}
	}
	return last
}

// statusHead is how much of a line's start isStatus needs.
const statusHead = 4

// isStatus: a line that begins with OK, NO or BYE (then a space or its end).
func isStatus(head []byte) bool {
	h := strings.ToUpper(string(head))
	for _, w := range []string{"OK", "NO", "BYE"} {
		if h == w || strings.HasPrefix(h, w+" ") || strings.HasPrefix(h, w+"(") {
			return true
		}
	}
	return false
}

// Opaque implements relay.Framer.
func (f *Framer) Opaque() int64 { return f.sc.Literal() }

// Skip implements relay.Framer.
func (f *Framer) Skip(n int64) { f.sc.Skip(n) }

// AtBoundary implements relay.Framer.
func (f *Framer) AtBoundary() bool { return !f.inResp && f.sc.Literal() == 0 }

// WantsClientData implements relay.Framer: responses do not depend on the
// commands.
func (f *Framer) WantsClientData() bool { return false }

// ClientData implements relay.Framer.
func (f *Framer) ClientData([]byte) {}

// Bye implements relay.Framer: BYE with TRYLATER (§1.3), so that clients
// reconnect.
func (f *Framer) Bye(text string) []byte {
	return []byte("BYE (TRYLATER) " + quote(linescan.ByeText(text)) + "\r\n")
}

// NewFramer returns the framer for a session this handler hands off.
func (h *Handler) NewFramer() relay.Framer { return NewFramer() }

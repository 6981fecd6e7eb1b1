package sieve

import (
	"strings"

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
	literal int64 // literal bytes still to come

	inResp bool // bytes of the current response seen
	inLine bool // bytes of the current line seen
	cont   bool // the line goes on after a literal (its head is complete)
	tail   uint8
	n      int64
	head   [4]byte
	headN  uint8
}

const (
	tailNone     = iota
	tailBrace    // "{" then digits (n)
	tailPlus     // "{123+"
	tailClosed   // "{123}" or "{123+}"
	tailClosedCR // "{123}\r"
)

// maxLiteral saturates an announced literal size.
const maxLiteral = 1 << 50

// NewFramer returns a framer for one session, at a boundary (the relay
// starts right after the backend's OK to AUTHENTICATE).
func NewFramer() relay.Framer { return &Framer{} }

// ServerData implements relay.Framer.
func (f *Framer) ServerData(b []byte) int {
	last := -1
	if !f.inResp && f.literal == 0 {
		last = 0
	}
	i := 0
	for i < len(b) {
		if f.literal > 0 {
			skip := int64(len(b) - i)
			if skip > f.literal {
				skip = f.literal
			}
			f.literal -= skip
			i += int(skip)
			continue
		}
		c := b[i]
		i++
		f.inResp, f.inLine = true, true
		if !f.cont && int(f.headN) < len(f.head) && c != '\r' && c != '\n' {
			f.head[f.headN] = c
			f.headN++
		}
		switch c {
		case '\n':
			if f.tail == tailClosed || f.tail == tailClosedCR {
				f.literal = f.n
				f.tail, f.cont = tailNone, true
				continue
			}
			f.tail = tailNone
			if isStatus(f.head[:f.headN]) {
				f.inResp = false
				last = i
			}
			f.inLine, f.cont, f.headN = false, false, 0
		case '\r':
			if f.tail == tailClosed {
				f.tail = tailClosedCR
			} else {
				f.tail = tailNone
			}
		case '{':
			f.tail, f.n = tailBrace, -1
		case '+':
			if f.tail == tailBrace && f.n >= 0 {
				f.tail = tailPlus
			} else {
				f.tail = tailNone
			}
		case '}':
			if (f.tail == tailBrace && f.n >= 0) || f.tail == tailPlus {
				f.tail = tailClosed
			} else {
				f.tail = tailNone
			}
		default:
			if c >= '0' && c <= '9' && f.tail == tailBrace {
				if f.n < 0 {
					f.n = 0
				}
				if f.n < maxLiteral {
					f.n = f.n*10 + int64(c-'0')
				}
				continue
			}
			f.tail = tailNone
		}
	}
	return last
}

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
func (f *Framer) Opaque() int64 { return f.literal }

// Skip implements relay.Framer.
func (f *Framer) Skip(n int64) {
	if n > f.literal {
		n = f.literal
	}
	f.literal -= n
}

// AtBoundary implements relay.Framer.
func (f *Framer) AtBoundary() bool { return !f.inResp && f.literal == 0 }

// WantsClientData implements relay.Framer: responses do not depend on the
// commands.
func (f *Framer) WantsClientData() bool { return false }

// ClientData implements relay.Framer.
func (f *Framer) ClientData([]byte) {}

// Bye implements relay.Framer: BYE with TRYLATER (§1.3), so that clients
// reconnect.
func (f *Framer) Bye(text string) []byte {
	text = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, text)
	if text == "" {
		text = "Server shutting down, please reconnect."
	}
	return []byte("BYE (TRYLATER) " + quote(text) + "\r\n")
}

// NewFramer returns the framer for a session this handler hands off.
func (h *Handler) NewFramer() relay.Framer { return NewFramer() }

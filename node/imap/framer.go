package imap

import (
	"strings"

	"github.com/portico-mail/portico/node/relay"
)

// Framer follows response boundaries in the backend->client stream of a
// relayed IMAP session (relay.Framer). A response ends with a CRLF that
// does not announce a literal; a line ending in "{N}" or "{N+}" (also
// "~{N}", literal8) is followed by N bytes of literal, after which the
// same response continues. Literal bodies are opaque: the relay may
// splice them without showing them here.
//
// The state is a few integers per session; no bytes are buffered.
type Framer struct {
	literal int64 // literal bytes still to come
	inLine  bool  // bytes seen since the last boundary
	tail    uint8 // what the line's last bytes were (tail* below)
	n       int64 // the number inside "{...}" being read
}

const (
	tailNone     = iota
	tailCR       // "\r"
	tailBrace    // "{" then digits (n)
	tailPlus     // "{123+"
	tailClosed   // "{123}" or "{123+}"
	tailClosedCR // "{123}\r"
)

// maxLiteral bounds a literal's announced size; larger numbers saturate
// (the stream is then opaque until the session ends, which only delays
// the boundary).
const maxLiteral = 1 << 50

// NewFramer returns a framer for one session, at a boundary (the relay
// starts right after the backend's tagged login reply).
func NewFramer() relay.Framer { return &Framer{} }

// ServerData implements relay.Framer.
func (f *Framer) ServerData(b []byte) int {
	last := -1
	if !f.inLine && f.literal == 0 {
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
		f.inLine = true
		switch c {
		case '\n':
			switch f.tail {
			case tailClosedCR:
				f.literal = f.n // the line goes on after the literal
				f.tail = tailNone
				continue
			case tailCR:
				f.inLine = false
				last = i
			}
			f.tail = tailNone
		case '\r':
			if f.tail == tailClosed {
				f.tail = tailClosedCR
			} else {
				f.tail = tailCR
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
func (f *Framer) AtBoundary() bool { return !f.inLine && f.literal == 0 }

// WantsClientData implements relay.Framer: IMAP responses frame
// themselves.
func (f *Framer) WantsClientData() bool { return false }

// ClientData implements relay.Framer.
func (f *Framer) ClientData([]byte) {}

// Bye implements relay.Framer: an untagged BYE with the UNAVAILABLE
// response code (RFC 5530), so that clients reconnect.
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
	return []byte("* BYE [UNAVAILABLE] " + text + "\r\n")
}

// NewFramer returns the framer for a session this handler hands off.
func (h *Handler) NewFramer() relay.Framer { return NewFramer() }

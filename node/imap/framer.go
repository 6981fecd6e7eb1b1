package imap

import (
	"math"
	"strings"
	"sync"
	"sync/atomic"

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
// The state is a few integers and two short line heads per session.
type Framer struct {
	server scanner
	client scanner

	mu          sync.Mutex
	compressTag string // the tag of a COMPRESS command awaiting its answer
	compressed  atomic.Bool
}

// scanner follows lines and literals in one direction.
type scanner struct {
	literal int64 // literal bytes still to come
	inLine  bool  // bytes seen since the last boundary
	tail    uint8 // what the line's last bytes were (tail* below)
	n       int64 // the number inside "{...}" being read
	head    [32]byte
	headN   uint8 // bytes of the line's start kept in head
	cont    bool  // the line continues after a literal (head is complete)
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

// feed scans b and calls line with the start of every complete line (at
// a response or command boundary) and its end offset in b. It returns the
// largest such offset, 0 if the stream was at a boundary before b, or -1.
func (sc *scanner) feed(b []byte, line func(head []byte)) int {
	last := -1
	if !sc.inLine && sc.literal == 0 {
		last = 0
	}
	i := 0
	for i < len(b) {
		if sc.literal > 0 {
			skip := int64(len(b) - i)
			if skip > sc.literal {
				skip = sc.literal
			}
			sc.literal -= skip
			i += int(skip)
			continue
		}
		c := b[i]
		i++
		sc.inLine = true
		if !sc.cont && int(sc.headN) < len(sc.head) && c != '\r' && c != '\n' {
			sc.head[sc.headN] = c
			sc.headN++
		}
		switch c {
		case '\n':
			switch sc.tail {
			case tailClosedCR:
				sc.literal = sc.n // the line goes on after the literal
				sc.tail = tailNone
				sc.cont = true
				continue
			case tailCR:
				sc.inLine = false
				last = i
				if line != nil {
					line(sc.head[:sc.headN])
				}
				sc.headN, sc.cont = 0, false
			}
			sc.tail = tailNone
		case '\r':
			if sc.tail == tailClosed {
				sc.tail = tailClosedCR
			} else {
				sc.tail = tailCR
			}
		case '{':
			sc.tail, sc.n = tailBrace, -1
		case '+':
			if sc.tail == tailBrace && sc.n >= 0 {
				sc.tail = tailPlus
			} else {
				sc.tail = tailNone
			}
		case '}':
			if (sc.tail == tailBrace && sc.n >= 0) || sc.tail == tailPlus {
				sc.tail = tailClosed
			} else {
				sc.tail = tailNone
			}
		default:
			if c >= '0' && c <= '9' && sc.tail == tailBrace {
				if sc.n < 0 {
					sc.n = 0
				}
				if sc.n < maxLiteral {
					sc.n = sc.n*10 + int64(c-'0')
				}
				continue
			}
			sc.tail = tailNone
		}
	}
	return last
}

// ServerData implements relay.Framer.
func (f *Framer) ServerData(b []byte) int {
	if f.compressed.Load() {
		return -1
	}
	last := f.server.feed(b, func(head []byte) {
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
	f.client.feed(b, func(head []byte) {
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
	return f.server.literal
}

// Skip implements relay.Framer.
func (f *Framer) Skip(n int64) {
	if f.compressed.Load() {
		return
	}
	if n > f.server.literal {
		n = f.server.literal
	}
	f.server.literal -= n
}

// AtBoundary implements relay.Framer.
func (f *Framer) AtBoundary() bool {
	return !f.compressed.Load() && !f.server.inLine && f.server.literal == 0
}

// WantsClientData implements relay.Framer: to see COMPRESS commands.
func (f *Framer) WantsClientData() bool { return true }

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

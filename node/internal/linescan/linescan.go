// Package linescan is what the relay framers of IMAP (node/imap) and
// ManageSieve (node/sieve) share: following lines, and the literals
// they announce, in one direction of a relayed stream, and the text of
// the BYE either sends when a drain ends a session.
//
// Both grammars have IMAP's literals (RFC 9051 §4.3, RFC 5804 §4): a
// line that ends in "{n}" or "{n+}" (IMAP's literal8 "~{n}" too) is
// followed by n bytes of literal, after which the same line goes on.
// Literal bodies are opaque: the relay may splice them unseen and say
// so with Skip. What a line means (whether it ends a response, names a
// command) stays with each protocol, which reads the line's first bytes
// (Head) when Scan reports its end.
package linescan

import "strings"

// HeadMax is the most bytes of a line's start that Head can keep.
const HeadMax = 32

// maxLiteral bounds a literal's announced size; larger numbers saturate
// (the stream is then opaque until the session ends, which only delays
// the boundary).
const maxLiteral = 1 << 50

// Scanner follows lines and literals in one direction of a stream: a
// few integers and the start of the current line. The zero value is at
// a line boundary.
type Scanner struct {
	literal int64 // literal bytes still to come
	inLine  bool  // bytes seen since the last line end
	ended   bool  // the last Scan ended a line: head is for the caller
	cont    bool  // the line continues after a literal (head is complete)
	tail    uint8 // what the line's last bytes were (tail* below)
	headN   uint8 // bytes of the line's start kept in head
	n       int64 // the number inside "{...}" being read
	head    [HeadMax]byte
}

const (
	tailNone     = iota
	tailCR       // "\r"
	tailBrace    // "{" then digits (n)
	tailPlus     // "{123+"
	tailClosed   // "{123}" or "{123+}"
	tailClosedCR // "{123}\r"
)

// Scan reads b up to the end of the first line that ends in it, or
// through b if none does, and returns how many bytes it consumed and
// whether a line ended there (its first head bytes, at most HeadMax, are
// then Head, until the next Scan). It consumes at least one byte of a
// non-empty b. A caller passes the same bareLF and head on every call.
//
// A line ends at CRLF, or with bareLF (the ManageSieve framer's choice)
// at LF alone too, and a literal's "{n}" may then be followed by LF
// alone. A CRLF that follows "{n}" ends no line: n bytes of literal
// follow.
func (sc *Scanner) Scan(b []byte, bareLF bool, head int) (int, bool) {
	if sc.ended {
		sc.ended, sc.headN, sc.cont = false, 0, false
	}
	head = min(head, len(sc.head))
	i := sc.skip(b, 0)
	for i < len(b) {
		c := b[i]
		i++
		sc.inLine = true
		if !sc.cont && int(sc.headN) < head && c != '\r' && c != '\n' {
			sc.head[sc.headN] = c
			sc.headN++
		}
		switch c {
		case '\n':
			switch {
			case sc.tail == tailClosedCR || (bareLF && sc.tail == tailClosed):
				sc.literal = sc.n // the line goes on after the literal
				sc.tail = tailNone
				sc.cont = true
				i = sc.skip(b, i)
				continue
			case sc.tail == tailCR || bareLF:
				sc.tail = tailNone
				sc.inLine, sc.ended = false, true
				return i, true
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
	return i, false
}

// skip passes over the literal bytes that b holds from i on and returns
// where the rest begins.
func (sc *Scanner) skip(b []byte, i int) int {
	if n := int64(len(b) - i); n < sc.literal {
		sc.literal -= n
		return len(b)
	}
	i += int(sc.literal)
	sc.literal = 0
	return i
}

// Head returns the first bytes (as many as Scan was told to keep, CR and
// LF left out) of the line whose end the last Scan reported. It aliases
// the Scanner.
func (sc *Scanner) Head() []byte { return sc.head[:sc.headN] }

// AtLineStart reports whether the stream so far ends at a line end (or
// is empty), no literal pending.
func (sc *Scanner) AtLineStart() bool { return !sc.inLine && sc.literal == 0 }

// Literal returns how many literal bytes are still to come: bytes Scan
// need not see.
func (sc *Scanner) Literal() int64 { return sc.literal }

// Skip accounts for n literal bytes that went by unseen (at most what
// Literal returned).
func (sc *Scanner) Skip(n int64) {
	if n > sc.literal {
		n = sc.literal
	}
	sc.literal -= n
}

// ByeText makes the reason given to a framer's Bye fit in one line of a
// BYE response: control characters become spaces, and an empty reason
// becomes "Server shutting down, please reconnect."
func ByeText(text string) string {
	text = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, text)
	if text == "" {
		text = "Server shutting down, please reconnect."
	}
	return text
}

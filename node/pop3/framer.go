package pop3

import (
	"bytes"
	"sync"

	"github.com/portico-mail/portico/node/relay"
)

// Framer follows response boundaries in a relayed POP3 session
// (relay.Framer). Whether a "+OK" response is one line or a multi-line
// block ending in ".\r\n" depends on the command (RFC 1939, 2449), so the
// framer reads the client's commands too and queues what each response
// will look like: RETR, TOP, CAPA, and LIST/UIDL without an argument are
// multi-line; every other command, and every "-ERR", is one line.
//
// A POP3 stream has no opaque part (message bodies are dot-stuffed and
// their end is found by reading them), so a relayed POP3 session is
// copied through user space; POP3 sessions are short and few next to
// IMAP's.
type Framer struct {
	mu sync.Mutex

	// Client side: the command line being read, and the kinds of the
	// responses still to come (true: multi-line), oldest first.
	cmd      []byte
	cmdLong  bool // the current command line exceeded maxCmdLine
	expect   []bool
	overflow bool // more commands in flight than maxPipelined: lost track

	// Server side.
	inResp bool // bytes of the current response seen
	multi  bool // the current response is a multi-line block
	// bodyStarted: the status line of a multi-line response has ended.
	bodyStarted bool
	state       uint8 // position in the line (line* below)
}

const (
	lineStart    = iota // at the start of a line
	lineMiddle          // inside a line
	lineCR              // after "\r"
	lineDot             // a block line that began with "."
	lineDotCR           // ".\r" at the start of a block line
	maxCmdLine   = 512
	maxPipelined = 128
)

// NewFramer returns a framer for one session (the relay starts right
// after the backend's reply to PASS or AUTH, between responses).
func NewFramer() relay.Framer { return &Framer{} }

// WantsClientData implements relay.Framer.
func (f *Framer) WantsClientData() bool { return true }

// ClientData implements relay.Framer.
func (f *Framer) ClientData(b []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		part := b
		if i >= 0 {
			part = b[:i]
		}
		if !f.cmdLong {
			if len(f.cmd)+len(part) > maxCmdLine {
				f.cmdLong, f.cmd = true, f.cmd[:0]
			} else {
				f.cmd = append(f.cmd, part...)
			}
		}
		if i < 0 {
			return
		}
		b = b[i+1:]
		multi := !f.cmdLong && multiLine(bytes.TrimRight(f.cmd, "\r"))
		f.cmd, f.cmdLong = f.cmd[:0], false
		if len(f.expect) >= maxPipelined {
			f.overflow = true
			continue
		}
		f.expect = append(f.expect, multi)
	}
}

// multiLine tells whether the command's "+OK" answer is a multi-line block.
func multiLine(line []byte) bool {
	word, rest, _ := bytes.Cut(line, []byte(" "))
	rest = bytes.TrimSpace(rest)
	switch {
	case bytes.EqualFold(word, []byte("RETR")), bytes.EqualFold(word, []byte("TOP")),
		bytes.EqualFold(word, []byte("CAPA")):
		return true
	case bytes.EqualFold(word, []byte("LIST")), bytes.EqualFold(word, []byte("UIDL")):
		return len(rest) == 0
	}
	return false
}

// ServerData implements relay.Framer.
func (f *Framer) ServerData(b []byte) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	last := -1
	if !f.inResp {
		last = 0
	}
	for i, c := range b {
		if !f.inResp {
			f.inResp, f.state = true, lineStart
			// A response with no command queued (none should come)
			// counts as one line.
			f.multi = len(f.expect) > 0 && f.expect[0] && c == '+'
		}
		switch f.state {
		case lineStart:
			switch {
			case c == '.' && f.multi && f.inBody():
				f.state = lineDot
			case c == '\r':
				f.state = lineCR
			case c == '\n':
				f.lineEnd()
			default:
				f.state = lineMiddle
			}
		case lineMiddle:
			if c == '\r' {
				f.state = lineCR
			} else if c == '\n' {
				f.lineEnd()
			}
		case lineCR:
			if c == '\n' {
				f.lineEnd()
			} else if c != '\r' {
				f.state = lineMiddle
			}
		case lineDot:
			switch c {
			case '\r':
				f.state = lineDotCR
			case '\n':
				f.endResponse()
			default:
				f.state = lineMiddle // a dot-stuffed line
			}
		case lineDotCR:
			if c == '\n' {
				f.endResponse()
			} else if c != '\r' {
				f.state = lineMiddle
			}
		}
		if !f.inResp {
			last = i + 1
		}
	}
	if f.overflow {
		return -1
	}
	return last
}

// inBody: past the status line, which never ends a block.
func (f *Framer) inBody() bool { return f.bodyStarted }

func (f *Framer) lineEnd() {
	if !f.multi {
		f.endResponse()
		return
	}
	f.bodyStarted = true
	f.state = lineStart
}

func (f *Framer) endResponse() {
	f.inResp, f.multi, f.bodyStarted, f.state = false, false, false, lineStart
	if len(f.expect) > 0 {
		f.expect = f.expect[1:]
		if len(f.expect) == 0 {
			f.expect = f.expect[:0:0]
		}
	}
}

// Opaque implements relay.Framer: nothing in POP3 is opaque.
func (f *Framer) Opaque() int64 { return 0 }

// Skip implements relay.Framer.
func (f *Framer) Skip(int64) {}

// AtBoundary implements relay.Framer. After losing track of pipelined
// commands the framer never reports a boundary (the session is then
// closed when the drain deadline passes).
func (f *Framer) AtBoundary() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.inResp && !f.overflow
}

// Bye implements relay.Framer: POP3 has no unsolicited goodbye; the
// session is just closed.
func (f *Framer) Bye(string) []byte { return nil }

// NewFramer returns the framer for a session this handler hands off.
func (h *Handler) NewFramer() relay.Framer { return NewFramer() }

package submission

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/portico-mail/portico/node/relay"
)

// Framer follows a relayed submission session (relay.Framer and
// relay.ClientGuard). It reads both directions:
//
//   - the client's commands, to know which replies to expect, where a
//     DATA body (after its 354 reply, up to the line ".", RFC 5321 §4.1.1.4)
//     and a BDAT chunk (its size given on the command line, RFC 3030) are,
//     and whether a mail transaction is open (from MAIL's 2xx to the reply
//     that ends the message, or RSET, EHLO, HELO);
//   - the backend's replies ("ddd-" continues a reply, "ddd " ends it),
//     matched to the commands in order (RFC 2920 keeps replies in command
//     order).
//
// The session is at a boundary, where the relay may end it with a 421
// (Bye), when no reply is outstanding, no message is being sent and no
// transaction is open: a drain never cuts a message, nor leaves the client
// unsure whether one was taken.
//
// As a guard it refuses what a client must never send through the proxy:
// XCLIENT and XFORWARD (a backend honours them from the proxy's address,
// so a client would set its own address, or with XCLIENT LOGIN log in as
// anyone), STARTTLS (a TLS layer the framer could not see through), BDAT
// when the backend has no CHUNKING or with a size the backend might read
// differently, bytes after DATA before its 354 reply (RFC 2920 §3.1: DATA
// ends a pipelined group), and more than maxPipelined commands awaiting
// replies. In each case the framer could no longer tell commands from
// message content the way the backend does, so the session is closed
// before the bytes reach the backend. Commands are split as Postfix splits
// them: at LF, the verb being the first word after leading white space.
type Framer struct {
	mu sync.Mutex

	chunking bool // the backend offers CHUNKING

	// Client side.
	cmd         []byte // the command line being read: its first maxCmdHead bytes after leading white space
	cmdLong     bool   // the line is longer than maxCmdHead
	body        bool   // in a DATA body, until a line "."
	bodyCol     uint8  // position in the body line (col* below)
	chunk       int64  // BDAT chunk bytes still to come
	expect      []replyKind
	dataPending int // DATA commands whose reply has not come
	refused     error

	// Server side.
	inReply bool // bytes of a reply seen, its last line not ended
	head    [4]byte
	headN   uint8
	inTx    bool
}

type replyKind uint8

const (
	kindOther    replyKind = iota
	kindMail               // MAIL: a 2xx opens a transaction
	kindReset              // RSET, EHLO, HELO: a 2xx ends any transaction
	kindData               // DATA: 354 starts the body
	kindDataEnd            // the end of a DATA body: its reply ends the transaction
	kindBDAT               // a BDAT chunk
	kindBDATLast           // the last BDAT chunk: a 2xx ends the transaction
)

const (
	colStart = iota // at the start of a body line
	colDot          // the line so far is "."
	colDotCR        // the line so far is ".\r"
	colOther        // anywhere else
)

const (
	// maxCmdHead bounds what is kept of a command line (the verb and
	// BDAT's arguments need about 30 bytes).
	maxCmdHead = 256
	// maxPipelined bounds the commands awaiting replies (a client sends a
	// RCPT per recipient in one group).
	maxPipelined = 1024
)

// NewFramer returns a framer for one session, at a boundary (the relay
// starts right after the 235 reply to AUTH). chunking: the backend offers
// CHUNKING, so BDAT may pass.
func NewFramer(chunking bool) relay.Framer { return &Framer{chunking: chunking} }

var _ relay.ClientGuard = (*Framer)(nil)

// WantsClientData implements relay.Framer.
func (f *Framer) WantsClientData() bool { return true }

// ClientRefused implements relay.ClientGuard.
func (f *Framer) ClientRefused() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refused
}

// ClientData implements relay.Framer.
func (f *Framer) ClientData(b []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := 0; i < len(b) && f.refused == nil; {
		if f.chunk > 0 {
			n := min(f.chunk, int64(len(b)-i))
			f.chunk -= n
			i += int(n)
			continue
		}
		if f.body {
			i += f.bodyData(b[i:])
			continue
		}
		if f.dataPending > 0 {
			f.refuse(errors.New("client sent more after DATA before its reply"))
			return
		}
		j := i
		for j < len(b) && b[j] != '\n' {
			c := b[j]
			j++
			switch {
			case len(f.cmd) == 0 && !f.cmdLong && isSpace(c):
				// Leading white space: Postfix skips it too.
			case len(f.cmd) < maxCmdHead:
				f.cmd = append(f.cmd, c)
			default:
				f.cmdLong = true
			}
		}
		if j == len(b) {
			return
		}
		i = j + 1
		f.command()
		// Nothing kept between commands: an idle session holds no buffer.
		f.cmd, f.cmdLong = nil, false
	}
}

// bodyData consumes DATA body bytes up to and including the line "."
// (CRLF or a bare LF, as lenient servers accept), and returns how many.
// Inside a line it jumps to the next LF (bytes.IndexByte): message bodies
// are the bulk of a submission session's bytes.
func (f *Framer) bodyData(b []byte) int {
	i := 0
	for i < len(b) {
		if f.bodyCol == colOther {
			j := bytes.IndexByte(b[i:], '\n')
			if j < 0 {
				return len(b)
			}
			i += j + 1
			f.bodyCol = colStart
			continue
		}
		c := b[i]
		i++
		switch {
		case c == '\n':
			if f.bodyCol == colDot || f.bodyCol == colDotCR {
				f.body = false
				f.push(kindDataEnd)
				return i
			}
			f.bodyCol = colStart
		case f.bodyCol == colStart && c == '.':
			f.bodyCol = colDot
		case f.bodyCol == colDot && c == '\r':
			f.bodyCol = colDotCR
		default:
			f.bodyCol = colOther
		}
	}
	return len(b)
}

// command takes one complete command line.
func (f *Framer) command() {
	line := strings.TrimRight(string(f.cmd), "\r")
	end := strings.IndexFunc(line, func(r rune) bool { return r < 0x80 && isSpace(byte(r)) })
	verb, arg := line, ""
	if end >= 0 {
		verb, arg = line[:end], line[end:]
	}
	switch v := strings.ToUpper(verb); v {
	case "XCLIENT", "XFORWARD", "STARTTLS":
		f.refuse(fmt.Errorf("client sent %s after login", v))
	case "DATA":
		f.push(kindData)
		f.dataPending++
	case "BDAT":
		n, last, ok := parseBDAT(arg)
		switch {
		case !f.chunking:
			f.refuse(errors.New("client sent BDAT, but the backend does not offer CHUNKING"))
		case !ok || f.cmdLong:
			f.refuse(errors.New("client sent a malformed BDAT"))
		case last:
			f.push(kindBDATLast)
			f.chunk = n
		default:
			f.push(kindBDAT)
			f.chunk = n
		}
	case "MAIL":
		f.push(kindMail)
	case "RSET", "EHLO", "HELO":
		f.push(kindReset)
	default:
		f.push(kindOther)
	}
}

func (f *Framer) push(k replyKind) {
	if len(f.expect) >= maxPipelined {
		f.refuse(fmt.Errorf("more than %d commands awaiting replies", maxPipelined))
		return
	}
	f.expect = append(f.expect, k)
}

func (f *Framer) refuse(err error) {
	if f.refused == nil {
		f.refused = err
	}
}

// isSpace is C's isspace in the C locale (what Postfix's tokeniser skips).
func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r' }

// ServerData implements relay.Framer.
func (f *Framer) ServerData(b []byte) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	last := -1
	if f.atBoundary() {
		last = 0
	}
	for i, c := range b {
		f.inReply = true
		if c != '\n' {
			if f.headN < uint8(len(f.head)) {
				f.head[f.headN] = c
				f.headN++
			}
			continue
		}
		h := f.head[:f.headN]
		f.headN = 0
		if len(h) == 4 && h[3] == '-' {
			continue // a reply line that another follows
		}
		f.inReply = false
		f.replied(h)
		if f.atBoundary() {
			last = i + 1
		}
	}
	return last
}

// replied matches a reply's last line (its first bytes h) to the oldest
// command awaiting one. A reply nothing awaits (a 421 before the server
// closes) changes nothing.
func (f *Framer) replied(h []byte) {
	if len(f.expect) == 0 {
		return
	}
	k := f.expect[0]
	f.expect = f.expect[1:]
	if len(f.expect) == 0 {
		f.expect = f.expect[:0:0]
	}
	code := 0
	if len(h) >= 3 && isDigit(h[0]) && isDigit(h[1]) && isDigit(h[2]) {
		code = int(h[0]-'0')*100 + int(h[1]-'0')*10 + int(h[2]-'0')
	}
	ok := code/100 == 2
	switch k {
	case kindMail:
		if ok {
			f.inTx = true
		}
	case kindReset:
		if ok {
			f.inTx = false
		}
	case kindData:
		f.dataPending--
		if code == 354 {
			f.body, f.bodyCol = true, colStart
		}
	case kindDataEnd:
		f.inTx = false
	case kindBDATLast:
		if ok {
			f.inTx = false
		}
	}
}

// atBoundary: nothing awaited, nothing in flight, no transaction open.
// f.mu is held.
func (f *Framer) atBoundary() bool {
	return !f.inReply && len(f.expect) == 0 && !f.inTx && !f.body && f.chunk == 0 && f.refused == nil
}

// AtBoundary implements relay.Framer.
func (f *Framer) AtBoundary() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.atBoundary()
}

// Opaque implements relay.Framer: the framer sees every byte (message
// content must be followed to find its end).
func (f *Framer) Opaque() int64 { return 0 }

// Skip implements relay.Framer.
func (f *Framer) Skip(int64) {}

// Bye implements relay.Framer: 421 closes the channel (RFC 5321 §3.8);
// 4.3.2 is "system not accepting network messages", so clients retry
// later, elsewhere.
func (f *Framer) Bye(text string) []byte {
	text = sanitize(text)
	if text == "" {
		text = "Service shutting down, please reconnect"
	}
	return []byte("421 4.3.2 " + text + "\r\n")
}

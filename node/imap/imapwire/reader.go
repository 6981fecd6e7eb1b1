package imapwire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math"
)

// Default limits.
const (
	DefaultMaxLine    = 8192
	DefaultMaxLiteral = 8192
)

// Structural bounds of a command.
const (
	// MaxArgs bounds the number of arguments of a command, counting the
	// elements of nested lists and the lists themselves. An RFC 2971 ID
	// list with its maximum of 30 field/value pairs needs 61.
	MaxArgs = 64
	// MaxListDepth bounds the nesting of parenthesized lists.
	MaxListDepth = 4
)

// Limits bounds the resources a single command may consume. Zero or
// negative values select the defaults.
type Limits struct {
	// MaxLine bounds the bytes of a command outside literal data:
	// all its line segments, including literal headers and line
	// terminators. Default DefaultMaxLine.
	MaxLine int
	// MaxLiteral bounds the total size of all literals of a command.
	// Default DefaultMaxLiteral. A server advertising LITERAL- must
	// allow at least 4096.
	MaxLiteral int
}

// ArgKind is the syntactic kind of a command argument.
type ArgKind int

// Argument kinds.
const (
	Atom    ArgKind = iota + 1 // 1*ASTRING-CHAR, other than NIL
	Quoted                     // "..." (Value is unescaped)
	Literal                    // {n} or {n+} (Value is the literal data)
	List                       // (...) (elements in List)
	NIL                        // the atom NIL, any case (Value is the text as sent)
)

func (k ArgKind) String() string {
	switch k {
	case Atom:
		return "Atom"
	case Quoted:
		return "Quoted"
	case Literal:
		return "Literal"
	case List:
		return "List"
	case NIL:
		return "NIL"
	}
	return "ArgKind(?)"
}

// Arg is one command argument.
type Arg struct {
	Kind  ArgKind
	Value string // for Atom, Quoted, Literal and NIL
	List  []Arg  // for List; nil if the list is empty
}

// IsString reports whether a is an atom, quoted string or literal, i.e. an
// astring other than NIL. Note that where the grammar expects an astring
// (LOGIN user names, for example), the atom NIL is just the string "NIL";
// a caller wanting full astring semantics should accept Kind NIL as well,
// using Value.
func (a Arg) IsString() bool {
	return a.Kind == Atom || a.Kind == Quoted || a.Kind == Literal
}

// Command is a parsed client command.
//
// A Command and everything reachable from it is owned by the caller: the
// Reader never modifies or reuses it, so it stays valid after later
// ReadCommand calls. (All strings of one command share one allocation;
// retaining any of them retains the whole command text.)
type Command struct {
	Tag  string
	Name string // upper-cased
	Args []Arg  // nil if there are none

	argBuf [4]Arg // backing store for small commands
}

type tok struct {
	kind     ArgKind
	off, end int32 // value in scratch
	n        int32 // List: number of direct elements
}

// parser states between tokens
const (
	stElem uint8 = iota // after an element: SP, ')' or end of line
	stOpen              // after '(': element or ')'
	stSP                // after SP: element
)

// tailSize is the window kept of a discarded line to recognise a trailing
// literal header.
const tailSize = 32

var errTooLong = errors.New("too long") // internal

// Reader reads client commands. It is not safe for concurrent use.
type Reader struct {
	br   *bufio.Reader
	lim  Limits
	cont func() error
	err  error // sticky fatal error

	buf     []byte // accumulates a line not fitting br's buffer
	scratch []byte // tag, name and argument values of the current command
	toks    []tok

	// per-command state
	started  bool // bytes of the current command have been consumed
	lineUsed int
	litUsed  int
	tagLen   int // tag is scratch[:tagLen] if tagLen > 0
	nameEnd  int
	topN     int
	depth    int
	state    uint8
	stack    [MaxListDepth]int32

	overflowTag string // tag seen in the first segment of an overlong line
	tail        [tailSize]byte
	tailN       int
}

// NewReader returns a Reader reading commands from br. cont is called to
// send a continuation request (for example "+ Ready for literal data\r\n")
// before the data of a synchronizing literal is read; it must flush. If
// cont returns an error, ReadCommand returns it (fatally). A nil cont is a
// no-op (useful only in tests).
func NewReader(br *bufio.Reader, lim Limits, cont func() error) *Reader {
	if lim.MaxLine <= 0 {
		lim.MaxLine = DefaultMaxLine
	}
	if lim.MaxLiteral <= 0 {
		lim.MaxLiteral = DefaultMaxLiteral
	}
	// offsets are int32
	lim.MaxLine = min(lim.MaxLine, 1<<29)
	lim.MaxLiteral = min(lim.MaxLiteral, 1<<29)
	if cont == nil {
		cont = func() error { return nil }
	}
	return &Reader{br: br, lim: lim, cont: cont}
}

// ReadCommand reads and parses the next command.
//
// Errors (see the error types for what the caller must answer):
//   - *SyntaxError, *LineTooLongError, *LiteralTooLargeError with NonSync
//     false: the command was consumed or rejected at a point where the
//     client waits; answer BAD and continue.
//   - *LiteralTooLargeError with NonSync true: answer BAD and close.
//   - io.EOF: the client closed the connection between commands.
//   - io.ErrUnexpectedEOF: the client closed in the middle of a command
//     (including a last line without line terminator).
//   - any other error from br or cont, returned as-is.
//
// Fatal errors (see Fatal) are sticky: every later call returns them.
func (r *Reader) ReadCommand() (*Command, error) {
	if r.err != nil {
		return nil, r.err
	}
	cmd, err := r.readCommand()
	if Fatal(err) {
		r.err = err
	}
	r.release()
	return cmd, err
}

// ReadLine reads one raw line, without its terminator, for example a
// client response during AUTHENTICATE (RFC 9051 §6.2.2). The line is
// bounded by Limits.MaxLine (terminator included); a longer line is
// discarded through its LF and a *LineTooLongError (with empty Tag) is
// returned. The returned slice may alias internal buffers: it is valid
// only until the next call of a Reader method or read from br.
func (r *Reader) ReadLine() ([]byte, error) {
	if r.err != nil {
		return nil, r.err
	}
	r.started = false
	line, err := r.readLine(r.lim.MaxLine, false)
	if err == errTooLong {
		r.release()
		return nil, &LineTooLongError{}
	}
	if err != nil {
		r.err = err
		return nil, err
	}
	return line, nil
}

// release drops buffers that grew large so idle connections stay small.
func (r *Reader) release() {
	if cap(r.buf) > 4096 {
		r.buf = nil
	}
	if cap(r.scratch) > 4096 {
		r.scratch = nil
	}
}

func (r *Reader) tag() string {
	if r.tagLen > 0 {
		return string(r.scratch[:r.tagLen])
	}
	return ""
}

func (r *Reader) readCommand() (*Command, error) {
	r.started = false
	r.lineUsed, r.litUsed = 0, 0
	r.tagLen, r.nameEnd, r.topN, r.depth = 0, 0, 0, 0
	r.state = stElem
	r.scratch = r.scratch[:0]
	r.toks = r.toks[:0]
	r.overflowTag = ""

	line, err := r.readLine(r.lim.MaxLine, true)
	if err == errTooLong {
		return nil, r.tooLong(r.overflowTag)
	}
	if err != nil {
		return nil, err
	}
	if msg := r.parseHead(line); msg != "" {
		return nil, r.syntax(msg, line)
	}
	// tag and name were copied verbatim to scratch; skip them and the SP.
	p := r.nameEnd + 1
	for {
		n, nonSync, hasLit, msg := r.parseArgs(line, p)
		if msg != "" {
			return nil, r.syntax(msg, line)
		}
		if !hasLit {
			break
		}
		if n > int64(r.lim.MaxLiteral-r.litUsed) {
			return nil, &LiteralTooLargeError{Tag: r.tag(), Size: n, NonSync: nonSync}
		}
		if !nonSync {
			if err := r.cont(); err != nil {
				return nil, err
			}
		}
		off := len(r.scratch)
		r.scratch = grow(r.scratch, int(n))
		if _, err := io.ReadFull(r.br, r.scratch[off:]); err != nil {
			return nil, unexpected(err)
		}
		r.litUsed += int(n)
		lit := r.scratch[off:]
		r.toks = append(r.toks, tok{kind: Literal, off: int32(off), end: int32(len(r.scratch))})
		r.state = stElem
		if bytes.IndexByte(lit, 0) >= 0 {
			return nil, r.syntax("NUL in literal", nil)
		}
		line, err = r.readLine(r.lim.MaxLine-r.lineUsed, false)
		if err == errTooLong {
			return nil, r.tooLong(r.tag())
		}
		if err != nil {
			return nil, err
		}
		p = 0
	}
	return r.build(), nil
}

func grow(b []byte, n int) []byte {
	if cap(b)-len(b) < n {
		nb := make([]byte, len(b), len(b)+n)
		copy(nb, b)
		b = nb
	}
	return b[:len(b)+n]
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// syntax builds a SyntaxError after skipping the rest of the command.
// line is the current, fully consumed segment; nil means the next segment
// has not been read yet.
func (r *Reader) syntax(msg string, line []byte) error {
	tag := r.tag()
	if err := r.skip(line, tag); err != nil {
		return err
	}
	return &SyntaxError{Tag: tag, Msg: msg}
}

func (r *Reader) tooLong(tag string) error {
	if err := r.skip(r.tail[:r.tailN], tag); err != nil {
		return err
	}
	return &LineTooLongError{Tag: tag}
}

// skip discards the remainder of an aborted command: if the current
// segment ends in a non-synchronizing literal header the client sends the
// literal and the rest of the command regardless, so they are discarded
// (within the literal budget) without being buffered. A synchronizing
// literal header ends the command: the client waits for "+".
func (r *Reader) skip(line []byte, tag string) error {
	for {
		if line != nil {
			n, nonSync, ok := trailingLiteral(line)
			if !ok || !nonSync {
				return nil
			}
			if n > int64(r.lim.MaxLiteral-r.litUsed) {
				return &LiteralTooLargeError{Tag: tag, Size: n, NonSync: true}
			}
			if _, err := r.br.Discard(int(n)); err != nil {
				return unexpected(err)
			}
			r.litUsed += int(n)
		}
		// budget 0: always discarded, the last bytes land in r.tail.
		_, err := r.readLine(0, false)
		if err != errTooLong {
			return err
		}
		line = r.tail[:r.tailN]
	}
}

// trailingLiteral recognises a literal header "{digits}" or "{digits+}" at
// the end of a line (terminator already removed).
func trailingLiteral(b []byte) (n int64, nonSync, ok bool) {
	i := len(b) - 1
	if i < 2 || b[i] != '}' {
		return 0, false, false
	}
	i--
	if b[i] == '+' {
		nonSync = true
		i--
	}
	j := i
	for j >= 0 && isDigit(b[j]) {
		j--
	}
	if j == i || j < 0 || b[j] != '{' {
		return 0, false, false
	}
	return parseNumber(b[j+1 : i+1]), nonSync, true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// parseNumber parses decimal digits, saturating at math.MaxInt64.
func parseNumber(d []byte) int64 {
	var n int64
	for _, c := range d {
		v := int64(c - '0')
		if n > (math.MaxInt64-v)/10 {
			return math.MaxInt64
		}
		n = n*10 + v
	}
	return n
}

// readLine reads the next line and returns it without its terminator (LF
// or CRLF). The slice is valid until the next read from r.br or readLine
// call. If the line including its terminator exceeds budget bytes, it is
// discarded through its LF without being buffered and errTooLong is
// returned; r.tail then holds the last bytes of the line without its
// terminator, and, if wantTag, r.overflowTag the leading tag if valid.
func (r *Reader) readLine(budget int, wantTag bool) ([]byte, error) {
	r.buf = r.buf[:0]
	for {
		chunk, err := r.br.ReadSlice('\n')
		if len(chunk) > 0 {
			r.started = true
		}
		if len(r.buf)+len(chunk) > budget {
			if wantTag {
				r.overflowTag = leadingTag(r.buf, chunk, budget)
			}
			r.tailN = 0
			r.pushTail(r.buf)
			r.pushTail(chunk)
			r.buf = r.buf[:0]
			for err == bufio.ErrBufferFull {
				chunk, err = r.br.ReadSlice('\n')
				r.pushTail(chunk)
			}
			if err != nil {
				return nil, unexpected(err)
			}
			r.tailN = len(trimEOL(r.tail[:r.tailN]))
			return nil, errTooLong
		}
		switch err {
		case nil:
			r.lineUsed += len(r.buf) + len(chunk)
			if len(r.buf) == 0 {
				return trimEOL(chunk), nil // zero-copy: line is in br's buffer
			}
			r.buf = append(r.buf, chunk...)
			return trimEOL(r.buf), nil
		case bufio.ErrBufferFull:
			r.buf = append(r.buf, chunk...)
		case io.EOF:
			if r.started {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, io.EOF
		default:
			return nil, err
		}
	}
}

func trimEOL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
	}
	return b
}

func (r *Reader) pushTail(b []byte) {
	if len(b) >= tailSize {
		r.tailN = copy(r.tail[:], b[len(b)-tailSize:])
		return
	}
	keep := min(r.tailN, tailSize-len(b))
	copy(r.tail[:], r.tail[r.tailN-keep:r.tailN])
	r.tailN = keep + copy(r.tail[keep:], b)
}

// leadingTag returns the tag at the start of the concatenation of a and b
// if it is valid and followed by SP within the first limit bytes, else "".
// (len(a) <= limit < len(a)+len(b): the result does not depend on how the
// line was split into chunks.)
func leadingTag(a, b []byte, limit int) string {
	if len(b) > limit-len(a) {
		b = b[:max(limit-len(a), 0)]
	}
	if i := bytes.IndexByte(a, ' '); i >= 0 {
		if validTagBytes(a[:i]) {
			return string(a[:i])
		}
		return ""
	}
	i := bytes.IndexByte(b, ' ')
	if i < 0 {
		return ""
	}
	t := make([]byte, 0, len(a)+i)
	t = append(append(t, a...), b[:i]...)
	if validTagBytes(t) {
		return string(t)
	}
	return ""
}

// parseHead parses "tag SP name" into scratch and returns an error message
// or "".
func (r *Reader) parseHead(line []byte) string {
	if len(line) == 0 {
		return "Empty command line"
	}
	sp := bytes.IndexByte(line, ' ')
	tagEnd := sp
	if sp < 0 {
		tagEnd = len(line)
	}
	if !validTagBytes(line[:tagEnd]) {
		return "Invalid tag"
	}
	r.scratch = append(r.scratch, line[:tagEnd]...)
	r.tagLen = tagEnd
	if sp < 0 {
		return "Missing command name"
	}
	p := sp + 1
	start := p
	for p < len(line) && isAtomChar(line[p]) {
		c := line[p]
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		r.scratch = append(r.scratch, c)
		p++
	}
	if p == start || (p < len(line) && line[p] != ' ') {
		return "Invalid command name"
	}
	r.nameEnd = len(r.scratch)
	return ""
}

// parseArgs parses arguments from line[p:], continuing the state left by
// previous segments. It stops at the end of the line, either finishing the
// command, or, if the line ends in a literal header, returning its size.
func (r *Reader) parseArgs(line []byte, p int) (n int64, nonSync, hasLit bool, msg string) {
	for {
		if p == len(line) {
			switch {
			case r.state == stSP:
				return 0, false, false, "Missing argument after space"
			case r.depth > 0:
				return 0, false, false, "Unterminated list"
			}
			return 0, false, false, ""
		}
		c := line[p]
		switch r.state {
		case stElem:
			switch {
			case c == ' ':
				r.state = stSP
				p++
			case c == ')' && r.depth > 0:
				r.depth--
				p++
			case c == ')':
				return 0, false, false, "Unbalanced parenthesis"
			default:
				return 0, false, false, "Unexpected character"
			}
			continue
		case stOpen:
			if c == ')' {
				r.depth--
				r.state = stElem
				p++
				continue
			}
		}
		// An element.
		if len(r.toks) >= MaxArgs {
			return 0, false, false, "Too many arguments"
		}
		if r.depth > 0 {
			r.toks[r.stack[r.depth-1]].n++
		} else {
			r.topN++
		}
		r.state = stElem
		switch {
		case c == '(':
			if r.depth >= MaxListDepth {
				return 0, false, false, "Lists nested too deeply"
			}
			r.stack[r.depth] = int32(len(r.toks))
			r.depth++
			r.toks = append(r.toks, tok{kind: List})
			r.state = stOpen
			p++
		case c == '"':
			off := len(r.scratch)
			p++
			for {
				if p == len(line) {
					return 0, false, false, "Unterminated quoted string"
				}
				c = line[p]
				p++
				if c == '"' {
					break
				}
				switch c {
				case '\\':
					if p == len(line) || (line[p] != '\\' && line[p] != '"') {
						return 0, false, false, "Invalid escape in quoted string"
					}
					c = line[p]
					p++
				case '\r', '\n', 0:
					return 0, false, false, "Invalid character in quoted string"
				}
				r.scratch = append(r.scratch, c)
			}
			r.toks = append(r.toks, tok{kind: Quoted, off: int32(off), end: int32(len(r.scratch))})
		case c == '{':
			p++
			start := p
			for p < len(line) && isDigit(line[p]) {
				p++
			}
			if p == start {
				return 0, false, false, "Invalid literal"
			}
			n = parseNumber(line[start:p])
			if p < len(line) && line[p] == '+' {
				nonSync = true
				p++
			}
			if p == len(line) || line[p] != '}' {
				return 0, false, false, "Invalid literal"
			}
			if p+1 != len(line) {
				return 0, false, false, "Literal header not at end of line"
			}
			return n, nonSync, true, ""
		case c == '~' && p+1 < len(line) && line[p+1] == '{':
			return 0, false, false, "literal8 not allowed"
		case isAstringChar(c):
			off := len(r.scratch)
			start := p
			for p < len(line) && isAstringChar(line[p]) {
				p++
			}
			r.scratch = append(r.scratch, line[start:p]...)
			kind := Atom
			if p-start == 3 && isNIL(line[start:p]) {
				kind = NIL
			}
			r.toks = append(r.toks, tok{kind: kind, off: int32(off), end: int32(len(r.scratch))})
		default:
			return 0, false, false, "Unexpected character"
		}
	}
}

func isNIL(b []byte) bool {
	return (b[0]|0x20) == 'n' && (b[1]|0x20) == 'i' && (b[2]|0x20) == 'l'
}

// build converts the parsed tokens into a Command with one string
// allocation for all text.
func (r *Reader) build() *Command {
	s := string(r.scratch)
	cmd := &Command{Tag: s[:r.tagLen], Name: s[r.tagLen:r.nameEnd]}
	if len(r.toks) == 0 {
		return cmd
	}
	var pool []Arg
	if len(r.toks) <= len(cmd.argBuf) {
		pool = cmd.argBuf[:len(r.toks)]
	} else {
		pool = make([]Arg, len(r.toks))
	}
	b := builder{s: s, toks: r.toks, pool: pool, next: r.topN}
	cmd.Args = pool[:r.topN:r.topN]
	for k := range cmd.Args {
		cmd.Args[k] = b.arg()
	}
	return cmd
}

type builder struct {
	s    string
	toks []tok
	i    int
	pool []Arg
	next int
}

func (b *builder) arg() Arg {
	t := b.toks[b.i]
	b.i++
	if t.kind != List {
		return Arg{Kind: t.kind, Value: b.s[t.off:t.end]}
	}
	if t.n == 0 {
		return Arg{Kind: List}
	}
	n := int(t.n)
	kids := b.pool[b.next : b.next+n : b.next+n]
	b.next += n
	for k := range kids {
		kids[k] = b.arg()
	}
	return Arg{Kind: List, List: kids}
}

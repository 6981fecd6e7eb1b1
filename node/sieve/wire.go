package sieve

import (
	"bufio"
	"errors"
	"io"
	"strconv"
	"strings"

	"github.com/portico-mail/portico/node/netx"
)

// Wire limits that do not come from session.Limits.
const (
	defaultMaxLine    = 8192
	defaultMaxLiteral = 8192
	// maxArgs bounds the arguments of one command (AUTHENTICATE has at
	// most two; PUTSCRIPT, the longest after login, two).
	maxArgs = 8
	// maxKeyword bounds a command name (the longest RFC 5804 name,
	// AUTHENTICATE, has 12 characters).
	maxKeyword = 32
)

// Errors of the command reader. ErrLineTooLong and ErrLiteralTooLarge leave
// the stream in the middle of a command: the session cannot go on.
var (
	ErrLineTooLong     = netx.ErrLineTooLong
	ErrLiteralTooLarge = errors.New("literal too large")
	ErrSyntax          = errors.New("syntax error")
)

// Arg is one command argument (RFC 5804 §4): a string, quoted or literal,
// or an atom (a number, or a bare word some clients send for a string).
type Arg struct {
	Value  string
	String bool // quoted string or literal, not an atom
}

// wire reads client commands and strings with hard bounds: each line (the
// parts between literals) at most maxLine bytes, terminator included; all
// literals of one command together at most maxLiteral bytes; at most
// maxArgs arguments.
type wire struct {
	r          *bufio.Reader
	maxLine    int
	maxLiteral int
	scratch    []byte
}

func newWire(r *bufio.Reader, maxLine, maxLiteral int) *wire {
	if maxLine <= 0 {
		maxLine = defaultMaxLine
	}
	if maxLiteral <= 0 {
		maxLiteral = defaultMaxLiteral
	}
	return &wire{r: r, maxLine: maxLine, maxLiteral: maxLiteral}
}

// Command is a parsed client command: its upper-cased name and arguments.
type Command struct {
	Name string
	Args []Arg
}

// readCommand reads one command. An empty line is a syntax error. After
// ErrSyntax the whole command (its literals included) has been consumed
// and the stream is at the next command; after ErrLineTooLong or
// ErrLiteralTooLarge it is not.
func (w *wire) readCommand() (Command, error) {
	toks, err := w.readTokens()
	if err != nil {
		return Command{}, err
	}
	if len(toks) == 0 || toks[0].String || len(toks[0].Value) > maxKeyword || !isKeyword(toks[0].Value) {
		return Command{}, ErrSyntax
	}
	return Command{Name: strings.ToUpper(toks[0].Value), Args: toks[1:]}, nil
}

// readString reads a line that holds exactly one string (a SASL response,
// RFC 5804 §2.1).
func (w *wire) readString() (string, error) {
	toks, err := w.readTokens()
	if err != nil {
		return "", err
	}
	if len(toks) != 1 || !toks[0].String {
		return "", ErrSyntax
	}
	return toks[0].Value, nil
}

// readTokens reads tokens up to the CRLF that ends a command, reading the
// literals the lines announce. On a syntax error it consumes the rest of
// the command (see drain).
func (w *wire) readTokens() ([]Arg, error) {
	var toks []Arg
	literals := 0 // literal bytes read for this command
	cont := false // the line continues a command after a literal
	for {
		line, err := w.line()
		if err != nil {
			return nil, err
		}
		i := 0
		if cont {
			if len(line) == 0 {
				return toks, nil
			}
			if line[0] != ' ' {
				return nil, w.drain(line, literals)
			}
			i = 1
		}
		if len(line) == 0 {
			return toks, nil
		}
		lit := -1 // size of a literal announced at the end of the line
		for i < len(line) {
			if len(toks) >= maxArgs+1 {
				return nil, w.drain(line, literals)
			}
			var tok Arg
			var ok bool
			switch line[i] {
			case '"':
				tok.String = true
				tok.Value, i, ok = quoted(line, i)
			case '{':
				var n int
				n, ok = literalAt(line, i)
				if ok {
					lit, i = n, len(line)
				}
			default:
				tok.Value, i, ok = atom(line, i)
			}
			if !ok {
				return nil, w.drain(line, literals)
			}
			if lit >= 0 {
				break
			}
			toks = append(toks, tok)
			if i < len(line) {
				// Exactly one space between arguments, none at the end.
				if line[i] != ' ' || i+1 == len(line) {
					return nil, w.drain(line, literals)
				}
				i++
			}
		}
		if lit < 0 {
			return toks, nil
		}
		if lit > w.maxLiteral-literals {
			return nil, ErrLiteralTooLarge
		}
		literals += lit
		b := make([]byte, lit)
		if _, err := io.ReadFull(w.r, b); err != nil {
			return nil, netx.Unexpected(err)
		}
		toks = append(toks, Arg{Value: string(b), String: true})
		cont = true
	}
}

// drain consumes the rest of a command after a syntax error in line: the
// literal line announces at its end, if any, and the lines after it, so
// that the next read starts at the next command (a literal's bytes are
// never run as commands). literals is what the command's literals took
// so far. A command announcing more literals than a valid one can hold
// (empty ones cost nothing from the byte budget) ends the session like an
// oversized one.
func (w *wire) drain(line []byte, literals int) error {
	for count := 0; ; count++ {
		n, ok := trailingLiteral(line)
		if !ok {
			return ErrSyntax
		}
		if n > w.maxLiteral-literals || count > maxArgs {
			return ErrLiteralTooLarge
		}
		literals += n
		if _, err := w.r.Discard(n); err != nil {
			return netx.Unexpected(err)
		}
		var err error
		if line, err = w.line(); err != nil {
			return err
		}
	}
}

// line reads one line and returns it without its CRLF (or bare LF). It
// never buffers more than maxLine bytes; a longer line is ErrLineTooLong
// and is not consumed further. End of stream inside a line is
// io.ErrUnexpectedEOF; other read errors (deadlines) are returned as
// they are. The slice is valid until the next call.
func (w *wire) line() ([]byte, error) {
	return netx.ReadLine(w.r, w.maxLine, &w.scratch, false)
}

// quoted parses a quoted string starting at line[i] == '"' (RFC 5804 §4:
// QUOTED-CHAR is any UTF-8 character but CR, LF and NUL, with '"' and '\'
// escaped by '\'). It returns the unescaped value and the index after the
// closing quote.
func quoted(line []byte, i int) (string, int, bool) {
	var b strings.Builder
	for j := i + 1; j < len(line); j++ {
		switch c := line[j]; c {
		case '"':
			return b.String(), j + 1, true
		case '\\':
			j++
			if j == len(line) || (line[j] != '"' && line[j] != '\\') {
				return "", 0, false
			}
			b.WriteByte(line[j])
		case 0, '\r', '\n':
			return "", 0, false
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, false
}

// literalAt parses "{n}" or "{n+}" starting at line[i], which must end the
// line. n is at most 10 digits and must fit an int.
func literalAt(line []byte, i int) (int, bool) {
	rest := line[i:]
	if len(rest) < 3 || rest[len(rest)-1] != '}' {
		return 0, false
	}
	digits := rest[1 : len(rest)-1]
	if len(digits) > 0 && digits[len(digits)-1] == '+' {
		digits = digits[:len(digits)-1]
	}
	if len(digits) == 0 || len(digits) > 10 {
		return 0, false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(string(digits))
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// trailingLiteral reports a literal announced at the end of line, whatever
// comes before it.
func trailingLiteral(line []byte) (int, bool) {
	for i := len(line) - 1; i >= 0 && len(line)-i <= 13; i-- {
		if line[i] == '{' {
			return literalAt(line, i)
		}
	}
	return 0, false
}

// atom parses a bare word starting at line[i]: printable ASCII but SP,
// '"', '{', '}', '(', ')' and '\'.
func atom(line []byte, i int) (string, int, bool) {
	j := i
	for j < len(line) && line[j] != ' ' {
		c := line[j]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("\"{}()\\", c) >= 0 {
			return "", 0, false
		}
		j++
	}
	if j == i {
		return "", 0, false
	}
	return string(line[i:j]), j, true
}

func isKeyword(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z') {
			return false
		}
	}
	return true
}

// quote writes s as a ManageSieve quoted string. s must not contain CR,
// LF or NUL (see upstream.OneLine).
func quote(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}

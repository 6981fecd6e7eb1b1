package submission

import (
	"bufio"
	"bytes"
	"errors"
	"strconv"

	"github.com/portico-mail/portico/node/netx"
)

// Wire limits that do not come from session.Limits.
const (
	defaultMaxLine = 8192
	// maxVerb bounds a command verb (the longest RFC 5321 and extension
	// verbs, STARTTLS and XFORWARD, have 8 characters).
	maxVerb = 16
	// maxDomain bounds an EHLO/HELO argument (RFC 5321 §4.5.3.1.2: a
	// domain name is at most 255 octets).
	maxDomain = 255
	// maxChunkDigits bounds a BDAT size (18 decimal digits fit an int64,
	// and Postfix's off_t, without overflow).
	maxChunkDigits = 18
)

// Errors of the command reader. After ErrLineTooLong the rest of the line
// has been skipped: the stream is at a command boundary again.
var (
	ErrLineTooLong = netx.ErrLineTooLong
	ErrSyntax      = errors.New("syntax error")
)

// Command is one client command line (RFC 5321 §4.1.1): a verb and the
// rest of the line.
type Command struct {
	Verb string // upper-cased; only letters
	Arg  string // what follows the verb and one space, trailing blanks trimmed
}

// wire reads client command lines, each at most maxLine bytes (terminator
// included; RFC 5321 §4.5.3.1.4 allows 512, RFC 4954 §4 an AUTH line with
// an initial response of up to 12288).
type wire struct {
	r       *bufio.Reader
	maxLine int
	scratch []byte
}

func newWire(r *bufio.Reader, maxLine int) *wire {
	if maxLine <= 0 {
		maxLine = defaultMaxLine
	}
	return &wire{r: r, maxLine: maxLine}
}

// line reads one line without its terminator (CRLF or a bare LF). A line
// over the limit is skipped through its end and ErrLineTooLong returned.
func (w *wire) line() ([]byte, error) {
	return netx.ReadLine(w.r, w.maxLine, &w.scratch, true)
}

// readCommand reads one command line. ErrSyntax: the line is not a verb
// of letters, optionally followed by a space and arguments, or it holds a
// NUL or a CR (the stream is at the next line; the caller answers it).
func (w *wire) readCommand() (Command, error) {
	l, err := w.line()
	if err != nil {
		return Command{}, err
	}
	return parseCommand(l)
}

func parseCommand(l []byte) (Command, error) {
	if bytes.IndexByte(l, 0) >= 0 || bytes.IndexByte(l, '\r') >= 0 {
		return Command{}, ErrSyntax
	}
	verb, arg, _ := bytes.Cut(l, []byte(" "))
	if len(verb) == 0 || len(verb) > maxVerb {
		return Command{}, ErrSyntax
	}
	for _, c := range verb {
		if !isLetter(c) {
			return Command{}, ErrSyntax
		}
	}
	return Command{Verb: string(bytes.ToUpper(verb)), Arg: string(bytes.TrimRight(arg, " \t"))}, nil
}

func isLetter(c byte) bool { return 'a' <= c|0x20 && c|0x20 <= 'z' }

// heloName checks an EHLO/HELO argument: one word of printable ASCII (a
// domain or an address literal, RFC 5321 §4.1.1.1, taken loosely as
// clients send it), at most maxDomain bytes. It is passed on to the
// backend in EHLO and XCLIENT HELO=, so nothing else gets through.
func heloName(arg string) (string, bool) {
	if arg == "" || len(arg) > maxDomain {
		return "", false
	}
	for i := 0; i < len(arg); i++ {
		if c := arg[i]; c <= ' ' || c >= 0x7f {
			return "", false
		}
	}
	return arg, true
}

// parseBDAT parses the arguments of BDAT (RFC 3030 §2): "chunk-size
// [LAST]", the size 1 to maxChunkDigits digits. It is strict on purpose:
// a line it accepts, a Postfix server accepts as well (alldig, off_t), so
// the relay's framer and the backend agree on where the chunk ends.
func parseBDAT(arg string) (size int64, last, ok bool) {
	num, rest, hasRest := cutBlank(arg)
	if num == "" || len(num) > maxChunkDigits {
		return 0, false, false
	}
	for i := 0; i < len(num); i++ {
		if num[i] < '0' || num[i] > '9' {
			return 0, false, false
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return 0, false, false
	}
	if hasRest {
		word, more, _ := cutBlank(rest)
		if !equalFold(word, "LAST") || more != "" {
			return 0, false, false
		}
		last = true
	}
	return n, last, true
}

// cutBlank splits s at its first run of spaces or tabs (as Postfix
// tokenises commands), trimming leading blanks first.
func cutBlank(s string) (word, rest string, found bool) {
	i := 0
	for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	s = s[i:]
	j := 0
	for j < len(s) && s[j] != ' ' && s[j] != '\t' {
		j++
	}
	word, rest = s[:j], s[j:]
	k := 0
	for k < len(rest) && (rest[k] == ' ' || rest[k] == '\t') {
		k++
	}
	return word, rest[k:], k > 0 && k < len(rest)
}

// equalFold compares ASCII case-insensitively.
func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if isLetter(x) && isLetter(y) {
			x, y = x|0x20, y|0x20
		}
		if x != y {
			return false
		}
	}
	return true
}

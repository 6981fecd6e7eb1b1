package pop3

import (
	"bufio"
	"strings"

	"github.com/portico-mail/portico/node/netx"
)

// defaultMaxLine applies when Limits.MaxLine is not set.
const defaultMaxLine = 8192

// maxKeyword bounds a command keyword. RFC 1939 keywords are 3 or 4
// characters; RFC 2449 §5 lets extensions use longer ones.
const maxKeyword = 40

// ErrLineTooLong: a line exceeded the limit.
var ErrLineTooLong = netx.ErrLineTooLong

// Command is a parsed client command (RFC 1939 §3: a keyword, then
// arguments separated by single spaces).
type Command struct {
	Name string // upper-cased keyword
	Arg  string // everything after the keyword and one space, verbatim
}

// readLine reads one line and returns it without its terminator (CRLF, or
// a bare LF). A line may hold at most max bytes, terminator included; it is
// never buffered beyond that.
//
// For a longer line, readLine returns ErrLineTooLong: with discard set it
// first skips the rest of the line through its LF (reading at most one
// buffer at a time), so the caller is at a line boundary and can go on;
// without discard it stops at once and the stream is left mid-line.
//
// End of stream before a LF is io.EOF for an empty line, else
// io.ErrUnexpectedEOF; other read errors (deadlines) are returned as they
// are. The returned slice is valid until the next call with scratch.
func readLine(br *bufio.Reader, max int, scratch *[]byte, discard bool) ([]byte, error) {
	if max <= 0 {
		max = defaultMaxLine
	}
	return netx.ReadLine(br, max, scratch, discard)
}

// parseCommand splits a command line. ok is false for an empty line or a
// keyword that is not 1 to maxKeyword ASCII letters, digits or '-'.
func parseCommand(line []byte) (Command, bool) {
	name, arg := line, []byte(nil)
	for i, c := range line {
		if c == ' ' {
			name, arg = line[:i], line[i+1:]
			break
		}
	}
	if len(name) == 0 || len(name) > maxKeyword {
		return Command{}, false
	}
	for _, c := range name {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return Command{}, false
		}
	}
	return Command{Name: strings.ToUpper(string(name)), Arg: string(arg)}, true
}

// hasLineBreak reports bytes that cannot travel inside a POP3 command line.
func hasLineBreak(s string) bool { return strings.ContainsAny(s, "\r\n") }

package pop3

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
)

// ErrLineTooLong: a line exceeded the limit. The rest of the line has been
// discarded, so the stream is at a line boundary and the session can go on.
var ErrLineTooLong = errors.New("line too long")

// Command is a parsed client command (RFC 1939 §3: a keyword, then
// arguments separated by single spaces).
type Command struct {
	Name string // upper-cased keyword
	Arg  string // everything after the keyword and one space, verbatim
}

// readLine reads one line without its terminator (CRLF, or a bare LF),
// holding at most max bytes. A longer line is discarded through its LF and
// ErrLineTooLong returned. The returned slice is valid until the next read.
func readLine(br *bufio.Reader, max int, scratch *[]byte) ([]byte, error) {
	buf := (*scratch)[:0]
	for {
		frag, err := br.ReadSlice('\n')
		if len(buf)+len(frag) > max {
			// Discard through the end of the line without buffering it.
			for err == bufio.ErrBufferFull {
				_, err = br.ReadSlice('\n')
			}
			if err != nil {
				return nil, unexpected(err)
			}
			return nil, ErrLineTooLong
		}
		buf = append(buf, frag...)
		switch err {
		case nil:
			*scratch = buf
			return trimEOL(buf), nil
		case bufio.ErrBufferFull:
			continue
		default:
			*scratch = buf
			if len(buf) > 0 {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func trimEOL(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}

// parseCommand splits a command line. ok is false for an empty line or a
// keyword that is not 1-40 printable ASCII letters/digits (RFC 1939 keywords
// are 3-4 characters; RFC 2449 allows up to 40 for extensions... we are
// lenient up to 40).
func parseCommand(line []byte) (Command, bool) {
	name, arg, _ := bytes.Cut(line, []byte(" "))
	if len(name) == 0 || len(name) > 40 {
		return Command{}, false
	}
	for _, c := range name {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return Command{}, false
		}
	}
	return Command{Name: strings.ToUpper(string(name)), Arg: string(arg)}, true
}

// hasBadBytes reports bytes that may not appear in a POP3 argument.
func hasBadBytes(s string) bool { return strings.ContainsAny(s, "\x00\r\n") }

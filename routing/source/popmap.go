package source

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
)

// MaxPopmapLine bounds one line of a popmap.
const MaxPopmapLine = 64 << 10

// ParsePopmap reads Perdition's text popmap, one "user: [newname@]server"
// a line, and calls put with each entry and its line number, in file
// order. The server is kept as written (a backend id, host, host:port or
// Portico's "pool:NAME"; routing.Table.ResolveServer reads it); "newname@"
// renames the user for the backend login, split at the last '@' (a name
// may hold one, a server cannot). Blank lines and '#' comments (a whole
// line, or from a '#' that follows white space) are skipped. An error
// from put ends the walk, reported with its line.
//
// It is the one popmap parser: the import API and the popmap-file source
// both read through it.
func ParsePopmap(r io.Reader, put func(line int, e Entry) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), MaxPopmapLine)
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(StripComment(sc.Text()))
		if s == "" {
			continue
		}
		user, server, ok := strings.Cut(s, ":")
		user, server = strings.TrimSpace(user), strings.TrimSpace(server)
		if !ok || user == "" || server == "" {
			return fmt.Errorf("line %d: want \"user: [newname@]server\"", line)
		}
		e := Entry{User: user, Target: server}
		if at := strings.LastIndexByte(server, '@'); at >= 0 {
			e.Login, e.Target = server[:at], server[at+1:]
			if e.Login == "" {
				return fmt.Errorf("line %d: empty name before '@' in %q", line, server)
			}
			if e.Target == "" {
				return fmt.Errorf("line %d: no server after '@' in %q", line, server)
			}
		}
		if err := put(line, e); err != nil {
			return fmt.Errorf("line %d: %w", line, err)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("reading popmap: a line longer than %d bytes (%v)", MaxPopmapLine, err)
		}
		return fmt.Errorf("reading popmap: %v", err)
	}
	return nil
}

// StripComment removes a '#' comment: the whole line, or from a '#' that
// follows white space (a '#' inside a name is kept).
func StripComment(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '#' && (i == 0 || s[i-1] == ' ' || s[i-1] == '\t') {
			return s[:i]
		}
	}
	return s
}

package pop3

import (
	"bufio"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
)

func TestParseCommand(t *testing.T) {
	cases := []struct {
		in   string
		ok   bool
		name string
		arg  string
	}{
		{"user alice", true, "USER", "alice"},
		{"UsEr alice", true, "USER", "alice"},
		{"PASS pass with spaces ", true, "PASS", "pass with spaces "},
		{"PASS  leading", true, "PASS", " leading"},
		{"PASS", true, "PASS", ""},
		{"PASS ", true, "PASS", ""},
		{"CAPA", true, "CAPA", ""},
		{"AUTH PLAIN AGFsaWNlAHNlY3JldA==", true, "AUTH", "PLAIN AGFsaWNlAHNlY3JldA=="},
		{"X-EXT arg", true, "X-EXT", "arg"},
		{strings.Repeat("A", 40), true, strings.Repeat("A", 40), ""},
		{"", false, "", ""},
		{" USER x", false, "", ""},
		{"US\x00ER x", false, "", ""},
		{"USER\tx", false, "", ""},
		{"\xffUSER", false, "", ""},
		{strings.Repeat("A", 41), false, "", ""},
	}
	for _, c := range cases {
		cmd, ok := parseCommand([]byte(c.in))
		if ok != c.ok || cmd.Name != c.name || cmd.Arg != c.arg {
			t.Errorf("%q: got %+v %v, want %q %q %v", c.in, cmd, ok, c.name, c.arg, c.ok)
		}
	}
}

func TestReadLine(t *testing.T) {
	type res struct {
		line string
		err  error
	}
	cases := []struct {
		name    string
		in      string
		max     int
		discard bool
		want    []res
	}{
		{"crlf and bare lf", "one\r\nbare\n\r\n", 64, true,
			[]res{{"one", nil}, {"bare", nil}, {"", nil}, {"", io.EOF}}},
		{"only the last CR goes", "a\rb\r\r\n", 64, true, []res{{"a\rb\r", nil}}},
		{"exact limit counts the terminator", "12345678\r\n123456789\r\nok\n", 10, true,
			[]res{{"12345678", nil}, {"", ErrLineTooLong}, {"ok", nil}}},
		{"long line skipped", strings.Repeat("x", 5000) + "\r\nafter\r\n", 1024, true,
			[]res{{"", ErrLineTooLong}, {"after", nil}}},
		{"long line not skipped", strings.Repeat("x", 5000) + "\r\nafter\r\n", 1024, false,
			[]res{{"", ErrLineTooLong}}},
		{"unterminated", "last", 64, true, []res{{"", io.ErrUnexpectedEOF}, {"", io.EOF}}},
		{"long unterminated", strings.Repeat("x", 5000), 1024, true, []res{{"", io.ErrUnexpectedEOF}}},
		{"default limit", strings.Repeat("x", 8190) + "\r\n" + strings.Repeat("x", 8191) + "\r\n", 0, true,
			[]res{{strings.Repeat("x", 8190), nil}, {"", ErrLineTooLong}}},
	}
	for _, c := range cases {
		br := bufio.NewReaderSize(strings.NewReader(c.in), 64)
		var scratch []byte
		for i, w := range c.want {
			l, err := readLine(br, c.max, &scratch, c.discard)
			if err != w.err || string(l) != w.line {
				t.Errorf("%s: read %d: got %.20q %v, want %.20q %v", c.name, i, l, err, w.line, w.err)
				break
			}
		}
		limit := c.max
		if limit == 0 {
			limit = defaultMaxLine
		}
		if cap(scratch) > 2*limit {
			t.Errorf("%s: scratch grew to %d", c.name, cap(scratch))
		}
	}
}

// A read error other than EOF (a deadline) in the middle of a line is
// returned as it is, so that the handler can tell inactivity from a
// client that hung up.
func TestReadLineKeepsDeadlineError(t *testing.T) {
	r := io.MultiReader(strings.NewReader("CAP"), errReader{os.ErrDeadlineExceeded})
	var scratch []byte
	if _, err := readLine(bufio.NewReaderSize(r, 16), 64, &scratch, true); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestRespCodeAndStatus(t *testing.T) {
	for in, want := range map[string]string{
		"+OK [XCLIENT] Dovecot ready.":   "XCLIENT",
		"-ERR [SYS/TEMP] Try later":      "SYS/TEMP",
		"-ERR [IN-USE]":                  "IN-USE",
		"-ERR [AUTH Authentication fail": "",
		"-ERR Authentication failed":     "",
		"-ERR":                           "",
		"+OK":                            "",
	} {
		if got := respCode(in); got != want {
			t.Errorf("respCode(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string][2]bool{
		"+OK": {true, false}, "+OK x": {true, false}, "+OKAY": {false, false},
		"-ERR": {false, true}, "-ERR x": {false, true}, "-ERROR": {false, false}, "+ ": {false, false},
	} {
		if isOK(in) != want[0] || isERR(in) != want[1] {
			t.Errorf("%q: isOK %v isERR %v", in, isOK(in), isERR(in))
		}
	}
}

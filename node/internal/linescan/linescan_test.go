package linescan

import (
	"strings"
	"testing"
)

// line is a line end that a Scanner reported: the stream offset just
// after it and the line's head.
type line struct {
	end  int
	head string
}

// scanAll feeds s to sc in chunks of n bytes, passing over literal bytes
// with Skip (as the relay does when it splices them) when skip is set,
// and returns the line ends it reported.
func scanAll(sc *Scanner, s string, n int, bareLF, skip bool, head int) []line {
	var lines []line
	b := []byte(s)
	for off := 0; off < len(b); {
		if l := sc.Literal(); skip && l > 0 {
			k := min(l, int64(len(b)-off))
			sc.Skip(k)
			off += int(k)
			continue
		}
		chunk := b[off:min(off+n, len(b))]
		for i := 0; i < len(chunk); {
			k, ended := sc.Scan(chunk[i:], bareLF, head)
			if k <= 0 {
				panic("Scan consumed nothing")
			}
			i += k
			if ended {
				lines = append(lines, line{off + i, string(sc.Head())})
			}
		}
		off += len(chunk)
	}
	return lines
}

func TestScanLines(t *testing.T) {
	for _, tc := range []struct {
		in     string
		bareLF bool
		want   []line
		atEnd  bool // AtLineStart after the whole input
	}{
		{"", false, nil, true},
		{"* OK hi\r\n", false, []line{{9, "* OK hi"}}, true},
		{"a\r\nb\r\n", false, []line{{3, "a"}, {6, "b"}}, true},
		{"a\nb\r\n", false, []line{{5, "ab"}}, true}, // LF alone ends no line
		{"a\nb\r\n", true, []line{{2, "a"}, {5, "b"}}, true},
		{"a\r", false, nil, false},
		{"* 1 FETCH (BODY[] {5}\r\nhe\r\no)\r\n", false, []line{{31, "* 1 FETCH (BODY[] {5}"}}, true},
		{"x {5}\r\nhel", false, nil, false},
		{"x {3+}\r\n\r\n\n)\r\n", false, []line{{14, "x {3+}"}}, true},
		{"x ~{2}\r\n\r\n\r\n", false, []line{{12, "x ~{2}"}}, true},
		{"x {0}\r\n\r\n", false, []line{{9, "x {0}"}}, true},
		{"x {0}\r\n", false, nil, false}, // the line goes on after an empty literal
		{"x {3}\nabc\n", true, []line{{10, "x {3}"}}, true},
		{"x {3}\nab\r\n", false, []line{{10, "x {3}ab"}}, true}, // no literal without CRLF
		{"{}\r\n{abc}\r\n{+}\r\n{1a}\r\n", false, []line{{4, "{}"}, {11, "{abc}"}, {16, "{+}"}, {22, "{1a}"}}, true},
		{"{3}\r\r\n", false, []line{{6, "{3}"}}, true},
		{"{3}\r\r\n", true, []line{{6, "{3}"}}, true},
	} {
		for _, n := range []int{1, 2, 3, 7, 1 << 20} {
			sc := &Scanner{}
			got := scanAll(sc, tc.in, n, tc.bareLF, false, HeadMax)
			if len(got) != len(tc.want) {
				t.Errorf("%q (bareLF %v, chunks of %d): lines %v, want %v", tc.in, tc.bareLF, n, got, tc.want)
				continue
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("%q (bareLF %v, chunks of %d): lines %v, want %v", tc.in, tc.bareLF, n, got, tc.want)
					break
				}
			}
			if sc.AtLineStart() != tc.atEnd {
				t.Errorf("%q (bareLF %v, chunks of %d): AtLineStart %v", tc.in, tc.bareLF, n, !tc.atEnd)
			}
		}
	}
}

// Literal bytes passed over with Skip are as good as scanned.
func TestScanLiteralSkip(t *testing.T) {
	sc := &Scanner{}
	if n, ended := sc.Scan([]byte("* 1 FETCH (BODY[] {100000}\r\n"), false, HeadMax); n != 28 || ended {
		t.Fatalf("Scan = %d, %v", n, ended)
	}
	if sc.Literal() != 100000 || sc.AtLineStart() {
		t.Fatalf("literal %d, at line start %v", sc.Literal(), sc.AtLineStart())
	}
	sc.Skip(99990)
	if n, ended := sc.Scan([]byte(strings.Repeat("x", 10)+")\r\nnext"), false, HeadMax); n != 13 || !ended || string(sc.Head()) != "* 1 FETCH (BODY[] {100000}" {
		t.Fatalf("Scan = %d, %v, head %q", n, ended, sc.Head())
	}
	if !sc.AtLineStart() {
		t.Fatal("not at a line start after the line")
	}
	sc.Skip(5) // more than pending: nothing happens
	if sc.Literal() != 0 {
		t.Fatalf("literal %d", sc.Literal())
	}

	// An announced size beyond any real one saturates: the rest of the
	// stream is literal.
	sc = &Scanner{}
	sc.Scan([]byte("x {99999999999999999999999}\r\n"), false, HeadMax)
	if sc.Literal() < 1<<50 {
		t.Fatalf("literal %d", sc.Literal())
	}
}

// The head is as long as asked, at most HeadMax, and only the line's
// start (not what follows a literal).
func TestScanHead(t *testing.T) {
	long := strings.Repeat("a", 40)
	for _, tc := range []struct {
		head int
		want string
	}{{4, "aaaa"}, {0, ""}, {HeadMax, long[:HeadMax]}, {HeadMax + 8, long[:HeadMax]}} {
		sc := &Scanner{}
		if _, ended := sc.Scan([]byte(long+"\r\n"), false, tc.head); !ended || string(sc.Head()) != tc.want {
			t.Errorf("head %d: %q", tc.head, sc.Head())
		}
	}
	sc := &Scanner{}
	sc.Scan([]byte("OK {2}\r\nNO rest\r\n"), false, 4)
	if string(sc.Head()) != "OK {" {
		t.Errorf("head %q", sc.Head())
	}
	// The next line starts a new head.
	sc.Scan([]byte("NO\r\n"), false, 4)
	if string(sc.Head()) != "NO" {
		t.Errorf("head %q", sc.Head())
	}
}

func TestByeText(t *testing.T) {
	for in, want := range map[string]string{
		"":                  "Server shutting down, please reconnect.",
		"moving\r\nnow\x7f": "moving  now ",
		"node \"a\" é":      "node \"a\" é",
	} {
		if got := ByeText(in); got != want {
			t.Errorf("ByeText(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzScan: how the stream is cut into chunks, and whether literal bytes
// are scanned or skipped, never changes the lines reported or the state
// at the end; and nothing panics.
func FuzzScan(f *testing.F) {
	f.Add([]byte("* 1 FETCH (BODY[] {5}\r\nhello)\r\na OK\r\n"), uint8(3), true, false)
	f.Add([]byte("\"a\"\r\n{3}\nabc\r\nOK\nNO\r\n"), uint8(1), false, true)
	f.Add([]byte("* OK {99999999999999999999999}\r\n"), uint8(2), true, true)
	f.Fuzz(func(t *testing.T, in []byte, n uint8, skip, bareLF bool) {
		whole, parts := &Scanner{}, &Scanner{}
		want := scanAll(whole, string(in), len(in)+1, bareLF, false, HeadMax)
		got := scanAll(parts, string(in), int(n)%17+1, bareLF, skip, HeadMax)
		if len(got) != len(want) {
			t.Fatalf("lines %v, whole %v", got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("lines %v, whole %v", got, want)
			}
		}
		if whole.AtLineStart() != parts.AtLineStart() || whole.Literal() != parts.Literal() {
			t.Fatalf("end state differs: %+v, %+v", whole, parts)
		}
	})
}

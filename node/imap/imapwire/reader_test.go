package imapwire

import (
	"bufio"
	"errors"
	"io"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func atom(s string) Arg    { return Arg{Kind: Atom, Value: s} }
func quoted(s string) Arg  { return Arg{Kind: Quoted, Value: s} }
func literal(s string) Arg { return Arg{Kind: Literal, Value: s} }
func list(a ...Arg) Arg    { return Arg{Kind: List, List: a} }
func nilArg(s string) Arg  { return Arg{Kind: NIL, Value: s} }

func cmd(tag, name string, args ...Arg) *Command {
	return &Command{Tag: tag, Name: name, Args: args}
}

func sameCommand(a, b *Command) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Tag == b.Tag && a.Name == b.Name && reflect.DeepEqual(normArgs(a.Args), normArgs(b.Args))
}

func normArgs(args []Arg) []Arg {
	if len(args) == 0 {
		return nil
	}
	out := make([]Arg, len(args))
	for i, a := range args {
		a.List = normArgs(a.List)
		out[i] = a
	}
	return out
}

func TestReadCommandOK(t *testing.T) {
	user := "jörg@exämple.com"
	tests := []struct {
		name  string
		in    string
		want  *Command
		conts int
	}{
		{"bare", "a CAPABILITY\r\n", cmd("a", "CAPABILITY"), 0},
		{"lowercase", "x1 login alice secret\r\n", cmd("x1", "LOGIN", atom("alice"), atom("secret")), 0},
		{"mixed case", "A.1 LoGoUt\r\n", cmd("A.1", "LOGOUT"), 0},
		{"bare LF", "a NOOP\n", cmd("a", "NOOP"), 0},
		{"quoted escapes", `a LOGIN "al\"ice" "p\\w"` + "\r\n", cmd("a", "LOGIN", quoted(`al"ice`), quoted(`p\w`)), 0},
		{"empty quoted", `a LOGIN "" ""` + "\r\n", cmd("a", "LOGIN", quoted(""), quoted("")), 0},
		{"utf8 quoted", `a LOGIN "` + user + `" "pässwörd"` + "\r\n", cmd("a", "LOGIN", quoted(user), quoted("pässwörd")), 0},
		{"utf8 sync literal", "a LOGIN {" + strconv.Itoa(len(user)) + "}\r\n" + user + " {3}\r\npw1\r\n",
			cmd("a", "LOGIN", literal(user), literal("pw1")), 2},
		{"sync literals", "a LOGIN {5}\r\nalice {6}\r\nsecret\r\n", cmd("a", "LOGIN", literal("alice"), literal("secret")), 2},
		{"non-sync literals", "a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n", cmd("a", "LOGIN", literal("alice"), literal("secret")), 0},
		{"literal with CRLF inside", "a LOGIN {4+}\r\na\r\nb x\r\n", cmd("a", "LOGIN", literal("a\r\nb"), atom("x")), 0},
		{"zero literal", "a LOGIN {0}\r\n \"x\"\r\n", cmd("a", "LOGIN", literal(""), quoted("x")), 1},
		{"zero non-sync literal last", "a LOGIN x {0+}\r\n\r\n", cmd("a", "LOGIN", atom("x"), literal("")), 0},
		{"literal bare LF", "a LOGIN {1}\nu {1+}\np\n", cmd("a", "LOGIN", literal("u"), literal("p")), 1},
		{"leading zeros", "a LOGIN {0003+}\r\nabc x\r\n", cmd("a", "LOGIN", literal("abc"), atom("x")), 0},
		{"authenticate", "a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n", cmd("a", "AUTHENTICATE", atom("PLAIN"), atom("AGFsaWNlAHNlY3JldA==")), 0},
		{"sasl-ir empty", "a AUTHENTICATE PLAIN =\r\n", cmd("a", "AUTHENTICATE", atom("PLAIN"), atom("=")), 0},
		{"id list", `a ID ("name" "Thunderbird" "version" NIL)` + "\r\n",
			cmd("a", "ID", list(quoted("name"), quoted("Thunderbird"), quoted("version"), nilArg("NIL"))), 0},
		{"id nil", "a ID nil\r\n", cmd("a", "ID", nilArg("nil")), 0},
		{"id literal in list", "a ID (\"name\" {7}\r\nDovecot \"v\" \"1\")\r\n",
			cmd("a", "ID", list(quoted("name"), literal("Dovecot"), quoted("v"), quoted("1"))), 1},
		{"empty list", "a ID ()\r\n", cmd("a", "ID", list()), 0},
		{"nested lists", "a X ((a) (b c) ()) ((((d))))\r\n",
			cmd("a", "X", list(list(atom("a")), list(atom("b"), atom("c")), list()), list(list(list(list(atom("d")))))), 0},
		{"resp-specials in atom", "a X BODY[] a]b\r\n", cmd("a", "X", atom("BODY[]"), atom("a]b")), 0},
		{"tag with specials", "]a.1-_! NOOP\r\n", cmd("]a.1-_!", "NOOP"), 0},
		{"NIL-like atoms", "a X NILS NI\r\n", cmd("a", "X", atom("NILS"), atom("NI")), 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, bs := range []int{16, 4096} {
				h := newHarness(tc.in, Limits{}, bs)
				got, err := h.r.ReadCommand()
				if err != nil {
					t.Fatalf("bufsize %d: err %v", bs, err)
				}
				if !sameCommand(got, tc.want) {
					t.Fatalf("bufsize %d: got %#v, want %#v", bs, got, tc.want)
				}
				if len(h.conts) != tc.conts {
					t.Fatalf("bufsize %d: %d continuation requests, want %d", bs, len(h.conts), tc.conts)
				}
				if _, err := h.r.ReadCommand(); err != io.EOF {
					t.Fatalf("bufsize %d: after command: %v, want EOF", bs, err)
				}
			}
		})
	}
}

func TestPipelined(t *testing.T) {
	in := "a CAPABILITY\r\nb NOOP\nc LOGIN {1+}\r\nx y\r\nd LOGOUT\r\n"
	h := newHarness(in, Limits{}, 0)
	for _, want := range []*Command{
		cmd("a", "CAPABILITY"), cmd("b", "NOOP"), cmd("c", "LOGIN", literal("x"), atom("y")), cmd("d", "LOGOUT"),
	} {
		got, err := h.r.ReadCommand()
		if err != nil || !sameCommand(got, want) {
			t.Fatalf("got %#v, %v; want %#v", got, err, want)
		}
	}
	if _, err := h.r.ReadCommand(); err != io.EOF {
		t.Fatalf("got %v, want EOF", err)
	}
}

func TestContinuationTiming(t *testing.T) {
	in := "a LOGIN {5}\r\nalice {6}\r\nsecret\r\n"
	for _, bs := range []int{16, 4096} {
		h := newHarness(in, Limits{}, bs)
		if _, err := h.r.ReadCommand(); err != nil {
			t.Fatal(err)
		}
		want := []int{len("a LOGIN {5}\r\n"), len("a LOGIN {5}\r\nalice {6}\r\n")}
		if !reflect.DeepEqual(h.conts, want) {
			t.Fatalf("bufsize %d: continuation at %v, want %v", bs, h.conts, want)
		}
	}
}

func TestReturnedValuesSurviveNextRead(t *testing.T) {
	h := newHarness("a LOGIN alice {6+}\r\nsecret\r\nb LOGIN bob \"pw\"\r\n", Limits{}, 0)
	c1, err := h.r.ReadCommand()
	if err != nil {
		t.Fatal(err)
	}
	c2, err := h.r.ReadCommand()
	if err != nil {
		t.Fatal(err)
	}
	if !sameCommand(c1, cmd("a", "LOGIN", atom("alice"), literal("secret"))) ||
		!sameCommand(c2, cmd("b", "LOGIN", atom("bob"), quoted("pw"))) {
		t.Fatalf("got %#v %#v", c1, c2)
	}
}

type errCheck func(t *testing.T, err error)

func isSyntax(tag string) errCheck {
	return func(t *testing.T, err error) {
		t.Helper()
		var se *SyntaxError
		if !errors.As(err, &se) || se.Tag != tag {
			t.Fatalf("got %v (%T), want SyntaxError with tag %q", err, err, tag)
		}
		if strings.ContainsAny(se.Msg, "\r\n") || se.Msg == "" {
			t.Fatalf("bad message %q", se.Msg)
		}
		if Fatal(err) || ErrorTag(err) != tag {
			t.Fatal("Fatal/ErrorTag mismatch")
		}
	}
}

func isTooLong(tag string) errCheck {
	return func(t *testing.T, err error) {
		t.Helper()
		var le *LineTooLongError
		if !errors.Is(err, ErrLineTooLong) || !errors.As(err, &le) || le.Tag != tag {
			t.Fatalf("got %v (%T), want LineTooLongError with tag %q", err, err, tag)
		}
		if Fatal(err) || ErrorTag(err) != tag {
			t.Fatal("Fatal/ErrorTag mismatch")
		}
	}
}

func isLitTooLarge(tag string, size int64, nonSync bool) errCheck {
	return func(t *testing.T, err error) {
		t.Helper()
		var le *LiteralTooLargeError
		if !errors.As(err, &le) || *le != (LiteralTooLargeError{tag, size, nonSync}) {
			t.Fatalf("got %v (%#v), want LiteralTooLargeError{%q %d %v}", err, err, tag, size, nonSync)
		}
		if Fatal(err) != nonSync || ErrorTag(err) != tag {
			t.Fatal("Fatal/ErrorTag mismatch")
		}
	}
}

func isErr(want error) errCheck {
	return func(t *testing.T, err error) {
		t.Helper()
		if err != want {
			t.Fatalf("got %v, want %v", err, want)
		}
	}
}

func TestReadCommandErrors(t *testing.T) {
	small := Limits{MaxLine: 64, MaxLiteral: 16}
	long := strings.Repeat("x", 300)
	tests := []struct {
		name  string
		in    string
		lim   Limits
		check errCheck
		conts int
		// next is the command expected after the error (nil: the error
		// must be fatal and sticky).
		next *Command
	}{
		{"empty line", "\r\nb NOOP\r\n", small, isSyntax(""), 0, cmd("b", "NOOP")},
		{"tag plus", "a+b NOOP\r\nb NOOP\r\n", small, isSyntax(""), 0, cmd("b", "NOOP")},
		{"tag star", "a*b NOOP\r\nb NOOP\r\n", small, isSyntax(""), 0, cmd("b", "NOOP")},
		{"tag quote", "\"a\" NOOP\r\nb NOOP\r\n", small, isSyntax(""), 0, cmd("b", "NOOP")},
		{"tag 8bit", "ä NOOP\r\nb NOOP\r\n", small, isSyntax(""), 0, cmd("b", "NOOP")},
		{"missing command", "a\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"missing command SP", "a \r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"double space", "a  NOOP\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"trailing space", "a NOOP \r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"bad command name", "a NO]OP\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"NUL in line", "a LOGIN al\x00ice pw\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"NUL in quoted", "a LOGIN \"al\x00ice\" pw\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"CR in quoted", "a LOGIN \"al\rice\" pw\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"CR in line", "a NOOP\rb NOOP\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"8bit atom", "a LOGIN jörg pw\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"unterminated quote", "a LOGIN \"alice\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"bad escape", "a LOGIN \"a\\lice\" x\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"quote after atom", "a LOGIN al\"ice\" x\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"wildcard", "a LOGIN * x\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"unbalanced close", "a ID )\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"unterminated list", "a ID (\"x\"\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"space before close", "a ID (x )\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"no space between", "a ID (x)(y)\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"depth exceeded", "a ID (((((x)))))\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"too many args", "a X" + strings.Repeat(" x", MaxArgs+1) + "\r\nb NOOP\r\n", Limits{}, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"too many list elems", "a X (" + strings.Repeat("x ", MaxArgs) + "x)\r\nb NOOP\r\n", Limits{}, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"literal8", "a LOGIN ~{5}\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"literal8 non-sync skipped", "a LOGIN ~{5+}\r\nhello x\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"empty literal", "a LOGIN {}\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"literal not at EOL", "a LOGIN {5}x\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"literal minus", "a LOGIN {5-}\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"NUL in literal", "a LOGIN {3}\r\na\x00b {2+}\r\npw\r\nb NOOP\r\n", small, isSyntax("a"), 1, cmd("b", "NOOP")},
		{"error then non-sync literals skipped", "a LOGIN \"x {5+}\r\nhello {3+}\r\na\r\n\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"error then sync literal", "a LOGIN \"x {5}\r\nb NOOP\r\n", small, isSyntax("a"), 0, cmd("b", "NOOP")},
		{"error then non-sync literal too large", "a LOGIN \"x {500+}\r\n" + long, small, isLitTooLarge("a", 500, true), 0, nil},

		{"line too long", "a LOGIN " + long + "\r\nb NOOP\r\n", small, isTooLong("a"), 0, cmd("b", "NOOP")},
		{"line too long bad tag", "a+ LOGIN " + long + "\r\nb NOOP\r\n", small, isTooLong(""), 0, cmd("b", "NOOP")},
		{"line too long no SP", long + "\r\nb NOOP\r\n", small, isTooLong(""), 0, cmd("b", "NOOP")},
		{"line too long LF", "a LOGIN " + long + "\nb NOOP\r\n", small, isTooLong("a"), 0, cmd("b", "NOOP")},
		{"line too long then non-sync literal", "a LOGIN " + long + " {5+}\r\nhello\r\nb NOOP\r\n", small, isTooLong("a"), 0, cmd("b", "NOOP")},
		{"line too long then sync literal", "a LOGIN " + long + " {5}\r\nb NOOP\r\n", small, isTooLong("a"), 0, cmd("b", "NOOP")},
		{"line too long after literal", "a LOGIN {5}\r\nalice " + long + "\r\nb NOOP\r\n", small, isTooLong("a"), 1, cmd("b", "NOOP")},
		{"line exactly at limit", "a X " + strings.Repeat("y", 58) + "\r\nb NOOP\r\n", small, nil, 0, cmd("b", "NOOP")},
		{"line one over limit", "a X " + strings.Repeat("y", 59) + "\r\nb NOOP\r\n", small, isTooLong("a"), 0, cmd("b", "NOOP")},
		{"lines summed over literals", "a X {1+}\r\nx " + strings.Repeat("y", 60) + "\r\nb NOOP\r\n", small, isTooLong("a"), 0, cmd("b", "NOOP")},

		{"sync literal too large", "a LOGIN {17}\r\nb NOOP\r\n", small, isLitTooLarge("a", 17, false), 0, cmd("b", "NOOP")},
		{"sync literal sum too large", "a LOGIN {10}\r\n0123456789 {7}\r\nb NOOP\r\n", small, isLitTooLarge("a", 7, false), 1, cmd("b", "NOOP")},
		{"sync literal absurd", "a LOGIN {99999999999999999999}\r\nb NOOP\r\n", small, isLitTooLarge("a", math.MaxInt64, false), 0, cmd("b", "NOOP")},
		{"sync literal int64 max", "a LOGIN {9223372036854775807}\r\nb NOOP\r\n", small, isLitTooLarge("a", math.MaxInt64, false), 0, cmd("b", "NOOP")},
		{"non-sync literal too large", "a LOGIN {17+}\r\n01234567890123456 x\r\nb NOOP\r\n", small, isLitTooLarge("a", 17, true), 0, nil},
		{"non-sync literal absurd", "a LOGIN {99999999999999999999+}\r\n", small, isLitTooLarge("a", math.MaxInt64, true), 0, nil},

		{"EOF mid line", "a NOOP", small, isErr(io.ErrUnexpectedEOF), 0, nil},
		{"EOF after CR", "a NOOP\r", small, isErr(io.ErrUnexpectedEOF), 0, nil},
		{"EOF in literal", "a LOGIN {5+}\r\nali", small, isErr(io.ErrUnexpectedEOF), 0, nil},
		{"EOF after literal", "a LOGIN {5}\r\nalice", small, isErr(io.ErrUnexpectedEOF), 1, nil},
		{"EOF in overlong line", "a LOGIN " + long, small, isErr(io.ErrUnexpectedEOF), 0, nil},
		{"EOF while skipping", "a LOGIN \"x {5+}\r\nhel", small, isErr(io.ErrUnexpectedEOF), 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, bs := range []int{16, 4096} {
				h := newHarness(tc.in, tc.lim, bs)
				got, err := h.r.ReadCommand()
				if tc.check == nil {
					if err != nil {
						t.Fatalf("bufsize %d: %v", bs, err)
					}
				} else {
					if got != nil {
						t.Fatalf("bufsize %d: got command %#v with error", bs, got)
					}
					tc.check(t, err)
				}
				if len(h.conts) != tc.conts {
					t.Fatalf("bufsize %d: %d continuation requests, want %d", bs, len(h.conts), tc.conts)
				}
				next, err2 := h.r.ReadCommand()
				if tc.next == nil {
					if !Fatal(err) || err2 != err {
						t.Fatalf("bufsize %d: want sticky fatal error, got %v then %v", bs, err, err2)
					}
					return
				}
				if err2 != nil || !sameCommand(next, tc.next) {
					t.Fatalf("bufsize %d: next: got %#v, %v; want %#v", bs, next, err2, tc.next)
				}
				if _, err := h.r.ReadCommand(); err != io.EOF {
					t.Fatalf("bufsize %d: got %v, want EOF", bs, err)
				}
			}
		})
	}
}

func TestSyncLiteralTooLargeConsumesOnlyHeader(t *testing.T) {
	in := "a LOGIN {100}\r\n"
	h := newHarness(in+"b NOOP\r\n", Limits{MaxLiteral: 10}, 0)
	_, err := h.r.ReadCommand()
	isLitTooLarge("a", 100, false)(t, err)
	if h.consumed() != len(in) || len(h.conts) != 0 {
		t.Fatalf("consumed %d, conts %d", h.consumed(), len(h.conts))
	}
}

func TestNonSyncNeverContinues(t *testing.T) {
	h := newHarness("a ID (\"a\" {1+}\r\nb {2+}\r\ncd {0+}\r\n)\r\n", Limits{}, 0)
	c, err := h.r.ReadCommand()
	if err != nil || len(h.conts) != 0 {
		t.Fatalf("%v %v", err, h.conts)
	}
	if !sameCommand(c, cmd("a", "ID", list(quoted("a"), literal("b"), literal("cd"), literal("")))) {
		t.Fatalf("%#v", c)
	}
}

func TestContError(t *testing.T) {
	boom := errors.New("boom")
	calls := 0
	r := NewReader(bufio.NewReader(strings.NewReader("a LOGIN {5}\r\nalice x\r\nb NOOP\r\n")), Limits{}, func() error {
		calls++
		return boom
	})
	if _, err := r.ReadCommand(); err != boom {
		t.Fatal(err)
	}
	if _, err := r.ReadCommand(); err != boom || calls != 1 {
		t.Fatalf("not sticky: %v, %d calls", err, calls)
	}
}

// A hostile client sending a huge line must not make the reader buffer it.
func TestHugeLineBounded(t *testing.T) {
	huge := "a LOGIN " + strings.Repeat("A", 10<<20) + "\r\nb NOOP\r\n"
	h := newHarness(huge, Limits{}, 0)
	_, err := h.r.ReadCommand()
	isTooLong("a")(t, err)
	if c := cap(h.r.buf); c > DefaultMaxLine {
		t.Fatalf("buffer grew to %d", c)
	}
	if c, err := h.r.ReadCommand(); err != nil || c.Name != "NOOP" {
		t.Fatal(c, err)
	}
	allocs := testing.AllocsPerRun(3, func() {
		h := newHarness(huge, Limits{}, 0)
		h.r.ReadCommand()
	})
	if allocs > 20 {
		t.Fatalf("%v allocations for an overlong line", allocs)
	}
}

func TestReadLine(t *testing.T) {
	long := strings.Repeat("Q", 100)
	h := newHarness("dGVzdA==\r\n*\n"+long+"\r\n\r\nlast", Limits{MaxLine: 50}, 16)
	for _, want := range []string{"dGVzdA==", "*"} {
		l, err := h.r.ReadLine()
		if err != nil || string(l) != want {
			t.Fatalf("got %q, %v; want %q", l, err, want)
		}
	}
	if _, err := h.r.ReadLine(); !errors.Is(err, ErrLineTooLong) || Fatal(err) {
		t.Fatalf("got %v", err)
	}
	if l, err := h.r.ReadLine(); err != nil || len(l) != 0 {
		t.Fatalf("got %q, %v", l, err)
	}
	if _, err := h.r.ReadLine(); err != io.ErrUnexpectedEOF {
		t.Fatalf("got %v", err)
	}
	h = newHarness("", Limits{}, 0)
	if _, err := h.r.ReadLine(); err != io.EOF {
		t.Fatalf("got %v", err)
	}
}

func TestArgKind(t *testing.T) {
	for _, k := range []ArgKind{Atom, Quoted, Literal} {
		if !(Arg{Kind: k}).IsString() {
			t.Error(k)
		}
	}
	for _, k := range []ArgKind{List, NIL, 0} {
		if (Arg{Kind: k}).IsString() {
			t.Error(k)
		}
	}
	if NIL.String() != "NIL" || ArgKind(99).String() == "" {
		t.Error("String")
	}
}

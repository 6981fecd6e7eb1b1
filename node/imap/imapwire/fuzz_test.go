package imapwire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

var fuzzLimits = Limits{MaxLine: 128, MaxLiteral: 64}

var commandSeeds = []string{
	"a CAPABILITY\r\n",
	"a1 login alice secret\r\nb NOOP\nc LOGOUT\r\n",
	`a LOGIN "al\"ice" "p\\w"` + "\r\n",
	"a LOGIN \"jörg@exämple.com\" \"pässwörd\"\r\n",
	"a LOGIN {5}\r\nalice {6}\r\nsecret\r\n",
	"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n",
	"a LOGIN {0}\r\n {0+}\r\n\r\n",
	"a ID (\"name\" \"Thunderbird\" \"version\" NIL)\r\n",
	"a ID (\"name\" {7}\r\nDovecot \"v\" ((x) ()))\r\n",
	"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
	"a X (((((x)))))\r\n",
	"a LOGIN {99999999999999999999}\r\nb NOOP\r\n",
	"a LOGIN {99999999999999999999+}\r\n",
	"a LOGIN {65+}\r\n",
	"a LOGIN ~{5}\r\n",
	"a LOGIN \"x {5+}\r\nhello {3+}\r\na\r\n\r\nb NOOP\r\n",
	"a LOGIN {3}\r\na\x00b {2+}\r\npw\r\nb NOOP\r\n",
	"a LOGIN " + strings.Repeat("x", 200) + " {5+}\r\nhello\r\nb NOOP\r\n",
	"\r\n\n\r",
	"a+ NOOP\r\n",
	"a NOOP",
	"a NOOP \r\n",
	"a  NOOP\r\n",
	"a ID )\r\n",
	"a LOGIN \x00\r\n",
	"\xff\xfe{1}\r\n",
}

func FuzzReadCommand(f *testing.F) {
	for _, s := range commandSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		small := runCommands(t, data, 16)
		big := runCommands(t, data, 4096)
		if !reflect.DeepEqual(small, big) {
			t.Fatalf("buffer size changes the outcome:\n16:   %v\n4096: %v", small, big)
		}
	})
}

// runCommands reads all commands from data, checks invariants and returns
// a transcript.
func runCommands(t *testing.T, data []byte, bufSize int) []string {
	h := newHarness(string(data), fuzzLimits, bufSize)
	var out []string
	for i := 0; ; i++ {
		if i > len(data)+1 {
			t.Fatal("no progress")
		}
		before, nconts := h.consumed(), len(h.conts)
		c, err := h.r.ReadCommand()
		after := h.consumed()
		for _, off := range h.conts[nconts:] {
			if off < 3 || data[off-1] != '\n' || !(bytes.HasSuffix(data[:off], []byte("}\n")) || bytes.HasSuffix(data[:off], []byte("}\r\n"))) {
				t.Fatalf("continuation at offset %d not after a literal header: %q", off, data[:off])
			}
			if p := bytes.LastIndexByte(data[:off], '}'); data[p-1] == '+' {
				t.Fatalf("continuation for non-synchronizing literal at %d", off)
			}
		}
		conts := len(h.conts) - nconts
		if err != nil {
			if c != nil {
				t.Fatal("command with error")
			}
			checkCommandError(t, err)
			if !Fatal(err) && after == before {
				t.Fatalf("non-fatal error %v without progress", err)
			}
			out = append(out, errorKind(err))
			if Fatal(err) {
				if _, err2 := h.r.ReadCommand(); err2 != err {
					t.Fatalf("fatal error %v not sticky: %v", err, err2)
				}
				return out
			}
			continue
		}
		checkCommand(t, c, conts)
		out = append(out, string(appendCommand(nil, c, true)))
	}
}

func errorKind(err error) string {
	var (
		se *SyntaxError
		le *LineTooLongError
		te *LiteralTooLargeError
	)
	switch {
	case errors.As(err, &se):
		return "syntax " + se.Tag + ": " + se.Msg
	case errors.As(err, &le):
		return "toolong " + le.Tag
	case errors.As(err, &te):
		return te.Error() + " " + te.Tag
	}
	return err.Error()
}

func checkCommandError(t *testing.T, err error) {
	var (
		se *SyntaxError
		le *LineTooLongError
		te *LiteralTooLargeError
	)
	switch {
	case errors.As(err, &se):
		if se.Tag != "" && !ValidTag(se.Tag) || se.Msg == "" || strings.ContainsAny(se.Msg, "\r\n") {
			t.Fatalf("bad syntax error %#v", se)
		}
	case errors.As(err, &le):
		if le.Tag != "" && !ValidTag(le.Tag) {
			t.Fatalf("bad tag %#v", le)
		}
	case errors.As(err, &te):
		if te.Tag != "" && !ValidTag(te.Tag) || te.Size <= 0 {
			t.Fatalf("bad literal error %#v", te)
		}
	case err == io.EOF || err == io.ErrUnexpectedEOF:
	default:
		t.Fatalf("unexpected error %v", err)
	}
}

func checkCommand(t *testing.T, c *Command, conts int) {
	if !ValidTag(c.Tag) || !isAtom(c.Name) || strings.ToUpper(c.Name) != c.Name {
		t.Fatalf("bad tag or name %q %q", c.Tag, c.Name)
	}
	var total, lits, nargs int
	var walk func([]Arg, int)
	walk = func(args []Arg, depth int) {
		if depth > MaxListDepth {
			t.Fatalf("depth %d", depth)
		}
		for _, a := range args {
			nargs++
			total += len(a.Value)
			switch a.Kind {
			case Atom:
				if !isAtomString(a.Value) || strings.EqualFold(a.Value, "NIL") {
					t.Fatalf("bad atom %q", a.Value)
				}
			case NIL:
				if !strings.EqualFold(a.Value, "NIL") {
					t.Fatalf("bad NIL %q", a.Value)
				}
			case Quoted:
				if !quotable(a.Value) {
					t.Fatalf("bad quoted %q", a.Value)
				}
			case Literal:
				lits += len(a.Value)
				if strings.IndexByte(a.Value, 0) >= 0 {
					t.Fatalf("NUL in literal %q", a.Value)
				}
			case List:
				if a.Value != "" {
					t.Fatal("list with value")
				}
				walk(a.List, depth+1)
			default:
				t.Fatalf("bad kind %v", a.Kind)
			}
		}
	}
	walk(c.Args, 0)
	if nargs > MaxArgs || lits > fuzzLimits.MaxLiteral || total+len(c.Tag)+len(c.Name) > fuzzLimits.MaxLine+fuzzLimits.MaxLiteral {
		t.Fatalf("limits exceeded: %d args, %d literal bytes, %d value bytes", nargs, lits, total)
	}
	nlit := countLiterals(c.Args)
	if conts > nlit {
		t.Fatalf("%d continuations for %d literals", conts, nlit)
	}
	// Re-serialise and parse again, with both literal forms.
	for _, nonSync := range []bool{true, false} {
		wire := appendCommand(nil, c, nonSync)
		h := newHarness(string(wire), Limits{MaxLine: 1 << 20, MaxLiteral: 1 << 20}, 0)
		c2, err := h.r.ReadCommand()
		if err != nil || !sameCommand(c, c2) {
			t.Fatalf("round trip of %q:\n got %#v, %v\nwant %#v", wire, c2, err, c)
		}
		want := 0
		if !nonSync {
			want = nlit
		}
		if len(h.conts) != want {
			t.Fatalf("round trip of %q: %d continuations, want %d", wire, len(h.conts), want)
		}
		if _, err := h.r.ReadCommand(); err != io.EOF {
			t.Fatalf("round trip of %q: trailing %v", wire, err)
		}
	}
}

var responseSeeds = []string{
	"* OK [CAPABILITY " + dovecotCaps + "] Dovecot (Debian) ready.\r\n",
	"a OK [CAPABILITY IMAP4rev1 SASL-IR ID ENABLE IDLE LITERAL+] Logged in\r\n",
	"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
	"* BYE [UNAVAILABLE] Shutting down\r\n* PREAUTH ok\n",
	"* ID (\"name\" \"Dovecot\")\r\n",
	"* ID (\"name\" {7}\r\nDovecot)\r\n",
	"* ID (\"x\" {0}\r\n {3}\r\na\"b)\r\n",
	"* ID (\"odd {5}\" \"\\\"{3}\r\n",
	"+ \r\n+ VXNlcm5hbWU6\r\n+\n",
	"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n",
	"* 3 EXISTS\r\n",
	"* X {999}\r\n",
	"* X ~{5}\r\n\x00\x01\x02\x03\x04\r\n",
	"a OK [ALERT unterminated\r\n",
	"\x00\xff garbage",
	"a BYE x\r\n",
	"* OK " + strings.Repeat("x", 300),
}

const (
	fuzzRespLine = 256
	fuzzRespLit  = 128
)

func FuzzReadResponse(f *testing.F) {
	for _, s := range responseSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		small := runResponses(t, data, 16)
		big := runResponses(t, data, 4096)
		if !reflect.DeepEqual(small, big) {
			t.Fatalf("buffer size changes the outcome:\n16:   %v\n4096: %v", small, big)
		}
	})
}

func runResponses(t *testing.T, data []byte, bufSize int) []any {
	cr := &countReader{r: bytes.NewReader(data)}
	br := bufio.NewReaderSize(cr, bufSize)
	rr := NewResponseReader(br, fuzzRespLine, fuzzRespLit)
	var out []any
	prev := 0
	for i := 0; ; i++ {
		if i > len(data)+1 {
			t.Fatal("no progress")
		}
		resp, err := rr.Read()
		consumed := cr.n - br.Buffered()
		if err != nil {
			if resp != nil {
				t.Fatal("response with error")
			}
			if _, err2 := rr.Read(); err2 != err {
				t.Fatalf("error %v not sticky: %v", err, err2)
			}
			if consumed-prev > fuzzRespLine+fuzzRespLit+bufSize {
				t.Fatalf("consumed %d bytes for a failed response", consumed-prev)
			}
			return append(out, errorKind(err))
		}
		if !bytes.Equal(resp.Raw, data[prev:consumed]) {
			t.Fatalf("Raw %q != consumed %q", resp.Raw, data[prev:consumed])
		}
		prev = consumed
		checkResponse(t, resp)
		// Raw alone parses to the same response.
		again, err := NewResponseReader(bufio.NewReader(bytes.NewReader(resp.Raw)), fuzzRespLine, fuzzRespLit).Read()
		if err != nil || !reflect.DeepEqual(again, resp) {
			t.Fatalf("re-read of %q: %#v, %v", resp.Raw, again, err)
		}
		out = append(out, *resp)
	}
}

func checkResponse(t *testing.T, r *Response) {
	if len(r.Raw) > fuzzRespLine+fuzzRespLit || len(r.Raw) == 0 || r.Raw[len(r.Raw)-1] != '\n' {
		t.Fatalf("bad Raw %q", r.Raw)
	}
	switch r.Tag {
	case "+":
		if r.Status != "" || r.Data != "" {
			t.Fatalf("continuation %#v", r)
		}
	case "*":
		if (r.Status == "") == (r.Data == "") {
			t.Fatalf("untagged %#v", r)
		}
	default:
		if !ValidTag(r.Tag) || (r.Status != "OK" && r.Status != "NO" && r.Status != "BAD") || r.Data != "" {
			t.Fatalf("tagged %#v", r)
		}
	}
	if r.Status != "" && statusWord(r.Status) != r.Status {
		t.Fatalf("status %q", r.Status)
	}
	if r.Code != "" && (strings.ToUpper(r.Code) != r.Code || !isAtom(r.Code)) || r.Code == "" && r.CodeArgs != "" {
		t.Fatalf("code %q %q", r.Code, r.CodeArgs)
	}
	if r.Data == "" && strings.Count(string(r.Raw), "\n") != 1 {
		t.Fatalf("multi-line non-data response %q", r.Raw)
	}
	for _, s := range []string{r.Tag, r.Code, r.CodeArgs, r.Text, r.Data} {
		if strings.ContainsAny(s, "\r\n\x00") {
			t.Fatalf("line break or NUL in field %q", s)
		}
	}
}

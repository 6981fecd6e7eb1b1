package imapwire

import (
	"bufio"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

const dovecotCaps = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN AUTH=LOGIN"

func TestReadResponse(t *testing.T) {
	tests := []struct {
		in   string
		want Response // Raw is checked separately (== in)
	}{
		{"* OK [CAPABILITY " + dovecotCaps + "] Dovecot (Debian) ready.\r\n",
			Response{Tag: "*", Status: "OK", Code: "CAPABILITY", CodeArgs: dovecotCaps, Text: "Dovecot (Debian) ready."}},
		{"a OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE] Logged in\r\n",
			Response{Tag: "a", Status: "OK", Code: "CAPABILITY", CodeArgs: "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE", Text: "Logged in"}},
		{"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
			Response{Tag: "a", Status: "NO", Code: "AUTHENTICATIONFAILED", Text: "Authentication failed."}},
		{"* BYE [UNAVAILABLE] Server shutting down.\r\n",
			Response{Tag: "*", Status: "BYE", Code: "UNAVAILABLE", Text: "Server shutting down."}},
		{"a NO [UNAVAILABLE] Temporary authentication failure. [host:2024-01-01 12:00:00]\r\n",
			Response{Tag: "a", Status: "NO", Code: "UNAVAILABLE", Text: "Temporary authentication failure. [host:2024-01-01 12:00:00]"}},
		{"* PREAUTH [CAPABILITY IMAP4rev1] Logged in as alice\r\n",
			Response{Tag: "*", Status: "PREAUTH", Code: "CAPABILITY", CodeArgs: "IMAP4rev1", Text: "Logged in as alice"}},
		{"a bad Error in IMAP command: Unknown command.\r\n",
			Response{Tag: "a", Status: "BAD", Text: "Error in IMAP command: Unknown command."}},
		{"a OK\r\n", Response{Tag: "a", Status: "OK"}},
		{"a OK [ALERT]\r\n", Response{Tag: "a", Status: "OK", Code: "ALERT"}},
		{"a OK [alert]text\n", Response{Tag: "a", Status: "OK", Code: "ALERT", Text: "text"}},
		{"* OK text ending like a literal {5}\r\n", Response{Tag: "*", Status: "OK", Text: "text ending like a literal {5}"}},
		{"* ID (\"name\" \"Dovecot\")\r\n", Response{Tag: "*", Data: "ID", DataArgs: `("name" "Dovecot")`}},
		{"* ID NIL\r\n", Response{Tag: "*", Data: "ID", DataArgs: "NIL"}},
		{"* ID (\"name\" {7}\r\nDovecot)\r\n", Response{Tag: "*", Data: "ID", DataArgs: "(\"name\" {7}\r\nDovecot)"}},
		{"* ID (\"name\" {7}\r\nDove\r\nt \"x\" {0}\r\n)\r\n", Response{Tag: "*", Data: "ID", DataArgs: "(\"name\" {7}\r\nDove\r\nt \"x\" {0}\r\n)"}},
		{"* ID (\"name\" \"odd {5}\")\r\n", Response{Tag: "*", Data: "ID", DataArgs: `("name" "odd {5}")`}},
		{"* CAPABILITY " + dovecotCaps + "\r\n", Response{Tag: "*", Data: "CAPABILITY", DataArgs: dovecotCaps}},
		{"* capability IMAP4rev1\r\n", Response{Tag: "*", Data: "CAPABILITY", DataArgs: "IMAP4rev1"}},
		{"* 3 EXISTS\r\n", Response{Tag: "*", Data: "3", DataArgs: "EXISTS"}},
		{"* ENABLED\r\n", Response{Tag: "*", Data: "ENABLED"}},
		{"+ \r\n", Response{Tag: "+"}},
		{"+\r\n", Response{Tag: "+"}},
		{"+ VXNlcm5hbWU6\r\n", Response{Tag: "+", Text: "VXNlcm5hbWU6"}},
		{"+ Ready for literal data\r\n", Response{Tag: "+", Text: "Ready for literal data"}},
		{"+ OK\r\n", Response{Tag: "+", Text: "OK"}},
		{"* OK [HIGHESTMODSEQ 1] Ütf-8 text\r\n", Response{Tag: "*", Status: "OK", Code: "HIGHESTMODSEQ", CodeArgs: "1", Text: "Ütf-8 text"}},
	}
	for _, tc := range tests {
		// Feed every case twice, pipelined, with tiny and normal buffers.
		for _, bs := range []int{16, 4096} {
			rr := NewResponseReader(bufio.NewReaderSize(strings.NewReader(tc.in+tc.in), bs), 0, 0)
			for i := 0; i < 2; i++ {
				got, err := rr.Read()
				if err != nil {
					t.Fatalf("%q: %v", tc.in, err)
				}
				if string(got.Raw) != tc.in {
					t.Fatalf("%q: Raw %q", tc.in, got.Raw)
				}
				g := *got
				g.Raw = nil
				if !reflect.DeepEqual(g, tc.want) {
					t.Fatalf("%q:\n got %#v\nwant %#v", tc.in, g, tc.want)
				}
			}
			if _, err := rr.Read(); err != io.EOF {
				t.Fatalf("%q: got %v, want EOF", tc.in, err)
			}
		}
	}
}

func TestReadResponseErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want func(error) bool
	}{
		{"eof", "", func(e error) bool { return e == io.EOF }},
		{"no CRLF at EOF", "* OK ready", func(e error) bool { return e == io.ErrUnexpectedEOF }},
		{"eof in literal", "* ID (\"name\" {7}\r\nDov", func(e error) bool { return e == io.ErrUnexpectedEOF }},
		{"eof after literal", "* ID (\"name\" {7}\r\nDovecot", func(e error) bool { return e == io.ErrUnexpectedEOF }},
		{"huge line", "* OK " + strings.Repeat("x", 200) + "\r\n", isResponseErr[*LineTooLongError]},
		{"huge lines via literals", "* X {0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n{0}\r\n", isResponseErr[*LineTooLongError]},
		{"huge literal", "* ID (\"name\" {999999}\r\n", isResponseErr[*LiteralTooLargeError]},
		{"absurd literal", "* ID (\"name\" {99999999999999999999999}\r\n", isResponseErr[*LiteralTooLargeError]},
		{"literals sum", "* ID ({40}\r\n" + strings.Repeat("a", 40) + " {40}\r\n", isResponseErr[*LiteralTooLargeError]},
		{"binary", "\x00\x01\x02\xff\r\n", isResponseErr[*SyntaxError]},
		{"NUL in text", "* OK hel\x00lo\r\n", isResponseErr[*SyntaxError]},
		{"bare CR in text", "* BYE \r0\n", isResponseErr[*SyntaxError]},
		{"bare CR in data", "* ID (\"a\rb\")\r\n", isResponseErr[*SyntaxError]},
		{"CR CR LF", "* OK x\r\r\n", isResponseErr[*SyntaxError]},
		{"garbage word", "garbage\r\n", isResponseErr[*SyntaxError]},
		{"bad tag", "a\"b OK x\r\n", isResponseErr[*SyntaxError]},
		{"tagged BYE", "a BYE x\r\n", isResponseErr[*SyntaxError]},
		{"tagged data", "a CAPABILITY x\r\n", isResponseErr[*SyntaxError]},
		{"star alone", "*\r\n", isResponseErr[*SyntaxError]},
		{"star space", "* \r\n", isResponseErr[*SyntaxError]},
		{"bad keyword", "* (x)\r\n", isResponseErr[*SyntaxError]},
		{"plus no space", "+x\r\n", isResponseErr[*SyntaxError]},
		{"unterminated code", "a OK [ALERT oops\r\n", isResponseErr[*SyntaxError]},
		{"empty code", "a OK [] x\r\n", isResponseErr[*SyntaxError]},
		{"empty line", "\r\n", isResponseErr[*SyntaxError]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			if !strings.HasPrefix(tc.name, "eof") && tc.name != "no CRLF at EOF" {
				in += "* OK fine\r\n" // must not be reached
			}
			rr := NewResponseReader(bufio.NewReaderSize(strings.NewReader(in), 16), 100, 64)
			r, err := rr.Read()
			if r != nil || !tc.want(err) {
				t.Fatalf("got %#v, %v (%T)", r, err, err)
			}
			if _, err2 := rr.Read(); err2 != err {
				t.Fatalf("error not sticky: %v", err2)
			}
		})
	}
}

func isResponseErr[T error](err error) bool {
	var target T
	return errors.As(err, &target)
}

// endless yields the same bytes forever.
type endless struct{ b byte }

func (e endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = e.b
	}
	return len(p), nil
}

func TestResponseNoCRLFForever(t *testing.T) {
	for _, b := range []byte{'x', 0, '\r', ' '} {
		rr := NewResponseReader(bufio.NewReader(endless{b}), 0, 0)
		_, err := rr.Read()
		if !errors.Is(err, ErrLineTooLong) {
			t.Fatalf("%q: %v", b, err)
		}
		if cap(rr.buf) > 2*DefaultMaxLine {
			t.Fatalf("buffer grew to %d", cap(rr.buf))
		}
	}
	// Lines that each announce an empty literal, forever.
	rr := NewResponseReader(bufio.NewReader(strings.NewReader("* X "+strings.Repeat("{0}\r\n", 100000))), 0, 0)
	if _, err := rr.Read(); !errors.Is(err, ErrLineTooLong) {
		t.Fatal(err)
	}
}

func TestCapabilities(t *testing.T) {
	caps := ParseCapabilities(" IMAP4rev1 sasl-ir  LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN ")
	want := []string{"IMAP4REV1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE", "LITERAL+", "AUTH=PLAIN"}
	if !reflect.DeepEqual(caps, want) {
		t.Fatalf("%q", caps)
	}
	if !HasCapability(caps, "auth=plain") || !HasCapability(caps, "Literal+") || HasCapability(caps, "LITERAL-") || HasCapability(caps, "AUTH") {
		t.Fatal("HasCapability")
	}
	if len(ParseCapabilities("")) != 0 {
		t.Fatal("empty")
	}
}

package imapwire

import (
	"bufio"
	"strings"
	"testing"
)

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"":         `""`,
		"alice":    `"alice"`,
		`al"ice`:   `"al\"ice"`,
		`p\w`:      `"p\\w"`,
		"jörg":     `"jörg"`,
		"a b(c)*%": `"a b(c)*%"`,
	} {
		if got, ok := Quote(in); !ok || got != want {
			t.Errorf("Quote(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, in := range []string{"a\rb", "a\nb", "a\x00b"} {
		if _, ok := Quote(in); ok {
			t.Errorf("Quote(%q) ok", in)
		}
	}
}

// AppendQuote writes what Quote returns after dst's bytes, leaves dst as
// it was when s cannot be quoted, and allocates nothing when dst has room.
func TestAppendQuote(t *testing.T) {
	for _, in := range []string{"", "alice", `al"ice`, `p\w`, "jörg", "a b(c)*%", "a\rb", "a\nb", "a\x00b"} {
		want, wantOK := Quote(in)
		got, ok := AppendQuote([]byte("x "), in)
		if ok != wantOK || (ok && string(got) != "x "+want) || (!ok && string(got) != "x ") {
			t.Errorf("AppendQuote(%q) = %q, %v; want %q, %v", in, got, ok, "x "+want, wantOK)
		}
	}
	buf := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(100, func() { _, _ = AppendQuote(buf, `al"ice`) }); n != 0 {
		t.Errorf("%v allocations with room in dst", n)
	}
}

func TestValidTag(t *testing.T) {
	for _, s := range []string{"a", "A001", "]", "a.b-c_d!#$&'", "~"} {
		if !ValidTag(s) {
			t.Errorf("%q invalid", s)
		}
	}
	for _, s := range []string{"", "+", "a+", "*", "a b", "a%", "(", "\"", "\\", "{", "ä", "a\x00", "a\r"} {
		if ValidTag(s) {
			t.Errorf("%q valid", s)
		}
	}
}

func TestAppendAstring(t *testing.T) {
	tests := []struct {
		in          string
		literalPlus bool
		want        string
		ok          bool
	}{
		{"alice", false, "alice", true},
		{"a]b", false, "a]b", true},
		{"nil", false, `"nil"`, true},
		{"", false, `""`, true},
		{"a b", false, `"a b"`, true},
		{`"`, false, `"\""`, true},
		{"jörg", false, `"jörg"`, true},
		{"a\r\nb", false, "", false},
		{"a\r\nb", true, "{4+}\r\na\r\nb", true},
		{"a\x00b", true, "", false},
	}
	for _, tc := range tests {
		got, ok := AppendAstring([]byte("x"), tc.in, tc.literalPlus)
		if ok != tc.ok || string(got) != "x"+tc.want {
			t.Errorf("AppendAstring(%q, %v) = %q, %v", tc.in, tc.literalPlus, got, ok)
		}
	}
	if got := string(AppendLiteralHeader(nil, 42, false)); got != "{42}\r\n" {
		t.Error(got)
	}
	if got := string(AppendLiteralHeader(nil, 0, true)); got != "{0+}\r\n" {
		t.Error(got)
	}
}

// What AppendAstring writes must parse back to the same string.
func TestAppendAstringRoundTrip(t *testing.T) {
	for _, s := range []string{"alice", "NIL", "", "a b", `a"\b`, "jörg", "x\r\ny", "]", "{5}", "(a)"} {
		line, ok := AppendAstring([]byte("t LOGIN "), s, true)
		if !ok {
			t.Fatal(s)
		}
		line = append(line, "\r\n"...)
		r := NewReader(bufio.NewReader(strings.NewReader(string(line))), Limits{}, nil)
		c, err := r.ReadCommand()
		if err != nil || len(c.Args) != 1 || !c.Args[0].IsString() || c.Args[0].Value != s {
			t.Fatalf("%q: %#v, %v", line, c, err)
		}
	}
}

package source

import (
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

func parseAll(s string) ([]Entry, error) {
	var out []Entry
	err := ParsePopmap(strings.NewReader(s), func(_ int, e Entry) error {
		out = append(out, e)
		return nil
	})
	return out, err
}

// Perdition's popmap forms: comments, blank lines, renames split at the
// last '@', host[:port] and Portico's pool:NAME kept as written.
func TestParsePopmap(t *testing.T) {
	got, err := parseAll(`# Perdition popmap
horms: 10.0.0.1            # a comment after white space
tymm:b2

alice@example.com: alice.smith@10.0.0.2:1143
bob: bob@corp.example@b1
carol#x: pool:p
`)
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{User: "horms", Target: "10.0.0.1"},
		{User: "tymm", Target: "b2"},
		{User: "alice@example.com", Target: "10.0.0.2:1143", Login: "alice.smith"},
		{User: "bob", Target: "b1", Login: "bob@corp.example"},
		{User: "carol#x", Target: "pool:p"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	for in, msg := range map[string]string{
		"a: @b1\n":  "line 1: empty name before '@'",
		"\na: x@\n": "line 2: no server after '@'",
		": b1\n":    "line 1: want",
		"a:\n":      "line 1: want",
		"a: " + strings.Repeat("x", MaxPopmapLine+1) + "\n": "longer than",
	} {
		if _, err := parseAll(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%.40q: %v, want %q", in, err, msg)
		}
	}
}

func FuzzParsePopmap(f *testing.F) {
	for _, s := range []string{"a: b1\n", "# c\nx@y: z@h:110\n", "u: pool:p # c\n", "a:b:c\n", "\xff: b1", "a: @\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		es, err := parseAll(s)
		if err != nil {
			return
		}
		for _, e := range es {
			if e.User == "" || e.Target == "" || strings.ContainsAny(e.User, ":\n") || strings.Contains(e.Target, "@") ||
				strings.ContainsAny(e.Target+e.Login, "\n") || e.User != strings.TrimSpace(e.User) {
				t.Fatalf("%q gave %+v", s, e)
			}
			if utf8.ValidString(s) && !utf8.ValidString(e.User+e.Target+e.Login) {
				t.Fatalf("%q: invalid UTF-8 out of valid input: %+v", s, e)
			}
		}
	})
}

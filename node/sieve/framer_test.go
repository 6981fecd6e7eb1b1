package sieve

import (
	"strings"
	"testing"
)

// feedAll feeds s to a new framer in chunks of n bytes, honouring Opaque
// as the relay does, and returns the boundary offsets it reported.
func feedAll(s string, n int) (*Framer, []int) {
	f := NewFramer().(*Framer)
	var bounds []int
	b := []byte(s)
	off := 0
	for off < len(b) {
		if op := f.Opaque(); op > 0 {
			k := int(op)
			if k > len(b)-off {
				k = len(b) - off
			}
			f.Skip(int64(k))
			off += k
			continue
		}
		end := off + n
		if end > len(b) {
			end = len(b)
		}
		if k := f.ServerData(b[off:end]); k > 0 {
			bounds = append(bounds, off+k)
		}
		off = end
	}
	return f, bounds
}

func TestFramerBoundaries(t *testing.T) {
	resp := []string{
		"OK \"Logged in.\"\r\n",
		"\"a\" ACTIVE\r\n{5}\r\nOK\r\n\r\n\"c\"\r\nOK \"Listscripts completed.\"\r\n",
		"{22}\r\nrequire \"fileinto\";\r\n\r\nOK \"Getscript completed.\"\r\n",
		"NO (NONEXISTENT) {12}\r\nno\r\nOK\r\nhere\r\n",
		"ok\n",
		"BYE (TRYLATER) \"bye\"\r\n",
	}
	stream := strings.Join(resp, "")
	var want []int
	off := 0
	for _, r := range resp {
		off += len(r)
		want = append(want, off)
	}
	for _, n := range []int{1, 2, 3, 7, 1 << 20} {
		f, got := feedAll(stream, n)
		// A chunk may hold several boundaries; only the last of each
		// chunk is reported: every reported one must be a real one, and
		// the last must be the end.
		for _, g := range got {
			found := false
			for _, w := range want {
				found = found || g == w
			}
			if !found {
				t.Fatalf("chunk %d: boundary %d is inside a response (want %v)", n, g, want)
			}
		}
		if n == 1 && len(got) != len(want) {
			t.Fatalf("byte by byte: boundaries %v, want %v", got, want)
		}
		if !f.AtBoundary() || got[len(got)-1] != len(stream) {
			t.Fatalf("chunk %d: not at a boundary at the end (%v)", n, got)
		}
	}
	// Mid-response and mid-literal are not boundaries.
	for _, cut := range []string{"\"a\" ACTIVE\r\n", "{5}\r\nOK\r", "OK \"x"} {
		f, _ := feedAll(cut, 1)
		if f.AtBoundary() {
			t.Fatalf("%q: at a boundary", cut)
		}
	}
}

func TestFramerBye(t *testing.T) {
	f := NewFramer()
	if got := string(f.Bye("node \"a\"\r\ngoing")); got != "BYE (TRYLATER) \"node \\\"a\\\"  going\"\r\n" {
		t.Fatalf("Bye %q", got)
	}
	if got := string(f.Bye("")); !strings.HasPrefix(got, "BYE (TRYLATER) \"Server shutting down") {
		t.Fatalf("Bye %q", got)
	}
}

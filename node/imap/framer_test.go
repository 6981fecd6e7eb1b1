package imap

import (
	"bytes"
	"strconv"
	"testing"
)

// boundaries feeds s to a fresh framer in chunks of size n and returns the
// stream offsets at which it reported the last boundary of each chunk.
func feedChunks(f *Framer, s string, n int) (ends []int) {
	off := 0
	for len(s) > 0 {
		c := min(n, len(s))
		if k := f.ServerData([]byte(s[:c])); k > 0 {
			ends = append(ends, off+k)
		}
		off += c
		s = s[c:]
	}
	return ends
}

func TestFramerBoundaries(t *testing.T) {
	for _, tc := range []struct {
		in       string
		boundary bool
	}{
		{"* OK idle\r\n", true},
		{"* 1 FETCH (BODY[] {5}\r\nhel", false},
		{"* 1 FETCH (BODY[] {5}\r\nhello", false},
		{"* 1 FETCH (BODY[] {5}\r\nhello)\r\n", true},
		{"* 1 FETCH (BODY[] {5}\r\n{3}\r\n)\r\n", true}, // a literal that looks like a header
		{"* 1 FETCH (BINARY[] ~{3}\r\n\r\n\n)\r\n", true},
		{"* 1 FETCH (BODY[] {0}\r\n)\r\n", true},
		{"* 1 FETCH (BODY[] {0}\r\n", false},
		{"* 2 FETCH (X {12+}\r\n0123456789ab)\r\na1 OK done\r\n", true},
		{"* OK {abc}\r\n", true},
		{"* OK {}\r\n", true},
		{"* OK partial", false},
		{"* OK partial\r", false},
		{"", true},
	} {
		for _, chunk := range []int{1, 2, 3, 7, 1 << 20} {
			f := &Framer{}
			feedChunks(f, tc.in, chunk)
			if got := f.AtBoundary(); got != tc.boundary {
				t.Errorf("%q (chunks of %d): at boundary %v, want %v", tc.in, chunk, got, tc.boundary)
			}
		}
	}
}

func TestFramerLastBoundaryInChunk(t *testing.T) {
	f := &Framer{}
	s := "* 1 EXISTS\r\n* 1 FETCH (BODY[] {4}\r\nab\r\n)\r\n* 2 EX"
	if k := f.ServerData([]byte(s)); k != len(s)-len("* 2 EX") {
		t.Fatalf("last boundary at %d, want %d", k, len(s)-len("* 2 EX"))
	}
	if k := f.ServerData([]byte("ISTS")); k != -1 {
		t.Fatalf("boundary %d inside a line", k)
	}
	if k := f.ServerData([]byte("\r\n")); k != 2 {
		t.Fatalf("boundary %d, want 2", k)
	}
	if k := f.ServerData(nil); k != 0 {
		t.Fatalf("at a boundary before an empty chunk: %d", k)
	}
}

func TestFramerOpaqueSkip(t *testing.T) {
	f := &Framer{}
	f.ServerData([]byte("* 1 FETCH (BODY[] {100000}\r\n"))
	if f.Opaque() != 100000 {
		t.Fatalf("opaque %d", f.Opaque())
	}
	f.Skip(99990)
	f.ServerData(bytes.Repeat([]byte("x"), 10))
	if f.Opaque() != 0 || f.AtBoundary() {
		t.Fatal("literal not finished or boundary inside the response")
	}
	f.ServerData([]byte(")\r\n"))
	if !f.AtBoundary() {
		t.Fatal("no boundary after the response")
	}
}

func TestFramerBye(t *testing.T) {
	got := string((&Framer{}).Bye("Server\r\nmoving"))
	if got != "* BYE [UNAVAILABLE] Server  moving\r\n" {
		t.Fatalf("%q", got)
	}
}

// FuzzFramer: chunking never changes where boundaries are, and nothing
// panics.
func FuzzFramer(f *testing.F) {
	f.Add([]byte("* 1 FETCH (BODY[] {5}\r\nhello)\r\na OK\r\n"), 3)
	f.Add([]byte("* OK {99999999999999999999999}\r\n"), 1)
	f.Add([]byte("a COMPRESS DEFLATE\r\na OK go\r\nxx\r\n"), 4)
	f.Fuzz(func(t *testing.T, b []byte, n int) {
		if n <= 0 || n > len(b)+1 {
			n = len(b) + 1
		}
		whole, parts := &Framer{}, &Framer{}
		// The same bytes as client commands first (COMPRESS detection).
		whole.ClientData(b)
		for rest := b; len(rest) > 0; {
			c := min(n, len(rest))
			parts.ClientData(rest[:c])
			rest = rest[c:]
		}
		whole.ServerData(b)
		feedChunks(parts, string(b), n)
		if whole.AtBoundary() != parts.AtBoundary() || whole.Opaque() != parts.Opaque() {
			t.Fatalf("chunks of %d change the framing", n)
		}
	})
}

// After the server accepts COMPRESS, the streams are compressed: no more
// boundaries, and the backend stream is opaque (spliced).
func TestFramerCompress(t *testing.T) {
	f := &Framer{}
	f.ClientData([]byte("a5 COMPRESS DEFLATE\r\n"))
	if k := f.ServerData([]byte("* 3 EXISTS\r\na5 OK DEFLATE active\r\n\x78\x9c\r\n\x01\x02")); k != -1 {
		t.Fatalf("boundary %d reported in a compressed stream", k)
	}
	if f.AtBoundary() || f.Opaque() < 1<<40 {
		t.Fatalf("compressed stream: boundary %v, opaque %d", f.AtBoundary(), f.Opaque())
	}
	if k := f.ServerData([]byte("\r\n")); k != -1 {
		t.Fatal("boundary after compression")
	}

	// Refused: framing goes on.
	f = &Framer{}
	f.ClientData([]byte("a5 compress deflate\r\n"))
	f.ServerData([]byte("a5 NO [COMPRESSIONACTIVE] already\r\n"))
	if !f.AtBoundary() || f.Opaque() != 0 {
		t.Fatal("a refused COMPRESS changed the framing")
	}

	// A COMPRESS inside an APPEND literal is message data, not a command.
	f = &Framer{}
	body := "b2 COMPRESS DEFLATE\r\n"
	f.ClientData([]byte("a1 APPEND INBOX {" + strconv.Itoa(len(body)) + "+}\r\n" + body + "\r\n"))
	f.ServerData([]byte("a1 OK APPEND completed\r\nb2 OK looks alike\r\n"))
	if !f.AtBoundary() {
		t.Fatal("literal data taken for a COMPRESS command")
	}
}

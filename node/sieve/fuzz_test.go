package sieve

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
	"testing"
)

// FuzzCommand feeds arbitrary bytes to the command reader: it must never
// panic, never return more arguments than maxArgs or a literal over the
// limit, and after ErrSyntax it must have consumed whole commands only
// (what follows parses the same as it would on its own).
func FuzzCommand(f *testing.F) {
	for _, s := range []string{
		"NOOP\r\n", "AUTHENTICATE \"PLAIN\" {8+}\r\nAGFiAGM=\r\n", "CAPABILITY\r\nLOGOUT\r\n",
		"NOOP \"a\\\"b\"\r\n", "X {3}\r\nabc {2+}\r\nde\r\n", "NOOP ( {4+}\r\nNOOP\r\n\r\nNOOP\r\n",
		"{99999999999}\r\n", "\"\r\n", "A B C D E F G H I J K\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		w := newWire(bufio.NewReaderSize(bytes.NewReader(in), 16), 64, 32)
		for i := 0; i < 100; i++ {
			cmd, err := w.readCommand()
			if err != nil {
				if errors.Is(err, ErrSyntax) {
					continue
				}
				return
			}
			if len(cmd.Args) > maxArgs {
				t.Fatalf("%d args", len(cmd.Args))
			}
			n := 0
			for _, a := range cmd.Args {
				n += len(a.Value)
			}
			if n > 64+32 {
				t.Fatalf("args of %d bytes", n)
			}
			if cmd.Name != strings.ToUpper(cmd.Name) || !isKeyword(cmd.Name) {
				t.Fatalf("name %q", cmd.Name)
			}
		}
	})
}

// FuzzBackendResponse feeds arbitrary backend bytes to the backend's
// greeting reader: bounded, no panic.
func FuzzBackendResponse(f *testing.F) {
	f.Add([]byte("\"IMPLEMENTATION\" \"Dovecot\"\r\n\"SASL\" \"PLAIN\"\r\nOK \"ready\"\r\n"))
	f.Add([]byte("{5}\r\nabcde\r\nOK\r\n"))
	f.Add([]byte("NO (TRYLATER) {3}\r\nabc\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		b := &backend{r: bufio.NewReader(bytes.NewReader(in)), w: bufio.NewWriter(&bytes.Buffer{})}
		_ = b.capabilities("fuzz")
		if len(b.caps) > backendMaxCaps {
			t.Fatalf("%d capabilities", len(b.caps))
		}
	})
}

// FuzzFramer: any chunking of the same stream reports boundaries at the
// same offsets.
func FuzzFramer(f *testing.F) {
	f.Add([]byte("\"a\"\r\n{3}\r\nOK\r\nOK\r\n"), uint8(1))
	f.Fuzz(func(t *testing.T, in []byte, n uint8) {
		_, whole := feedAll(string(in), 1)
		chunk := int(n)%17 + 1
		fr, got := feedAll(string(in), chunk)
		set := map[int]bool{}
		for _, w := range whole {
			set[w] = true
		}
		for _, g := range got {
			if !set[g] {
				t.Fatalf("chunk %d: boundary %d not found byte by byte (%v)", chunk, g, whole)
			}
		}
		_ = fr.AtBoundary()
	})
}

package netx

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadLine(t *testing.T) {
	in := "ok\r\nbare\n" + strings.Repeat("x", 40) + "\r\nnext\r\npartial"
	br := bufio.NewReaderSize(strings.NewReader(in), 16)
	var scratch []byte
	for _, want := range []string{"ok", "bare"} {
		if l, err := ReadLine(br, 20, &scratch, true); err != nil || string(l) != want {
			t.Fatalf("%q %v, want %q", l, err, want)
		}
	}
	// Too long, discarded through its LF: the next line reads whole.
	if _, err := ReadLine(br, 20, &scratch, true); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("long line: %v", err)
	}
	if l, err := ReadLine(br, 20, &scratch, true); err != nil || string(l) != "next" {
		t.Fatalf("after the long line: %q %v", l, err)
	}
	if _, err := ReadLine(br, 20, &scratch, true); err != io.ErrUnexpectedEOF {
		t.Fatalf("end inside a line: %v", err)
	}
	if _, err := ReadLine(br, 20, &scratch, true); err != io.EOF {
		t.Fatalf("end between lines: %v", err)
	}
	// Without discard the reader stops at once, mid-line.
	br = bufio.NewReaderSize(strings.NewReader(strings.Repeat("y", 40)+"\n"), 16)
	if _, err := ReadLine(br, 20, &scratch, false); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("no discard: %v", err)
	}
	if b, _ := br.ReadByte(); b != 'y' {
		t.Fatalf("the rest of the line was consumed: next byte %q", b)
	}
}

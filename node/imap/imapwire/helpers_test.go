package imapwire

import (
	"bufio"
	"io"
	"strings"
)

// countReader counts bytes handed to the bufio.Reader.
type countReader struct {
	r io.Reader
	n int
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// harness wraps a Reader over a fixed input and records continuation
// requests with the input offset at which they happened.
type harness struct {
	in    string
	cr    *countReader
	br    *bufio.Reader
	r     *Reader
	conts []int // consumed offsets at each cont call
}

func newHarness(in string, lim Limits, bufSize int) *harness {
	h := &harness{in: in}
	h.cr = &countReader{r: strings.NewReader(in)}
	if bufSize <= 0 {
		bufSize = 4096
	}
	h.br = bufio.NewReaderSize(h.cr, bufSize)
	h.r = NewReader(h.br, lim, func() error {
		h.conts = append(h.conts, h.consumed())
		return nil
	})
	return h
}

func (h *harness) consumed() int { return h.cr.n - h.br.Buffered() }

// appendCommand serialises cmd; literals are written non-synchronizing
// if nonSync, else synchronizing (as a client would after "+").
func appendCommand(dst []byte, cmd *Command, nonSync bool) []byte {
	dst = append(dst, cmd.Tag...)
	dst = append(dst, ' ')
	dst = append(dst, cmd.Name...)
	for _, a := range cmd.Args {
		dst = append(dst, ' ')
		dst = appendArg(dst, a, nonSync)
	}
	return append(dst, "\r\n"...)
}

func appendArg(dst []byte, a Arg, nonSync bool) []byte {
	switch a.Kind {
	case Atom, NIL:
		return append(dst, a.Value...)
	case Quoted:
		return appendQuoted(dst, a.Value)
	case Literal:
		dst = AppendLiteralHeader(dst, len(a.Value), nonSync)
		return append(dst, a.Value...)
	case List:
		dst = append(dst, '(')
		for i, e := range a.List {
			if i > 0 {
				dst = append(dst, ' ')
			}
			dst = appendArg(dst, e, nonSync)
		}
		return append(dst, ')')
	}
	panic("bad kind")
}

func countLiterals(args []Arg) int {
	n := 0
	for _, a := range args {
		switch a.Kind {
		case Literal:
			n++
		case List:
			n += countLiterals(a.List)
		}
	}
	return n
}

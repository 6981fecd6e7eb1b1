package netx

import (
	"bufio"
	"errors"
	"io"
)

// ErrLineTooLong: a line longer than the reader's bound.
var ErrLineTooLong = errors.New("line too long")

// ReadLine reads one line from br and returns it without its terminator
// (CRLF, or a bare LF). A line may hold at most max bytes, terminator
// included; it is never buffered beyond that.
//
// For a longer line ReadLine returns ErrLineTooLong: with discard set it
// first skips the rest of the line through its LF (reading at most one
// buffer at a time), so the caller is at a line boundary and can go on;
// without discard it stops at once and the stream is left mid-line.
//
// End of stream before a LF is io.EOF for an empty line, else
// io.ErrUnexpectedEOF; other read errors (deadlines) are returned as they
// are. The line is built in *scratch and is valid until its next use.
func ReadLine(br *bufio.Reader, max int, scratch *[]byte, discard bool) ([]byte, error) {
	buf := (*scratch)[:0]
	for {
		frag, err := br.ReadSlice('\n')
		if len(buf)+len(frag) > max {
			if !discard {
				return nil, ErrLineTooLong
			}
			for err == bufio.ErrBufferFull {
				_, err = br.ReadSlice('\n')
			}
			if err != nil {
				return nil, Unexpected(err)
			}
			return nil, ErrLineTooLong
		}
		buf = append(buf, frag...)
		*scratch = buf
		switch err {
		case nil:
			return TrimEOL(buf), nil
		case bufio.ErrBufferFull:
			continue
		default:
			if len(buf) > 0 {
				return nil, Unexpected(err)
			}
			return nil, err
		}
	}
}

// Unexpected turns io.EOF into io.ErrUnexpectedEOF (the stream ended
// inside something), and returns other errors as they are.
func Unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// TrimEOL removes a final LF and one CR before it.
func TrimEOL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
	}
	return b
}

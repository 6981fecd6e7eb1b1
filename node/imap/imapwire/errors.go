package imapwire

import (
	"errors"
	"strconv"
)

// ErrLineTooLong is matched (errors.Is) by a *LineTooLongError.
var ErrLineTooLong = errors.New("imapwire: line too long")

// LineTooLongError reports that a command exceeded Limits.MaxLine (or a
// response exceeded its maxLine).
//
// Command Reader: the offending line has already been discarded up to and
// including its LF (without buffering it), as has the rest of the command
// if the line ended in a non-synchronizing literal that fits the literal
// budget. The stream is therefore at a command boundary: the caller
// answers "<Tag> BAD [TOOBIG] ..." (or "* BAD [TOOBIG] ..." if Tag is
// empty) and may continue reading. Closing after repeated errors is a
// policy decision for the caller. The error is not sticky.
//
// ResponseReader: nothing is discarded; the error is sticky and the caller
// must close the backend connection.
type LineTooLongError struct {
	Tag string // the command's tag if it could be parsed, else ""
}

func (e *LineTooLongError) Error() string { return ErrLineTooLong.Error() }

// Unwrap returns ErrLineTooLong.
func (e *LineTooLongError) Unwrap() error { return ErrLineTooLong }

// SyntaxError reports a malformed command (or response).
//
// Command Reader: the whole command has been consumed (the rest of the
// line, and, if that line ended in a non-synchronizing literal header, the
// literal and the following lines of the command). The caller answers
// "<Tag> BAD <Msg>" ("* BAD <Msg>" if Tag is empty) and continues. Msg
// never contains CR or LF. The error is not sticky.
//
// ResponseReader: the response has been consumed; the backend is broken
// and the caller should close the connection.
type SyntaxError struct {
	Tag string // the tag, if one was parsed and is valid, else ""
	Msg string
}

func (e *SyntaxError) Error() string {
	if e.Tag != "" {
		return "imapwire: syntax error (tag " + e.Tag + "): " + e.Msg
	}
	return "imapwire: syntax error: " + e.Msg
}

// LiteralTooLargeError reports a literal whose announced size exceeds the
// remaining literal budget (Limits.MaxLiteral for the whole command). Size
// saturates at math.MaxInt64 for absurd digit counts.
//
// Synchronizing literal (NonSync false): the continuation request was NOT
// sent and nothing after the "{n}CRLF" line was consumed; the client is
// waiting for "+" and will abandon the command when it sees the tagged
// BAD. The caller answers "<Tag> BAD [TOOBIG] ..." and continues; the
// error is not sticky.
//
// Non-synchronizing literal (NonSync true): the client sends the data
// without waiting, so the stream cannot be resynchronized. The caller
// answers "<Tag> BAD [TOOBIG] ..." and MUST close the connection (RFC 7888
// §4: LITERAL- limits non-synchronizing literals to 4096 octets; a server
// may answer a larger one with a tagged BAD and close). The error is
// sticky: further reads return it again.
type LiteralTooLargeError struct {
	Tag     string
	Size    int64
	NonSync bool
}

func (e *LiteralTooLargeError) Error() string {
	s := "imapwire: literal too large: " + strconv.FormatInt(e.Size, 10)
	if e.NonSync {
		s += " (non-synchronizing)"
	}
	return s
}

// Fatal reports whether err, returned by Reader.ReadCommand or
// Reader.ReadLine, leaves the stream unusable so that the connection must
// be closed. It is false only for *SyntaxError, *LineTooLongError and a
// synchronizing *LiteralTooLargeError.
func Fatal(err error) bool {
	switch e := err.(type) {
	case nil:
		return false
	case *SyntaxError, *LineTooLongError:
		return false
	case *LiteralTooLargeError:
		return e.NonSync
	}
	return true
}

// ErrorTag returns the tag carried by a *SyntaxError, *LineTooLongError or
// *LiteralTooLargeError, or "" (answer with "*").
func ErrorTag(err error) string {
	var (
		se *SyntaxError
		le *LineTooLongError
		te *LiteralTooLargeError
	)
	switch {
	case errors.As(err, &se):
		return se.Tag
	case errors.As(err, &le):
		return le.Tag
	case errors.As(err, &te):
		return te.Tag
	}
	return ""
}

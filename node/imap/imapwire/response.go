package imapwire

import (
	"bufio"
	"bytes"
	"io"
	"strings"
)

// Response is one server response (RFC 9051 §7), possibly spanning
// several lines joined by literals.
//
// A Response is owned by the caller; the ResponseReader never reuses or
// modifies it. The string fields share one allocation, Raw another.
type Response struct {
	Tag      string // "*" untagged, "+" continuation request, else the command tag
	Status   string // "OK", "NO", "BAD", "BYE" or "PREAUTH"; "" for continuation requests and untagged data
	Code     string // response code name, upper-cased, e.g. "CAPABILITY"; "" if none
	CodeArgs string // raw text inside the brackets after the code name and its SP
	Text     string // text after the response code (for "+": the text or base64 data)
	Raw      []byte // the complete response as received, literals and final line terminator included
	Data     string // untagged data: first word after "* ", upper-cased ("CAPABILITY", "ID", or a number as in "* 3 EXISTS")
	DataArgs string // untagged data: everything after Data and its SP up to the final line terminator, verbatim (literal headers, their data and inner CRLFs included)
}

// ResponseReader reads server responses from a backend. It is not safe for
// concurrent use.
type ResponseReader struct {
	br      *bufio.Reader
	maxLine int
	maxLit  int
	buf     []byte
	err     error
}

// NewResponseReader returns a reader of server responses. maxLine bounds
// the bytes of one response outside literal data (all its lines including
// terminators); maxLiterals bounds the total literal data of one response.
// Values <= 0 select DefaultMaxLine and DefaultMaxLiteral. Hence
// len(Response.Raw) <= maxLine+maxLiterals.
//
// Literals are recognised only in untagged data responses (such as
// "* ID (... {7}\r\nDovecot)"), the only responses whose grammar allows
// them; a "{n}" at the end of status response text is text.
func NewResponseReader(br *bufio.Reader, maxLine int, maxLiterals int) *ResponseReader {
	if maxLine <= 0 {
		maxLine = DefaultMaxLine
	}
	if maxLiterals <= 0 {
		maxLiterals = DefaultMaxLiteral
	}
	return &ResponseReader{br: br, maxLine: maxLine, maxLit: maxLiterals}
}

// Read reads the next response. It blocks only in reads from the
// underlying reader (set deadlines on the connection), and never buffers
// more than the limits.
//
// Errors: io.EOF if the server closed between responses;
// io.ErrUnexpectedEOF inside a response; *LineTooLongError or
// *LiteralTooLargeError (Tag "*") if a limit is exceeded, detected before
// the excess is read; *SyntaxError for a malformed response (which has
// been consumed), including NUL or a bare CR outside literals; other read
// errors as-is. Every error is sticky: the
// backend is unusable and the caller must close the connection.
func (r *ResponseReader) Read() (*Response, error) {
	if r.err != nil {
		return nil, r.err
	}
	resp, err := r.read()
	if err != nil {
		r.err = err
	}
	if cap(r.buf) > 4096 {
		r.buf = nil
	}
	return resp, err
}

func (r *ResponseReader) read() (*Response, error) {
	r.buf = r.buf[:0]
	lineUsed, litUsed := 0, 0
	started, literals := false, false
	for first := true; ; first = false {
		start := len(r.buf)
		for {
			chunk, err := r.br.ReadSlice('\n')
			if len(chunk) > 0 {
				started = true
			}
			if lineUsed+len(chunk) > r.maxLine {
				return nil, &LineTooLongError{}
			}
			lineUsed += len(chunk)
			r.buf = append(r.buf, chunk...)
			if err == nil {
				break
			}
			if err == bufio.ErrBufferFull {
				continue
			}
			if err == io.EOF && started {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		line := trimEOL(r.buf[start:])
		// NUL, and CR other than in the line terminator, never occur
		// outside literals; forwarding a bare CR could let a backend
		// split lines differently for different clients.
		if bytes.ContainsAny(line, "\x00\r") {
			return nil, &SyntaxError{Msg: "NUL or CR in response line"}
		}
		if first {
			literals = isUntaggedData(line)
		}
		if !literals {
			break
		}
		n, ok := responseLiteral(line)
		if !ok {
			break
		}
		if n > int64(r.maxLit-litUsed) {
			return nil, &LiteralTooLargeError{Tag: "*", Size: n}
		}
		off := len(r.buf)
		r.buf = grow(r.buf, int(n))
		if _, err := io.ReadFull(r.br, r.buf[off:]); err != nil {
			return nil, unexpected(err)
		}
		litUsed += int(n)
	}
	resp := &Response{Raw: bytes.Clone(r.buf)}
	if msg := parseResponse(resp, string(trimEOL(r.buf))); msg != "" {
		return nil, &SyntaxError{Msg: msg}
	}
	return resp, nil
}

// isUntaggedData reports whether line starts an untagged response other
// than a status response.
func isUntaggedData(line []byte) bool {
	if len(line) < 2 || line[0] != '*' || line[1] != ' ' {
		return false
	}
	kw := line[2:]
	if i := bytes.IndexByte(kw, ' '); i >= 0 {
		kw = kw[:i]
	}
	return statusWord(string(kw)) == "" // no allocation: string(kw) only compared
}

// responseLiteral recognises a literal header at the end of line, outside
// any quoted string.
func responseLiteral(line []byte) (int64, bool) {
	in := false
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case c == '"':
			in = !in
		case c == '\\' && in:
			i++
		}
	}
	if in {
		return 0, false
	}
	n, _, ok := trailingLiteral(line)
	return n, ok
}

func statusWord(s string) string {
	switch {
	case strings.EqualFold(s, "OK"):
		return "OK"
	case strings.EqualFold(s, "NO"):
		return "NO"
	case strings.EqualFold(s, "BAD"):
		return "BAD"
	case strings.EqualFold(s, "BYE"):
		return "BYE"
	case strings.EqualFold(s, "PREAUTH"):
		return "PREAUTH"
	}
	return ""
}

func isAtom(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isAtomChar(s[i]) {
			return false
		}
	}
	return true
}

// parseResponse fills resp from s, the response without its final line
// terminator, and returns an error message or "".
func parseResponse(resp *Response, s string) string {
	tag, rest, hasSP := strings.Cut(s, " ")
	switch tag {
	case "+":
		resp.Tag = "+"
		return parseRespText(resp, rest)
	case "*":
		resp.Tag = "*"
		if !hasSP {
			return "Missing response data"
		}
		kw, after, _ := strings.Cut(rest, " ")
		if !isAtom(kw) {
			return "Invalid response keyword"
		}
		if st := statusWord(kw); st != "" {
			resp.Status = st
			return parseRespText(resp, after)
		}
		resp.Data = strings.ToUpper(kw)
		resp.DataArgs = after
		return ""
	}
	if !ValidTag(tag) {
		return "Invalid tag"
	}
	resp.Tag = tag
	kw, after, _ := strings.Cut(rest, " ")
	switch st := statusWord(kw); st {
	case "OK", "NO", "BAD":
		resp.Status = st
	default:
		return "Invalid status in tagged response"
	}
	return parseRespText(resp, after)
}

// parseRespText parses resp-text: ["[" resp-text-code "]" SP] text.
func parseRespText(resp *Response, t string) string {
	if strings.HasPrefix(t, "[") {
		end := strings.IndexByte(t, ']')
		if end < 0 {
			return "Unterminated response code"
		}
		name, args, _ := strings.Cut(t[1:end], " ")
		if !isAtom(name) {
			return "Invalid response code"
		}
		resp.Code = strings.ToUpper(name)
		resp.CodeArgs = args
		t = strings.TrimPrefix(t[end+1:], " ")
	}
	resp.Text = t
	return ""
}

// ParseCapabilities splits a capability list (the DataArgs of untagged
// CAPABILITY data, or the CodeArgs of a [CAPABILITY ...] response code)
// into upper-cased capability names.
func ParseCapabilities(s string) []string {
	caps := strings.Fields(s)
	for i, c := range caps {
		caps[i] = strings.ToUpper(c)
	}
	return caps
}

// HasCapability reports whether caps contains name, case-insensitively.
func HasCapability(caps []string, name string) bool {
	for _, c := range caps {
		if strings.EqualFold(c, name) {
			return true
		}
	}
	return false
}

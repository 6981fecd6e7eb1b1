package auth

import (
	"bytes"
	"errors"
)

// Response is what an auth server answered, as nginx reads it: only the
// headers it knows; the status code is ignored.
type Response struct {
	// OK: Auth-Status was "OK" (and no other Auth-Status said otherwise).
	OK bool
	// Wait: Auth-Status was "WAIT": ask again after WaitSecs.
	Wait bool
	// Err is the text of any other Auth-Status: shown to the client.
	Err    string
	HasErr bool
	// ErrCode is Auth-Error-Code: the SMTP reply code (and enhanced status
	// code) to send with Err to a submission client ("535 5.7.8"), as
	// nginx does; "" for its default.
	ErrCode string
	// WaitSecs is Auth-Wait in seconds, -1 when absent or not a number.
	WaitSecs int
	Server   string // Auth-Server
	Port     string // Auth-Port
	User     string // Auth-User: the user name toward the backend, if HasUser
	Pass     string // Auth-Pass: the password toward the backend, if HasPass
	HasUser  bool
	HasPass  bool
	// ErrorSASL is Auth-Error-SASL (the OAUTHBEARER/XOAUTH2 patch of
	// nginx's mail module): with a refusal of a bearer login, the base64
	// SASL error challenge (an RFC 7628 §3.2.2 JSON status) the client is
	// sent before the failure.
	ErrorSASL string

	// For HTTP/1.1 keep-alive only (never set in nginx mode).
	http11        bool
	connClose     bool
	contentLength int64 // -1 if absent or unusable
}

var (
	// errIncomplete: the end of the headers has not been read yet.
	errIncomplete = errors.New("incomplete response")
	// ErrMalformed: not an nginx-acceptable response.
	ErrMalformed = errors.New("invalid header in response")
)

// parseResponse parses the status line (if any) and headers at the start
// of b. It returns the number of bytes they took, errIncomplete when b
// ends before the blank line, or an error wrapping ErrMalformed.
//
// The grammar is nginx's (ngx_mail_auth_http_module), so that a response
// nginx accepts is accepted and one it rejects is rejected:
//   - a first line starting with "HTTP/" is skipped up to its end;
//     anything else is read as headers;
//   - a header name starts with a letter or digit and continues with
//     letters, digits and '-'; a name alone on its line is a header with an
//     empty value;
//   - spaces (not tabs) around a value are dropped;
//   - lines end in LF or CRLF; a CR not followed by LF is an error.
func parseResponse(b []byte) (*Response, int, error) {
	r := &Response{WaitSecs: -1, contentLength: -1}
	p := 0
	if len(b) < 5 && bytes.HasPrefix([]byte("HTTP/"), b) {
		return nil, 0, errIncomplete
	}
	if bytes.HasPrefix(b, []byte("HTTP/")) {
		eol := bytes.IndexByte(b, '\n')
		if eol < 0 {
			if cr := bytes.IndexByte(b, '\r'); cr >= 0 && cr+1 < len(b) {
				return nil, 0, malformed("bad status line")
			}
			return nil, 0, errIncomplete
		}
		if cr := bytes.IndexByte(b[:eol], '\r'); cr >= 0 && cr != eol-1 {
			return nil, 0, malformed("bad status line")
		}
		r.http11 = bytes.HasPrefix(b, []byte("HTTP/1.1 "))
		p = eol + 1
	}
	for {
		if p >= len(b) {
			return nil, 0, errIncomplete
		}
		// End of headers?
		switch b[p] {
		case '\n':
			return r, p + 1, nil
		case '\r':
			if p+1 >= len(b) {
				return nil, 0, errIncomplete
			}
			if b[p+1] != '\n' {
				return nil, 0, malformed("CR without LF")
			}
			return r, p + 2, nil
		}
		name, value, next, err := headerLine(b, p)
		if err != nil {
			return nil, 0, err
		}
		r.set(name, value)
		p = next
	}
}

// headerLine reads one header line at b[p:].
func headerLine(b []byte, p int) (name, value []byte, next int, err error) {
	start := p
	if !alnum(b[p]) {
		return nil, nil, 0, malformed("bad header name")
	}
	for p++; ; p++ {
		if p >= len(b) {
			return nil, nil, 0, errIncomplete
		}
		c := b[p]
		if alnum(c) || c == '-' {
			continue
		}
		if c == ':' {
			name = b[start:p]
			p++
			break
		}
		if c == '\r' || c == '\n' {
			// A name alone on its line: an empty value.
			next, err = lineEnd(b, p)
			return b[start:p], nil, next, err
		}
		return nil, nil, 0, malformed("bad header name")
	}
	for p < len(b) && b[p] == ' ' {
		p++
	}
	vstart := p
	for ; p < len(b) && b[p] != '\r' && b[p] != '\n'; p++ {
	}
	if p >= len(b) {
		return nil, nil, 0, errIncomplete
	}
	value = bytes.TrimRight(b[vstart:p], " ")
	next, err = lineEnd(b, p)
	return name, value, next, err
}

// lineEnd consumes LF or CRLF at b[p].
func lineEnd(b []byte, p int) (int, error) {
	if b[p] == '\n' {
		return p + 1, nil
	}
	if p+1 >= len(b) {
		return 0, errIncomplete
	}
	if b[p+1] != '\n' {
		return 0, malformed("CR without LF")
	}
	return p + 2, nil
}

func alnum(c byte) bool {
	l := c | 0x20
	return (l >= 'a' && l <= 'z') || (c >= '0' && c <= '9')
}

func malformed(why string) error { return &parseError{why} }

type parseError struct{ why string }

func (e *parseError) Error() string { return "invalid header in response: " + e.why }
func (e *parseError) Unwrap() error { return ErrMalformed }

func (r *Response) set(name, value []byte) {
	switch {
	case eqFold(name, "Auth-Status"):
		switch string(value) {
		case "OK":
			r.OK = true
		case "WAIT":
			r.Wait = true
		default:
			r.Err, r.HasErr = string(value), true
		}
	case eqFold(name, "Auth-Server"):
		r.Server = string(value)
	case eqFold(name, "Auth-Error-Code"):
		r.ErrCode = string(value)
	case eqFold(name, "Auth-Port"):
		r.Port = string(value)
	case eqFold(name, "Auth-User"):
		r.User, r.HasUser = string(value), true
	case eqFold(name, "Auth-Pass"):
		r.Pass, r.HasPass = string(value), true
	case eqFold(name, "Auth-Error-SASL"):
		r.ErrorSASL = string(value)
	case eqFold(name, "Auth-Wait"):
		// As nginx: a value that is not a number is ignored.
		if n, ok := atoi(value); ok {
			r.WaitSecs = n
		}
	case eqFold(name, "Content-Length"):
		if n, ok := atoi(value); ok {
			r.contentLength = int64(n)
		} else {
			r.contentLength = -1
		}
	case eqFold(name, "Connection"):
		r.connClose = bytes.EqualFold(value, []byte("close"))
	case eqFold(name, "Transfer-Encoding"):
		r.contentLength = -1 // never reuse a chunked connection
		r.http11 = false
	}
}

func eqFold(b []byte, s string) bool { return bytes.EqualFold(b, []byte(s)) }

// atoi parses a non-negative decimal number (nginx's ngx_atoi: digits
// only), saturating at maxAtoi.
func atoi(b []byte) (int, bool) {
	if len(b) == 0 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		if n < maxAtoi {
			n = min(n*10+int(c-'0'), maxAtoi)
		}
	}
	return n, true
}

const maxAtoi = 1 << 30

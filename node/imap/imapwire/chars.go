package imapwire

import (
	"strconv"
	"strings"
)

// Character classes of RFC 9051 §9.
const (
	clAtom    = 1 << iota // ATOM-CHAR
	clAstring             // ASTRING-CHAR (ATOM-CHAR / resp-specials)
)

var charClass = func() (t [256]uint8) {
	for c := 0x21; c < 0x7f; c++ {
		switch c {
		case '(', ')', '{', '%', '*', '"', '\\':
			// atom-specials (SP and CTL are outside the range)
		case ']':
			t[c] = clAstring
		default:
			t[c] = clAtom | clAstring
		}
	}
	return t
}()

func isAtomChar(c byte) bool    { return charClass[c]&clAtom != 0 }
func isAstringChar(c byte) bool { return charClass[c]&clAstring != 0 }

// ValidTag reports whether tag is a syntactically valid command tag:
// one or more ASTRING-CHAR except "+" (RFC 9051 §9).
func ValidTag(tag string) bool {
	if tag == "" {
		return false
	}
	for i := 0; i < len(tag); i++ {
		if c := tag[i]; c == '+' || !isAstringChar(c) {
			return false
		}
	}
	return true
}

func validTagBytes(tag []byte) bool {
	if len(tag) == 0 {
		return false
	}
	for _, c := range tag {
		if c == '+' || !isAstringChar(c) {
			return false
		}
	}
	return true
}

// quotable reports whether s can be sent as a quoted string: it must not
// contain CR, LF or NUL. 8-bit bytes are allowed (RFC 9051 UTF-8 quoted
// strings; IMAP4rev1 servers without UTF-8 support may reject them, so
// callers talking to such servers should prefer a literal for non-ASCII).
func quotable(s string) bool {
	return !strings.ContainsAny(s, "\r\n\x00")
}

// Quote returns s as an IMAP quoted string ("..." with \ and " escaped).
// It returns false if s contains CR, LF or NUL, which cannot appear in a
// quoted string; the caller must then use a literal (or, for NUL, cannot
// send s as a string at all). Non-ASCII bytes are passed through (RFC 9051
// §4.3 allows UTF-8 in quoted strings).
func Quote(s string) (string, bool) {
	if !quotable(s) {
		return "", false
	}
	return string(appendQuoted(make([]byte, 0, len(s)+2), s)), true
}

// AppendQuote appends s as an IMAP quoted string to dst, as Quote does,
// without allocating when dst has room; it returns dst unchanged and false
// if s cannot be quoted.
func AppendQuote(dst []byte, s string) ([]byte, bool) {
	if !quotable(s) {
		return dst, false
	}
	return appendQuoted(dst, s), true
}

func appendQuoted(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '"' || c == '\\' {
			dst = append(dst, '\\')
		}
		dst = append(dst, s[i])
	}
	return append(dst, '"')
}

// AppendLiteralHeader appends a literal header for n octets: "{n}\r\n", or
// "{n+}\r\n" if nonSync is true (RFC 7888; only if the peer advertised
// LITERAL+, or LITERAL- and n <= 4096). After a synchronizing header the
// sender must wait for a "+" continuation request before sending the data.
func AppendLiteralHeader(dst []byte, n int, nonSync bool) []byte {
	dst = append(dst, '{')
	dst = strconv.AppendInt(dst, int64(n), 10)
	if nonSync {
		dst = append(dst, '+')
	}
	return append(dst, "}\r\n"...)
}

// AppendAstring appends s in a form usable as an astring argument (RFC
// 9051 §9): as an atom if s is a non-empty run of ASTRING-CHAR other than
// NIL, else as a quoted string if possible, else, if literalPlus is true,
// as a non-synchronizing literal "{n+}\r\n" followed by s.
//
// It returns dst unchanged and false if s needs a synchronizing literal
// (literalPlus is false and s contains CR or LF): the caller must then
// write AppendLiteralHeader(dst, len(s), false), wait for the server's
// continuation request and send s. It also returns false if s contains a
// NUL byte, which no astring can carry.
func AppendAstring(dst []byte, s string, literalPlus bool) ([]byte, bool) {
	if strings.IndexByte(s, 0) >= 0 {
		return dst, false
	}
	if isAtomString(s) && !strings.EqualFold(s, "NIL") {
		return append(dst, s...), true
	}
	if quotable(s) {
		return appendQuoted(dst, s), true
	}
	if !literalPlus {
		return dst, false
	}
	dst = AppendLiteralHeader(dst, len(s), true)
	return append(dst, s...), true
}

func isAtomString(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isAstringChar(s[i]) {
			return false
		}
	}
	return true
}

package imap

import (
	"github.com/portico-mail/portico/node/imap/imapwire"
)

// idParam is one field/value pair of an ID command (RFC 2971).
type idParam struct {
	key, value string
	nilValue   bool
}

// RFC 2971 §3.3 limits.
const (
	maxIDPairs    = 30
	maxIDKeyLen   = 30
	maxIDValueLen = 1024
)

// proxyIDPairs is how many fields the proxy itself sends to the backend
// (writeID); the client's fields fill the rest of RFC 2971's 30.
const proxyIDPairs = 5

// maxClientIDPairs is how many of the client's fields are forwarded.
const maxClientIDPairs = maxIDPairs - proxyIDPairs

// idCommand answers ID locally and remembers the client's fields, which are
// forwarded to the backend at login (see clientIDParams).
func (s *conn) idCommand(cmd *imapwire.Command) error {
	params, msg := clientIDParams(cmd)
	if msg != "" {
		return bad(cmd.Tag, msg)
	}
	s.id = params
	s.writef("* ID (\"name\" \"Portico\")\r\n%s OK ID completed.\r\n", cmd.Tag)
	return nil
}

// clientIDParams checks an ID command's argument (RFC 2971 §3.3: NIL or a
// list of at most 30 string pairs) and returns the pairs to forward, or the
// text of a BAD reply. A pair is kept only if it can be forwarded safely
// (forwardableIDPair); any other pair is dropped whole, never half, so that
// the list the backend sees cannot shift and turn the client's values into
// keys. At most maxClientIDPairs pairs are kept.
func clientIDParams(cmd *imapwire.Command) ([]idParam, string) {
	if len(cmd.Args) != 1 {
		return nil, "ID takes one argument: a parenthesized list or NIL."
	}
	a := cmd.Args[0]
	switch a.Kind {
	case imapwire.NIL:
		return nil, ""
	case imapwire.List:
	default:
		return nil, "ID takes a parenthesized list or NIL."
	}
	if len(a.List)%2 != 0 || len(a.List)/2 > maxIDPairs {
		return nil, "Invalid ID parameter list."
	}
	var params []idParam
	for i := 0; i < len(a.List); i += 2 {
		k, v := a.List[i], a.List[i+1]
		if !isIDString(k) || len(k.Value) > maxIDKeyLen || (!isIDString(v) && v.Kind != imapwire.NIL) || len(v.Value) > maxIDValueLen {
			return nil, "Invalid ID parameter list."
		}
		p := idParam{key: k.Value, value: v.Value, nilValue: v.Kind == imapwire.NIL}
		if len(params) < maxClientIDPairs && forwardableIDPair(p) {
			params = append(params, p)
		}
	}
	return params, ""
}

func isIDString(a imapwire.Arg) bool { return a.Kind == imapwire.Quoted || a.Kind == imapwire.Literal }

// forwardableIDPair reports whether a client's ID pair may go to the
// backend: its key is not reserved, and key and value are non-empty
// printable ASCII within RFC 2971's lengths, so that both travel as quoted
// strings any IMAP4rev1 server parses (no CR, LF, NUL or other control
// byte, no 8-bit byte). Anything else could make the backend refuse or
// misread the proxy's ID, whose client address it must not lose.
func forwardableIDPair(p idParam) bool {
	if reservedIDKey(p.key) || !printableASCII(p.key, maxIDKeyLen) {
		return false
	}
	return p.nilValue || printableASCII(p.value, maxIDValueLen)
}

func printableASCII(s string, maxLen int) bool {
	if s == "" || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// reservedIDKey reports fields only a trusted proxy may send: every key
// starting with "x-" (case-insensitively). That covers what Dovecot acts on
// from a proxy in its login_trusted_networks (x-originating-*,
// x-connected-*, x-session-*, x-forward-*, x-proxy-*, x-client-*): a client
// setting them could choose the address it is logged and access-checked
// (allow_nets) with.
func reservedIDKey(k string) bool {
	return len(k) >= 2 && (k[0] == 'x' || k[0] == 'X') && k[1] == '-'
}

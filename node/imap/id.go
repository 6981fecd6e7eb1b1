package imap

import (
	"strings"

	"github.com/portico-mail/portico/node/imap/imapwire"
	"github.com/portico-mail/portico/node/session"
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

// idCommand answers ID locally and remembers the client's fields, which are
// forwarded to the backend at login (minus any the client must not set).
func (s *conn) idCommand(cmd *imapwire.Command) (*session.Handoff, bool, error) {
	if len(cmd.Args) != 1 {
		return s.bad(cmd.Tag, "ID takes one argument: a parenthesized list or NIL.")
	}
	a := cmd.Args[0]
	var params []idParam
	switch a.Kind {
	case imapwire.NIL:
	case imapwire.List:
		if len(a.List)%2 != 0 || len(a.List)/2 > maxIDPairs {
			return s.bad(cmd.Tag, "Invalid ID parameter list.")
		}
		for i := 0; i < len(a.List); i += 2 {
			k, v := a.List[i], a.List[i+1]
			if !isIDString(k) || len(k.Value) > maxIDKeyLen || (!isIDString(v) && v.Kind != imapwire.NIL) || len(v.Value) > maxIDValueLen {
				return s.bad(cmd.Tag, "Invalid ID parameter list.")
			}
			if forbiddenIDKey(k.Value) {
				continue
			}
			if v.Kind == imapwire.NIL {
				params = append(params, idParam{key: k.Value, nilValue: true})
				continue
			}
			if _, ok := imapwire.Quote(v.Value); !ok {
				continue // cannot be forwarded as a quoted string; drop it
			}
			params = append(params, idParam{key: k.Value, value: v.Value})
		}
	default:
		return s.bad(cmd.Tag, "ID takes a parenthesized list or NIL.")
	}
	s.id = params
	s.writef("* ID (\"name\" \"Portico\")\r\n%s OK ID completed.\r\n", cmd.Tag)
	return nil, false, nil
}

func isIDString(a imapwire.Arg) bool { return a.Kind == imapwire.Quoted || a.Kind == imapwire.Literal }

// forbiddenIDKey reports fields only a trusted proxy may send (Dovecot's
// x-originating-ip and friends): a client setting them could spoof its
// address in the backend's logs and access checks.
func forbiddenIDKey(k string) bool {
	k = strings.ToLower(k)
	return strings.HasPrefix(k, "x-")
}

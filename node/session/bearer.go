package session

import (
	"bytes"
	"errors"
	"strings"
	"unicode/utf8"
)

// OAuth 2.0 bearer-token SASL mechanisms: OAUTHBEARER (RFC 7628) and
// Google's XOAUTH2, which predates it and which most clients still speak.
// Both carry the user the token is for and the token itself in one client
// message; the proxy routes by that user and replays the message to the
// backend, which validates the token (Dovecot's oauth2 passdb). A refusal
// is an error challenge (a JSON status, RFC 7628 §3.2.2) that the client
// answers with a dummy response before the server fails the exchange
// (§3.2.3).
const (
	MechOAuthBearer = "OAUTHBEARER"
	MechXOAuth2     = "XOAUTH2"
)

// BearerMechanisms are the bearer mechanisms a listener may enable
// (Listener.BearerMechanisms), in the order they are advertised.
var BearerMechanisms = []string{MechOAuthBearer, MechXOAuth2}

// IsBearerMechanism reports whether mech (upper-case) is a bearer
// mechanism.
func IsBearerMechanism(mech string) bool { return mech == MechOAuthBearer || mech == MechXOAuth2 }

// ErrBearerNoUser: a bearer message without a user (an OAUTHBEARER GS2
// header without "a=", which RFC 7628 allows: the server would take the
// user from the token). The proxy cannot route such a login.
var ErrBearerNoUser = errors.New("no user in the bearer message")

// Bounds on a bearer message's parts; the whole message is also bounded
// by the listener's line and literal limits.
const (
	maxBearerUser  = 512
	maxBearerPairs = 16
)

// Bearer is a parsed OAUTHBEARER or XOAUTH2 client message. Token is a
// secret: never log it, nor Message.
type Bearer struct {
	Mechanism string // MechOAuthBearer or MechXOAuth2
	User      string // OAUTHBEARER "a=" (unescaped), XOAUTH2 "user="
	Token     string // the bearer token (after "Bearer ")
	// Message is the client's message as it sent it (base64-decoded): the
	// backend gets exactly these bytes.
	Message []byte
}

// ParseBearer parses a client message of mech (MechOAuthBearer or
// MechXOAuth2).
func ParseBearer(mech string, msg []byte) (*Bearer, error) {
	switch mech {
	case MechOAuthBearer:
		return ParseOAuthBearer(msg)
	case MechXOAuth2:
		return ParseXOAuth2(msg)
	}
	return nil, ErrSASLMalformed
}

// ParseOAuthBearer parses an OAUTHBEARER initial client response (RFC 7628
// §3.1):
//
//	client-resp = gs2-header kvsep *kvpair kvsep
//	gs2-header  = gs2-cb-flag "," [ "a=" saslname ] ","   (RFC 5801)
//	kvpair      = key "=" value kvsep    key = 1*ALPHA    kvsep = %x01
//	auth value  = "Bearer" 1*SP b64token
//
// Channel binding ("p=") is refused: OAUTHBEARER has none. The user is
// the GS2 authorization identity, "=2C" and "=3D" unescaped; it must be
// there (ErrBearerNoUser). Keys other than auth (host, port, ...) are kept
// in the message and not interpreted.
func ParseOAuthBearer(msg []byte) (*Bearer, error) {
	rest := msg
	// gs2-cb-flag: "n" (client does not support channel binding) or "y"
	// (supports it, server did not offer it).
	if len(rest) < 2 || (rest[0] != 'n' && rest[0] != 'y') || rest[1] != ',' {
		return nil, ErrSASLMalformed
	}
	rest = rest[2:]
	i := bytes.IndexByte(rest, ',')
	if i < 0 {
		return nil, ErrSASLMalformed
	}
	authz := rest[:i]
	rest = rest[i+1:]
	var user string
	if len(authz) > 0 {
		if !bytes.HasPrefix(authz, []byte("a=")) {
			return nil, ErrSASLMalformed
		}
		u, ok := unescapeSASLName(authz[2:])
		if !ok {
			return nil, ErrSASLMalformed
		}
		user = u
	}
	if len(rest) == 0 || rest[0] != 0x01 {
		return nil, ErrSASLMalformed
	}
	token, err := parseKVPairs(rest[1:])
	if err != nil {
		return nil, err
	}
	if user == "" {
		return nil, ErrBearerNoUser
	}
	return &Bearer{Mechanism: MechOAuthBearer, User: user, Token: token, Message: msg}, nil
}

// ParseXOAuth2 parses an XOAUTH2 initial client response (Google's
// definition):
//
//	"user=" user %x01 "auth=Bearer " token %x01 %x01
//
// read like OAUTHBEARER's key/value pairs, in any order, with user and
// auth required; a message whose final %x01 is missing one of its two is
// taken too (some clients send one).
func ParseXOAuth2(msg []byte) (*Bearer, error) {
	var user, token string
	haveUser, haveAuth := false, false
	rest := msg
	for n := 0; len(rest) > 0; n++ {
		if rest[0] == 0x01 {
			// The terminating empty pair: nothing may follow it.
			if len(rest) != 1 {
				return nil, ErrSASLMalformed
			}
			break
		}
		if n >= maxBearerPairs {
			return nil, ErrSASLMalformed
		}
		i := bytes.IndexByte(rest, 0x01)
		if i < 0 {
			return nil, ErrSASLMalformed
		}
		key, value, ok := bytes.Cut(rest[:i], []byte("="))
		rest = rest[i+1:]
		if !ok || !validKey(key) || !validValue(value) {
			return nil, ErrSASLMalformed
		}
		switch string(key) {
		case "user":
			if haveUser {
				return nil, ErrSASLMalformed
			}
			haveUser = true
			user = string(value)
		case "auth":
			if haveAuth {
				return nil, ErrSASLMalformed
			}
			haveAuth = true
			t, ok := bearerToken(value)
			if !ok {
				return nil, ErrSASLMalformed
			}
			token = t
		}
	}
	if !haveAuth || len(msg) == 0 || msg[len(msg)-1] != 0x01 {
		return nil, ErrSASLMalformed
	}
	if user == "" {
		return nil, ErrBearerNoUser
	}
	if !validUser(user) {
		return nil, ErrSASLMalformed
	}
	return &Bearer{Mechanism: MechXOAuth2, User: user, Token: token, Message: msg}, nil
}

// parseKVPairs reads "*kvpair kvsep" (RFC 7628 §3.1) and returns the
// bearer token of the auth pair, which must be there once.
func parseKVPairs(rest []byte) (string, error) {
	token := ""
	haveAuth := false
	for n := 0; ; n++ {
		if len(rest) == 0 {
			return "", ErrSASLMalformed
		}
		if rest[0] == 0x01 {
			if len(rest) != 1 {
				return "", ErrSASLMalformed
			}
			break
		}
		if n >= maxBearerPairs {
			return "", ErrSASLMalformed
		}
		i := bytes.IndexByte(rest, 0x01)
		if i < 0 {
			return "", ErrSASLMalformed
		}
		key, value, ok := bytes.Cut(rest[:i], []byte("="))
		rest = rest[i+1:]
		if !ok || !validKey(key) || !validValue(value) {
			return "", ErrSASLMalformed
		}
		if string(key) == "auth" {
			if haveAuth {
				return "", ErrSASLMalformed
			}
			t, ok := bearerToken(value)
			if !ok {
				return "", ErrSASLMalformed
			}
			token, haveAuth = t, true
		}
	}
	if !haveAuth {
		return "", ErrSASLMalformed
	}
	return token, nil
}

// bearerToken returns the token of an auth value "Bearer" 1*SP b64token
// (RFC 6750 §2.1; the scheme is case-insensitive).
func bearerToken(v []byte) (string, bool) {
	const scheme = "bearer"
	if len(v) <= len(scheme) || !strings.EqualFold(string(v[:len(scheme)]), scheme) || v[len(scheme)] != ' ' {
		return "", false
	}
	t := bytes.TrimLeft(v[len(scheme):], " ")
	if !validB64Token(t) {
		return "", false
	}
	return string(t), true
}

// validB64Token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
func validB64Token(t []byte) bool {
	i := 0
	for ; i < len(t); i++ {
		c := t[i]
		if !(alpha(c) || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/') {
			break
		}
	}
	if i == 0 {
		return false
	}
	for ; i < len(t); i++ {
		if t[i] != '=' {
			return false
		}
	}
	return true
}

func alpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// validKey: key = 1*(ALPHA)
func validKey(k []byte) bool {
	if len(k) == 0 {
		return false
	}
	for _, c := range k {
		if !alpha(c) {
			return false
		}
	}
	return true
}

// validValue: value = *(VCHAR / SP / HTAB / CR / LF)
func validValue(v []byte) bool {
	for _, c := range v {
		if !(c >= 0x21 && c <= 0x7e || c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			return false
		}
	}
	return true
}

// unescapeSASLName decodes a GS2 saslname (RFC 5801 §4): "=2C" is ",",
// "=3D" is "=", any other "=" is an error; the result must be a valid
// user (validUser).
func unescapeSASLName(b []byte) (string, bool) {
	var out strings.Builder
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch c {
		case '=':
			if i+2 >= len(b) {
				return "", false
			}
			switch string(b[i+1 : i+3]) {
			case "2C", "2c":
				out.WriteByte(',')
			case "3D", "3d":
				out.WriteByte('=')
			default:
				return "", false
			}
			i += 2
		case ',':
			return "", false
		default:
			out.WriteByte(c)
		}
	}
	u := out.String()
	if !validUser(u) {
		return "", false
	}
	return u, true
}

// ValidBearerUser reports whether u can be the user of a bearer message
// (see validUser): Bearer.WithUser needs one.
func ValidBearerUser(u string) bool { return validUser(u) }

// validUser bounds a user named by a bearer message: non-empty, valid
// UTF-8, no control characters (it becomes a routing key and appears in
// logs), at most maxBearerUser bytes.
func validUser(u string) bool {
	if u == "" || len(u) > maxBearerUser || !utf8.ValidString(u) {
		return false
	}
	for _, r := range u {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}

// WithUser returns the message with its user replaced by user (a routing
// rule or an auth_http server renaming the user): the GS2 authorization
// identity of OAUTHBEARER, escaped, or the user pair of XOAUTH2; the rest
// is kept byte for byte. It returns b itself when the user is unchanged.
// user must be valid (ValidBearerUser): a control character could add
// fields to the message.
func (b *Bearer) WithUser(user string) *Bearer {
	if user == b.User {
		return b
	}
	nb := *b
	nb.User = user
	switch b.Mechanism {
	case MechOAuthBearer:
		// "n," or "y," then the authzid up to the next ",".
		rest := b.Message[2:]
		i := bytes.IndexByte(rest, ',')
		var m []byte
		m = append(m, b.Message[:2]...)
		m = append(m, "a="...)
		m = append(m, escapeSASLName(user)...)
		m = append(m, rest[i:]...)
		nb.Message = m
	case MechXOAuth2:
		var m []byte
		rest := b.Message
		for len(rest) > 0 && rest[0] != 0x01 {
			i := bytes.IndexByte(rest, 0x01)
			pair := rest[:i+1]
			rest = rest[i+1:]
			if bytes.HasPrefix(pair, []byte("user=")) {
				m = append(m, "user="...)
				m = append(m, user...)
				m = append(m, 0x01)
				continue
			}
			m = append(m, pair...)
		}
		nb.Message = append(m, rest...)
	}
	return &nb
}

func escapeSASLName(s string) string {
	return strings.NewReplacer("=", "=3D", ",", "=2C").Replace(s)
}

// bearerSASL is the server side of OAUTHBEARER and XOAUTH2: one client
// message, after an empty challenge when there was no initial response.
type bearerSASL struct {
	mech  string
	creds Credentials
}

func (m *bearerSASL) Next(resp []byte, present bool) ([]byte, bool, error) {
	if !present {
		return nil, false, nil // empty challenge: "+ "
	}
	b, err := ParseBearer(m.mech, resp)
	if err != nil {
		return nil, false, err
	}
	m.creds = Credentials{Mechanism: m.mech, User: b.User, Password: b.Token, Bearer: b}
	return nil, true, nil
}

func (m *bearerSASL) Creds() Credentials { return m.creds }

// Dummy client responses that complete a failed bearer exchange (RFC 7628
// §3.2.3: %x01 for OAUTHBEARER; XOAUTH2 clients send an empty one).
func BearerDummyResponse(mech string) []byte {
	if mech == MechOAuthBearer {
		return []byte{0x01}
	}
	return []byte{}
}

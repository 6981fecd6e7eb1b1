package session

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"

	"github.com/emersion/go-sasl"
)

// SASL mechanisms accepted from clients on every listener (RFC 4616 PLAIN,
// and the widely-deployed LOGIN). Both carry a password in the clear, so
// they are subject to the listener's plaintext-authentication policy, as
// are the bearer mechanisms a listener may add (Listener.Mechanisms,
// bearer.go), whose token is as good as a password.
var Mechanisms = []string{"PLAIN", "LOGIN"}

// ErrSASLCancelled: the client answered a challenge with "*".
var ErrSASLCancelled = errors.New("authentication cancelled")

// ErrSASLBadBase64: a response was not valid base64.
var ErrSASLBadBase64 = errors.New("invalid base64 data")

// ErrSASLMalformed: the decoded response does not fit the mechanism.
var ErrSASLMalformed = errors.New("malformed authentication data")

// SASL is a server-side mechanism exchange.
type SASL interface {
	// Next consumes the client's response (nil with present=false before
	// the first, when there was no initial response) and returns the next
	// challenge, or done=true with the credentials available from Creds.
	Next(resp []byte, present bool) (challenge []byte, done bool, err error)
	Creds() Credentials
}

// NewSASL returns the exchange for PLAIN or LOGIN (mech case-insensitive),
// or nil for any other mechanism. Listener.NewSASL also knows the bearer
// mechanisms the listener enables.
func NewSASL(mech string) SASL {
	switch strings.ToUpper(mech) {
	case "PLAIN":
		p := &plainSASL{}
		p.srv = sasl.NewPlainServer(func(identity, username, password string) error {
			if username == "" {
				return ErrSASLMalformed
			}
			p.creds = Credentials{Mechanism: "PLAIN", AuthzID: identity, User: username, Password: password}
			return nil
		})
		return p
	case "LOGIN":
		return &loginSASL{}
	}
	return nil
}

type plainSASL struct {
	srv   sasl.Server
	creds Credentials
}

func (p *plainSASL) Next(resp []byte, present bool) ([]byte, bool, error) {
	if !present {
		return nil, false, nil // empty challenge: "+ "
	}
	if bytes.IndexByte(resp, 0) < 0 {
		return nil, false, ErrSASLMalformed
	}
	if _, _, err := p.srv.Next(resp); err != nil {
		return nil, false, ErrSASLMalformed
	}
	if p.creds.User == "" {
		return nil, false, ErrSASLMalformed
	}
	if p.creds.AuthzID == p.creds.User {
		p.creds.AuthzID = ""
	}
	return nil, true, nil
}

func (p *plainSASL) Creds() Credentials { return p.creds }

// loginSASL is the LOGIN mechanism (draft-murchison-sasl-login): the server
// asks "Username:" then "Password:". An initial response is the user name.
type loginSASL struct {
	step  int
	creds Credentials
}

func (l *loginSASL) Next(resp []byte, present bool) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step = 1
		if !present {
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		if len(resp) == 0 || bytes.IndexByte(resp, 0) >= 0 {
			return nil, false, ErrSASLMalformed
		}
		l.creds = Credentials{Mechanism: "LOGIN-SASL", User: string(resp)}
		l.step = 2
		return []byte("Password:"), false, nil
	default:
		if bytes.IndexByte(resp, 0) >= 0 {
			return nil, false, ErrSASLMalformed
		}
		l.creds.Password = string(resp)
		return nil, true, nil
	}
}

func (l *loginSASL) Creds() Credentials { return l.creds }

// DecodeResponse decodes a client's base64 SASL response line. "*" cancels;
// "=" is an empty response (RFC 4959, RFC 5034).
func DecodeResponse(line []byte) ([]byte, error) {
	line = bytes.TrimRight(line, " ")
	if len(line) == 1 && line[0] == '*' {
		return nil, ErrSASLCancelled
	}
	if len(line) == 1 && line[0] == '=' {
		return []byte{}, nil
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(line)))
	n, err := base64.StdEncoding.Decode(out, line)
	if err != nil {
		return nil, ErrSASLBadBase64
	}
	return out[:n], nil
}

// EncodeChallenge base64-encodes a server challenge.
func EncodeChallenge(ch []byte) string { return base64.StdEncoding.EncodeToString(ch) }

// PlainResponse encodes credentials as a SASL PLAIN initial response (for
// logging in at a backend), base64-encoded.
func PlainResponse(c Credentials) string {
	_, ir, _ := sasl.NewPlainClient(c.AuthzID, c.User, c.Password).Start()
	return base64.StdEncoding.EncodeToString(ir)
}

package session

import (
	"bytes"
	"errors"
	"testing"
	"unicode/utf8"
)

// FuzzParseBearer: the bearer parsers never panic; what they accept has a
// user fit for a routing key and a log line, a token of the b64token
// alphabet, the message unchanged; and renaming the user keeps the
// message parseable with the new user and the same token.
func FuzzParseBearer(f *testing.F) {
	for _, s := range []string{
		"n,a=alice,\x01auth=Bearer tok\x01\x01",
		"n,a=te=3Dst=2C@example.com,\x01host=h\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==\x01\x01",
		"y,,\x01auth=Bearer t\x01\x01",
		"p=tls-unique,a=x,\x01auth=Bearer t\x01\x01",
		"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01",
		"auth=Bearer t\x01user=bob\x01",
		"\x01",
		"",
	} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, msg string, oauthbearer bool) {
		mech := MechXOAuth2
		if oauthbearer {
			mech = MechOAuthBearer
		}
		in := []byte(msg)
		b, err := ParseBearer(mech, in)
		if err != nil {
			if !errors.Is(err, ErrSASLMalformed) && !errors.Is(err, ErrBearerNoUser) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if b.Mechanism != mech || !bytes.Equal(b.Message, in) {
			t.Fatalf("got %+v", b)
		}
		if b.User == "" || len(b.User) > maxBearerUser || !utf8.ValidString(b.User) {
			t.Fatalf("user %q", b.User)
		}
		for _, r := range b.User {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("control character in user %q", b.User)
			}
		}
		if !validB64Token([]byte(b.Token)) {
			t.Fatalf("token %q", b.Token)
		}
		for _, u := range []string{"x", "a,b=c", b.User + "2"} {
			r := b.WithUser(u)
			p, err := ParseBearer(mech, r.Message)
			if err != nil || p.User != u || p.Token != b.Token {
				t.Fatalf("renamed to %q: %q parses as %+v, %v", u, r.Message, p, err)
			}
		}
	})
}

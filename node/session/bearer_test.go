package session

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/portico-mail/portico/routing"
)

func TestParseOAuthBearer(t *testing.T) {
	cases := []struct {
		msg   string
		user  string
		token string
		err   error
	}{
		// RFC 7628 §4.1's example, a user added.
		{"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==\x01\x01",
			"user@example.com", "vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==", nil},
		{"n,a=alice,\x01auth=Bearer tok\x01\x01", "alice", "tok", nil},
		{"y,a=alice,\x01auth=bearer  tok.-_~+/=\x01\x01", "alice", "tok.-_~+/=", nil},
		// GS2 escapes (RFC 5801): =2C is ",", =3D is "=".
		{"n,a=te=3Dst=2C@example.com,\x01auth=Bearer t\x01\x01", "te=st,@example.com", "t", nil},
		{"n,a=te=3dst,\x01auth=Bearer t\x01\x01", "te=st", "t", nil},
		// No user: RFC 7628 allows it, the proxy cannot route it.
		{"n,,\x01auth=Bearer tok\x01\x01", "", "", ErrBearerNoUser},
		// Malformed.
		{"", "", "", ErrSASLMalformed},
		{"\x01", "", "", ErrSASLMalformed},                                           // the dummy response
		{"p=tls-unique,a=alice,\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed}, // channel binding
		{"n,a=alice\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed},             // GS2 header not closed
		{"n,b=alice,\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed},
		{"n,a=al=2Xice,\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed}, // bad escape
		{"n,a=alice=,\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed},
		{"n,a=alice=2,\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed},
		{"n,a=,\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed},
		{"n,a=ali\x00ce,\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed}, // control characters
		{"n,a=ali\nce,\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed},
		{"n,a=ali\x7fce,\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed},
		{"n,a=\xff,\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed}, // not UTF-8
		{"n,a=alice,\x01auth=Bearer t\x01", "", "", ErrSASLMalformed},    // no final kvsep
		{"n,a=alice,\x01auth=Bearer t", "", "", ErrSASLMalformed},
		{"n,a=alice,\x01\x01", "", "", ErrSASLMalformed},                                                       // no auth
		{"n,a=alice,\x01auth=Basic dXNlcg==\x01\x01", "", "", ErrSASLMalformed},                                // not Bearer
		{"n,a=alice,\x01auth=Bearer\x01\x01", "", "", ErrSASLMalformed},                                        // no token
		{"n,a=alice,\x01auth=Bearer a b\x01\x01", "", "", ErrSASLMalformed},                                    // not a b64token
		{"n,a=alice,\x01auth=Bearer t=x\x01\x01", "", "", ErrSASLMalformed},                                    // "=" only at the end
		{"n,a=alice,\x01auth=Bearer t\x01auth=Bearer u\x01\x01", "", "", ErrSASLMalformed},                     // two auth
		{"n,a=alice,\x01auth=Bearer t\x01\x01trailing", "", "", ErrSASLMalformed},                              // after the end
		{"n,a=alice,\x01h0st=x\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed},                            // key not ALPHA
		{"n,a=alice,\x01host\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed},                              // no "="
		{"n,a=alice,\x01host=a\x00b\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed},                       // value with NUL
		{"n,a=alice,\x01" + strings.Repeat("k=v\x01", 20) + "auth=Bearer t\x01\x01", "", "", ErrSASLMalformed}, // too many pairs
		{"n,a=" + strings.Repeat("u", maxBearerUser+1) + ",\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed},
	}
	for _, tc := range cases {
		b, err := ParseOAuthBearer([]byte(tc.msg))
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("%q: err %v, want %v", tc.msg, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.msg, err)
			continue
		}
		if b.User != tc.user || b.Token != tc.token || b.Mechanism != MechOAuthBearer || string(b.Message) != tc.msg {
			t.Errorf("%q: got %+v", tc.msg, b)
		}
	}
}

func TestParseXOAuth2(t *testing.T) {
	cases := []struct {
		msg   string
		user  string
		token string
		err   error
	}{
		// Google's example.
		{"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01",
			"someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg", nil},
		{"auth=Bearer t\x01user=bob\x01\x01", "bob", "t", nil},
		{"user=bob\x01auth=Bearer t\x01", "bob", "t", nil}, // one final ^A
		{"user=a,b=c\x01auth=Bearer t\x01\x01", "a,b=c", "t", nil},
		{"auth=Bearer t\x01\x01", "", "", ErrBearerNoUser},
		{"user=\x01auth=Bearer t\x01\x01", "", "", ErrBearerNoUser},
		{"", "", "", ErrSASLMalformed},
		{"\x01", "", "", ErrSASLMalformed},
		{"user=bob\x01auth=Bearer t", "", "", ErrSASLMalformed},
		{"user=bob\x01\x01", "", "", ErrSASLMalformed},
		{"user=bob\x01auth=Bearer t\x01\x01x", "", "", ErrSASLMalformed},
		{"user=bob\x01user=eve\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed},
		{"user=b\tob\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed},
		{"user=bob\x01auth=Bearer\x01\x01", "", "", ErrSASLMalformed},
		{"user=bob\x01auth=MAC t\x01\x01", "", "", ErrSASLMalformed},
		{"user=bob\x01auth=Bearer t\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed},
		{"user=bob\x00\x01auth=Bearer t\x01\x01", "", "", ErrSASLMalformed},
	}
	for _, tc := range cases {
		b, err := ParseXOAuth2([]byte(tc.msg))
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("%q: err %v, want %v", tc.msg, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.msg, err)
			continue
		}
		if b.User != tc.user || b.Token != tc.token || b.Mechanism != MechXOAuth2 || string(b.Message) != tc.msg {
			t.Errorf("%q: got %+v", tc.msg, b)
		}
	}
}

func TestBearerWithUser(t *testing.T) {
	ob, err := ParseOAuthBearer([]byte("n,a=alice,\x01host=h\x01auth=Bearer tok\x01\x01"))
	if err != nil {
		t.Fatal(err)
	}
	if ob.WithUser("alice") != ob {
		t.Error("unchanged user: new message")
	}
	r := ob.WithUser("a,b=c@example.com")
	if want := "n,a=a=2Cb=3Dc@example.com,\x01host=h\x01auth=Bearer tok\x01\x01"; string(r.Message) != want {
		t.Errorf("renamed OAUTHBEARER %q, want %q", r.Message, want)
	}
	if p, err := ParseOAuthBearer(r.Message); err != nil || p.User != "a,b=c@example.com" || p.Token != "tok" {
		t.Errorf("renamed message parses as %+v, %v", p, err)
	}
	if string(ob.Message) != "n,a=alice,\x01host=h\x01auth=Bearer tok\x01\x01" {
		t.Error("original message changed")
	}

	xo, err := ParseXOAuth2([]byte("auth=Bearer tok\x01user=alice\x01\x01"))
	if err != nil {
		t.Fatal(err)
	}
	r = xo.WithUser("bob@example.com")
	if want := "auth=Bearer tok\x01user=bob@example.com\x01\x01"; string(r.Message) != want {
		t.Errorf("renamed XOAUTH2 %q, want %q", r.Message, want)
	}
}

// The bearer mechanisms exist on a listener only when it enables them,
// and the SASL exchange yields credentials that route by the named user
// and carry the message.
func TestListenerBearerSASL(t *testing.T) {
	plain := &Listener{}
	if plain.NewSASL("oauthbearer") != nil || plain.NewSASL("XOAUTH2") != nil {
		t.Error("bearer mechanisms on a listener that does not enable them")
	}
	if got := strings.Join(plain.Mechanisms(), " "); got != "PLAIN LOGIN" {
		t.Errorf("mechanisms %q", got)
	}
	l := &Listener{BearerMechanisms: []string{MechOAuthBearer}}
	if got := strings.Join(l.Mechanisms(), " "); got != "PLAIN LOGIN OAUTHBEARER" {
		t.Errorf("mechanisms %q", got)
	}
	if l.NewSASL("XOAUTH2") != nil {
		t.Error("XOAUTH2 not enabled but offered")
	}
	m := l.NewSASL("oauthbearer")
	if m == nil {
		t.Fatal("OAUTHBEARER enabled but not offered")
	}
	ch, done, err := m.Next(nil, false)
	if err != nil || done || len(ch) != 0 {
		t.Fatalf("first step: %q %v %v", ch, done, err)
	}
	msg := []byte("n,a=carol*admin,\x01auth=Bearer T0k\x01\x01")
	if _, done, err = m.Next(msg, true); err != nil || !done {
		t.Fatalf("message: %v %v", done, err)
	}
	c := m.Creds()
	if c.Mechanism != MechOAuthBearer || c.User != "carol*admin" || c.Password != "T0k" || !bytes.Equal(c.Bearer.Message, msg) {
		t.Errorf("creds %+v", c)
	}
	// No master-user form: the token authenticates the named user.
	if c.RouteUser("*") != "carol*admin" || c.AuthUser("*") != "carol*admin" {
		t.Errorf("route %q auth %q", c.RouteUser("*"), c.AuthUser("*"))
	}
	if c.Len() != len(msg) {
		t.Errorf("len %d", c.Len())
	}
	// A routing rule's rename reaches the message.
	r := renamed(c, "carol2", "*")
	if r.User != "carol2" || string(r.Bearer.Message) != "n,a=carol2,\x01auth=Bearer T0k\x01\x01" {
		t.Errorf("renamed %+v %q", r, r.Bearer.Message)
	}

	m = l.NewSASL("OAUTHBEARER")
	if _, _, err := m.Next([]byte("n,,\x01auth=Bearer t\x01\x01"), true); !errors.Is(err, ErrBearerNoUser) {
		t.Errorf("no user: %v", err)
	}
}

func TestDecodeBearerChallenge(t *testing.T) {
	js := `{"status":"invalid_token"}`
	if got := DecodeBearerChallenge([]byte(base64.StdEncoding.EncodeToString([]byte(js)) + " \r\n")); string(got) != js {
		t.Errorf("got %q", got)
	}
	for _, in := range []string{"", "!!!", "=", base64.StdEncoding.EncodeToString(make([]byte, MaxBearerChallenge+1))} {
		if got := DecodeBearerChallenge([]byte(in)); got != nil {
			t.Errorf("%.20q: got %q", in, got)
		}
	}
	if got := DecodeBearerChallenge([]byte(base64.StdEncoding.EncodeToString(make([]byte, MaxBearerChallenge)))); len(got) != MaxBearerChallenge {
		t.Errorf("challenge at the limit: %d bytes", len(got))
	}
}

func TestRouteDirectorBearer(t *testing.T) {
	b, _ := ParseXOAuth2([]byte("user=dave\x01auth=Bearer t\x01\x01"))
	creds := Credentials{Mechanism: MechXOAuth2, User: b.User, Password: b.Token, Bearer: b}
	c := &Client{Listener: &Listener{Protocol: routing.IMAP}, Env: &Env{}}
	be := &routing.Backend{ID: "b1"}
	tg, err := RouteDirector{Router: routeTo(routing.Route{Backend: be, Login: "dave@mail"})}.Direct(context.Background(), &Attempt{Client: c, Creds: creds})
	if err != nil {
		t.Fatal(err)
	}
	if tg.Creds.User != "dave@mail" || string(tg.Creds.Bearer.Message) != "user=dave@mail\x01auth=Bearer t\x01\x01" {
		t.Errorf("target creds %+v %q", tg.Creds, tg.Creds.Bearer.Message)
	}
}

package pop3

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

const goodToken = "ya29.GoodToken-for_alice~"

var errorChallenge = "+ " + base64.StdEncoding.EncodeToString([]byte(`{"status":"invalid_token"}`)) + "\r\n"

func bearerRig(t *testing.T, mechs ...string) (*rig, *fakeBackend) {
	fb := startBackend(t, &fakeBackend{
		Capa:   []string{"USER", "SASL PLAIN OAUTHBEARER XOAUTH2"},
		Tokens: map[string]string{goodToken: "alice"},
	})
	lis := testListener(routing.TLSNone, nil, true)
	lis.BearerMechanisms = mechs
	lis.Limits.MaxAuthFailures = 10
	lis.Limits.MaxErrors = 20
	return newRig(t, lis, Options{}, backendAt(fb.Port(), routing.ForwardNone)), fb
}

// CAPA SASL and AUTH's list name the bearer mechanisms only where the
// listener enables them; elsewhere they are unknown.
func TestBearerAdvertised(t *testing.T) {
	r, _ := bearerRig(t)
	c := dial(t, r.Addr())
	c.cmd("CAPA", "+OK")
	if caps := c.multiline(); !slices.Contains(caps, "SASL PLAIN LOGIN") {
		t.Errorf("CAPA %q", caps)
	}
	c.cmd("AUTH XOAUTH2 "+testrig.XOAuth2("alice", goodToken), "-ERR Unsupported authentication mechanism.")

	r2, _ := bearerRig(t, session.MechOAuthBearer, session.MechXOAuth2)
	c2 := dial(t, r2.Addr())
	c2.cmd("CAPA", "+OK")
	if caps := c2.multiline(); !slices.Contains(caps, "SASL PLAIN LOGIN OAUTHBEARER XOAUTH2") {
		t.Errorf("CAPA %q", caps)
	}
	c2.cmd("AUTH", "+OK")
	if got := strings.Join(c2.multiline(), " "); got != "PLAIN LOGIN OAUTHBEARER XOAUTH2" {
		t.Errorf("AUTH list %q", got)
	}
}

// A good token logs in, its message replayed byte for byte; a long one is
// sent to the backend after the empty challenge (RFC 5034's 255-octet
// command line).
func TestBearerLogin(t *testing.T) {
	for _, tc := range []struct {
		name, mech, msg string
		initial         bool
	}{
		{"oauthbearer-ir", "OAUTHBEARER", testrig.OAuthBearer("alice", goodToken), true},
		{"xoauth2-continuation", "XOAUTH2", testrig.XOAuth2("alice", goodToken), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, fb := bearerRig(t, session.BearerMechanisms...)
			c := dial(t, r.Addr())
			if tc.initial {
				c.cmd("AUTH "+tc.mech+" "+tc.msg, "+OK Logged in.")
			} else {
				c.cmd("AUTH "+tc.mech, "+ \r\n")
				c.cmd(tc.msg, "+OK Logged in.")
			}
			if res := r.Result(); res.Handoff == nil || res.Handoff.User != "alice" {
				t.Fatalf("result %+v", res)
			}
			if got := fb.Received(); !slices.Contains(got, "AUTH "+tc.mech+" "+tc.msg) {
				t.Errorf("backend got %q", got)
			}
			ev := r.LoginEvents()
			if len(ev) != 1 || ev[0].Mechanism != tc.mech || ev[0].User != "alice" {
				t.Errorf("events %+v", ev)
			}
		})
	}
	r, fb := bearerRig(t, session.BearerMechanisms...)
	fb.Tokens["long"+strings.Repeat("x", 400)] = "alice"
	c := dial(t, r.Addr())
	msg := testrig.XOAuth2("alice", "long"+strings.Repeat("x", 400))
	c.cmd("AUTH XOAUTH2 "+msg, "+OK Logged in.")
	got := fb.Received()
	if i := slices.Index(got, "AUTH XOAUTH2"); i < 0 || i+1 >= len(got) || got[i+1] != msg {
		t.Errorf("backend got %q", got)
	}
}

// A refused token: the backend's challenge relayed, the dummy response,
// -ERR, and the session goes on.
func TestBearerRefusedThenRetry(t *testing.T) {
	r, fb := bearerRig(t, session.BearerMechanisms...)
	c := dial(t, r.Addr())
	c.cmd("AUTH OAUTHBEARER "+testrig.OAuthBearer("alice", "expired"), errorChallenge)
	c.cmd("AQ==", "-ERR [AUTH] Authentication failed.")
	c.cmd("AUTH XOAUTH2 "+testrig.XOAuth2("alice", "expired"), errorChallenge)
	c.cmd("", "-ERR [AUTH] Authentication failed.")
	c.cmd("AUTH XOAUTH2 "+testrig.XOAuth2("alice", "expired"), errorChallenge)
	c.cmd("*", "-ERR Authentication cancelled.")
	c.cmd("AUTH XOAUTH2 "+testrig.XOAuth2("alice", "expired"), errorChallenge)
	c.cmd("@@@", "-ERR Invalid base64 data.")
	// a= names the mailbox: alice's token does not open bob's.
	c.cmd("AUTH OAUTHBEARER "+testrig.OAuthBearer("bob", goodToken), errorChallenge)
	c.cmd("AQ==", "-ERR [AUTH]")
	c.cmd("AUTH OAUTHBEARER "+testrig.OAuthBearer("alice", goodToken), "+OK Logged in.")
	if res := r.Result(); res.Handoff == nil {
		t.Fatalf("result %+v", res)
	}
	got := strings.Join(fb.Received(), "\n")
	if strings.Count(got, "\nAQ==\n") != 2 || strings.Count(got, testrig.XOAuth2("alice", "expired")+"\n\n") != 3 {
		t.Errorf("backend dialogue %q", got)
	}
}

// Hostile input: protocol errors, no backend connection, no crash.
func TestBearerMalformed(t *testing.T) {
	r, fb := bearerRig(t, session.BearerMechanisms...)
	c := dial(t, r.Addr())
	c.cmd("AUTH OAUTHBEARER "+testrig.B64("n,,\x01auth=Bearer t\x01\x01"), "-ERR The bearer token login must name the user")
	c.cmd("AUTH XOAUTH2 "+testrig.B64("auth=Bearer t\x01\x01"), "-ERR The bearer token login must name the user")
	c.cmd("AUTH OAUTHBEARER "+testrig.B64("n,a=ali\x00ce,\x01auth=Bearer t\x01\x01"), "-ERR Invalid authentication data.")
	c.cmd("AUTH OAUTHBEARER "+testrig.B64("n,a=alice,\x01auth=Bearer t\x01"), "-ERR Invalid authentication data.")
	c.cmd("AUTH OAUTHBEARER "+testrig.B64("p=x,a=alice,\x01auth=Bearer t\x01\x01"), "-ERR Invalid authentication data.")
	c.cmd("AUTH OAUTHBEARER "+testrig.OAuthBearer("alice", strings.Repeat("A", 9000)), "-ERR Line too long.")
	c.cmd("AUTH OAUTHBEARER\r\n\x01\x02\x03\r\nAUTH OAUTHBEARER !!!", "+ \r\n")
	c.expect("-ERR Invalid base64 data.")
	c.expect("-ERR Invalid base64 data.")
	c.cmd("CAPA", "+OK")
	c.multiline()
	if fb.Connections() != 0 {
		t.Errorf("%d backend connections", fb.Connections())
	}
}

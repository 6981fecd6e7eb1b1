package submission

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

var errorChallenge = "334 " + base64.StdEncoding.EncodeToString([]byte(`{"status":"invalid_token"}`))

func bearerRig(t *testing.T, mechs ...string) (*rig, *fakeBackend) {
	fb := startBackend(t, &fakeBackend{
		Ext:    []string{"PIPELINING", "AUTH PLAIN LOGIN OAUTHBEARER XOAUTH2"},
		Tokens: map[string]string{goodToken: "alice"},
	})
	lis := testListener(routing.TLSNone, nil, true)
	lis.BearerMechanisms = mechs
	lis.Limits.MaxAuthFailures = 10
	lis.Limits.MaxErrors = 20
	return newRig(t, lis, backendAt(fb.Port(), routing.ForwardNone)), fb
}

// The EHLO reply's AUTH line names the bearer mechanisms only where the
// listener enables them.
func TestBearerAdvertised(t *testing.T) {
	r, _ := bearerRig(t)
	c := dial(t, r.Addr())
	if got := c.cmd("EHLO client.example", "250 "); !slices.Contains(got, "250-AUTH PLAIN LOGIN") && !slices.Contains(got, "250 AUTH PLAIN LOGIN") {
		t.Errorf("EHLO %q", got)
	}
	c.cmd("AUTH XOAUTH2 "+testrig.XOAuth2("alice", goodToken), "504 5.5.4")

	r2, _ := bearerRig(t, session.BearerMechanisms...)
	c2 := dial(t, r2.Addr())
	got := strings.Join(c2.cmd("EHLO client.example", "250 "), "\n")
	if !strings.Contains(got, "AUTH PLAIN LOGIN OAUTHBEARER XOAUTH2") {
		t.Errorf("EHLO %q", got)
	}
}

// A good token logs in with the client's mechanism and message; a refused
// one gets the backend's challenge, the dummy response, the backend's 535,
// and the session goes on.
func TestBearerLoginAndRefusal(t *testing.T) {
	r, fb := bearerRig(t, session.BearerMechanisms...)
	c := dial(t, r.Addr())
	c.cmd("EHLO client.example", "250 ")
	c.cmd("AUTH OAUTHBEARER "+testrig.OAuthBearer("alice", "expired"), errorChallenge)
	c.cmd("AQ==", "535 5.7.8 Error: authentication failed: invalid token")
	c.cmd("AUTH XOAUTH2 "+testrig.XOAuth2("alice", "expired"), errorChallenge)
	c.cmd("", "535 5.7.8")
	c.cmd("AUTH XOAUTH2 "+testrig.XOAuth2("alice", "expired"), errorChallenge)
	c.cmd("*", "501 5.7.0 Authentication cancelled")
	c.cmd("AUTH OAUTHBEARER "+testrig.OAuthBearer("bob", goodToken), errorChallenge)
	c.cmd("AQ==", "535 ")
	c.cmd("AUTH OAUTHBEARER "+testrig.B64("n,,\x01auth=Bearer t\x01\x01"), "501 5.5.2 The bearer token login must name the user")
	c.cmd("AUTH XOAUTH2", "334 ")
	c.cmd(testrig.XOAuth2("alice", goodToken), "235 2.7.0")
	if res := r.Result(); res.Handoff == nil || res.Handoff.User != "alice" {
		t.Fatalf("result %+v", res)
	}
	got := strings.Join(fb.Received(), "\n")
	if !strings.Contains(got, "AUTH XOAUTH2 "+testrig.XOAuth2("alice", goodToken)) || strings.Count(got, "\nAQ==\n") != 2 {
		t.Errorf("backend dialogue %q", got)
	}
}

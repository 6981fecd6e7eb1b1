package sieve

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

const goodToken = "ya29.GoodToken-for_alice~"

var errorChallenge = `"` + testrig.B64(`{"status":"invalid_token"}`) + `"`

func bearerRig(t *testing.T, literal bool, mechs ...string) (*rig, *fakeBackend) {
	fb := startBackend(t, &fakeBackend{
		Caps:             []string{`"IMPLEMENTATION" "fake"`, `"SASL" "PLAIN OAUTHBEARER XOAUTH2"`, `"VERSION" "1.0"`},
		Tokens:           map[string]string{goodToken: "alice"},
		LiteralChallenge: literal,
	})
	lis := testListener(routing.TLSNone, nil, true)
	lis.BearerMechanisms = mechs
	lis.Limits.MaxAuthFailures = 10
	lis.Limits.MaxErrors = 20
	return newRig(t, lis, backendAt(fb.Port(), routing.ForwardNone)), fb
}

func TestBearerAdvertised(t *testing.T) {
	r, _ := bearerRig(t, false)
	c, caps := dial(t, r.Addr())
	if !slices.Contains(caps, `"SASL" "PLAIN LOGIN"`) {
		t.Errorf("caps %q", caps)
	}
	c.cmd(`AUTHENTICATE "OAUTHBEARER" "`+testrig.OAuthBearer("alice", goodToken)+`"`, `NO "Unsupported authentication mechanism."`)

	r2, _ := bearerRig(t, false, session.MechXOAuth2)
	_, caps = dial(t, r2.Addr())
	if !slices.Contains(caps, `"SASL" "PLAIN LOGIN XOAUTH2"`) {
		t.Errorf("caps %q", caps)
	}
}

func TestBearerLogin(t *testing.T) {
	r, fb := bearerRig(t, false, session.BearerMechanisms...)
	c, _ := dial(t, r.Addr())
	// Initial response as a literal, the way sieve-connect sends it.
	msg := testrig.OAuthBearer("alice", goodToken)
	c.cmd(`AUTHENTICATE "OAUTHBEARER" {`+strconv.Itoa(len(msg))+"+}\r\n"+msg, `OK "Logged in."`)
	if res := r.Result(); res.Handoff == nil || res.Handoff.User != "alice" {
		t.Fatalf("result %+v", res)
	}
	if got := fb.Received(); !slices.Contains(got, `AUTHENTICATE "OAUTHBEARER" "`+msg+`"`) {
		t.Errorf("backend got %q", got)
	}

	r, fb = bearerRig(t, false, session.BearerMechanisms...)
	c, _ = dial(t, r.Addr())
	msg = testrig.XOAuth2("alice", goodToken)
	c.Send(`AUTHENTICATE "XOAUTH2"` + "\r\n")
	if l := c.line(); l != `""` {
		t.Fatalf("empty challenge %q", l)
	}
	c.cmd(`"`+msg+`"`, `OK "Logged in."`)
	if got := fb.Received(); !slices.Contains(got, `AUTHENTICATE "XOAUTH2" "`+msg+`"`) {
		t.Errorf("backend got %q", got)
	}
}

// A refused token: the backend's challenge (quoted or a literal) relayed
// as a quoted string, the dummy response, NO, and the session goes on.
func TestBearerRefusedThenRetry(t *testing.T) {
	for _, literal := range []bool{false, true} {
		r, fb := bearerRig(t, literal, session.BearerMechanisms...)
		c, _ := dial(t, r.Addr())
		step := func(send, want string) {
			t.Helper()
			c.Send(send + "\r\n")
			if l := c.line(); l != want {
				t.Fatalf("after %q: got %q, want %q", send, l, want)
			}
		}
		step(`AUTHENTICATE "OAUTHBEARER" "`+testrig.OAuthBearer("alice", "expired")+`"`, errorChallenge)
		c.cmd(`"AQ=="`, `NO "Authentication failed."`)
		step(`AUTHENTICATE "XOAUTH2" "`+testrig.XOAuth2("alice", "expired")+`"`, errorChallenge)
		c.cmd(`""`, `NO "Authentication failed."`)
		step(`AUTHENTICATE "XOAUTH2" "`+testrig.XOAuth2("alice", "expired")+`"`, errorChallenge)
		c.cmd(`"*"`, `NO "Authentication cancelled."`)
		step(`AUTHENTICATE "XOAUTH2" "`+testrig.XOAuth2("alice", "expired")+`"`, errorChallenge)
		c.cmd(`NOTASTRING`, `NO "Syntax error."`)
		step(`AUTHENTICATE "OAUTHBEARER" "`+testrig.OAuthBearer("bob", goodToken)+`"`, errorChallenge)
		c.cmd(`{4+}`+"\r\nAQ==", `NO "Authentication failed."`)
		c.cmd(`AUTHENTICATE "OAUTHBEARER" "`+testrig.OAuthBearer("alice", goodToken)+`"`, `OK "Logged in."`)
		if res := r.Result(); res.Handoff == nil {
			t.Fatalf("result %+v", res)
		}
		got := strings.Join(fb.Received(), "\n")
		if strings.Count(got, "\n\"AQ==\"\n") != 2 || strings.Count(got, "\n\"\"\n") != 3 {
			t.Errorf("backend dialogue %q", got)
		}
	}
}

func TestBearerMalformed(t *testing.T) {
	r, fb := bearerRig(t, false, session.BearerMechanisms...)
	c, _ := dial(t, r.Addr())
	c.cmd(`AUTHENTICATE "OAUTHBEARER" "`+testrig.B64("n,,\x01auth=Bearer t\x01\x01")+`"`, `NO "The bearer token login must name the user`)
	c.cmd(`AUTHENTICATE "XOAUTH2" "`+testrig.B64("user=al\x01ice\x01auth=Bearer t\x01\x01")+`"`, `NO "Invalid authentication data."`)
	c.cmd(`AUTHENTICATE "OAUTHBEARER" "`+testrig.B64("n,a=alice,\x01auth=Bearer t t\x01\x01")+`"`, `NO "Invalid authentication data."`)
	c.cmd(`AUTHENTICATE "OAUTHBEARER" "@@"`, `NO "Invalid base64 data."`)
	if got := fb.Received(); len(got) != 0 {
		t.Errorf("backend contacted: %q", got)
	}
	// A giant token as a literal ends the session (ManageSieve has no
	// literal continuation to refuse it with).
	c.Send(`AUTHENTICATE "OAUTHBEARER" {20000+}` + "\r\n" + strings.Repeat("A", 20000) + "\r\n")
	c.expect(`BYE "Literal too large."`)
	c.EOF()
}

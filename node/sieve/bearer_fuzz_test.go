package sieve

import (
	"bufio"
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/portico-mail/portico/node/internal/testrig"
	"github.com/portico-mail/portico/node/session"
)

// FuzzBearerBackend: a hostile backend answering a bearer login. The
// proxy reads a bounded amount, sends only the AUTHENTICATE command and
// the dummy response, never relays a challenge over the bound, and labels
// every failure.
func FuzzBearerBackend(f *testing.F) {
	ch := testrig.B64(`{"status":"invalid_token"}`)
	for _, s := range []string{
		"OK \"Logged in.\"\r\n",
		"\"" + ch + "\"\r\nNO \"Authentication failed.\"\r\n",
		"{" + strconv.Itoa(len(ch)) + "}\r\n" + ch + "\r\nNO \"failed\"\r\n",
		"\"" + ch + "\"\r\n\"" + ch + "\"\r\nNO x\r\n",
		"\"not base64\"\r\nNO (TRYLATER) \"x\"\r\n",
		"{99999}\r\nabc",
		"\"unterminated\r\n",
		"BYE \"no\"\r\n",
	} {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, in []byte, oauthbearer bool) {
		mech, msg := session.MechXOAuth2, "user=alice\x01auth=Bearer tok\x01\x01"
		if oauthbearer {
			mech, msg = session.MechOAuthBearer, "n,a=alice,\x01auth=Bearer tok\x01\x01"
		}
		bm, err := session.ParseBearer(mech, []byte(msg))
		if err != nil {
			t.Fatal(err)
		}
		var sent bytes.Buffer
		b := &backend{r: bufio.NewReader(bytes.NewReader(in)), w: bufio.NewWriter(&sent),
			caps: map[string]string{"SASL": "PLAIN OAUTHBEARER XOAUTH2"}}
		_, err = b.login(session.Credentials{Mechanism: mech, User: bm.User, Password: bm.Token, Bearer: bm})
		var rej *session.BackendRejected
		switch {
		case err == nil:
		case errors.As(err, &rej):
			if len(rej.Challenge) > session.MaxBearerChallenge {
				t.Fatalf("challenge of %d bytes", len(rej.Challenge))
			}
		case !strings.HasPrefix(err.Error(), phaseAuth+": "):
			t.Fatalf("unlabelled error %q", err)
		}
		ir := session.EncodeChallenge(bm.Message)
		want := `AUTHENTICATE "` + mech + `" {` + strconv.Itoa(len(ir)) + "+}\r\n" + ir + "\r\n"
		dummy := quote(session.EncodeChallenge(session.BearerDummyResponse(mech))) + "\r\n"
		if s := sent.String(); s != want && s != want+dummy {
			t.Fatalf("sent %q", s)
		}
	})
}

package pop3

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/portico-mail/portico/node/session"
)

// FuzzBearerBackend: a hostile backend answering a bearer login. The
// proxy reads a bounded amount, sends only the AUTH command, the message,
// the dummy response or "*", never relays a challenge over the bound, and
// labels every failure.
func FuzzBearerBackend(f *testing.F) {
	ch := "+ " + base64.StdEncoding.EncodeToString([]byte(`{"status":"invalid_token"}`)) + "\r\n"
	for _, s := range []string{
		"+OK Logged in.\r\n",
		ch + "-ERR [AUTH] Authentication failed.\r\n",
		"+ \r\n" + ch + "-ERR [AUTH] failed\r\n",
		ch + ch + ch + "-ERR x\r\n",
		"+ !!!notbase64\r\n-ERR x\r\n",
		"+ " + base64.StdEncoding.EncodeToString(make([]byte, 3000)) + "\r\n-ERR x\r\n",
		"-ERR [SYS/TEMP] down\r\n",
		"* OK wrong protocol\r\n",
	} {
		f.Add([]byte(s), true, false)
		f.Add([]byte(s), false, true)
	}
	f.Fuzz(func(t *testing.T, in []byte, oauthbearer, long bool) {
		mech, msg := session.MechXOAuth2, "user=alice\x01auth=Bearer tok\x01\x01"
		if oauthbearer {
			mech, msg = session.MechOAuthBearer, "n,a=alice,\x01auth=Bearer tok\x01\x01"
		}
		if long {
			msg = strings.Replace(msg, "tok", strings.Repeat("t", 400), 1)
		}
		bm, err := session.ParseBearer(mech, []byte(msg))
		if err != nil {
			t.Fatal(err)
		}
		var sent bytes.Buffer
		src := &countingReader{r: bytes.NewReader(in)}
		b := &backend{r: bufio.NewReaderSize(src, 64), w: bufio.NewWriter(&sent),
			caps: map[string]string{"SASL": "PLAIN OAUTHBEARER XOAUTH2"}}
		reply, err := b.login(session.Credentials{Mechanism: mech, User: bm.User, Password: bm.Token, Bearer: bm})
		if limit := int64(4*backendMaxLine + 64); src.n > limit {
			t.Fatalf("read %d bytes", src.n)
		}
		var rej *session.BackendRejected
		switch {
		case err == nil:
			if !isOK(strings.TrimSuffix(string(reply), "\r\n")) {
				t.Fatalf("success reply %q", reply)
			}
		case errors.As(err, &rej):
			if len(rej.Challenge) > session.MaxBearerChallenge {
				t.Fatalf("challenge of %d bytes", len(rej.Challenge))
			}
		case !strings.HasPrefix(err.Error(), phaseAuth+": "):
			t.Fatalf("unlabelled error %q", err)
		}
		ir := base64.StdEncoding.EncodeToString(bm.Message)
		allowed := map[string]bool{"AUTH " + mech + " " + ir: true, "AUTH " + mech: true, ir: true, "*": true,
			base64.StdEncoding.EncodeToString(session.BearerDummyResponse(mech)): true}
		for _, l := range strings.Split(strings.TrimSuffix(sent.String(), "\r\n"), "\r\n") {
			if !allowed[l] {
				t.Fatalf("sent unexpected line %q (all: %q)", l, sent.String())
			}
		}
	})
}

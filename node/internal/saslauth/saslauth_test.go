package saslauth

import (
	"bytes"
	"encoding/base64"
	"io"
	"strings"
	"testing"

	"github.com/portico-mail/portico/node/session"
)

var ref = Refusals{
	Cancelled:    &session.ProtocolError{Reply: "cancelled\r\n"},
	BadBase64:    &session.ProtocolError{Reply: "base64\r\n"},
	BearerNoUser: &session.ProtocolError{Reply: "no user\r\n"},
	BadAuthData:  &session.ProtocolError{Reply: "bad data\r\n"},
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// lines answers each challenge with the next of its lines, recording the
// challenges; past the last it fails with io.EOF.
type lines struct {
	in         []string
	challenges []string
}

func (l *lines) respond(challenge []byte) ([]byte, error) {
	l.challenges = append(l.challenges, string(challenge))
	if len(l.in) == 0 {
		return nil, io.EOF
	}
	s := l.in[0]
	l.in = l.in[1:]
	return []byte(s), nil
}

func TestExchange(t *testing.T) {
	for _, tc := range []struct {
		name, mech, ir string
		hasIR          bool
		in             []string
		user, pass     string
		err            error
		challenges     []string
	}{
		{name: "plain-ir", mech: "PLAIN", ir: b64("\x00alice\x00secret"), hasIR: true, user: "alice", pass: "secret"},
		{name: "plain-empty-challenge", mech: "PLAIN", in: []string{b64("\x00alice\x00secret")}, user: "alice", pass: "secret", challenges: []string{""}},
		{name: "login", mech: "LOGIN", in: []string{b64("alice"), b64("pw")}, user: "alice", pass: "pw", challenges: []string{"Username:", "Password:"}},
		{name: "login-ir", mech: "LOGIN", ir: b64("alice"), hasIR: true, in: []string{""}, user: "alice", pass: "", challenges: []string{"Password:"}},
		{name: "login-ir-equals", mech: "LOGIN", ir: "=", hasIR: true, err: ref.BadAuthData},
		{name: "cancelled", mech: "LOGIN", in: []string{"*"}, err: ref.Cancelled, challenges: []string{"Username:"}},
		{name: "bad-base64-ir", mech: "PLAIN", ir: "!!", hasIR: true, err: ref.BadBase64},
		{name: "bad-base64", mech: "PLAIN", in: []string{"@@@"}, err: ref.BadBase64, challenges: []string{""}},
		{name: "bad-data", mech: "PLAIN", ir: b64("alice"), hasIR: true, err: ref.BadAuthData},
		{name: "bearer-no-user", mech: "XOAUTH2", ir: b64("auth=Bearer t\x01\x01"), hasIR: true, err: ref.BearerNoUser},
		{name: "read-error", mech: "LOGIN", err: io.EOF, challenges: []string{"Username:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lis := &session.Listener{BearerMechanisms: session.BearerMechanisms}
			l := &lines{in: tc.in}
			creds, err := Exchange(lis.NewSASL(tc.mech), []byte(tc.ir), tc.hasIR, l.respond, &ref)
			if err != tc.err {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if err == nil && (creds.User != tc.user || creds.Password != tc.pass) {
				t.Errorf("credentials %q/%q", creds.User, creds.Password)
			}
			if strings.Join(l.challenges, "|") != strings.Join(tc.challenges, "|") {
				t.Errorf("challenges %q, want %q", l.challenges, tc.challenges)
			}
		})
	}
}

func TestDummy(t *testing.T) {
	fatal := &session.ProtocolError{Reply: "BYE too long\r\n", Fatal: true}
	refused := &session.ProtocolError{Reply: "too long\r\n"}
	for _, tc := range []struct {
		name    string
		line    string
		readErr error
		refusal string
		err     error
	}{
		{name: "dummy", line: "AQ=="},
		{name: "empty", line: ""},
		{name: "cancelled", line: "*", refusal: "cancelled\r\n"},
		{name: "bad-base64", line: "@@", refusal: "base64\r\n"},
		{name: "refused", readErr: refused, refusal: "too long\r\n"},
		{name: "fatal", readErr: fatal, err: fatal},
		{name: "read-error", readErr: io.ErrUnexpectedEOF, err: io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []byte
			refusal, err := Dummy([]byte(`{"status":"invalid_token"}`), func(ch []byte) ([]byte, error) {
				got = ch
				return []byte(tc.line), tc.readErr
			}, &ref)
			if refusal != tc.refusal || err != tc.err {
				t.Errorf("got %q, %v; want %q, %v", refusal, err, tc.refusal, tc.err)
			}
			if string(got) != `{"status":"invalid_token"}` {
				t.Errorf("challenge %q", got)
			}
		})
	}
}

var replies = Replies{
	AuthFailed: "failed\r\n", Unavailable: "unavailable\r\n", Throttled: "throttled\r\n",
	TooManyAuth: "too many\r\n", InternalError: "internal\r\n",
	Refusal: func(r *session.Refusal) string { return "refused " + r.Reply + "\r\n" },
}

func TestFail(t *testing.T) {
	for _, tc := range []struct {
		name   string
		out    session.Outcome
		dummy  string // the client's response to a challenge
		wrote  string
		ending string // the session.End* reason, "" for none
	}{
		{name: "backend-reply", out: session.Outcome{Result: session.ResultBadCreds, Reply: []byte("-ERR no\r\n")}, wrote: "-ERR no\r\n"},
		{name: "bad-creds", out: session.Outcome{Result: session.ResultBadCreds}, wrote: "failed\r\n"},
		{name: "unavailable", out: session.Outcome{Result: session.ResultUnavailable}, wrote: "unavailable\r\n"},
		{name: "throttled", out: session.Outcome{Result: session.ResultLimit}, wrote: "throttled\r\n"},
		{name: "internal", out: session.Outcome{Result: session.ResultUnavailable, Refusal: &session.Refusal{Kind: session.RefuseInternal, Reply: "x"}},
			wrote: "internal\r\n", ending: session.EndAuthError},
		{name: "refusal-text", out: session.Outcome{Result: session.ResultBadCreds, Refusal: &session.Refusal{Kind: session.RefuseAuth, Reply: "go away"}},
			wrote: "refused go away\r\n"},
		{name: "refusal-close", out: session.Outcome{Result: session.ResultBadCreds, Refusal: &session.Refusal{Kind: session.RefuseAuth, Close: true}},
			wrote: "failed\r\n", ending: session.EndAuthRefused},
		{name: "too-many", out: session.Outcome{Result: session.ResultBadCreds, Close: true}, wrote: "failed\r\ntoo many\r\n", ending: session.EndTooManyAuthFailures},
		{name: "bearer", out: session.Outcome{Result: session.ResultBadCreds, Reply: []byte("NO x\r\n"), Challenge: []byte("{}")}, dummy: "AQ==",
			wrote: "challenge {}\r\nNO x\r\n"},
		{name: "bearer-cancelled", out: session.Outcome{Result: session.ResultBadCreds, Reply: []byte("NO x\r\n"), Challenge: []byte("{}")}, dummy: "*",
			wrote: "challenge {}\r\ncancelled\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var w strings.Builder
			respond := func(ch []byte) ([]byte, error) {
				w.WriteString("challenge " + string(ch) + "\r\n")
				return []byte(tc.dummy), nil
			}
			err := Fail(tc.out, &replies, func(s string) { w.WriteString(s) }, respond, &ref)
			if w.String() != tc.wrote {
				t.Errorf("wrote %q, want %q", w.String(), tc.wrote)
			}
			switch {
			case tc.ending == "" && err != nil:
				t.Errorf("error %v", err)
			case tc.ending != "" && (err == nil || !strings.Contains(err.Error(), tc.ending)):
				t.Errorf("error %v, want the end %q", err, tc.ending)
			}
		})
	}
}

// FuzzExchange drives every mechanism with an arbitrary initial response
// and arbitrary response lines: no panic; it ends with credentials (a
// non-empty user, no longer than what was sent), a refusal of ref, or the
// responder's own error, never anything else.
func FuzzExchange(f *testing.F) {
	f.Add("PLAIN", "AGFsaWNlAHNlY3JldA==", true, []byte(""))
	f.Add("PLAIN", "", false, []byte("AGFsaWNlAHNlY3JldA==\n"))
	f.Add("LOGIN", "", false, []byte("YWxpY2U=\nc2VjcmV0\n"))
	f.Add("LOGIN", "YWxpY2U=", true, []byte("*\n"))
	f.Add("LOGIN", "=", true, []byte("\n\n"))
	f.Add("OAUTHBEARER", "bixhPWFsaWNlLAFhdXRoPUJlYXJlciB0b2sBAQ==", true, []byte(""))
	f.Add("XOAUTH2", "", false, []byte("dXNlcj1hbGljZQFhdXRoPUJlYXJlciB0b2sBAQ==\n"))
	lis := &session.Listener{BearerMechanisms: session.BearerMechanisms}
	f.Fuzz(func(t *testing.T, mech, ir string, hasIR bool, in []byte) {
		m := lis.NewSASL(mech)
		if m == nil {
			return
		}
		rest, rounds := in, 0
		creds, err := Exchange(m, []byte(ir), hasIR, func([]byte) ([]byte, error) {
			if rounds++; rounds > 10 {
				t.Fatalf("more than 10 challenges")
			}
			if len(rest) == 0 {
				return nil, io.EOF
			}
			line, after, _ := bytes.Cut(rest, []byte("\n"))
			rest = after
			return line, nil
		}, &ref)
		if err != nil {
			if err != io.EOF && err != ref.Cancelled && err != ref.BadBase64 && err != ref.BearerNoUser && err != ref.BadAuthData {
				t.Fatalf("error %v", err)
			}
			return
		}
		if creds.User == "" || creds.Len() > len(ir)+len(in) {
			t.Fatalf("credentials %q/%d from %d+%d bytes", creds.User, creds.Len(), len(ir), len(in))
		}
	})
}

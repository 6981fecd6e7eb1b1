package session

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/portico-mail/portico/routing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSessionIDsUnique(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100000; i++ {
		id := NewSessionID()
		if seen[id] || len(id) != 16 {
			t.Fatalf("id %q (len %d) repeated or malformed", id, len(id))
		}
		seen[id] = true
	}
}

// The access log's login line: every field, in order, as operators parse it.
func TestLoginLogLine(t *testing.T) {
	var buf bytes.Buffer
	h := slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}})
	c := &Client{
		Listener: &Listener{Name: "imaps", Protocol: routing.IMAP},
		Env:      &Env{Node: "n1"},
		Remote:   netip.MustParseAddrPort("192.0.2.7:50123"),
		Log:      slog.New(h).With("session", "S1"),
	}
	c.logLogin(LoginEvent{User: "alice", Login: "admin", Mechanism: "OAUTHBEARER", Result: ResultBadCreds,
		Latency: 1234567 * time.Nanosecond, BackendID: "b1", Err: errors.New(`backend said "no"`)})
	c.logLogin(LoginEvent{User: "bob", Result: ResultOK, Latency: 2 * time.Millisecond, BackendID: "b2"})
	want := `level=INFO msg=login session=S1 node=n1 listener=imaps protocol=imap client=192.0.2.7:50123 user=alice login=admin mechanism=OAUTHBEARER result=bad_credentials latency=1.235ms backend=b1 error="backend said \"no\""` + "\n" +
		`level=INFO msg=login session=S1 node=n1 listener=imaps protocol=imap client=192.0.2.7:50123 user=bob result=ok latency=2ms backend=b2` + "\n"
	if buf.String() != want {
		t.Errorf("got\n%s\nwant\n%s", buf.String(), want)
	}
}

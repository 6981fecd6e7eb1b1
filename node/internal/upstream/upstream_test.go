package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/node/session"
)

func TestValidSessionID(t *testing.T) {
	for id, want := range map[string]bool{
		"SID1": true, "Xk3+/=a": true, strings.Repeat("a", MaxSessionID): true,
		"": false, strings.Repeat("a", MaxSessionID+1): false, "a b": false, "a\x00": false, "a\x7f": false, "é": false,
	} {
		if got := ValidSessionID(id); got != want {
			t.Errorf("ValidSessionID(%q) = %v", id, got)
		}
	}
}

func TestUnrepresentable(t *testing.T) {
	if rej := Unrepresentable(session.Credentials{User: "alice", Password: "p w", AuthzID: "bob"}, nil); rej != nil {
		t.Errorf("refused %+v", rej)
	}
	for _, c := range []session.Credentials{
		{User: "", Password: "x"}, {User: "a\x00b", Password: "x"}, {User: "a", Password: "x\x00"}, {User: "a", AuthzID: "\x00"},
	} {
		rej := Unrepresentable(c, []byte("535 no\r\n"))
		if rej == nil || string(rej.Reply) != "535 no\r\n" || rej.Temporary || !strings.Contains(rej.Text, "not sent") {
			t.Errorf("%q: %+v", c.User, rej)
		}
	}
}

func TestHasWordAndTrunc(t *testing.T) {
	if !HasWord("PLAIN  login", "LOGIN") || HasWord("PLAINX", "PLAIN") || HasWord("", "PLAIN") {
		t.Error("HasWord")
	}
	long := strings.Repeat("x", MaxShownReply+5)
	if got := Shorten(long); got != long[:MaxShownReply]+"..." {
		t.Errorf("Shorten %q", got)
	}
	if got := Trunc([]byte("NO \"x\"\r\n")); got != `NO "x"` {
		t.Errorf("Trunc %q", got)
	}
	if got := Shorten("a\r"); got != "a\r" {
		t.Errorf("Shorten %q", got)
	}
}

// stream returns a Stream over a loopback TCP connection and its peer.
func stream(t *testing.T) (*netx.Stream, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	nc, err := netx.NewConn(c.(*net.TCPConn), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := netx.NewStream(nc)
	t.Cleanup(func() { s.Close(); peer.Close() })
	return s, peer
}

// Bytes the backend sent after accepting STARTTLS are refused before any
// handshake, as are an expired deadline and a configuration that fails.
func TestStartTLSRefusals(t *testing.T) {
	noConfig := func() (*tls.Config, error) { t.Fatal("config asked for"); return nil, nil }

	s, peer := stream(t)
	_, _ = peer.Write([]byte("+OK Begin TLS\r\nINJECTED\r\n"))
	if l, err := s.R.ReadString('\n'); err != nil || l != "+OK Begin TLS\r\n" {
		t.Fatal(l, err)
	}
	for s.R.Buffered() == 0 {
		if _, err := s.R.Peek(1); err != nil {
			t.Fatal(err)
		}
	}
	if err := StartTLS(context.Background(), s, noConfig, "+OK"); err == nil || err.Error() != "backend sent data after +OK" {
		t.Errorf("data after the reply: %v", err)
	}

	s, _ = stream(t)
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	cfg := func() (*tls.Config, error) { return &tls.Config{}, nil }
	if err := StartTLS(ctx, s, cfg, "OK"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("expired deadline: %v", err)
	}

	bad := errors.New("no CA")
	if err := StartTLS(context.Background(), s, func() (*tls.Config, error) { return nil, bad }, "220"); err != bad {
		t.Errorf("configuration error: %v", err)
	}
}

// A bearer login: the message on the command line when it fits, else
// after the empty challenge; then the dummy response to the error
// challenge, which is kept; a third continuation is refused.
func TestBearer(t *testing.T) {
	m, err := session.ParseBearer(session.MechXOAuth2, []byte("user=alice\x01auth=Bearer tok\x01\x01"))
	if err != nil {
		t.Fatal(err)
	}
	ir := session.EncodeChallenge(m.Message)
	dummy := session.EncodeChallenge(session.BearerDummyResponse(m.Mechanism))
	status := session.EncodeChallenge([]byte(`{"status":"invalid_token"}`))

	x, cmd := NewBearer("AUTH", m, 255)
	if cmd != "AUTH XOAUTH2 "+ir {
		t.Fatalf("command %q", cmd)
	}
	if l, ok := x.Next(" " + status); !ok || l != dummy || string(x.Challenge) != `{"status":"invalid_token"}` {
		t.Fatalf("first continuation: %q %v %q", l, ok, x.Challenge)
	}
	if _, ok := x.Next(""); ok {
		t.Fatal("a second error challenge answered")
	}

	x, cmd = NewBearer("AUTH", m, len("AUTH XOAUTH2 "+ir)+1)
	if cmd != "AUTH XOAUTH2" {
		t.Fatalf("long command %q", cmd)
	}
	if l, ok := x.Next(""); !ok || l != ir || x.Challenge != nil {
		t.Fatalf("empty challenge: %q %v", l, ok)
	}
	if l, ok := x.Next(status); !ok || l != dummy || x.Challenge == nil {
		t.Fatalf("error challenge: %q %v", l, ok)
	}
	if _, ok := x.Next(status); ok {
		t.Fatal("a third continuation answered")
	}
}

func TestOneLine(t *testing.T) {
	for in, want := range map[string]string{
		"OK fine": "OK fine", "a\r\nb": "a  b", "nul\x00here": "nul here", "\xff\x01": "\xff\x01", "": "",
	} {
		if got := OneLine(in); got != want {
			t.Errorf("OneLine(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSend(t *testing.T) {
	var out strings.Builder
	w := bufio.NewWriterSize(&out, 16)
	if err := Send(w, "CAPA"); err != nil || out.String() != "CAPA\r\n" || w.Buffered() != 0 {
		t.Errorf("sent %q, %d buffered, %v", out.String(), w.Buffered(), err)
	}
}

// Dovecot's XCLIENT: the client's address as Dovecot parses it (IPv4
// unmapped, no zone), its port, and the session ID only if it can be
// passed.
func TestDovecotXCLIENT(t *testing.T) {
	for _, tc := range []struct {
		remote, id, want string
	}{
		{"198.51.100.7:4242", "SID1", "XCLIENT ADDR=198.51.100.7 PORT=4242 SESSION=SID1"},
		{"[::ffff:198.51.100.7]:143", "", "XCLIENT ADDR=198.51.100.7 PORT=143"},
		{"[2001:db8::1%eth0]:1", "a b", "XCLIENT ADDR=2001:db8::1 PORT=1"},
		{"[2001:db8::1]:65535", strings.Repeat("x", MaxSessionID+1), "XCLIENT ADDR=2001:db8::1 PORT=65535"},
	} {
		if got := DovecotXCLIENT(netip.MustParseAddrPort(tc.remote), tc.id); got != tc.want {
			t.Errorf("%s %q: %q, want %q", tc.remote, tc.id, got, tc.want)
		}
	}
}

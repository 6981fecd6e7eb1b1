package node

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

type lineConn struct {
	c  net.Conn
	br *bufio.Reader
}

// framedEcho is echoHandler with a framer for line-sized responses, so
// that a session can be ended between two of them with a BYE.
type framedEcho struct{ echoHandler }

func (framedEcho) NewFramer() relay.Framer { return &lineFramer{at: true} }

type lineFramer struct{ at bool }

func (f *lineFramer) ServerData(b []byte) int {
	i := bytes.LastIndexByte(b, '\n')
	switch {
	case i >= 0:
		f.at = i == len(b)-1
		return i + 1
	case len(b) > 0:
		f.at = false
	}
	return -1
}
func (f *lineFramer) Opaque() int64         { return 0 }
func (f *lineFramer) Skip(int64)            {}
func (f *lineFramer) AtBoundary() bool      { return f.at }
func (f *lineFramer) WantsClientData() bool { return false }
func (f *lineFramer) ClientData([]byte)     {}
func (f *lineFramer) Bye(text string) []byte {
	return []byte("* BYE [UNAVAILABLE] " + text + "\r\n")
}

func startFramedServer(t *testing.T) *Server {
	t.Helper()
	engine, err := relay.NewEngine()
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(Config{Listeners: []ListenerConfig{{Name: "l", Address: "127.0.0.1:0", Protocol: routing.IMAP,
		Limits: session.DefaultLimits(routing.IMAP)}}},
		&session.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil))},
		map[routing.Protocol]session.Handler{routing.IMAP: framedEcho{echoHandler{echoBackend(t)}}}, nil, engine)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		engine.Close()
	})
	return s
}

// Sessions lists the logged-in sessions with who and where; Kick ends
// only the ones its filter selects, at a response boundary, and leaves
// the rest relaying.
func TestSessionsAndKick(t *testing.T) {
	s := startFramedServer(t)
	addr := s.Addrs()["l"].String()
	login := func(user string) *lineConn {
		c, br := dial(t, addr)
		readLine(t, br)
		c.Write([]byte("login " + user + "\r\n"))
		if got := readLine(t, br); got != "OK\r\n" {
			t.Fatalf("login %s: %q", user, got)
		}
		return &lineConn{c, br}
	}
	alice1, alice2, bob := login("Alice@Example.com"), login("alice@example.com"), login("bob")
	_, pre := dial(t, addr) // not logged in: not listed
	readLine(t, pre)
	bob.c.Write([]byte("ping\r\n"))
	if got := readLine(t, bob.br); got != "ping\r\n" {
		t.Fatalf("relay: %q", got)
	}

	// A session is listed once the relay has it, a moment after its
	// client read the login's OK.
	var all []SessionInfo
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if all = s.Sessions(SessionFilter{}); len(all) >= 3 || time.Now().After(deadline) {
			break
		}
	}
	if len(all) != 3 {
		t.Fatalf("%d sessions listed, want 3: %+v", len(all), all)
	}
	for i, si := range all {
		if si.ID == "" || si.Listener != "l" || si.Protocol != "imap" || !si.Client.IsValid() || !si.Local.IsValid() || si.Started.IsZero() {
			t.Errorf("session %d incomplete: %+v", i, si)
		}
		if i > 0 && si.Started.Before(all[i-1].Started) {
			t.Errorf("not oldest first: %+v", all)
		}
	}
	// The relay counts a direction's bytes once its write returns, which
	// may be just after the echo has reached the client.
	deadline := time.Now().Add(10 * time.Second)
	for {
		b := s.Sessions(SessionFilter{User: "bob"})
		if len(b) != 1 || b[0].Backend != "b-bob" || b[0].BytesIn > 6 || b[0].BytesOut > 6 {
			t.Fatalf("bob's sessions: %+v", b)
		}
		if b[0].BytesIn == 6 && b[0].BytesOut == 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bob's byte counts: %+v", b)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if a := s.Sessions(SessionFilter{User: "ALICE@example.COM"}); len(a) != 2 {
		t.Fatalf("alice's sessions, any case: %+v", a)
	}
	if one := s.Sessions(SessionFilter{ID: all[0].ID}); len(one) != 1 || one[0].ID != all[0].ID {
		t.Fatalf("by id: %+v", one)
	}
	if s.Sessions(SessionFilter{Backend: "nope"}) != nil {
		t.Fatal("a backend without sessions listed some")
	}

	// A zero filter kicks nothing (ending everything is a drain's job).
	if n := s.Kick(context.Background(), SessionFilter{}, "x", 0); n != 0 {
		t.Fatalf("zero filter kicked %d", n)
	}
	if n := s.Kick(context.Background(), SessionFilter{User: "alice@example.com"}, "Moved, reconnect.", 0); n != 2 {
		t.Fatalf("kicked %d of alice's 2 sessions", n)
	}
	for _, a := range []*lineConn{alice1, alice2} {
		if got := readLine(t, a.br); got != "* BYE [UNAVAILABLE] Moved, reconnect.\r\n" {
			t.Fatalf("kicked session got %q", got)
		}
		if _, err := a.br.ReadString('\n'); !errors.Is(err, io.EOF) && !isReset(err) {
			t.Fatalf("kicked session still open: %v", err)
		}
	}
	// bob carries on.
	bob.c.Write([]byte("still\r\n"))
	if got := readLine(t, bob.br); got != "still\r\n" {
		t.Fatalf("bob after the kick: %q", got)
	}
	if left := s.Sessions(SessionFilter{}); len(left) != 1 || left[0].User != "bob" {
		t.Fatalf("after the kick: %+v", left)
	}
	// By backend, with a deadline that the session meets.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if n := s.Kick(ctx, SessionFilter{Backend: "b-bob"}, "Backend maintenance.", 0); n != 1 {
		t.Fatalf("kicked %d by backend", n)
	}
	if got := readLine(t, bob.br); got != "* BYE [UNAVAILABLE] Backend maintenance.\r\n" {
		t.Fatalf("bob got %q", got)
	}
}

package node

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// recordingAffinity records binds and their ends.
type recordingAffinity struct {
	mu    sync.Mutex
	binds []string // "user backend steered"
	live  map[string]int
}

func (a *recordingAffinity) Bind(user, backend string, steered bool) func() {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := user + " " + backend
	if steered {
		s += " steered"
	}
	a.binds = append(a.binds, s)
	a.live[user+" "+backend]++
	return func() {
		a.mu.Lock()
		a.live[user+" "+backend]--
		a.mu.Unlock()
	}
}

func (a *recordingAffinity) snapshot() ([]string, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, v := range a.live {
		n += v
	}
	return slices.Clone(a.binds), n
}

// A relayed session from a shared_storage pool binds the user's affinity
// to its backend until it ends; other sessions do not bind.
func TestSessionsBindAffinity(t *testing.T) {
	engine, err := relay.NewEngine()
	if err != nil {
		t.Fatal(err)
	}
	aff := &recordingAffinity{live: map[string]int{}}
	env := &session.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Affinity: aff}
	s := NewServer(Config{Listeners: []ListenerConfig{{Name: "l", Address: "127.0.0.1:0", Protocol: routing.IMAP,
		Limits: session.DefaultLimits(routing.IMAP)}}}, env,
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
	addr := s.Addrs()["l"].String()
	login := func(line string) *lineConn {
		c, br := dial(t, addr)
		readLine(t, br)
		c.Write([]byte(line + "\r\n"))
		if got := readLine(t, br); got != "OK\r\n" {
			t.Fatalf("%s: %q", line, got)
		}
		return &lineConn{c, br}
	}
	alice := login("login alice shared")
	bob := login("login bob")
	carol := login("login carol steered")
	// The hand-off follows the client's OK (the test handler writes it
	// first): wait until all three are relayed.
	waitUntil(t, "the three sessions relayed", func() bool { return len(s.Sessions(SessionFilter{})) == 3 })
	binds, live := aff.snapshot()
	slices.Sort(binds)
	if !slices.Equal(binds, []string{"alice b-alice", "carol b-carol steered"}) || live != 2 {
		t.Fatalf("binds %q, %d live", binds, live)
	}
	alice.c.Close()
	bob.c.Close()
	waitUntil(t, "alice's session unbound", func() bool { _, n := aff.snapshot(); return n == 1 })
	// A kicked session unbinds too.
	if n := s.Kick(context.Background(), SessionFilter{User: "carol"}, "moved", 0); n != 1 {
		t.Fatalf("kicked %d", n)
	}
	waitUntil(t, "carol's session unbound", func() bool { _, n := aff.snapshot(); return n == 0 })
	carol.c.Close()
}

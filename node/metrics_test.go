package node

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// recorder is an Observer that keeps every event.
type recorder struct {
	mu        sync.Mutex
	listeners []string
	refused   []string
	preauth   []string // end reasons
	started   []string // backend ids
	ended     []relay.Stats
}

func (r *recorder) Listener(st *ListenerStats) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.listeners = append(r.listeners, st.Name)
}

func (r *recorder) Refused(_ *ListenerStats, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refused = append(r.refused, reason)
}

func (r *recorder) PreauthEnded(_ *ListenerStats, _ *session.Client, end session.End) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.preauth = append(r.preauth, end.Reason)
}

func (r *recorder) SessionStarted(_ *ListenerStats, h *session.Handoff) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.started = append(r.started, h.BackendID)
}

func (r *recorder) SessionEnded(_ *ListenerStats, _ *session.Handoff, st relay.Stats) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ended = append(r.ended, st)
}

func (r *recorder) snapshot() recorder {
	r.mu.Lock()
	defer r.mu.Unlock()
	return recorder{
		listeners: append([]string(nil), r.listeners...), refused: append([]string(nil), r.refused...),
		preauth: append([]string(nil), r.preauth...), started: append([]string(nil), r.started...),
		ended: append([]relay.Stats(nil), r.ended...),
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestObserverAndListenerStats(t *testing.T) {
	engine, err := relay.NewEngine()
	if err != nil {
		t.Fatal(err)
	}
	lim := session.DefaultLimits(routing.IMAP)
	lim.PreAuthTimeout = 300 * time.Millisecond
	cfg := Config{MaxConnectionsPerIP: 1, Listeners: []ListenerConfig{
		{Name: "l", Address: "127.0.0.1:0", Protocol: routing.IMAP, TLS: routing.TLSNone, Limits: lim},
	}}
	env := &session.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s := NewServer(cfg, env, map[routing.Protocol]session.Handler{routing.IMAP: echoHandler{echoBackend(t)}}, nil, engine)
	rec := &recorder{}
	s.SetObserver(rec)
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
	all := s.ListenerStats()
	if len(all) != 1 || all[0].Name != "l" || all[0].Protocol != routing.IMAP {
		t.Fatalf("listener stats: %+v", all)
	}
	st := all[0]
	if got := rec.snapshot().listeners; len(got) != 1 || got[0] != "l" {
		t.Fatalf("listener announced %v", got)
	}

	// One client before login; a second from the same address is refused.
	c1, br1 := dial(t, addr)
	readLine(t, br1)
	if st.Preauth.Load() != 1 || st.Accepted.Load() != 1 {
		t.Fatalf("preauth %d accepted %d", st.Preauth.Load(), st.Accepted.Load())
	}
	_, br2 := dial(t, addr)
	readLine(t, br2)
	waitUntil(t, "the refusal", func() bool { return len(rec.snapshot().refused) == 1 })
	if got := rec.snapshot().refused[0]; got != RefusedMaxConnectionsPerIP {
		t.Fatalf("refused for %q", got)
	}
	if st.Accepted.Load() != 2 || st.Preauth.Load() != 1 {
		t.Fatalf("after refusal: accepted %d preauth %d", st.Accepted.Load(), st.Preauth.Load())
	}

	// Login: the session moves from preauth to relayed; bytes are counted
	// while it runs, not only when it ends.
	c1.Write([]byte("login\r\n"))
	if got := readLine(t, br1); got != "OK\r\n" {
		t.Fatalf("login: %q", got)
	}
	waitUntil(t, "the relay", func() bool { return st.Relayed.Load() == 1 })
	if st.Preauth.Load() != 0 {
		t.Fatalf("preauth %d after login", st.Preauth.Load())
	}
	const msg = "hello through the relay\r\n"
	c1.Write([]byte(msg))
	if got := readLine(t, br1); got != msg {
		t.Fatalf("echo: %q", got)
	}
	waitUntil(t, "byte counters", func() bool {
		return st.Bytes.ClientToBackend.Load() == int64(len(msg)) && st.Bytes.BackendToClient.Load() == int64(len(msg))
	})
	if got := rec.snapshot().started; len(got) != 1 || got[0] != "b" {
		t.Fatalf("sessions started: %v", got)
	}
	c1.Close()
	waitUntil(t, "the session end", func() bool { return len(rec.snapshot().ended) == 1 })
	if st.Relayed.Load() != 0 {
		t.Fatalf("relayed %d after close", st.Relayed.Load())
	}
	if e := rec.snapshot().ended[0]; e.ClientToBackend != int64(len(msg)) || e.Reason == "" {
		t.Fatalf("session end: %+v", e)
	}

	// Before login: a client that hangs up, one that times out.
	c3, br3 := dial(t, addr)
	readLine(t, br3)
	c3.Close()
	waitUntil(t, "client_closed", func() bool { return len(rec.snapshot().preauth) == 1 })
	_, br4 := dial(t, addr)
	readLine(t, br4)
	waitUntil(t, "timeout", func() bool { return len(rec.snapshot().preauth) == 2 })
	if got := rec.snapshot().preauth; got[0] != session.EndClientClosed || got[1] != session.EndTimeout {
		t.Fatalf("pre-login end reasons %v", got)
	}
	if st.Preauth.Load() != 0 || st.Relayed.Load() != 0 || st.Accepted.Load() != 4 {
		t.Fatalf("final: preauth %d relayed %d accepted %d", st.Preauth.Load(), st.Relayed.Load(), st.Accepted.Load())
	}
}

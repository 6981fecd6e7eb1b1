package session

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/routing"
)

func TestRouteUserAndAuthUser(t *testing.T) {
	cases := []struct {
		creds       Credentials
		sep         string
		route, auth string
	}{
		{Credentials{User: "alice"}, "", "alice", "alice"},
		{Credentials{User: "alice"}, "*", "alice", "alice"},
		{Credentials{User: "alice*admin"}, "", "alice*admin", "alice*admin"}, // master logins off
		{Credentials{User: "alice*admin"}, "*", "alice", "admin"},
		{Credentials{User: "Alice@Example.org*admin@example.org"}, "*", "Alice@Example.org", "admin@example.org"},
		{Credentials{User: "alice*admin*x"}, "*", "alice", "admin*x"}, // the first separator splits (Dovecot)
		{Credentials{User: "alice%admin"}, "%", "alice", "admin"},
		{Credentials{User: "*admin"}, "*", "*admin", "*admin"}, // no user: not a master login
		{Credentials{User: "alice*"}, "*", "alice*", "alice*"}, // no master
		// A SASL authorization identity names the mailbox; the
		// authentication identity logs in.
		{Credentials{AuthzID: "bob", User: "admin"}, "", "bob", "admin"},
		{Credentials{AuthzID: "bob", User: "admin"}, "*", "bob", "admin"},
		{Credentials{AuthzID: "bob", User: "carol*admin"}, "*", "bob", "carol*admin"},
	}
	for _, c := range cases {
		if got := c.creds.RouteUser(c.sep); got != c.route {
			t.Errorf("%+v sep %q: RouteUser %q, want %q", c.creds, c.sep, got, c.route)
		}
		if got := c.creds.AuthUser(c.sep); got != c.auth {
			t.Errorf("%+v sep %q: AuthUser %q, want %q", c.creds, c.sep, got, c.auth)
		}
	}
	var env *Env
	if env.MasterSeparator() != "" {
		t.Error("nil Env has a separator")
	}
	env = &Env{}
	if env.MasterSeparator() != "" {
		t.Error("a new Env has a separator")
	}
	env.SetMasterSeparator("*")
	if env.MasterSeparator() != "*" {
		t.Error("SetMasterSeparator")
	}
}

// recordingRouter answers from a table and keeps the user names it was
// asked about.
type recordingRouter struct {
	mu    sync.Mutex
	asked []string
	r     routing.Router
}

func (r *recordingRouter) Route(req routing.Request) (routing.Route, error) {
	r.mu.Lock()
	r.asked = append(r.asked, req.User)
	r.mu.Unlock()
	return r.r.Route(req)
}

func (r *recordingRouter) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.asked) == 0 {
		return ""
	}
	return r.asked[len(r.asked)-1]
}

// A pool of two backends and two users pinned one to each: where a login
// lands says which user it was routed as.
func twoBackendRouter(t *testing.T, portA, portB int) *recordingRouter {
	t.Helper()
	tbl, err := routing.NewTable(routing.TableSpec{
		Backends: []routing.Backend{{ID: "a", Host: "127.0.0.1", IMAPPort: portA}, {ID: "b", Host: "127.0.0.1", IMAPPort: portB}},
		Pools:    []routing.Pool{{Name: "p", Backends: []string{"a", "b"}}},
		Users: map[string]routing.Target{
			"alice": {Backend: "a"}, "bob": {Backend: "b"},
			"admin": {Backend: "b"}, "alice*admin": {Backend: "b"}, // what a wrong split would find
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &recordingRouter{r: routing.NewStatic(tbl)}
}

func TestRouteDirectorMasterAndAuthzid(t *testing.T) {
	rr := twoBackendRouter(t, 1143, 2143)
	env := &Env{}
	c := &Client{Listener: &Listener{Protocol: routing.IMAP}, Env: env}
	direct := func(creds Credentials) *Target {
		t.Helper()
		tg, err := RouteDirector{Router: rr}.Direct(context.Background(), &Attempt{Client: c, Creds: creds})
		if err != nil {
			t.Fatalf("%+v: %v", creds, err)
		}
		if tg.Creds != creds {
			t.Fatalf("the backend would get %+v, the client gave %+v", tg.Creds, creds)
		}
		return tg
	}
	// Master logins off: the name is a user of its own.
	if tg := direct(Credentials{Mechanism: "LOGIN", User: "alice*admin", Password: "pw"}); tg.Backend.ID != "b" || rr.last() != "alice*admin" {
		t.Fatalf("separator unset: routed as %q to %s", rr.last(), tg.Backend.ID)
	}
	env.SetMasterSeparator("*")
	for _, creds := range []Credentials{
		{Mechanism: "LOGIN", User: "alice*admin", Password: "pw"},
		{Mechanism: "USER", User: "alice*admin", Password: "pw"},
		{Mechanism: "PLAIN", AuthzID: "alice", User: "admin", Password: "pw"},
		{Mechanism: "PLAIN", AuthzID: "alice", User: "bob*admin", Password: "pw"},
	} {
		if tg := direct(creds); tg.Backend.ID != "a" || rr.last() != "alice" {
			t.Errorf("%+v: routed as %q to %s, want alice's backend a", creds, rr.last(), tg.Backend.ID)
		}
	}
	if tg := direct(Credentials{Mechanism: "PLAIN", User: "bob", Password: "pw"}); tg.Backend.ID != "b" || rr.last() != "bob" {
		t.Errorf("plain login routed as %q to %s", rr.last(), tg.Backend.ID)
	}
}

// throttleRecorder is a Throttle that lets everything through and keeps
// the user names it was asked about.
type throttleRecorder struct {
	mu    sync.Mutex
	users []string
}

type noopAttempt struct{}

func (noopAttempt) Failed() time.Duration { return 0 }
func (noopAttempt) Succeeded()            {}
func (noopAttempt) Release()              {}

func (tr *throttleRecorder) Begin(_ context.Context, _ netip.Addr, user string) (ThrottleAttempt, string) {
	tr.mu.Lock()
	tr.users = append(tr.users, user)
	tr.mu.Unlock()
	return noopAttempt{}, ""
}

// acceptAll is a backend port that accepts connections and holds them.
func acceptAll(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().(*net.TCPAddr).Port
}

// A whole login as "alice*admin": routed to alice's backend, the backend
// login sent the name as the client gave it, the throttle counting the
// master's password guesses under "admin", the session and the log line
// belonging to alice's mailbox with the login name beside it.
func TestLoginMasterUser(t *testing.T) {
	rr := twoBackendRouter(t, acceptAll(t), acceptAll(t))
	th := &throttleRecorder{}
	var ev LoginEvent
	env := &Env{Director: RouteDirector{Router: rr}, Dialer: &Dialer{}, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Throttle: th, OnLogin: func(_ *Client, e LoginEvent) { ev = e }}
	env.SetMasterSeparator("*")
	lim := DefaultLimits(routing.IMAP)
	lim.AuthFailureDelay = 0
	c := &Client{Listener: &Listener{Protocol: routing.IMAP, Limits: lim}, Env: env, Log: env.Log,
		Remote: netip.MustParseAddrPort("198.51.100.7:4242"), Started: time.Now()}
	var sent Credentials
	var backend string
	login := func(_ context.Context, be *netx.Stream, tg *Target) ([]byte, error) {
		sent, backend = tg.Creds, tg.Backend.ID
		return []byte("a OK\r\n"), nil
	}
	out := c.Login(context.Background(), Credentials{Mechanism: "LOGIN", User: "alice*admin", Password: "masterpw"}, login)
	if out.Result != ResultOK || out.Handoff == nil {
		t.Fatalf("login: %+v", out)
	}
	defer out.Handoff.Backend.Close()
	if backend != "a" || sent.User != "alice*admin" || sent.Password != "masterpw" {
		t.Errorf("backend %s got %+v; want alice's backend a with the credentials as given", backend, sent)
	}
	if out.Handoff.User != "alice" || out.Handoff.BackendID != "a" {
		t.Errorf("handoff user %q backend %s", out.Handoff.User, out.Handoff.BackendID)
	}
	if len(th.users) != 1 || th.users[0] != "admin" {
		t.Errorf("throttle asked about %q, want the master admin", th.users)
	}
	if ev.User != "alice" || ev.Login != "alice*admin" || ev.BackendID != "a" {
		t.Errorf("login event %+v", ev)
	}

	// A SASL authorization identity: the same, the authentication
	// identity throttled and logged.
	out = c.Login(context.Background(), Credentials{Mechanism: "PLAIN", AuthzID: "alice", User: "admin", Password: "masterpw"}, login)
	if out.Result != ResultOK {
		t.Fatalf("authzid login: %+v", out)
	}
	defer out.Handoff.Backend.Close()
	if backend != "a" || sent.AuthzID != "alice" || sent.User != "admin" || out.Handoff.User != "alice" {
		t.Errorf("authzid: backend %s got %+v, handoff %q", backend, sent, out.Handoff.User)
	}
	if th.users[1] != "admin" || ev.User != "alice" || ev.Login != "admin" {
		t.Errorf("authzid: throttle %q, event %+v", th.users, ev)
	}

	// An ordinary login has no separate login name.
	out = c.Login(context.Background(), Credentials{Mechanism: "LOGIN", User: "bob", Password: "pw"}, login)
	if out.Result != ResultOK {
		t.Fatalf("bob: %+v", out)
	}
	defer out.Handoff.Backend.Close()
	if backend != "b" || ev.User != "bob" || ev.Login != "" || th.users[2] != "bob" {
		t.Errorf("bob: backend %s, event %+v, throttle %q", backend, ev, th.users)
	}
}

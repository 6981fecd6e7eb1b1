package session

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/portico-mail/portico/routing"
)

type routeErr struct{ err error }

func (r routeErr) Route(routing.Request) (routing.Route, error) { return routing.Route{}, r.err }

// Only "no rule for this user" looks like a wrong password (so user names
// cannot be probed); a table that is not caught up yet, or a backend that
// is down, is the proxy's condition and the client is told to come back.
func TestRouteDirectorRefusals(t *testing.T) {
	cases := []struct {
		err  error
		kind RefusalKind
	}{
		{routing.ErrNoRoute, RefuseAuth},
		{routing.ErrNotReady, RefuseUnavailable},
		{fmt.Errorf("%w: backend b is down", routing.ErrUnavailable), RefuseUnavailable},
	}
	c := &Client{Listener: &Listener{Protocol: routing.IMAP}}
	for _, tc := range cases {
		_, err := RouteDirector{Router: routeErr{tc.err}}.Direct(context.Background(), &Attempt{Client: c, Creds: Credentials{User: "alice"}})
		var ref *Refusal
		if !errors.As(err, &ref) || ref.Kind != tc.kind {
			t.Errorf("%v: refusal %+v, want kind %d", tc.err, ref, tc.kind)
		}
	}
}

type routeTo routing.Route

func (r routeTo) Route(routing.Request) (routing.Route, error) { return routing.Route(r), nil }

// The route's shared storage and affinity steering reach the target (and
// from there the hand-off, where the node binds the user's affinity).
func TestRouteDirectorAffinity(t *testing.T) {
	c := &Client{Listener: &Listener{Protocol: routing.IMAP}}
	b := &routing.Backend{ID: "b"}
	for _, r := range []routing.Route{{Backend: b}, {Backend: b, SharedStorage: true}, {Backend: b, SharedStorage: true, Steered: true}} {
		tg, err := RouteDirector{Router: routeTo(r)}.Direct(context.Background(), &Attempt{Client: c, Creds: Credentials{User: "alice"}})
		if err != nil || tg.Backend != b || tg.SharedStorage != r.SharedStorage || tg.Steered != r.Steered {
			t.Errorf("route %+v: target %+v %v", r, tg, err)
		}
	}
}

// A rule's rename (Perdition's "user: newname@host") changes the name the
// backend login uses: the user's, or the authorization identity's when a
// master user logs in as the user; the password and the authentication
// identity of a master login are the client's.
func TestRouteDirectorRename(t *testing.T) {
	c := &Client{Listener: &Listener{Protocol: routing.IMAP}}
	b := &routing.Backend{ID: "b"}
	cases := []struct {
		login string
		in    Credentials
		want  Credentials
	}{
		{"", Credentials{User: "alice", Password: "pw"}, Credentials{User: "alice", Password: "pw"}},
		{"alice.smith", Credentials{User: "alice", Password: "pw"}, Credentials{User: "alice.smith", Password: "pw"}},
		{"alice.smith", Credentials{Mechanism: "PLAIN", AuthzID: "alice", User: "master", Password: "pw"},
			Credentials{Mechanism: "PLAIN", AuthzID: "alice.smith", User: "master", Password: "pw"}},
	}
	for _, tc := range cases {
		tg, err := RouteDirector{Router: routeTo(routing.Route{Backend: b, Login: tc.login})}.Direct(context.Background(), &Attempt{Client: c, Creds: tc.in})
		if err != nil || tg.Creds != tc.want {
			t.Errorf("login %q, %+v: backend gets %+v (%v), want %+v", tc.login, tc.in, tg.Creds, err, tc.want)
		}
	}
	// A master login "user*master" keeps its master part.
	for in, want := range map[string]string{"alice*admin": "alice.smith*admin", "alice": "alice.smith", "*admin": "alice.smith"} {
		if got := renamed(Credentials{User: in, Password: "pw"}, "alice.smith", "*"); got.User != want || got.Password != "pw" {
			t.Errorf("%s: %+v, want %s", in, got, want)
		}
	}
}

// ctxRouter is an on-miss lookup: it records the context's deadline and
// answers as told.
type ctxRouter struct {
	r        routing.Route
	err      error
	user     string
	deadline bool
}

func (c *ctxRouter) RouteContext(ctx context.Context, req routing.Request) (routing.Route, error) {
	c.user = req.User
	_, c.deadline = ctx.Deadline()
	return c.r, c.err
}

// With a Lookup (an on-miss directory lookup) the director routes through
// it with the login's context, and a source that could not answer
// (ErrUnavailable) is "try again later", never a failed password.
func TestRouteDirectorLookup(t *testing.T) {
	c := &Client{Listener: &Listener{Protocol: routing.IMAP}}
	b := &routing.Backend{ID: "b"}
	lk := &ctxRouter{r: routing.Route{Backend: b, Login: "n"}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tg, err := RouteDirector{Router: routeErr{routing.ErrNoRoute}, Lookup: lk}.Direct(ctx, &Attempt{Client: c, Creds: Credentials{User: "alice"}})
	if err != nil || tg.Backend != b || tg.Creds.User != "n" || lk.user != "alice" || !lk.deadline {
		t.Fatalf("%+v %v %+v", tg, err, lk)
	}
	lk.err = fmt.Errorf("%w: on-miss lookup: directory source dir: connection refused", routing.ErrUnavailable)
	_, err = RouteDirector{Router: routeTo(routing.Route{Backend: b}), Lookup: lk}.Direct(ctx, &Attempt{Client: c, Creds: Credentials{User: "alice"}})
	var ref *Refusal
	if !errors.As(err, &ref) || ref.Kind != RefuseUnavailable {
		t.Fatalf("source down: %v", err)
	}
}

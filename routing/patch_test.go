package routing

import (
	"errors"
	"strings"
	"testing"
)

func TestParseBackendPatch(t *testing.T) {
	p, err := ParseBackendPatch("b1", []byte(`{"state": "draining"}`))
	if err != nil || p.State == nil || *p.State != StateDraining || p.ID != "b1" {
		t.Fatalf("state patch: %+v %v", p, err)
	}
	if p.Host != nil || p.Weight != nil || p.TLS != nil || p.Forward != nil || p.IMAPPort != nil {
		t.Fatalf("fields not given are set: %+v", p)
	}
	p, err = ParseBackendPatch("b1", []byte(`{"id": "b1", "weight": 5, "host": "10.0.0.9", "tls_server_name": null, "imap_port": 0}`))
	if err != nil || *p.Weight != 5 || *p.Host != "10.0.0.9" || p.TLSServerName == nil || *p.TLSServerName != "" ||
		p.IMAPPort == nil || *p.IMAPPort != 0 || p.State != nil {
		t.Fatalf("several fields: %+v %v", p, err)
	}
	if p, err := ParseBackendPatch("b1", []byte(`{}`)); err != nil || !p.IsEmpty() {
		t.Fatalf("empty patch: %+v %v", p, err)
	}
	for _, c := range []struct{ body, want string }{
		{`{"nope": 1}`, `unknown field "nope" (known: forward, host, imap_port,`},
		{`{"weight": "x"}`, `field "weight": want an integer, got "x"`},
		{`{"tls_insecure_skip_verify": "yes"}`, `field "tls_insecure_skip_verify": want true or false`},
		{`{"host": 7}`, `field "host": want a string, got 7`},
		{`{"id": "b2"}`, "id in the body differs from the path"},
		{`[]`, "a backend patch is a JSON object"},
		{`null`, "a backend patch is a JSON object"},
		{`{} {}`, "one JSON object"},
		{``, "a backend patch is a JSON object"},
	} {
		_, err := ParseBackendPatch("b1", []byte(c.body))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrInvalid with %q", c.body, err, c.want)
		}
	}
}

func mustPatch(t *testing.T, id, body string) BackendPatch {
	t.Helper()
	p, err := ParseBackendPatch(id, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A patch changes exactly the fields it names, validated as a whole
// backend is; it goes through the replicated log like any command.
func TestBackendPatch(t *testing.T) {
	full := Backend{ID: "b1", Host: "10.0.0.1", IMAPPort: 143, POP3Port: 110, TLS: TLSStartTLS,
		TLSServerName: "imap.example", Forward: ForwardID, Weight: 3, State: StateActive}
	tab, err := EmptyTable().WithBackend(full)
	if err != nil {
		t.Fatal(err)
	}
	f := NewFSM()
	f.table.Store(tab)
	apply := func(p BackendPatch) error {
		t.Helper()
		if r := applyTo(t, f, f.AppliedIndex()+1, Command{Type: CmdPatchBackend, Patch: &p}); r != nil {
			return r.(error)
		}
		return nil
	}

	if err := apply(mustPatch(t, "b1", `{"state": "draining"}`)); err != nil {
		t.Fatal(err)
	}
	want := full
	want.State = StateDraining
	if got := *f.Table().Backend("b1"); got != want {
		t.Fatalf("after the state patch:\n%+v\nwant\n%+v", got, want)
	}
	// A new host keeps forward, tls and the rest (a PUT of the host alone
	// reset them).
	if err := apply(mustPatch(t, "b1", `{"host": "10.0.0.2"}`)); err != nil {
		t.Fatal(err)
	}
	want.Host = "10.0.0.2"
	if got := *f.Table().Backend("b1"); got != want {
		t.Fatalf("after the host patch:\n%+v\nwant\n%+v", got, want)
	}
	// null goes back to the default.
	if err := apply(mustPatch(t, "b1", `{"weight": null, "tls_server_name": null, "tls": null}`)); err != nil {
		t.Fatal(err)
	}
	want.Weight, want.TLSServerName, want.TLS = 1, "", TLSNone
	if got := *f.Table().Backend("b1"); got != want {
		t.Fatalf("after the null patch:\n%+v\nwant\n%+v", got, want)
	}

	before := canon(f.Table())
	for _, c := range []struct {
		p    BackendPatch
		kind error
		want string
	}{
		{mustPatch(t, "b1", `{"weight": -1}`), ErrInvalid, "weight -1 out of range"},
		{mustPatch(t, "b1", `{"state": "asleep"}`), ErrInvalid, `state "asleep" is not active, draining or disabled`},
		{mustPatch(t, "b1", `{"host": ""}`), ErrInvalid, "bad host"},
		{mustPatch(t, "b1", `{"imap_port": 0, "pop3_port": 0}`), ErrInvalid, "needs imap_port, pop3_port, sieve_port or submission_port"},
		{mustPatch(t, "nope", `{"weight": 2}`), ErrNotFound, `no backend "nope"`},
	} {
		err := apply(c.p)
		if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %v with %q", c.p, err, c.kind, c.want)
		}
	}
	if canon(f.Table()) != before {
		t.Fatal("a refused patch changed the table")
	}
}

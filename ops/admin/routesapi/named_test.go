package routesapi

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/portico-mail/portico/routing"
)

// named: a body without the name gets the path's; one with the same name
// goes on; one naming another is refused with 400.
func TestNamed(t *testing.T) {
	for _, tc := range []struct {
		key, body, path string
		ok              bool
		want            string
	}{
		{"id", "", "b1", true, "b1"},
		{"id", "b1", "b1", true, "b1"},
		{"id", "b2", "b1", false, "id in the body differs from the path"},
		{"name", "p2", "p1", false, "name in the body differs from the path"},
	} {
		r := httptest.NewRequest("PUT", "/x/"+tc.path, nil)
		r.SetPathValue(tc.key, tc.path)
		w := httptest.NewRecorder()
		field := tc.body
		ok := named(w, r, tc.key, &field)
		switch {
		case ok != tc.ok:
			t.Errorf("%+v: named = %v", tc, ok)
		case ok && (field != tc.want || w.Body.Len() != 0):
			t.Errorf("%+v: field %q, answered %q", tc, field, w.Body)
		case !ok && (w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), tc.want)):
			t.Errorf("%+v: %d %s", tc, w.Code, w.Body)
		}
	}
}

// found: the object as JSON, or 404 naming what is missing.
func TestFound(t *testing.T) {
	w := httptest.NewRecorder()
	found(w, &routing.Pool{Name: "p", Backends: []string{"b1"}}, "pool", "p")
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"name": "p"`) {
		t.Errorf("found: %d %s", w.Code, w.Body)
	}
	w = httptest.NewRecorder()
	found[routing.Backend](w, nil, "backend", `x"y`)
	if w.Code != 404 || !strings.Contains(w.Body.String(), `no backend \"x\\\"y\"`) {
		t.Errorf("missing: %d %s", w.Code, w.Body)
	}
}

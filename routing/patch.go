package routing

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ErrNotFound: the change names something the table does not hold (a
// patch of a backend that does not exist).
var ErrNotFound = errors.New("not found")

func notFound(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrNotFound, fmt.Sprintf(format, args...))
}

// BackendPatch changes some fields of an existing backend and leaves the
// others as they are: a nil field is not changed. Applying it reads the
// backend from the table it is applied to, so two patches of different
// fields never undo each other (a read-modify-write through the API
// would).
type BackendPatch struct {
	ID                 string        `json:"id"`
	Host               *string       `json:"host,omitempty"`
	IMAPPort           *int          `json:"imap_port,omitempty"`
	POP3Port           *int          `json:"pop3_port,omitempty"`
	SievePort          *int          `json:"sieve_port,omitempty"`
	SubmissionPort     *int          `json:"submission_port,omitempty"`
	TLS                *TLSMode      `json:"tls,omitempty"`
	TLSServerName      *string       `json:"tls_server_name,omitempty"`
	TLSCAFile          *string       `json:"tls_ca_file,omitempty"`
	InsecureSkipVerify *bool         `json:"tls_insecure_skip_verify,omitempty"`
	Forward            *ForwardMode  `json:"forward,omitempty"`
	Weight             *int          `json:"weight,omitempty"`
	State              *BackendState `json:"state,omitempty"`
}

// fields maps the JSON name of each Backend field a patch can change to
// the function that sets it from a merge patch's value.
func (p *BackendPatch) fields() map[string]func(json.RawMessage) error {
	return map[string]func(json.RawMessage) error{
		"host": field(&p.Host), "imap_port": field(&p.IMAPPort), "pop3_port": field(&p.POP3Port),
		"sieve_port": field(&p.SievePort), "submission_port": field(&p.SubmissionPort),
		"tls": field(&p.TLS), "tls_server_name": field(&p.TLSServerName), "tls_ca_file": field(&p.TLSCAFile),
		"tls_insecure_skip_verify": field(&p.InsecureSkipVerify), "forward": field(&p.Forward),
		"weight": field(&p.Weight), "state": field(&p.State),
	}
}

// field returns a setter of *dst from a merge patch's value: null sets
// T's zero value, which normaliseBackend turns into the default.
func field[T any](dst **T) func(json.RawMessage) error {
	return func(raw json.RawMessage) error {
		var v T
		if !bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			if err := json.Unmarshal(raw, &v); err != nil {
				return fmt.Errorf("want %s, got %s", kindOf(any(&v)), raw)
			}
		}
		*dst = &v
		return nil
	}
}

// ParseBackendPatch reads a JSON merge patch (RFC 7396) of backend id: an
// object with some of Backend's fields. A member set to null goes back to
// its default (as if a PUT had left it out). "id", if present, must be id.
// An unknown member or a value of the wrong type is ErrInvalid, naming the
// member.
func ParseBackendPatch(id string, data []byte) (BackendPatch, error) {
	p := BackendPatch{ID: id}
	var m map[string]json.RawMessage
	d := json.NewDecoder(bytes.NewReader(data))
	if err := d.Decode(&m); err != nil || m == nil {
		return p, invalid("a backend patch is a JSON object of the fields to change (%s)", jsonErr(err))
	}
	if d.More() {
		return p, invalid("a backend patch is one JSON object")
	}
	fields := p.fields()
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		raw := m[k]
		if k == "id" {
			var s string
			if json.Unmarshal(raw, &s) != nil || s != id {
				return p, invalid("id in the body differs from the path")
			}
			continue
		}
		set, ok := fields[k]
		if !ok {
			return p, invalid("unknown field %q (known: %s)", k, strings.Join(sortedKeys(fields), ", "))
		}
		if err := set(raw); err != nil {
			return p, invalid("field %q: %v", k, err)
		}
	}
	return p, nil
}

func jsonErr(err error) string {
	if err == nil {
		return "got null"
	}
	return err.Error()
}

func kindOf(v any) string {
	switch v.(type) {
	case *int:
		return "an integer"
	case *bool:
		return "true or false"
	}
	return "a string"
}

// IsEmpty reports whether p changes nothing.
func (p BackendPatch) IsEmpty() bool {
	return p == BackendPatch{ID: p.ID}
}

// Apply returns b with the patch's fields set.
func (p BackendPatch) Apply(b Backend) Backend {
	setIf(&b.Host, p.Host)
	setIf(&b.IMAPPort, p.IMAPPort)
	setIf(&b.POP3Port, p.POP3Port)
	setIf(&b.SievePort, p.SievePort)
	setIf(&b.SubmissionPort, p.SubmissionPort)
	setIf(&b.TLS, p.TLS)
	setIf(&b.TLSServerName, p.TLSServerName)
	setIf(&b.TLSCAFile, p.TLSCAFile)
	setIf(&b.InsecureSkipVerify, p.InsecureSkipVerify)
	setIf(&b.Forward, p.Forward)
	setIf(&b.Weight, p.Weight)
	setIf(&b.State, p.State)
	return b
}

func setIf[T any](dst *T, src *T) {
	if src != nil {
		*dst = *src
	}
}

// WithBackendPatch returns a table with the patch applied to its backend,
// validated as a whole backend is (ErrInvalid), or ErrNotFound when the
// table has no such backend.
func (t *Table) WithBackendPatch(p BackendPatch) (*Table, error) {
	cur := t.backends[p.ID]
	if cur == nil {
		return nil, notFound("no backend %q", p.ID)
	}
	return t.WithBackend(p.Apply(*cur))
}

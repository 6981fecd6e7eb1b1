package sqlsrc

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/portico-mail/portico/routing/source"
)

// Rows are scanned into []any, so that NULL and every column type reach
// this file as the driver gave them (string, []byte, int64, float64, bool,
// time.Time, nil), and a wrong type is a skipped row with a reason rather
// than a Scan error for the whole walk.

// text is a text column's value: a string or bytes (VARCHAR, TEXT, and
// every type over MySQL's text protocol) or an integer (a numeric user
// id). NULL is null; any other type is a problem.
func text(col string, v any) (s string, null bool, problem string) {
	switch v := v.(type) {
	case nil:
		return "", true, ""
	case string:
		return strings.TrimSpace(v), false, ""
	case []byte:
		return string(bytes.TrimSpace(v)), false, ""
	case int64:
		return strconv.FormatInt(v, 10), false, ""
	default:
		return "", false, fmt.Sprintf("%s is a %T, want text", col, v)
	}
}

// entryOf is an entry from the columns user, target[, login].
func entryOf(vals []any) (source.Entry, string) {
	var e source.Entry
	var null bool
	var p string
	if e.User, null, p = text("user", vals[0]); p != "" {
		return e, p
	} else if null || e.User == "" {
		return e, "user is NULL or empty"
	}
	if e.Target, null, p = text("target", vals[1]); p != "" {
		return e, p
	} else if null || e.Target == "" {
		return e, "target is NULL or empty"
	}
	if len(vals) > 2 {
		if e.Login, _, p = text("login", vals[2]); p != "" {
			return e, p
		}
	}
	return e, ""
}

// changeOf is a change from the columns user, target, login, deleted.
// A deleted user needs no target (a change table's LEFT JOIN finds none).
func changeOf(vals []any) (source.Change, string) {
	var c source.Change
	var null bool
	var p string
	if c.User, null, p = text("user", vals[0]); p != "" {
		return c, p
	} else if null || c.User == "" {
		return c, "user is NULL or empty"
	}
	if c.Deleted, p = boolean("deleted", vals[3]); p != "" {
		return c, p
	}
	if c.Deleted {
		return c, ""
	}
	if c.Target, null, p = text("target", vals[1]); p != "" {
		return c, p
	} else if null || c.Target == "" {
		return c, "target is NULL or empty (and deleted is false)"
	}
	if c.Login, _, p = text("login", vals[2]); p != "" {
		return c, p
	}
	return c, ""
}

// boolean reads a deleted flag: a boolean, an integer (0 is false), one
// of the usual spellings, or MySQL's BIT(1) (one byte 0 or 1).
func boolean(col string, v any) (bool, string) {
	switch v := v.(type) {
	case bool:
		return v, ""
	case int64:
		return v != 0, ""
	case []byte:
		if len(v) == 1 && v[0] <= 1 {
			return v[0] == 1, ""
		}
		return boolean(col, string(v))
	case string:
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "1", "t", "true", "y", "yes":
			return true, ""
		case "0", "f", "false", "n", "no":
			return false, ""
		}
		return false, fmt.Sprintf("%s is %q, want a boolean", col, v)
	case nil:
		return false, col + " is NULL"
	default:
		return false, fmt.Sprintf("%s is a %T, want a boolean", col, v)
	}
}

// A marker is a change marker or watermark, typed so that it is passed
// back to the database as what it was read as (an integer parameter for
// a serial id, a timestamp for a timestamp) and compared as such. As a
// watermark string it carries its kind: "int:42",
// "time:2026-12-03T09:00:00.123456Z", "float:1.5", "text:...".
type marker struct {
	kind string // "int", "float", "time", "text"
	i    int64
	f    float64
	t    time.Time
	s    string
}

// markerOf reads a marker column.
func markerOf(v any) (marker, error) {
	switch v := v.(type) {
	case int64:
		return marker{kind: "int", i: v}, nil
	case float64:
		if math.IsNaN(v) {
			return marker{}, errors.New("marker is NaN")
		}
		return marker{kind: "float", f: v}, nil
	case time.Time:
		return marker{kind: "time", t: v}, nil
	case []byte:
		return textMarker(string(v))
	case string:
		return textMarker(v)
	case nil:
		return marker{}, errors.New("marker is NULL (coalesce it, e.g. coalesce(max(id), 0))")
	default:
		return marker{}, fmt.Errorf("marker is a %T, want an integer, a timestamp or text", v)
	}
}

// textMarker is a marker the driver gave as text: MySQL's text protocol
// gives integers as text, so digits are read as an integer; a DATETIME
// (without parseTime) stays text, which MySQL compares as a DATETIME.
func textMarker(s string) (marker, error) {
	if s == "" {
		return marker{}, errors.New("marker is empty")
	}
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return marker{kind: "int", i: i}, nil
	}
	return marker{kind: "text", s: s}, nil
}

// String is the marker as a watermark.
func (m marker) String() string {
	switch m.kind {
	case "int":
		return "int:" + strconv.FormatInt(m.i, 10)
	case "float":
		return "float:" + strconv.FormatFloat(m.f, 'g', -1, 64)
	case "time":
		return "time:" + m.t.Format(time.RFC3339Nano)
	}
	return "text:" + m.s
}

// parseWatermark reads a watermark String made.
func parseWatermark(w string) (marker, bool) {
	kind, v, ok := strings.Cut(w, ":")
	if !ok {
		return marker{}, false
	}
	m := marker{kind: kind}
	var err error
	switch kind {
	case "int":
		m.i, err = strconv.ParseInt(v, 10, 64)
	case "float":
		m.f, err = strconv.ParseFloat(v, 64)
	case "time":
		m.t, err = time.Parse(time.RFC3339Nano, v)
	case "text":
		m.s = v
	default:
		return marker{}, false
	}
	return m, err == nil
}

// param is the marker as a query parameter.
func (m marker) param() any {
	switch m.kind {
	case "int":
		return m.i
	case "float":
		return m.f
	case "time":
		return m.t
	}
	return m.s
}

// before reports whether m sorts before n (markers of one column have one
// kind; of two kinds, neither is before the other).
func (m marker) before(n marker) bool {
	if m.kind != n.kind {
		return false
	}
	switch m.kind {
	case "int":
		return m.i < n.i
	case "float":
		return m.f < n.f
	case "time":
		return m.t.Before(n.t)
	}
	return m.s < n.s
}

package routesapi

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source"
)

// Import and export formats of user rules. Each parser reads operator
// input (POST /v1/import), so each has a fuzz target.
//
//   - popmap: Perdition's text popmap, one "user: [newname@]server" a line,
//     where server is a backend id, or the host or host:port of exactly one
//     backend, or "pool:NAME" (a Portico extension, so that an export of
//     rules naming pools reads back); "newname@" renames the user for the
//     backend login, as Perdition does with --username_from_database.
//     Blank lines and '#' comments (a whole line, or after white space)
//     are skipped.
//   - csv: "user,target[,login[,source]]", target as a popmap server; a
//     first line starting "user," is a header; '#' lines are comments.
//   - json: an array of {"user", "backend" | "pool" | "server", "login",
//     "source"}.
//
// The source column or member that an export writes is informative: an
// import tags every rule with its own source.

// resolveServer maps a popmap server to a backend id (routing.Table.ResolveServer).
func resolveServer(s string, t *routing.Table) (string, error) {
	b, p, err := t.ResolveServer(s)
	if err == nil && p != "" {
		return "", fmt.Errorf("a pool (%q) where a backend is wanted", s)
	}
	return b, err
}

// parseTarget reads a CSV rule's target (a backend id, host[:port] or
// pool:NAME; its login comes in its own field).
func parseTarget(s string, t *routing.Table) (routing.Target, error) {
	var tg routing.Target
	var err error
	tg.Backend, tg.Pool, err = t.ResolveServer(s)
	return tg, err
}

// formatTarget is parseTarget's inverse for a backend id or a pool.
func formatTarget(tg routing.Target) string {
	if tg.Pool != "" {
		return "pool:" + tg.Pool
	}
	return tg.Backend
}

// parsePopmap reads a popmap (source.ParsePopmap, the one parser) and
// resolves each server against t.
func parsePopmap(b []byte, t *routing.Table) ([]routing.UserRoute, error) {
	var out []routing.UserRoute
	err := source.ParsePopmap(bytes.NewReader(b), func(_ int, e source.Entry) error {
		tg := routing.Target{Login: e.Login}
		var err error
		if tg.Backend, tg.Pool, err = t.ResolveServer(e.Target); err != nil {
			return err
		}
		out = append(out, routing.UserRoute{User: e.User, Target: tg})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func parseCSV(b []byte, t *routing.Table) ([]routing.UserRoute, error) {
	cr := csv.NewReader(bytes.NewReader(b))
	cr.FieldsPerRecord = -1
	cr.Comment = '#'
	cr.TrimLeadingSpace = true
	var out []routing.UserRoute
	for rec := 1; ; rec++ {
		fields, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("csv: %v", err)
		}
		line, _ := cr.FieldPos(0)
		if len(fields) < 2 || len(fields) > 4 {
			return nil, fmt.Errorf("csv line %d: want 2 to 4 fields (user,target[,login[,source]]), got %d", line, len(fields))
		}
		user, target := strings.TrimSpace(fields[0]), strings.TrimSpace(fields[1])
		if rec == 1 && strings.EqualFold(user, "user") {
			continue
		}
		if user == "" {
			return nil, fmt.Errorf("csv line %d: empty user", line)
		}
		tg, err := parseTarget(target, t)
		if err != nil {
			return nil, fmt.Errorf("csv line %d: %v", line, err)
		}
		if len(fields) > 2 {
			tg.Login = strings.TrimSpace(fields[2])
		}
		out = append(out, routing.UserRoute{User: user, Target: tg})
	}
	return out, nil
}

// jsonRule is one element of the JSON format.
type jsonRule struct {
	User    string `json:"user"`
	Backend string `json:"backend,omitempty"`
	Pool    string `json:"pool,omitempty"`
	Server  string `json:"server,omitempty"` // a backend id, host or host:port
	Login   string `json:"login,omitempty"`
	Source  string `json:"source,omitempty"` // informative (export)
}

func parseJSON(b []byte, t *routing.Table) ([]routing.UserRoute, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var rules []jsonRule
	if err := d.Decode(&rules); err != nil {
		return nil, fmt.Errorf("json: want an array of {\"user\", \"backend\" | \"pool\" | \"server\", \"login\"}: %v", err)
	}
	if d.More() {
		return nil, errors.New("json: want one array")
	}
	out := make([]routing.UserRoute, 0, len(rules))
	for i, r := range rules {
		n := 0
		for _, s := range []string{r.Backend, r.Pool, r.Server} {
			if s != "" {
				n++
			}
		}
		if r.User == "" || n != 1 {
			return nil, fmt.Errorf("json rule %d: want a user and one of backend, pool or server", i+1)
		}
		tg := routing.Target{Backend: r.Backend, Pool: r.Pool, Login: r.Login}
		if r.Server != "" {
			id, err := resolveServer(r.Server, t)
			if err != nil {
				return nil, fmt.Errorf("json rule %d: %v", i+1, err)
			}
			tg.Backend = id
		}
		out = append(out, routing.UserRoute{User: r.User, Target: tg})
	}
	return out, nil
}

// parseRules reads data in format ("" is popmap).
func parseRules(format string, data []byte, t *routing.Table) ([]routing.UserRoute, error) {
	switch format {
	case "popmap", "":
		return parsePopmap(data, t)
	case "csv":
		return parseCSV(data, t)
	case "json":
		return parseJSON(data, t)
	}
	return nil, fmt.Errorf("format must be popmap, popmap.re, csv or json, not %q", format)
}

// writeRules writes rules in format.
func writeRules(w io.Writer, format string, rules []routing.UserRoute) error {
	bw := bufio.NewWriter(w)
	switch format {
	case "popmap", "":
		bw.WriteString("# user: [newname@]server (portico export)\n")
		for _, r := range rules {
			if !popmapSafe(r.User) || !popmapSafe(r.Login) {
				return fmt.Errorf("user %q: a popmap cannot hold this name (':', '#' or white space); export as csv or json", r.User)
			}
			v := formatTarget(r.Target)
			if r.Login != "" {
				v = r.Login + "@" + v
			}
			fmt.Fprintf(bw, "%s: %s\n", r.User, v)
		}
	case "csv":
		cw := csv.NewWriter(bw)
		_ = cw.Write([]string{"user", "target", "login", "source"})
		for _, r := range rules {
			_ = cw.Write([]string{r.User, formatTarget(r.Target), r.Login, r.Source})
		}
		cw.Flush()
		if err := cw.Error(); err != nil {
			return err
		}
	case "json":
		out := make([]jsonRule, len(rules))
		for i, r := range rules {
			out[i] = jsonRule{User: r.User, Backend: r.Backend, Pool: r.Pool, Login: r.Login, Source: r.Source}
		}
		enc := json.NewEncoder(bw)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
	default:
		return fmt.Errorf("format must be popmap, csv or json, not %q", format)
	}
	return bw.Flush()
}

// popmapSafe reports whether a name reads back from a popmap line as is.
func popmapSafe(s string) bool {
	return !strings.ContainsAny(s, ":# \t\r\n\v\f")
}

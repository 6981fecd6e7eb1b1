package routesapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source/syncer"
)

// ImportRequest is the body of POST /v1/import: the file's text as a JSON
// string (so that the request is application/json like every other
// state-changing call, see ops/admin), its format, and what to do.
type ImportRequest struct {
	Format string `json:"format"` // popmap (default), csv or json
	Data   string `json:"data"`
	// Source tags every rule written (routing.Target.Source), typically
	// the file's name. "" writes untagged rules, as before sources.
	Source string `json:"source,omitempty"`
	// Replace: also remove the rules tagged with Source that the data no
	// longer names. Rules the API, the configuration file or another
	// source wrote are never removed.
	Replace bool `json:"replace,omitempty"`
	// DryRun: compute and return the difference, write nothing.
	DryRun bool `json:"dry_run,omitempty"`
}

// Change is one changed rule of an import's difference.
type Change struct {
	User string         `json:"user"`
	From routing.Target `json:"from"`
	To   routing.Target `json:"to"`
}

// ImportResult is the answer of POST /v1/import. The lists are filled on a
// dry run only.
type ImportResult struct {
	OK        bool                `json:"ok"`
	DryRun    bool                `json:"dry_run,omitempty"`
	Source    string              `json:"source,omitempty"`
	Imported  int                 `json:"imported"` // rules in the data
	Added     int                 `json:"added"`
	Changed   int                 `json:"changed"`
	Removed   int                 `json:"removed"`
	Unchanged int                 `json:"unchanged"`
	AddedList []routing.UserRoute `json:"added_list,omitempty"`
	// RegexBefore and RegexAfter: a dry run of a regex popmap shows the
	// source's rules as they are and as they would be.
	RegexBefore  []routing.RegexRule `json:"regex_before,omitempty"`
	RegexAfter   []routing.RegexRule `json:"regex_after,omitempty"`
	ChangedList  []Change            `json:"changed_list,omitempty"`
	RemovedList  []routing.UserRoute `json:"removed_list,omitempty"`
	AppliedIndex uint64              `json:"applied_index,omitempty"`
}

// importDiff is what an import changes in table t.
type importDiff struct {
	puts    []routing.UserRoute // added or changed, in file order
	added   []routing.UserRoute
	changed []Change
	removed []routing.UserRoute
	same    int
}

// diffImport compares the rules of one source with the table: a rule is
// added (no rule for the user), changed (another target, rename or
// source) or unchanged; with replace, the table's rules tagged with
// source that routes does not name are removed. A user named twice takes
// its last rule.
func diffImport(t *routing.Table, source string, routes []routing.UserRoute, replace bool) importDiff {
	var d importDiff
	last := make(map[string]int, len(routes))
	for i, r := range routes {
		last[routing.NormalizeUser(r.User)] = i
	}
	for i, r := range routes {
		key := routing.NormalizeUser(r.User)
		if last[key] != i {
			continue
		}
		want := r.Target
		want.Source = source
		r = routing.UserRoute{User: key, Target: want}
		cur, ok := t.UserRoute(key)
		// The command carries the source once, not in every rule.
		put := routing.UserRoute{User: key, Target: r.Target}
		put.Source = ""
		switch {
		case !ok:
			d.added = append(d.added, r)
			d.puts = append(d.puts, put)
		case cur != want:
			d.changed = append(d.changed, Change{User: key, From: cur, To: want})
			d.puts = append(d.puts, put)
		default:
			d.same++
		}
	}
	if replace {
		for _, r := range t.UserRoutes("", "", 0) {
			if _, named := last[r.User]; !named && r.Source == source {
				d.removed = append(d.removed, r)
			}
		}
	}
	return d
}

// applyBatch writes one batch of a bulk import. A bulk import outlives
// elections: a batch that found no leader (each Apply waits an election
// out) is tried again, up to three times; batches are idempotent.
func (d *api) applyBatch(ctx context.Context, c routing.Command) error {
	err := d.Cluster.Apply(ctx, c)
	for retry := 0; errors.Is(err, cluster.ErrNoLeader) && retry < 3 && ctx.Err() == nil; retry++ {
		err = d.Cluster.Apply(ctx, c)
	}
	return err
}

// importRoutes takes user rules in bulk (formats.go). The import is
// validated completely first; then it is written in batches (a partial
// failure reports how far it got; a retry is safe because every write is a
// put or a prune of the source's own rules).
func (d *api) importRoutes(w http.ResponseWriter, r *http.Request) {
	var req ImportRequest
	if !admin.Decode(w, r, maxImportBody, &req) {
		return
	}
	format := req.Format
	if q := r.URL.Query().Get("format"); q != "" {
		if format != "" && format != q {
			admin.Error(w, 400, "format "+strconv.Quote(q)+" in the query differs from "+strconv.Quote(format)+" in the body")
			return
		}
		format = q
	}
	if req.Source != "" && !routing.ValidSource(req.Source) {
		admin.Error(w, 400, "source must be 1-128 bytes of UTF-8 without control characters")
		return
	}
	if strings.HasPrefix(req.Source, syncer.TagPrefix) {
		admin.Error(w, 400, "sources named "+syncer.TagPrefix+"... are the configured directory sources' (portico source sync NAME)")
		return
	}
	if req.Replace && req.Source == "" {
		admin.Error(w, 400, "replace needs a source: only the rules an import of that source wrote are removed")
		return
	}
	if req.Replace {
		// Decide what to prune on a table that holds every committed
		// write (the prune itself is decided again when applied).
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		err := d.Cluster.ConsistentRead(ctx)
		cancel()
		if err != nil {
			admin.Error(w, 503, err.Error())
			return
		}
	}
	t := d.FSM.Table()
	if format == formatRE {
		d.importRegexMap(w, r, t, req)
		return
	}
	routes, err := parseRules(format, []byte(req.Data), t)
	if err != nil {
		admin.Error(w, 400, err.Error())
		return
	}
	if _, err := t.WithUsers(routes); err != nil {
		admin.Error(w, statusOf(err), err.Error())
		return
	}
	diff := diffImport(t, req.Source, routes, req.Replace)
	res := ImportResult{OK: true, DryRun: req.DryRun, Source: req.Source, Imported: len(routes),
		Added: len(diff.added), Changed: len(diff.changed), Removed: len(diff.removed), Unchanged: diff.same}
	if req.DryRun {
		res.AddedList, res.ChangedList, res.RemovedList = diff.added, diff.changed, diff.removed
		admin.JSON(w, 200, res)
		return
	}
	legacy := req.Source == ""
	for _, r := range routes {
		legacy = legacy && r.Login == ""
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Minute)
	defer cancel()
	// Batches grouped by the table's shards: a command then copies the
	// few shards its users fall in, on every node, where a batch of a
	// file in name order touches every shard and copies the whole table
	// (routing.GroupByShard). The grouping is stable: a user the file
	// names twice keeps its last rule.
	canonical := func(r routing.UserRoute) string { return routing.NormalizeUser(r.User) }
	if legacy {
		routes = routing.GroupByShard(routes, canonical)
	} else {
		diff.puts = routing.GroupByShard(diff.puts, canonical)
		diff.removed = routing.GroupByShard(diff.removed, canonical)
	}
	if legacy {
		// Untagged rules without renames: the command every version
		// applies, all rules written as before sources.
		for done := 0; done < len(routes); {
			end := min(done+importBatch, len(routes))
			if err := d.applyBatch(ctx, routing.Command{Type: routing.CmdPutUsers, Users: routes[done:end]}); err != nil {
				admin.Error(w, statusOf(err), fmt.Sprintf("after %d of %d users: %v", done, len(routes), err))
				return
			}
			done = end
		}
	} else {
		for done := 0; done < len(diff.puts); {
			end := min(done+importBatch, len(diff.puts))
			if err := d.applyBatch(ctx, routing.Command{Type: routing.CmdImport, Source: req.Source, Users: diff.puts[done:end]}); err != nil {
				admin.Error(w, statusOf(err), fmt.Sprintf("after %d of %d added or changed users: %v", done, len(diff.puts), err))
				return
			}
			done = end
		}
		for done := 0; done < len(diff.removed); {
			end := min(done+importBatch, len(diff.removed))
			names := make([]string, 0, end-done)
			for _, r := range diff.removed[done:end] {
				names = append(names, r.User)
			}
			if err := d.applyBatch(ctx, routing.Command{Type: routing.CmdImport, Source: req.Source, Names: names}); err != nil {
				admin.Error(w, statusOf(err), fmt.Sprintf("all %d added or changed users written; after %d of %d removals: %v", len(diff.puts), done, len(diff.removed), err))
				return
			}
			done = end
		}
	}
	res.AppliedIndex = d.FSM.AppliedIndex()
	admin.JSON(w, 200, res)
}

// formatRE is the regex popmap's format name.
const formatRE = "popmap.re"

// importRegexMap replaces the source's regex popmap (an ordered list, so
// an import always replaces it whole, with or without replace).
func (d *api) importRegexMap(w http.ResponseWriter, r *http.Request, t *routing.Table, req ImportRequest) {
	if req.Source == "" {
		admin.Error(w, 400, "a regex popmap needs a source: its import replaces that source's rules")
		return
	}
	rules, err := parsePopmapRE([]byte(req.Data))
	if err != nil {
		admin.Error(w, 400, err.Error())
		return
	}
	next, err := t.WithRegexMap(req.Source, rules)
	if err != nil {
		admin.Error(w, statusOf(err), err.Error())
		return
	}
	before, after := sourceRegex(t, req.Source), sourceRegex(next, req.Source)
	res := ImportResult{OK: true, DryRun: req.DryRun, Source: req.Source, Imported: len(rules)}
	old := map[routing.RegexRule]int{}
	for _, x := range before {
		old[x]++
	}
	for _, x := range after {
		if old[x] > 0 {
			old[x]--
			res.Unchanged++
		} else {
			res.Added++
		}
	}
	res.Removed = len(before) - res.Unchanged
	if res.Added == 0 && res.Removed == 0 && !sameRules(before, after) {
		res.Changed = 1 // the same rules in another order
	}
	if req.DryRun {
		res.RegexBefore, res.RegexAfter = before, after
		admin.JSON(w, 200, res)
		return
	}
	if !sameRules(before, after) {
		ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
		defer cancel()
		if err := d.Cluster.Apply(ctx, routing.Command{Type: routing.CmdSetRegexMap, Source: req.Source, Regex: rules}); err != nil {
			admin.Error(w, statusOf(err), err.Error())
			return
		}
	}
	res.AppliedIndex = d.FSM.AppliedIndex()
	admin.JSON(w, 200, res)
}

func sourceRegex(t *routing.Table, source string) []routing.RegexRule {
	var out []routing.RegexRule
	for _, r := range t.RegexMap() {
		if r.Source == source {
			out = append(out, r)
		}
	}
	return out
}

func sameRules(a, b []routing.RegexRule) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// exportRoutes writes the user rules (?source=NAME: only that source's;
// source= empty: only the untagged ones) in ?format=popmap|csv|json.
func (d *api) exportRoutes(w http.ResponseWriter, r *http.Request, t *routing.Table) {
	q := r.URL.Query()
	format := q.Get("format")
	ctype := map[string]string{"": "text/plain; charset=utf-8", "popmap": "text/plain; charset=utf-8",
		"csv": "text/csv; charset=utf-8", "json": "application/json", formatRE: "text/plain; charset=utf-8"}[format]
	if ctype == "" {
		admin.Error(w, 400, "format must be popmap, popmap.re, csv or json")
		return
	}
	if format == formatRE {
		rules := t.RegexMap()
		if q.Has("source") {
			rules = sourceRegex(t, q.Get("source"))
		}
		var buf bytes.Buffer
		if err := writePopmapRE(&buf, rules); err != nil {
			admin.Error(w, 400, err.Error())
			return
		}
		w.Header().Set("Content-Type", ctype)
		_, _ = w.Write(buf.Bytes())
		return
	}
	rules := t.UserRoutes("", "", 0)
	if q.Has("source") {
		src := q.Get("source")
		kept := rules[:0]
		for _, r := range rules {
			if r.Source == src {
				kept = append(kept, r)
			}
		}
		rules = kept
	}
	// Written to a buffer first: an error (a name a popmap cannot hold)
	// must be an error status, not a truncated file.
	var buf bytes.Buffer
	if err := writeRules(&buf, format, rules); err != nil {
		admin.Error(w, 400, err.Error())
		return
	}
	w.Header().Set("Content-Type", ctype)
	w.WriteHeader(200)
	_, _ = w.Write(buf.Bytes())
}

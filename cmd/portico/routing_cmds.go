package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/ops/admin/routesapi"
	"github.com/portico-mail/portico/routing"
)

func init() {
	register(&command{name: "backend", summary: "manage backends (admin API)", subs: []*command{
		{name: "list", summary: "list the backends", setup: backendList},
		{name: "get", args: "ID", summary: "show one backend", setup: backendGet},
		{name: "set", args: "ID", summary: "change the fields given of a backend, or add it", setup: backendSet,
			about: "Only the flags given are sent (PATCH): --weight 3 changes the weight and nothing else. " +
				"A backend that does not exist yet is added with them, the other fields at their defaults (--host and a port are needed then)."},
		{name: "drain", args: "ID", summary: "stop new logins to a backend and end its sessions on every node", setup: backendDrain,
			about: "The backend's state becomes draining (replicated: no node routes a new login there), then every node of the cluster " +
				"ends its sessions on it at a response boundary (IMAP: * BYE [UNAVAILABLE]), spread over --spread so that the clients " +
				"do not all reconnect at once; they log in again wherever the routing table sends them now. " +
				"With --wait the command returns once no node has a session on the backend left. " +
				"Sessions that were logging in meanwhile are ended too. \"portico backend enable ID\" takes it back."},
		{name: "enable", args: "ID", summary: "make a backend active again (it takes new logins)", setup: backendState(routing.StateActive)},
		{name: "disable", args: "ID", summary: "take a backend out of service (no new logins; its sessions are not ended: drain does that)",
			setup: backendState(routing.StateDisabled)},
		{name: "delete", args: "ID", summary: "delete a backend", setup: deleteCmd("/v1/backends/")},
	}})
	register(&command{name: "pool", summary: "manage pools (admin API)", subs: []*command{
		{name: "list", summary: "list the pools", setup: poolList},
		{name: "get", args: "NAME", summary: "show one pool", setup: poolGet},
		{name: "set", args: "NAME", summary: "add a pool or replace it", setup: poolSet},
		{name: "delete", args: "NAME", summary: "delete a pool", setup: deleteCmd("/v1/pools/")},
	}})
	register(&command{name: "route", summary: "manage user routes (admin API)", subs: []*command{
		{name: "list", summary: "list user routes", setup: routeList},
		{name: "get", args: "USER", summary: "show a user's route", setup: routeGet},
		{name: "set", args: "USER", summary: "pin a user to a backend or a pool", setup: routeSet},
		{name: "delete", args: "USER", summary: "delete a user's route", setup: deleteCmd("/v1/routes/users/")},
		{name: "lookup", args: "USER", summary: "show where a login of the user would go, and by which rule", setup: routeLookup},
		{name: "default", args: "[POOL]", summary: "show the default pool, or set it", setup: routeDefault},
	}})
	register(&command{name: "domain", summary: "manage domain routes (admin API)", subs: []*command{
		{name: "list", summary: "list domain routes", setup: domainList},
		{name: "set", args: "DOMAIN", summary: "route a domain's users to a pool", setup: domainSet},
		{name: "delete", args: "DOMAIN", summary: "delete a domain route", setup: deleteCmd("/v1/routes/domains/")},
	}})
	register(&command{name: "import", args: "FILE", argFiles: true, summary: "bulk-import user routes (admin API)", setup: importCmd,
		about: "FILE is a popmap (Perdition's \"user: [newname@]server\" lines, '#' comments; newname renames the user for the backend login), " +
			"csv (user,target[,login]) or json ([{\"user\", \"backend\"|\"pool\"|\"server\", \"login\"}]); a server or target is a backend id, " +
			"the host or host:port of one backend, or pool:NAME. - reads standard input.\n\n" +
			"A popmap.re (Perdition's regex map: \"<regex>[:] [newname@]server\" lines, POSIX extended regexes, $1..$9 groups) " +
			"replaces the regex rules of its source; logins of users without a route of their own try them in order.\n\n" +
			"Every route written is tagged with --source (default: the file's base name). With --replace, the routes tagged with that " +
			"source that FILE no longer names are removed; routes set through the API, by the configuration file or by another source " +
			"are never removed. --dry-run prints what would be added, changed and removed, and writes nothing."})
	register(&command{name: "export", summary: "write the user routes as a popmap, csv or json file (admin API)", setup: exportCmd,
		about: "With --source, only the routes that import tagged with it: \"portico export --source NAME\" then " +
			"\"portico import --replace --source NAME\" of its output changes nothing. --format popmap.re writes the regex popmap's rules."})
	register(&command{name: "cluster", summary: "show the cluster (admin API)", subs: []*command{
		{name: "members", summary: "list the gossip members with their state, role and version", setup: clusterMembers},
		{name: "peers", summary: "list the raft peers", setup: clusterPeers},
		{name: "leader", summary: "show the raft leader", setup: clusterLeader},
	}})
	register(&command{name: "keygen", summary: "print a new gossip encryption key", setup: func(*flag.FlagSet) func([]string) error { return keygen }})
}

func newTab() *tabwriter.Writer { return tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0) }

// change sends a change (PUT, PATCH, DELETE) to the admin API and
// reports its outcome (done).
func (c *apiClient) change(method, path string, body any) error {
	raw, err := c.do(method, path, body, nil)
	if err == nil {
		done(c, raw)
	}
	return err
}

func done(c *apiClient, raw []byte) {
	if c.json {
		printJSON(raw)
		return
	}
	var r struct {
		Imported     int    `json:"imported"`
		AppliedIndex uint64 `json:"applied_index"`
	}
	_ = json.Unmarshal(raw, &r)
	if r.Imported > 0 {
		fmt.Printf("imported %d users (raft index %d)\n", r.Imported, r.AppliedIndex)
		return
	}
	fmt.Printf("ok (raft index %d)\n", r.AppliedIndex)
}

func consistentFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("consistent", false, "read through the leader (linearizable)")
}

func consistentQuery(consistent bool) string {
	if consistent {
		return "?consistent=true"
	}
	return ""
}

// show GETs path and prints the answer as JSON with --json, else with
// table, which decodes it.
func show[T any](c *apiClient, path string, table func(T) error) error {
	var v T
	raw, err := c.do("GET", path, nil, &v)
	if err != nil || c.json {
		printJSONIf(c, raw, err)
		return err
	}
	return table(v)
}

// readCmd is a command that only reads: the client's flags and
// --consistent, then read(client, consistent, args).
func readCmd(read func(c *apiClient, consistent bool, args []string) error) func(*flag.FlagSet) func([]string) error {
	return func(fs *flag.FlagSet) func([]string) error {
		client := clientFlags(fs)
		consistent := consistentFlag(fs)
		return func(args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			return read(c, *consistent, args)
		}
	}
}

// apiCmd is a command that takes only the client's flags.
func apiCmd(f func(c *apiClient, args []string) error) func(*flag.FlagSet) func([]string) error {
	return func(fs *flag.FlagSet) func([]string) error {
		client := clientFlags(fs)
		return func(args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			return f(c, args)
		}
	}
}

// deleteCmd is `... delete NAME` for the collection at prefix.
func deleteCmd(prefix string) func(*flag.FlagSet) func([]string) error {
	return apiCmd(func(c *apiClient, args []string) error {
		return c.change("DELETE", prefix+url.PathEscape(args[0]), nil)
	})
}

func printBackends(bs []routing.Backend) error {
	tw := newTab()
	fmt.Fprintln(tw, "ID\tHOST\tIMAP\tPOP3\tSIEVE\tSUBMISSION\tTLS\tFORWARD\tWEIGHT\tSTATE")
	for _, b := range bs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%d\t%s\n", b.ID, b.Host, b.IMAPPort, b.POP3Port, b.SievePort, b.SubmissionPort, b.TLS, b.Forward, b.Weight, b.State)
	}
	return tw.Flush()
}

var backendList = readCmd(func(c *apiClient, consistent bool, _ []string) error {
	return show(c, "/v1/backends"+consistentQuery(consistent), printBackends)
})

var backendGet = readCmd(func(c *apiClient, consistent bool, args []string) error {
	return show(c, "/v1/backends/"+url.PathEscape(args[0])+consistentQuery(consistent), func(b routing.Backend) error {
		return printBackends([]routing.Backend{b})
	})
})

func printJSONIf(c *apiClient, raw []byte, err error) {
	if err == nil && c.json {
		printJSON(raw)
	}
}

func printPools(ps []routing.Pool) error {
	tw := newTab()
	fmt.Fprintln(tw, "NAME\tBACKENDS\tSHARED STORAGE")
	for _, p := range ps {
		fmt.Fprintf(tw, "%s\t%s\t%v\n", p.Name, strings.Join(p.Backends, ","), p.SharedStorage)
	}
	return tw.Flush()
}

var poolList = readCmd(func(c *apiClient, consistent bool, _ []string) error {
	return show(c, "/v1/pools"+consistentQuery(consistent), printPools)
})

var poolGet = readCmd(func(c *apiClient, consistent bool, args []string) error {
	return show(c, "/v1/pools/"+url.PathEscape(args[0])+consistentQuery(consistent), func(p routing.Pool) error {
		return printPools([]routing.Pool{p})
	})
})

func poolSet(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	backends := fs.String("backends", "", "comma-separated backend `ids`: required")
	shared := fs.Bool("shared-storage", false, "every member can serve every user (reroute when one is down)")
	return func(args []string) error {
		if *backends == "" {
			return usageError{"usage: portico pool set NAME --backends a,b [--shared-storage]"}
		}
		c, err := client()
		if err != nil {
			return err
		}
		p := routing.Pool{Name: args[0], Backends: strings.Split(*backends, ","), SharedStorage: *shared}
		return c.change("PUT", "/v1/pools/"+url.PathEscape(p.Name), p)
	}
}

func printRoutes(rs []routing.UserRoute) error {
	tw := newTab()
	fmt.Fprintln(tw, "USER\tBACKEND\tPOOL\tLOGIN\tSOURCE")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.User, dash(r.Backend), dash(r.Pool), dash(r.Login), dash(r.Source))
	}
	return tw.Flush()
}

func routeList(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	consistent := consistentFlag(fs)
	prefix := fs.String("prefix", "", "list users starting with this `prefix`")
	limit := fs.Int("limit", 1000, "list at most this many")
	return func([]string) error {
		c, err := client()
		if err != nil {
			return err
		}
		q := url.Values{"prefix": {*prefix}, "limit": {fmt.Sprint(*limit)}}
		if *consistent {
			q.Set("consistent", "true")
		}
		return show(c, "/v1/routes/users?"+q.Encode(), printRoutes)
	}
}

var routeGet = readCmd(func(c *apiClient, consistent bool, args []string) error {
	return show(c, "/v1/routes/users/"+url.PathEscape(args[0])+consistentQuery(consistent), func(r routing.UserRoute) error {
		return printRoutes([]routing.UserRoute{r})
	})
})

func routeSet(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	backend := fs.String("backend", "", "pin the user to this backend `id`")
	pool := fs.String("pool", "", "route the user to this `pool`")
	login := fs.String("login", "", "log in to the backend as this `name` instead of the user's")
	return func(args []string) error {
		if (*backend == "") == (*pool == "") {
			return usageError{"usage: portico route set USER --backend ID | --pool NAME [--login NAME]"}
		}
		c, err := client()
		if err != nil {
			return err
		}
		return c.change("PUT", "/v1/routes/users/"+url.PathEscape(args[0]), routing.Target{Backend: *backend, Pool: *pool, Login: *login})
	}
}

func routeLookup(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	var protocol string
	choiceVar(fs, &protocol, "protocol", "imap", []string{"imap", "pop3", "sieve", "submission"}, "look up a login over this protocol")
	return func(args []string) error {
		c, err := client()
		if err != nil {
			return err
		}
		q := url.Values{"user": {args[0]}, "protocol": {protocol}}
		return show(c, "/v1/routes/lookup?"+q.Encode(), func(r map[string]any) error {
			fmt.Printf("%s -> %s (%s) via %s rule", r["user"], r["backend"], r["address"], r["rule"])
			if p, _ := r["pool"].(string); p != "" {
				fmt.Printf(", pool %s", p)
				if k, _ := r["hash_key"].(string); k != "" && k != string(routing.HashAddress) {
					fmt.Printf(" hashed on the %s", k)
				}
			}
			if l, _ := r["login"].(string); l != "" {
				fmt.Printf(", logs in as %s", l)
			}
			fmt.Println()
			return nil
		})
	}
}

func routeDefault(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	consistent := consistentFlag(fs)
	return func(args []string) error {
		c, err := client()
		if err != nil {
			return err
		}
		if len(args) == 0 {
			return show(c, "/v1/routes/default"+consistentQuery(*consistent), func(r struct {
				Pool string `json:"pool"`
			}) error {
				fmt.Println(dash(r.Pool))
				return nil
			})
		}
		return c.change("PUT", "/v1/routes/default", map[string]string{"pool": args[0]})
	}
}

var domainList = apiCmd(func(c *apiClient, _ []string) error {
	return show(c, "/v1/routes/domains", func(m map[string]string) error {
		tw := newTab()
		fmt.Fprintln(tw, "DOMAIN\tPOOL")
		for _, d := range sortedMapKeys(m) {
			fmt.Fprintf(tw, "%s\t%s\n", d, m[d])
		}
		return tw.Flush()
	})
})

func domainSet(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	pool := fs.String("pool", "", "`pool` for the domain's users: required")
	return func(args []string) error {
		if *pool == "" {
			return usageError{"usage: portico domain set DOMAIN --pool NAME"}
		}
		c, err := client()
		if err != nil {
			return err
		}
		return c.change("PUT", "/v1/routes/domains/"+url.PathEscape(args[0]), map[string]string{"pool": *pool})
	}
}

func importCmd(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	var format string
	choiceVar(fs, &format, "format", "popmap", []string{"popmap", "popmap.re", "csv", "json"},
		"popmap (\"user: [newname@]server\" lines), popmap.re (Perdition's regex map; the default for a file named *.re), csv (user,target[,login]) or json")
	source := fs.String("source", "", "tag the routes with this `name` (default: the file's base name)")
	replace := fs.Bool("replace", false, "remove the routes tagged with the source that FILE no longer names")
	dryRun := fs.Bool("dry-run", false, "print what would be added, changed and removed; write nothing")
	return func(args []string) error {
		var body []byte
		var err error
		src := *source
		if args[0] == "-" {
			body, err = io.ReadAll(os.Stdin)
		} else {
			body, err = os.ReadFile(args[0])
			if src == "" {
				src = filepath.Base(args[0])
			}
		}
		if err != nil {
			return err
		}
		if !utf8.Valid(body) {
			return fmt.Errorf("import: %s is not UTF-8 text", args[0])
		}
		formatSet := false
		fs.Visit(func(f *flag.Flag) { formatSet = formatSet || f.Name == "format" })
		if !formatSet && strings.HasSuffix(args[0], ".re") {
			format = "popmap.re"
		}
		if (*replace || format == "popmap.re") && src == "" {
			return usageError{"import --replace or of a popmap.re from standard input needs --source NAME"}
		}
		c, err := client()
		if err != nil {
			return err
		}
		var res routesapi.ImportResult
		raw, err := c.do("POST", "/v1/import", routesapi.ImportRequest{Format: format, Data: string(body), Source: src, Replace: *replace, DryRun: *dryRun}, &res)
		if err != nil {
			return err
		}
		if c.json {
			printJSON(raw)
			return nil
		}
		printImport(os.Stdout, res)
		return nil
	}
}

// printImport prints an import's outcome; a dry run's difference one
// route a line: "+" added, "~" changed (from -> to), "-" removed.
func printImport(w io.Writer, r routesapi.ImportResult) {
	for _, a := range r.AddedList {
		fmt.Fprintf(w, "+ %s: %s\n", a.User, targetString(a.Target))
	}
	for _, c := range r.ChangedList {
		fmt.Fprintf(w, "~ %s: %s -> %s\n", c.User, targetString(c.From), targetString(c.To))
	}
	for _, d := range r.RemovedList {
		fmt.Fprintf(w, "- %s: %s\n", d.User, targetString(d.Target))
	}
	if r.DryRun && (r.Added > 0 || r.Removed > 0 || r.Changed > 0) && (len(r.RegexBefore) > 0 || len(r.RegexAfter) > 0) {
		for _, x := range r.RegexBefore {
			fmt.Fprintf(w, "- %s: %s\n", x.Pattern, x.Replace)
		}
		for _, x := range r.RegexAfter {
			fmt.Fprintf(w, "+ %s: %s\n", x.Pattern, x.Replace)
		}
	}
	verb := "imported"
	if r.DryRun {
		verb = "dry run, nothing written:"
	}
	fmt.Fprintf(w, "%s %d users from source %s: %d added, %d changed, %d removed, %d unchanged", verb, r.Imported, dash(r.Source), r.Added, r.Changed, r.Removed, r.Unchanged)
	if !r.DryRun {
		fmt.Fprintf(w, " (raft index %d)", r.AppliedIndex)
	}
	fmt.Fprintln(w)
}

// targetString shows a rule's right-hand side as a popmap writes it, with
// its source in brackets.
func targetString(t routing.Target) string {
	s := t.Backend
	if t.Pool != "" {
		s = "pool:" + t.Pool
	}
	if t.Login != "" {
		s = t.Login + "@" + s
	}
	if t.Source != "" {
		s += " [" + t.Source + "]"
	}
	return s
}

func exportCmd(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	var format string
	choiceVar(fs, &format, "format", "popmap", []string{"popmap", "popmap.re", "csv", "json"}, "write a popmap, the regex popmap (popmap.re), csv or json")
	source := fs.String("source", "", "only the routes an import tagged with this `name`")
	consistent := consistentFlag(fs)
	return func([]string) error {
		c, err := client()
		if err != nil {
			return err
		}
		q := url.Values{"format": {format}}
		if *source != "" {
			q.Set("source", *source)
		}
		if *consistent {
			q.Set("consistent", "true")
		}
		raw, err := c.do("GET", "/v1/export?"+q.Encode(), nil, nil)
		if err != nil {
			return err
		}
		if len(raw) >= maxAnswer {
			return fmt.Errorf("export: the answer reached the client's limit of %d bytes; export one --source at a time", maxAnswer)
		}
		_, err = os.Stdout.Write(raw)
		return err
	}
}

var clusterMembers = apiCmd(func(c *apiClient, _ []string) error {
	return show(c, "/v1/cluster/members", func(ms []cluster.Member) error {
		tw := newTab()
		fmt.Fprintln(tw, "NAME\tSTATE\tROLE\tVERSION\tGOSSIP\tRAFT\tAPI\tSESSIONS\tDRAINING")
		for _, m := range ms {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%v\n", m.Name, m.State, dash(m.Role), dash(m.Version), m.Address, dash(m.Raft), dash(m.API), m.Sessions, m.Draining)
		}
		return tw.Flush()
	})
})

var clusterPeers = apiCmd(func(c *apiClient, _ []string) error {
	return show(c, "/v1/cluster/peers", func(ps []cluster.Peer) error {
		tw := newTab()
		fmt.Fprintln(tw, "ID\tADDRESS\tSUFFRAGE\tLEADER")
		for _, p := range ps {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\n", p.ID, p.Address, p.Suffrage, p.Leader)
		}
		return tw.Flush()
	})
})

var clusterLeader = apiCmd(func(c *apiClient, _ []string) error {
	return show(c, "/v1/cluster/leader", func(l struct {
		Name  string `json:"name"`
		API   string `json:"api"`
		Self  bool   `json:"self"`
		Index uint64 `json:"applied_index"`
	}) error {
		self := ""
		if l.Self {
			self = " (this node)"
		}
		fmt.Printf("%s%s, admin API %s, raft index %d\n", l.Name, self, dash(l.API), l.Index)
		return nil
	})
})

func keygen([]string) error {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return err
	}
	fmt.Println(base64.StdEncoding.EncodeToString(k))
	return nil
}

// dash shows an empty value as "-".
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

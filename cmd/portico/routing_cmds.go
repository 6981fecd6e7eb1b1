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
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/ops/admin/routesapi"
	"github.com/portico-mail/portico/routing"
)

func init() {
	commands["backend"] = command{"backend list|get|set|delete ...      manage backends (admin API)", cmdBackend}
	commands["pool"] = command{"pool list|get|set|delete ...         manage pools (admin API)", cmdPool}
	commands["route"] = command{"route list|get|set|delete|lookup|default ...  manage user routes (admin API)", cmdRoute}
	commands["domain"] = command{"domain list|set|delete ...           manage domain routes (admin API)", cmdDomain}
	commands["import"] = command{"import FILE [--format popmap|csv]    bulk-import user routes (admin API)", cmdImport}
	commands["cluster"] = command{"cluster members|peers|leader         show the cluster (admin API)", cmdCluster}
	commands["keygen"] = command{"keygen                               print a new gossip encryption key", cmdKeygen}
}

// parseArgs parses flags anywhere among the arguments (so that
// "route set alice --backend imap3" works) and returns the positionals.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func sub(args []string, usage string) (string, []string, error) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return "", nil, fmt.Errorf("usage: portico %s", usage)
	}
	return args[0], args[1:], nil
}

func newTab() *tabwriter.Writer { return tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0) }

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

func consistentQuery(consistent bool) string {
	if consistent {
		return "?consistent=true"
	}
	return ""
}

func cmdBackend(args []string) error {
	op, rest, err := sub(args, "backend list|get ID|set ID [flags]|delete ID")
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("backend "+op, flag.ContinueOnError)
	client := clientFlags(fs)
	consistent := fs.Bool("consistent", false, "read through the leader (linearizable)")
	var b routing.Backend
	fs.StringVar(&b.Host, "host", "", "address or host name")
	fs.IntVar(&b.IMAPPort, "imap-port", 0, "IMAP port (0: none)")
	fs.IntVar(&b.POP3Port, "pop3-port", 0, "POP3 port (0: none)")
	tlsMode := fs.String("tls", "none", "none, starttls, implicit")
	fs.StringVar(&b.TLSServerName, "tls-server-name", "", "name to verify (default: host)")
	fs.StringVar(&b.TLSCAFile, "tls-ca-file", "", "CA bundle (PEM) on the proxy nodes")
	fs.BoolVar(&b.InsecureSkipVerify, "tls-insecure-skip-verify", false, "do not verify the backend's certificate")
	forward := fs.String("forward", "none", "client address to the backend: none, id, proxy")
	fs.IntVar(&b.Weight, "weight", 1, "share of a pool's users")
	state := fs.String("state", "active", "active, draining, disabled")
	pos, err := parseArgs(fs, rest)
	if err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	switch op {
	case "list":
		var bs []routing.Backend
		raw, err := c.do("GET", "/v1/backends"+consistentQuery(*consistent), nil, &bs)
		if err != nil || c.json {
			printJSONIf(c, raw, err)
			return err
		}
		tw := newTab()
		fmt.Fprintln(tw, "ID\tHOST\tIMAP\tPOP3\tTLS\tFORWARD\tWEIGHT\tSTATE")
		for _, b := range bs {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%d\t%s\n", b.ID, b.Host, b.IMAPPort, b.POP3Port, b.TLS, b.Forward, b.Weight, b.State)
		}
		return tw.Flush()
	case "get":
		if len(pos) != 1 {
			return fmt.Errorf("usage: portico backend get ID")
		}
		raw, err := c.do("GET", "/v1/backends/"+url.PathEscape(pos[0])+consistentQuery(*consistent), nil, nil)
		if err == nil {
			printJSON(raw)
		}
		return err
	case "set":
		if len(pos) != 1 {
			return fmt.Errorf("usage: portico backend set ID --host H --imap-port N [...]")
		}
		b.ID, b.TLS, b.Forward, b.State = pos[0], routing.TLSMode(*tlsMode), routing.ForwardMode(*forward), routing.BackendState(*state)
		raw, err := c.do("PUT", "/v1/backends/"+url.PathEscape(b.ID), b, nil)
		if err == nil {
			done(c, raw)
		}
		return err
	case "delete":
		if len(pos) != 1 {
			return fmt.Errorf("usage: portico backend delete ID")
		}
		raw, err := c.do("DELETE", "/v1/backends/"+url.PathEscape(pos[0]), nil, nil)
		if err == nil {
			done(c, raw)
		}
		return err
	}
	return fmt.Errorf("backend: unknown operation %q (list, get, set, delete)", op)
}

func printJSONIf(c *apiClient, raw []byte, err error) {
	if err == nil && c.json {
		printJSON(raw)
	}
}

func cmdPool(args []string) error {
	op, rest, err := sub(args, "pool list|get NAME|set NAME --backends a,b [--shared-storage]|delete NAME")
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("pool "+op, flag.ContinueOnError)
	client := clientFlags(fs)
	consistent := fs.Bool("consistent", false, "read through the leader (linearizable)")
	backends := fs.String("backends", "", "comma-separated backend ids")
	shared := fs.Bool("shared-storage", false, "every member can serve every user (reroute when one is down)")
	pos, err := parseArgs(fs, rest)
	if err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	switch op {
	case "list":
		var ps []routing.Pool
		raw, err := c.do("GET", "/v1/pools"+consistentQuery(*consistent), nil, &ps)
		if err != nil || c.json {
			printJSONIf(c, raw, err)
			return err
		}
		tw := newTab()
		fmt.Fprintln(tw, "NAME\tBACKENDS\tSHARED STORAGE")
		for _, p := range ps {
			fmt.Fprintf(tw, "%s\t%s\t%v\n", p.Name, strings.Join(p.Backends, ","), p.SharedStorage)
		}
		return tw.Flush()
	case "get":
		if len(pos) != 1 {
			return fmt.Errorf("usage: portico pool get NAME")
		}
		raw, err := c.do("GET", "/v1/pools/"+url.PathEscape(pos[0])+consistentQuery(*consistent), nil, nil)
		if err == nil {
			printJSON(raw)
		}
		return err
	case "set":
		if len(pos) != 1 || *backends == "" {
			return fmt.Errorf("usage: portico pool set NAME --backends a,b [--shared-storage]")
		}
		p := routing.Pool{Name: pos[0], Backends: strings.Split(*backends, ","), SharedStorage: *shared}
		raw, err := c.do("PUT", "/v1/pools/"+url.PathEscape(p.Name), p, nil)
		if err == nil {
			done(c, raw)
		}
		return err
	case "delete":
		if len(pos) != 1 {
			return fmt.Errorf("usage: portico pool delete NAME")
		}
		raw, err := c.do("DELETE", "/v1/pools/"+url.PathEscape(pos[0]), nil, nil)
		if err == nil {
			done(c, raw)
		}
		return err
	}
	return fmt.Errorf("pool: unknown operation %q (list, get, set, delete)", op)
}

func cmdRoute(args []string) error {
	op, rest, err := sub(args, "route list [--prefix P]|get USER|set USER (--backend ID|--pool NAME)|delete USER|lookup USER|default [POOL]")
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("route "+op, flag.ContinueOnError)
	client := clientFlags(fs)
	consistent := fs.Bool("consistent", false, "read through the leader (linearizable)")
	backend := fs.String("backend", "", "pin the user to this backend")
	pool := fs.String("pool", "", "route the user to this pool")
	prefix := fs.String("prefix", "", "list users starting with this")
	limit := fs.Int("limit", 1000, "list at most this many")
	protocol := fs.String("protocol", "imap", "lookup for imap or pop3")
	pos, err := parseArgs(fs, rest)
	if err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	switch op {
	case "list":
		q := url.Values{"prefix": {*prefix}, "limit": {fmt.Sprint(*limit)}}
		if *consistent {
			q.Set("consistent", "true")
		}
		var rs []routing.UserRoute
		raw, err := c.do("GET", "/v1/routes/users?"+q.Encode(), nil, &rs)
		if err != nil || c.json {
			printJSONIf(c, raw, err)
			return err
		}
		tw := newTab()
		fmt.Fprintln(tw, "USER\tBACKEND\tPOOL")
		for _, r := range rs {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.User, r.Backend, r.Pool)
		}
		return tw.Flush()
	case "get":
		if len(pos) != 1 {
			return fmt.Errorf("usage: portico route get USER")
		}
		raw, err := c.do("GET", "/v1/routes/users/"+url.PathEscape(pos[0])+consistentQuery(*consistent), nil, nil)
		if err == nil {
			printJSON(raw)
		}
		return err
	case "set":
		if len(pos) != 1 || (*backend == "") == (*pool == "") {
			return fmt.Errorf("usage: portico route set USER --backend ID | --pool NAME")
		}
		raw, err := c.do("PUT", "/v1/routes/users/"+url.PathEscape(pos[0]), routing.Target{Backend: *backend, Pool: *pool}, nil)
		if err == nil {
			done(c, raw)
		}
		return err
	case "delete":
		if len(pos) != 1 {
			return fmt.Errorf("usage: portico route delete USER")
		}
		raw, err := c.do("DELETE", "/v1/routes/users/"+url.PathEscape(pos[0]), nil, nil)
		if err == nil {
			done(c, raw)
		}
		return err
	case "lookup":
		if len(pos) != 1 {
			return fmt.Errorf("usage: portico route lookup USER [--protocol imap|pop3]")
		}
		q := url.Values{"user": {pos[0]}, "protocol": {*protocol}}
		var r map[string]any
		raw, err := c.do("GET", "/v1/routes/lookup?"+q.Encode(), nil, &r)
		if err != nil || c.json {
			printJSONIf(c, raw, err)
			return err
		}
		fmt.Printf("%s -> %s (%s) via %s rule", r["user"], r["backend"], r["address"], r["rule"])
		if p, _ := r["pool"].(string); p != "" {
			fmt.Printf(", pool %s", p)
		}
		fmt.Println()
		return nil
	case "default":
		if len(pos) == 0 {
			raw, err := c.do("GET", "/v1/routes/default"+consistentQuery(*consistent), nil, nil)
			if err == nil {
				printJSON(raw)
			}
			return err
		}
		raw, err := c.do("PUT", "/v1/routes/default", map[string]string{"pool": pos[0]}, nil)
		if err == nil {
			done(c, raw)
		}
		return err
	}
	return fmt.Errorf("route: unknown operation %q (list, get, set, delete, lookup, default)", op)
}

func cmdDomain(args []string) error {
	op, rest, err := sub(args, "domain list|set DOMAIN --pool NAME|delete DOMAIN")
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("domain "+op, flag.ContinueOnError)
	client := clientFlags(fs)
	pool := fs.String("pool", "", "pool for the domain's users")
	pos, err := parseArgs(fs, rest)
	if err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	switch op {
	case "list":
		var m map[string]string
		raw, err := c.do("GET", "/v1/routes/domains", nil, &m)
		if err != nil || c.json {
			printJSONIf(c, raw, err)
			return err
		}
		tw := newTab()
		fmt.Fprintln(tw, "DOMAIN\tPOOL")
		for _, d := range sortedMapKeys(m) {
			fmt.Fprintf(tw, "%s\t%s\n", d, m[d])
		}
		return tw.Flush()
	case "set":
		if len(pos) != 1 || *pool == "" {
			return fmt.Errorf("usage: portico domain set DOMAIN --pool NAME")
		}
		raw, err := c.do("PUT", "/v1/routes/domains/"+url.PathEscape(pos[0]), map[string]string{"pool": *pool}, nil)
		if err == nil {
			done(c, raw)
		}
		return err
	case "delete":
		if len(pos) != 1 {
			return fmt.Errorf("usage: portico domain delete DOMAIN")
		}
		raw, err := c.do("DELETE", "/v1/routes/domains/"+url.PathEscape(pos[0]), nil, nil)
		if err == nil {
			done(c, raw)
		}
		return err
	}
	return fmt.Errorf("domain: unknown operation %q (list, set, delete)", op)
}

func cmdImport(args []string) error {
	fs := flag.NewFlagSet("import", flag.ContinueOnError)
	client := clientFlags(fs)
	format := fs.String("format", "popmap", "popmap (\"user: server\" lines) or csv (user,target)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: portico import FILE [--format popmap|csv]   (FILE - reads stdin)")
	}
	var body []byte
	if pos[0] == "-" {
		body, err = io.ReadAll(os.Stdin)
	} else {
		body, err = os.ReadFile(pos[0])
	}
	if err != nil {
		return err
	}
	if !utf8.Valid(body) {
		return fmt.Errorf("import: %s is not UTF-8 text", pos[0])
	}
	c, err := client()
	if err != nil {
		return err
	}
	raw, err := c.do("POST", "/v1/import", routesapi.ImportRequest{Format: *format, Data: string(body)}, nil)
	if err == nil {
		done(c, raw)
	}
	return err
}

func cmdCluster(args []string) error {
	op, rest, err := sub(args, "cluster members|peers|leader")
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("cluster "+op, flag.ContinueOnError)
	client := clientFlags(fs)
	if _, err := parseArgs(fs, rest); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	switch op {
	case "members":
		var ms []cluster.Member
		raw, err := c.do("GET", "/v1/cluster/members", nil, &ms)
		if err != nil || c.json {
			printJSONIf(c, raw, err)
			return err
		}
		tw := newTab()
		fmt.Fprintln(tw, "NAME\tSTATE\tROLE\tVERSION\tGOSSIP\tRAFT\tAPI\tSESSIONS\tDRAINING")
		for _, m := range ms {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%v\n", m.Name, m.State, m.Role, m.Version, m.Address, m.Raft, m.API, m.Sessions, m.Draining)
		}
		return tw.Flush()
	case "peers":
		var ps []cluster.Peer
		raw, err := c.do("GET", "/v1/cluster/peers", nil, &ps)
		if err != nil || c.json {
			printJSONIf(c, raw, err)
			return err
		}
		tw := newTab()
		fmt.Fprintln(tw, "ID\tADDRESS\tSUFFRAGE\tLEADER")
		for _, p := range ps {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\n", p.ID, p.Address, p.Suffrage, p.Leader)
		}
		return tw.Flush()
	case "leader":
		raw, err := c.do("GET", "/v1/cluster/leader", nil, nil)
		if err == nil {
			printJSON(raw)
		}
		return err
	}
	return fmt.Errorf("cluster: unknown operation %q (members, peers, leader)", op)
}

func cmdKeygen([]string) error {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return err
	}
	fmt.Println(base64.StdEncoding.EncodeToString(k))
	return nil
}

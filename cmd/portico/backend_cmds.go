package main

import (
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/portico-mail/portico/ops/admin/routesapi"
	"github.com/portico-mail/portico/routing"
)

// backendFields maps each flag of `backend set` to the backend's JSON
// field: the command sends exactly the flags given.
var backendFields = map[string]string{
	"host": "host", "imap-port": "imap_port", "pop3-port": "pop3_port", "sieve-port": "sieve_port", "submission-port": "submission_port",
	"tls": "tls", "tls-server-name": "tls_server_name", "tls-ca-file": "tls_ca_file",
	"tls-insecure-skip-verify": "tls_insecure_skip_verify", "forward": "forward",
	"weight": "weight", "state": "state",
}

// backendSet changes the fields given (PATCH); a backend that does not
// exist yet is added with them (PUT), the others taking their defaults.
func backendSet(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	var b routing.Backend
	var tlsMode, forward, state string
	fs.StringVar(&b.Host, "host", "", "`address` or host name")
	fs.IntVar(&b.IMAPPort, "imap-port", 0, "IMAP port (0: none)")
	fs.IntVar(&b.POP3Port, "pop3-port", 0, "POP3 port (0: none)")
	fs.IntVar(&b.SievePort, "sieve-port", 0, "ManageSieve port (0: none)")
	fs.IntVar(&b.SubmissionPort, "submission-port", 0, "SMTP submission port (0: none)")
	choiceVar(fs, &tlsMode, "tls", "", []string{"none", "starttls", "implicit"}, "TLS to the backend (a new backend: none)")
	fs.StringVar(&b.TLSServerName, "tls-server-name", "", "`name` to verify (default: host)")
	pathVar(fs, &b.TLSCAFile, fileArg, "tls-ca-file", "", "CA bundle (PEM) on the proxy nodes")
	fs.BoolVar(&b.InsecureSkipVerify, "tls-insecure-skip-verify", false, "do not verify the backend's certificate")
	choiceVar(fs, &forward, "forward", "", []string{"none", "id", "proxy"}, "client address to the backend (a new backend: none)")
	fs.IntVar(&b.Weight, "weight", 0, "share of a pool's users (a new backend: 1)")
	choiceVar(fs, &state, "state", "", []string{"active", "draining", "disabled"}, "active, draining (no new logins), disabled (a new backend: active)")
	return func(args []string) error {
		b.ID, b.TLS, b.Forward, b.State = args[0], routing.TLSMode(tlsMode), routing.ForwardMode(forward), routing.BackendState(state)
		full := map[string]any{"host": b.Host, "imap_port": b.IMAPPort, "pop3_port": b.POP3Port, "sieve_port": b.SievePort, "submission_port": b.SubmissionPort, "tls": b.TLS,
			"tls_server_name": b.TLSServerName, "tls_ca_file": b.TLSCAFile, "tls_insecure_skip_verify": b.InsecureSkipVerify,
			"forward": b.Forward, "weight": b.Weight, "state": b.State}
		patch := map[string]any{}
		fs.Visit(func(f *flag.Flag) {
			if field, ok := backendFields[f.Name]; ok {
				patch[field] = full[field]
			}
		})
		if len(patch) == 0 {
			return usageError{"nothing to change: give the fields to set (--host, --imap-port, --weight, --state ...)"}
		}
		c, err := client()
		if err != nil {
			return err
		}
		path := "/v1/backends/" + url.PathEscape(b.ID)
		raw, err := c.do("PATCH", path, patch, nil)
		var ae *apiError
		if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
			// A new backend: every field, the flags not given at their
			// defaults.
			if _, ok := patch["host"]; !ok {
				return fmt.Errorf("backend %s does not exist; to add it, give --host and --imap-port, --pop3-port, --sieve-port and/or --submission-port", b.ID)
			}
			raw, err = c.do("PUT", path, b, nil)
		}
		if err == nil {
			done(c, raw)
		}
		return err
	}
}

// backendState sets a backend's state and nothing else.
func backendState(st routing.BackendState) func(*flag.FlagSet) func([]string) error {
	return apiCmd(func(c *apiClient, args []string) error {
		return c.change("PATCH", "/v1/backends/"+url.PathEscape(args[0]), map[string]any{"state": st})
	})
}

// backendDrain sets the backend draining, has every node end its sessions
// on it over the spread, and with --wait follows them until none is left.
func backendDrain(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	spread := fs.String("spread", "", "end the sessions evenly over this `duration` (at most 1h; default: each node's drain.spread)")
	wait := fs.Bool("wait", false, "return once the backend has no session left on any node")
	timeout := fs.Duration("timeout", 0, "with --wait: give up after this `duration` (exit 1; 0: wait as long as it takes)")
	return func(args []string) error {
		if *spread != "" {
			if d, err := time.ParseDuration(*spread); err != nil || d < 0 {
				return usageError{fmt.Sprintf("--spread %q is not a duration", *spread)}
			}
		}
		c, err := client()
		if err != nil {
			return err
		}
		id := args[0]
		drain := func() (routesapi.BackendSessions, []byte, error) {
			var ans routesapi.BackendSessions
			raw, err := c.do("POST", "/v1/backends/"+url.PathEscape(id)+"/drain", routesapi.DrainRequest{Spread: *spread}, &ans)
			return ans, raw, err
		}
		start := time.Now()
		ans, raw, err := drain()
		if err != nil {
			return err
		}
		if !c.json {
			how := "each node's drain.spread"
			if *spread != "" {
				how = *spread
			}
			fmt.Printf("backend %s is %s: ending %d session(s) at a response boundary over %s\n", id, ans.State, ans.Sessions, how)
			printNodeSessions(ans.Nodes)
		}
		if !*wait {
			if c.json {
				printJSON(raw)
			}
			return notTold(ans)
		}
		// Nodes that could not be told to end their sessions are told
		// again once they answer.
		untold := map[string]bool{}
		for _, n := range ans.Nodes {
			if n.Error != "" && !n.Skipped {
				untold[n.Node] = true
			}
		}
		last := ""
		for {
			var now routesapi.BackendSessions
			raw, err = c.do("GET", "/v1/backends/"+url.PathEscape(id)+"/sessions", nil, &now)
			if err != nil {
				return err
			}
			retell := false
			for _, n := range now.Nodes {
				retell = retell || untold[n.Node] && n.Error == "" && n.Sessions > 0
			}
			if retell {
				if ans, _, err = drain(); err != nil {
					return err
				}
				untold = map[string]bool{}
				for _, n := range ans.Nodes {
					if n.Error != "" && !n.Skipped {
						untold[n.Node] = true
					}
				}
			}
			if now.Sessions == 0 && now.Complete {
				if c.json {
					printJSON(raw)
				} else {
					fmt.Printf("backend %s has no sessions left (%s)\n", id, time.Since(start).Round(100*time.Millisecond))
				}
				return nil
			}
			if msg := waitLine(now); msg != last && !c.json {
				fmt.Fprintln(os.Stderr, msg)
				last = msg
			}
			if *timeout > 0 && time.Since(start) > *timeout {
				return fmt.Errorf("backend %s: %s after %v", id, waitLine(now), *timeout)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}

// waitLine says what a drain is waiting for.
func waitLine(s routesapi.BackendSessions) string {
	var parts []string
	for _, n := range s.Nodes {
		switch {
		case n.Skipped:
		case n.Error != "":
			parts = append(parts, n.Node+" not answering")
		case n.Sessions > 0:
			parts = append(parts, fmt.Sprintf("%s %d", n.Node, n.Sessions))
		}
	}
	return fmt.Sprintf("waiting: %d session(s) left (%s)", s.Sessions, strings.Join(parts, ", "))
}

func printNodeSessions(ns []routesapi.NodeSessions) {
	tw := newTab()
	fmt.Fprintln(tw, "NODE\tSESSIONS")
	for _, n := range ns {
		switch {
		case n.Skipped:
			fmt.Fprintf(tw, "%s\t-\t(not asked: %s)\n", n.Node, n.Error)
		case n.Error != "":
			fmt.Fprintf(tw, "%s\t?\t(%s)\n", n.Node, n.Error)
		default:
			fmt.Fprintf(tw, "%s\t%d\n", n.Node, n.Sessions)
		}
	}
	tw.Flush()
}

// notTold fails when a node that may hold sessions was not told to end
// them: a partial drain must not pass for a whole one in a script.
func notTold(s routesapi.BackendSessions) error {
	var names []string
	for _, n := range s.Nodes {
		if n.Error != "" && !n.Skipped {
			names = append(names, fmt.Sprintf("%s (%s)", n.Node, n.Error))
		}
	}
	if len(names) == 0 {
		return nil
	}
	return fmt.Errorf("the backend is draining, but %d node(s) were not told to end its sessions: %s (run the drain again)", len(names), strings.Join(names, "; "))
}

package main

import (
	"bytes"
	"encoding/pem"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
)

func TestMain(m *testing.M) {
	link()
	os.Exit(m.Run())
}

// runCLI executes a command line and returns its exit status, standard
// output (help and command output alike) and standard error.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var code int
	var stderr bytes.Buffer
	out := captureStdout(t, func(w io.Writer) { code = execute(args, w, &stderr) })
	return code, out, stderr.String()
}

// captureStdout runs f with os.Stdout redirected, and returns what was
// written (commands print their results to os.Stdout; execute's help to
// the writer it is given, which is the same pipe here).
func captureStdout(t *testing.T, f func(io.Writer)) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = w
	var buf bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); io.Copy(&buf, r) }()
	defer func() {
		os.Stdout = saved
		w.Close()
		wg.Wait()
		r.Close()
	}()
	f(w)
	w.Close()
	wg.Wait()
	os.Stdout = saved
	return buf.String()
}

var helpFlag = regexp.MustCompile(`(?m)^  --([a-z0-9-]+)`)

// Every command answers --help (and -h, and "portico help ...") with exit
// status 0, on stdout, with its own synopsis and exactly its own flags.
func TestHelpEveryCommand(t *testing.T) {
	var walk func(c *command)
	n := 0
	walk = func(c *command) {
		words := strings.Fields(c.path())[1:]
		for _, h := range [][]string{append(append([]string{}, words...), "--help"), append(append([]string{}, words...), "-h"), append([]string{"help"}, words...)} {
			code, out, errOut := runCLI(t, h...)
			if code != 0 || errOut != "" {
				t.Errorf("%q: exit %d, stderr %q", h, code, errOut)
			}
			if !strings.HasPrefix(out, "Usage: "+c.path()+" ") && !strings.HasPrefix(out, "Usage: "+c.path()+"\n") {
				t.Errorf("%q: help starts %q", h, firstLine(out))
			}
			if c.setup == nil {
				for _, s := range c.subs {
					if !strings.Contains(out, "\n  "+s.name+" ") {
						t.Errorf("%q: subcommand %s not listed", h, s.name)
					}
				}
				continue
			}
			fs, _ := c.flags()
			var want, got []string
			fs.VisitAll(func(f *flag.Flag) { want = append(want, f.Name) })
			for _, m := range helpFlag.FindAllStringSubmatch(out, -1) {
				got = append(got, m[1])
			}
			sort.Strings(got)
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("%q shows flags %v, the command has %v", h, got, want)
			}
		}
		n++
		for _, s := range c.subs {
			walk(s)
		}
	}
	walk(root)
	if n < 40 {
		t.Fatalf("only %d commands walked", n)
	}
	// A group's flags are not another group's: backend list has no --host.
	_, out, _ := runCLI(t, "backend", "list", "--help")
	if strings.Contains(out, "--host") || !strings.Contains(out, "--consistent") {
		t.Errorf("backend list --help:\n%s", out)
	}
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }

func TestUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "Usage: portico COMMAND"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"backend"}, "Usage: portico backend list|get|set|drain|enable|disable|delete"},
		{[]string{"backend", "set", "b1"}, "nothing to change"},
		{[]string{"backend", "drain", "b1", "--spread", "soon"}, `--spread "soon" is not a duration`},
		{[]string{"backend", "frob"}, `portico backend: unknown command "frob"`},
		{[]string{"backend", "get"}, "usage: portico backend get [flags] ID"},
		{[]string{"backend", "get", "a", "b"}, "usage: portico backend get [flags] ID"},
		{[]string{"backend", "list", "--host", "x"}, "flag provided but not defined: -host"},
		{[]string{"backend", "set", "b1", "--tls", "maybe"}, `"maybe" is not one of none, starttls, implicit`},
		{[]string{"serve"}, "--config FILE is required"},
		{[]string{"tls", "cert", "show"}, "usage: portico tls cert show FILE..."},
		{[]string{"completion", "fish"}, `"fish": bash or zsh`},
		{[]string{"man", "nothing"}, `no command "nothing"`},
		{[]string{"help", "nothing"}, `no command "nothing"`},
	} {
		code, _, errOut := runCLI(t, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
	for _, c := range []struct {
		args     []string
		min, max int
	}{
		{[]string{"status"}, 0, 0}, {[]string{"backend", "get"}, 1, 1}, {[]string{"route", "default"}, 0, 1},
		{[]string{"tls", "cert", "show"}, 1, -1}, {[]string{"completion"}, 1, 1},
	} {
		cmd := root
		for _, w := range c.args {
			cmd = cmd.sub(w)
		}
		if min, max := cmd.argRange(); min != c.min || max != c.max {
			t.Errorf("%q: arguments %d..%d, want %d..%d", c.args, min, max, c.min, c.max)
		}
	}
}

func TestVersionCommand(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-v"}} {
		code, out, _ := runCLI(t, args...)
		if code != 0 || !strings.HasPrefix(out, "portico ") || !strings.Contains(out, "(commit ") {
			t.Errorf("%q: exit %d, %q", args, code, out)
		}
	}
}

// Every command that talks to the admin API finds the address, the token
// and the CA in the node's configuration file given with --config (here
// an HTTPS API with a token, which is what a remote node has).
func TestEveryAdminCommandReadsConfig(t *testing.T) {
	type req struct{ method, path, auth string }
	var mu sync.Mutex
	var got []req
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, req{r.Method, r.URL.Path, r.Header.Get("Authorization")})
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("null"))
	}))
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "portico.yaml")
	y := "listeners: [{protocol: imap, address: 127.0.0.1:1143}]\n" +
		"admin:\n  address: " + strings.TrimPrefix(srv.URL, "https://") + "\n  token: s3cret\n" +
		"  tls: {cert_file: admin.pem, key_file: admin.key, ca_file: ca.pem}\n"
	if err := os.WriteFile(cfg, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	routes := filepath.Join(dir, "routes.popmap")
	os.WriteFile(routes, []byte("alice@example.com: imap1\n"), 0o644)
	// What each command needs besides --config to send its request.
	extra := map[string][]string{
		"portico backend set":      {"imap1", "--weight", "2"},
		"portico pool set":         {"main", "--backends", "imap1"},
		"portico route set":        {"alice", "--backend", "imap1"},
		"portico domain set":       {"example.com", "--pool", "main"},
		"portico import":           {routes},
		"portico sessions kick":    {"--user", "alice"},
		"portico user move":        {"alice", "--to", "imap1"},
		"portico throttle unblock": {"--user", "alice"},
	}
	n := 0
	for _, c := range root.leaves() {
		fs, _ := c.flags()
		if !isAPIClient(fs) {
			continue
		}
		n++
		args := strings.Fields(c.path())[1:]
		if e, ok := extra[c.path()]; ok {
			args = append(args, e...)
		} else if min, _ := c.argRange(); min > 0 {
			args = append(args, "x")
		}
		args = append(args, "--config", cfg)
		mu.Lock()
		got = nil
		mu.Unlock()
		code, _, errOut := runCLI(t, args...)
		mu.Lock()
		reqs := got
		mu.Unlock()
		if code != 0 || len(reqs) == 0 {
			t.Errorf("%s: exit %d, %d requests: %s", c.path(), code, len(reqs), errOut)
			continue
		}
		for _, r := range reqs {
			if r.auth != "Bearer s3cret" || !strings.HasPrefix(r.path, "/v1/") {
				t.Errorf("%s: %s %s with Authorization %q", c.path(), r.method, r.path, r.auth)
			}
		}
	}
	if n < 25 {
		t.Errorf("only %d admin commands", n)
	}
}

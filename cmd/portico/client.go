package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/portico-mail/portico/ops/config"
)

// apiClient talks to a node's admin API for the CLI subcommands.
type apiClient struct {
	base  string
	token string
	json  bool // print raw JSON instead of tables
	http  *http.Client
}

// clientFlags adds the common flags of API subcommands to fs.
func clientFlags(fs *flag.FlagSet) func() (*apiClient, error) {
	addr := fs.String("admin", envOr("PORTICO_ADMIN", config.DefaultAdminAddress), "admin API address of the node to talk to (env PORTICO_ADMIN)")
	token := fs.String("token", os.Getenv("PORTICO_TOKEN"), "admin API bearer token (env PORTICO_TOKEN)")
	tokenFile := fs.String("token-file", "", "read the bearer token from this file")
	asJSON := fs.Bool("json", false, "print JSON")
	return func() (*apiClient, error) {
		t := *token
		if *tokenFile != "" {
			b, err := os.ReadFile(*tokenFile)
			if err != nil {
				return nil, err
			}
			t = strings.TrimSpace(string(b))
		}
		base := *addr
		if !strings.Contains(base, "://") {
			base = "http://" + base
		}
		return &apiClient{base: strings.TrimRight(base, "/"), token: t, json: *asJSON,
			http: &http.Client{Timeout: 5 * time.Minute}}, nil
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// apiError is an error answer from the API.
type apiError struct {
	Status int
	Msg    string
}

func (e *apiError) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.Msg, e.Status) }

// do sends a request with an optional JSON body and decodes a JSON answer
// into out (if not nil). It returns the raw answer. Every method but GET
// and HEAD carries Content-Type: application/json, body or not: the API
// refuses anything else (it is how it tells the CLI from a browser form).
func (c *apiClient) do(method, path string, body any, out any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		j, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if method != http.MethodGet && method != http.MethodHead {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin API at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return raw, &apiError{Status: resp.StatusCode, Msg: e.Error}
		}
		return raw, &apiError{Status: resp.StatusCode, Msg: strings.TrimSpace(string(raw))}
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return raw, fmt.Errorf("decoding answer: %w", err)
		}
	}
	return raw, nil
}

// printJSON writes raw JSON to stdout.
func printJSON(raw []byte) {
	os.Stdout.Write(raw)
	if len(raw) > 0 && raw[len(raw)-1] != '\n' {
		os.Stdout.Write([]byte("\n"))
	}
}

var errUsage = errors.New("usage")

func readAllStdin() ([]byte, error) { return io.ReadAll(os.Stdin) }

func sortedMapKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/ops/config"
)

// apiClient talks to a node's admin API for the CLI subcommands.
type apiClient struct {
	base  string
	token string
	json  bool // print raw JSON instead of tables
	http  *http.Client
}

// clientOptions are the admin client's flags as given (before defaults).
type clientOptions struct {
	addr, token, tokenFile, ca, config string
	insecureHTTP, json                 bool
}

// clientFlagNames are the flags clientFlags declares (shown apart from a
// command's own in its help).
var clientFlagNames = map[string]bool{"admin": true, "token": true, "token-file": true, "ca": true,
	"config": true, "insecure-http": true, "json": true}

// clientFlags adds the common flags of API subcommands to fs.
func clientFlags(fs *flag.FlagSet) func() (*apiClient, error) {
	var o clientOptions
	fs.StringVar(&o.addr, "admin", "", "admin API of the node to talk to: `host:port`, http://host:port or https://host:port\n(env PORTICO_ADMIN; default: admin.address of --config, else "+admin.DefaultConfig().Address+")")
	fs.StringVar(&o.token, "token", "", "admin API bearer `token` (env PORTICO_TOKEN; default: admin.token or token_file of --config)")
	pathVar(fs, &o.tokenFile, fileArg, "token-file", "", "read the bearer token from this file")
	pathVar(fs, &o.ca, fileArg, "ca", "", "CA certificate(s), PEM, to verify an https admin API (env PORTICO_CA;\ndefault: admin.tls.ca_file of --config, else its cert_file and the system's roots)")
	pathVar(fs, &o.config, fileArg, "config", "", "take the address, token and TLS settings from this node's configuration file (env PORTICO_CONFIG)")
	fs.BoolVar(&o.insecureHTTP, "insecure-http", false, "send the token over plain HTTP to a non-loopback address anyway")
	fs.BoolVar(&o.json, "json", false, "print JSON")
	return func() (*apiClient, error) { return newAPIClient(o, os.Getenv) }
}

// newAPIClient settles the client's address, token and TLS trust: flags
// first, then the environment (PORTICO_ADMIN, PORTICO_TOKEN, PORTICO_CA,
// PORTICO_CONFIG), then the node's configuration file, then the default
// address.
//
// The scheme: an address with http:// or https:// is taken as written; a
// bare host:port is https when TLS is known to be on (admin.tls in the
// configuration file, or a CA given with --ca or PORTICO_CA), else http.
// A token is never sent in cleartext over the network: with http to an
// address that is not loopback, a token is refused unless --insecure-http.
func newAPIClient(o clientOptions, getenv func(string) string) (*apiClient, error) {
	or := func(vals ...string) string {
		for _, v := range vals {
			if v != "" {
				return v
			}
		}
		return ""
	}
	var fileAddr, fileToken, fileCA, fileCert string
	fileTLS := false
	if path := or(o.config, getenv("PORTICO_CONFIG")); path != "" {
		a, advertise, err := config.LoadAdmin(path)
		if err != nil {
			return nil, err
		}
		if a.Address == "off" {
			return nil, fmt.Errorf("%s: the admin API is off (admin.address: off)", path)
		}
		fileAddr, fileToken = dialable(a.Address, advertise), a.Token
		if a.TLS != nil {
			fileTLS, fileCA, fileCert = true, a.TLS.CAFile, a.TLS.CertFile
		}
	}
	token := or(o.token, getenv("PORTICO_TOKEN"), fileToken)
	if o.tokenFile != "" {
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, err
		}
		token = strings.TrimSpace(string(b))
	}
	explicitCA := or(o.ca, getenv("PORTICO_CA"))
	raw := or(o.addr, getenv("PORTICO_ADMIN"), fileAddr, admin.DefaultConfig().Address)
	if !strings.Contains(raw, "://") {
		if fileTLS || explicitCA != "" {
			raw = "https://" + raw
		} else {
			raw = "http://" + raw
		}
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("admin address %q: want host:port, http://host:port or https://host:port", raw)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	switch u.Scheme {
	case "https":
		var tc *tls.Config
		if explicitCA != "" {
			tc, err = admin.ClientTLS(explicitCA, "")
		} else {
			tc, err = admin.ClientTLS(fileCA, fileCert)
		}
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = tc
	case "http":
		if explicitCA != "" {
			return nil, fmt.Errorf("a CA (--ca or PORTICO_CA) is given but the admin address %s is plain http: use https://", raw)
		}
		if token != "" && !config.Loopback(u.Hostname()) && !o.insecureHTTP {
			return nil, fmt.Errorf("refusing to send the admin token in cleartext to %s: use https (admin.tls on the node, --ca here), or --insecure-http to send it anyway", u.Host)
		}
	default:
		return nil, fmt.Errorf("admin address %q: the scheme must be http or https", raw)
	}
	return &apiClient{base: strings.TrimRight(u.String(), "/"), token: token, json: o.json,
		http: &http.Client{
			Timeout:   5 * time.Minute,
			Transport: tr,
			// The API never redirects; following one would hand the
			// token to wherever it points.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}}, nil
}

// dialable turns a configured listen address into one to connect to: a
// wildcard host becomes the advertised address when there is one (the
// name peers and the certificate know), else loopback.
func dialable(addr, advertise string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	ip, err := netip.ParseAddr(host)
	if host != "" && (err != nil || !ip.IsUnspecified()) {
		return addr
	}
	switch {
	case advertise != "":
		return net.JoinHostPort(advertise, port)
	case err == nil && ip.Is6():
		return net.JoinHostPort("::1", port)
	}
	return net.JoinHostPort("127.0.0.1", port)
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
// maxAnswer bounds an admin API answer the client reads.
const maxAnswer = 64 << 20

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
		var ve *tls.CertificateVerificationError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("admin API at %s: %w (give the CA that signed it with --ca or PORTICO_CA, or admin.tls.ca_file with --config)", c.base, err)
		}
		return nil, fmt.Errorf("admin API at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusBadRequest && bytes.Contains(raw, []byte("HTTP request to an HTTPS server")) {
		return raw, fmt.Errorf("the admin API at %s serves HTTPS: use an https:// address (or --config, --ca)", c.base)
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

func sortedMapKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

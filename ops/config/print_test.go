package config

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// What `portico proxy --print-config` prints is what `portico serve
// --config` runs: parsed again, the same node (listeners with their
// limits and TLS policies, connection limits, routes, admin, throttle,
// drain, upgrade), standalone, and every default written out.
func TestPrintedConfigRunsTheSame(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []ProxyFlags{
		{From: []string{"imap://127.0.0.1:1143", "imaps://127.0.0.1:1993", "pop3://127.0.0.1:1110", "pop3s://[::1]:1995"},
			To: []string{"imap://10.0.0.5:143", "pop3://10.0.0.5:110"}, Cert: "c.pem", Key: "k.pem", Forward: "proxy"},
		{From: []string{"imap://0.0.0.0:143"}, To: []string{"imaps://mail.example:993"}, Insecure: true,
			MaxConnections: -1, MaxConnectionsPerIP: 7, Admin: "127.0.0.1:7199"},
		{From: []string{"pop3://127.0.0.1:110"}, To: []string{"pop3://127.0.0.1:10110"}, AllowPlaintext: true, MaxConnections: 500},
	} {
		ran, err := FromProxyFlags(f)
		if err != nil {
			t.Fatal(err)
		}
		ran.Log.Level = "debug" // --log-level
		if err := ran.Validate(); err != nil {
			t.Fatal(err)
		}
		out, err := ran.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, "printed.yaml")
		if err := os.WriteFile(file, out, 0o644); err != nil {
			t.Fatal(err)
		}
		served, err := Load(file)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if !served.Standalone || served.DataDir != "" || !reflect.DeepEqual(served.Cluster, Cluster{}) {
			t.Errorf("the printed configuration does not run standalone:\n%s", out)
		}
		same := func(what string, a, b any) {
			t.Helper()
			if !reflect.DeepEqual(a, b) {
				t.Errorf("%s: proxy ran %+v, serve runs %+v\n%s", what, a, b, out)
			}
		}
		same("node", ran.NodeConfig(), served.NodeConfig())
		spec := ran.RoutingSpec()
		for i := range spec.Backends {
			if spec.Backends[i].Weight == 0 {
				spec.Backends[i].Weight = 1 // routing: 0 means 1
			}
		}
		same("routing", spec, served.RoutingSpec())
		same("certificates", ran.CertPairs(), served.CertPairs())
		same("admin", ran.Admin, served.Admin)
		same("log", ran.Log, served.Log)
		same("throttle", ran.Throttle.LimiterConfig(), served.Throttle.LimiterConfig())
		same("drain", ran.Drain, served.Drain)
		same("upgrade", ran.Upgrade, served.Upgrade)
		same("shutdown_grace", ran.ShutdownGrace, served.ShutdownGrace)
		same("node_name", ran.NodeName, served.NodeName)
		for i := range ran.Listeners {
			same("listener auth", ran.ListenerAuth(i), served.ListenerAuth(i))
		}

		// Effective values, not zeros: no 0s durations and no 0 numbers
		// but max_connections unset (worked out at start, commented).
		for _, line := range strings.Split(string(out), "\n") {
			// (A backend's port 0 is "no such protocol", not a default.)
			if regexp.MustCompile(`: (0s|0)( |$)`).MatchString(line) && !regexp.MustCompile(`^ *(- )?(imap|pop3|sieve|submission)_port: 0$`).MatchString(line) &&
				!strings.Contains(line, "max_connections: 0 # 0: sized to the file-descriptor limit") {
				t.Errorf("zero value printed: %q", line)
			}
			if strings.Contains(line, `""`) || strings.HasSuffix(line, ": null") {
				t.Errorf("unset value printed: %q", line)
			}
		}
		for _, key := range []string{"preauth_timeout: 1m0s", "max_line: 8192", "imap_idle_timeout: 30m0s", "pop3_idle_timeout: 10m0s", "sieve_idle_timeout: 30m0s", "submission_idle_timeout: 5m0s",
			"max_connections_per_ip: ", "weight: 1", "standalone: true", "address: "} {
			if !strings.Contains(string(out), key) {
				t.Errorf("%q not printed:\n%s", key, out)
			}
		}
		for _, key := range []string{"data_dir", "cluster", "vip"} {
			if regexp.MustCompile(`(?m)^` + key + `:`).Match(out) {
				t.Errorf("%q printed for a standalone node:\n%s", key, out)
			}
		}
		// Files are named absolutely: the file may be saved anywhere.
		for _, c := range served.TLS.Certificates {
			if !filepath.IsAbs(c.Cert) || !filepath.IsAbs(c.Key) {
				t.Errorf("relative certificate files: %+v", c)
			}
		}
	}
}

// An explicitly empty list that means something survives the printing.
func TestPrintKeepsMeaningfulEmptyLists(t *testing.T) {
	c, err := Parse([]byte("standalone: true\nlisteners: [{protocol: imap, address: 127.0.0.1:1143, trusted_proxies: []}]\n" +
		"backends: [{id: b1, host: 127.0.0.1, imap_port: 143}]\npools: [{name: p, backends: [b1]}]\nroutes: {default_pool: p}\n" +
		"throttle: {trusted_networks: []}\n"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(again.Throttle.LimiterConfig().Trusted); n != 0 || strings.Contains(string(out), "trusted_proxies") {
		t.Fatalf("trusted networks after printing: %d\n%s", n, out)
	}
}

// An admin API off the loopback needs a token, which only a file gives.
func TestProxyAdminNeedsLoopback(t *testing.T) {
	if _, err := FromProxyFlags(ProxyFlags{From: []string{"imap://127.0.0.1:1143"}, To: []string{"imap://h:143"}, Admin: "10.0.0.1:7143"}); err == nil {
		t.Error("a token-less admin API on 10.0.0.1 accepted")
	}
}

// standalone: true in a file: nothing of the cluster may be set with it.
func TestStandaloneFile(t *testing.T) {
	const base = "standalone: true\nlisteners: [{protocol: imap, address: 127.0.0.1:1143}]\n" +
		"backends: [{id: b1, host: 127.0.0.1, imap_port: 143}]\npools: [{name: p, backends: [b1]}]\n"
	c, err := Parse([]byte(base + "routes: {default_pool: p}\n"))
	if err != nil || !c.Standalone || c.DataDir != "" || c.Cluster.RaftAddress != "" {
		t.Fatalf("%v %+v", err, c)
	}
	for _, bad := range []struct{ yaml, want string }{
		{base + "routes: {default_pool: p}\ndata_dir: /var/lib/portico\n", "data_dir"},
		{base + "routes: {default_pool: p}\ncluster: {join: [10.0.0.2:7145]}\n", "cluster"},
		{base + "routes: {default_pool: p}\nvip: {addresses: [{address: 192.0.2.1/24, interface: eth0}]}\n", "vip"},
		{base, "no routes"},
	} {
		if _, err := Parse([]byte(bad.yaml)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v, want an error about %s", bad.yaml, err, bad.want)
		}
	}
}

// effectiveLimits writes one value for both protocols: the session
// defaults must agree on everything but the idle timeout.
func TestSessionDefaultsAgreeButIdle(t *testing.T) {
	imap, pop3 := session.DefaultLimits(routing.IMAP), session.DefaultLimits(routing.POP3)
	imap.IdleTimeout, pop3.IdleTimeout = 0, 0
	if imap != pop3 {
		t.Fatalf("IMAP and POP3 defaults differ beyond the idle timeout: %+v %+v", imap, pop3)
	}
}

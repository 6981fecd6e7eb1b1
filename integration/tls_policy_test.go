package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/dovecot"
	"github.com/portico-mail/portico/integration/testcert"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/ops/daemon"
)

// tlsPolicyConfig: implicit TLS and STARTTLS listeners for both protocols
// with the default policy, and one IMAPS listener with an extra ALPN id
// (and, with legacy set, TLS 1.1 allowed).
func tlsPolicyConfig(t *testing.T, dc *dovecot.Server, legacy string) *config.Config {
	t.Helper()
	cert, key := demoCert(t)
	yml := fmt.Sprintf(`
tls:
  certificates: [{cert: %q, key: %q}]
listeners:
  - {name: imaps, protocol: imap, address: "127.0.0.1:0", tls: implicit}
  - {name: imap, protocol: imap, address: "127.0.0.1:0", tls: starttls}
  - {name: pop3s, protocol: pop3, address: "127.0.0.1:0", tls: implicit}
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: starttls}
  - name: legacy
    protocol: imap
    address: "127.0.0.1:0"
    tls: implicit
    alpn: [imap, x-legacy-imap]
%s
limits: {auth_failure_delay: 10ms}
backends:
  - {id: dc1, host: %s, imap_port: %d, pop3_port: %d}
pools:
  - {name: main, backends: [dc1]}
routes: {default_pool: main}
admin: {address: "127.0.0.1:0"}
data_dir: %q
cluster: {raft_address: "127.0.0.1:0", gossip_address: "127.0.0.1:0"}
`, cert, key, legacy, dc.Addr, dc.IMAPPort, dc.POP3Port, t.TempDir())
	cfg, err := config.Parse([]byte(yml))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yml)
	}
	return cfg
}

// tlsClient is a client TLS configuration offering alpn (nil: no ALPN
// extension) with versions min..max (0: Go's defaults).
func tlsClient(alpn []string, min, max uint16) *tls.Config {
	c := clientTLS.Clone()
	c.NextProtos, c.MinVersion, c.MaxVersion = alpn, min, max
	return c
}

// dialTLS makes a TLS connection: implicit, or after the STARTTLS/STLS
// exchange (the plaintext greeting and the command's positive reply).
// It returns the connection with its reader, or the handshake error.
func dialTLS(t *testing.T, addr, starttls string, cfg *tls.Config) (*tls.Conn, *bufio.Reader, error) {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	_ = raw.SetDeadline(time.Now().Add(20 * time.Second))
	if starttls != "" {
		br := bufio.NewReader(raw)
		greeting, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("greeting: %v", err)
		}
		cmd, ok := "a STARTTLS\r\n", "a OK"
		if strings.HasPrefix(greeting, "+OK") {
			cmd, ok = "STLS\r\n", "+OK"
		}
		if _, err := raw.Write([]byte(cmd)); err != nil {
			t.Fatal(err)
		}
		reply, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(reply, ok) {
			t.Fatalf("%q: %q %v", cmd, reply, err)
		}
	}
	tc := tls.Client(raw, cfg)
	if err := tc.Handshake(); err != nil {
		return nil, nil, err
	}
	return tc, bufio.NewReader(tc), nil
}

// ALPN per listener against real IMAP and POP3 sessions (implicit TLS and
// STARTTLS/STLS) in front of Dovecot: no ALPN and the protocol's own id
// are served and log in; another mail protocol's id, HTTP's, and unknown
// ids are refused with no_application_protocol before any IMAP/POP3 byte;
// the refusals are counted by reason.
func TestTLSPolicyALPN(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.97"})
	p := runPortico(t, tlsPolicyConfig(t, dc, ""), daemon.Options{Logger: testLogger(t)})

	type tcase struct {
		listener, starttls string
		offer              []string
		want               string // negotiated protocol, or "refused"
	}
	var cases []tcase
	for _, l := range []struct{ name, starttls, own, other string }{
		{"imaps", "", "imap", "pop3"},
		{"imap", "starttls", "imap", "pop3"},
		{"pop3s", "", "pop3", "imap"},
		{"pop3", "stls", "pop3", "imap"},
	} {
		cases = append(cases,
			tcase{l.name, l.starttls, nil, ""},
			tcase{l.name, l.starttls, []string{l.own}, l.own},
			tcase{l.name, l.starttls, []string{"h2", "http/1.1", l.own}, l.own},
			tcase{l.name, l.starttls, []string{l.other}, "refused"},
			tcase{l.name, l.starttls, []string{"h2"}, "refused"},
			tcase{l.name, l.starttls, []string{"http/1.1"}, "refused"},
			tcase{l.name, l.starttls, []string{"h2", "http/1.1"}, "refused"},
			tcase{l.name, l.starttls, []string{"x-legacy-imap"}, "refused"},
		)
	}
	cases = append(cases,
		tcase{"legacy", "", []string{"x-legacy-imap"}, "x-legacy-imap"},
		tcase{"legacy", "", []string{"imap"}, "imap"},
		tcase{"legacy", "", []string{"pop3"}, "refused"},
	)
	refused := map[string]int{}
	for _, tc := range cases {
		name := tc.listener + " " + strings.Join(tc.offer, ",")
		tconn, br, err := dialTLS(t, p.addr(tc.listener), tc.starttls, tlsClient(tc.offer, 0, 0))
		if tc.want == "refused" {
			if err == nil || !strings.Contains(err.Error(), "no application protocol") {
				t.Errorf("%s: handshake error %v, want the no_application_protocol alert", name, err)
			}
			refused[tc.listener]++
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got := tconn.ConnectionState().NegotiatedProtocol; got != tc.want {
			t.Errorf("%s: negotiated %q, want %q", name, got, tc.want)
		}
		// The session is served: log in at Dovecot through it.
		lc := &lineConn{t: t, c: tconn, br: br}
		if strings.HasPrefix(tc.listener, "pop3") {
			if tc.starttls == "" {
				lc.until("+OK")
			}
			lc.send("USER alice\r\n")
			lc.until("+OK")
			lc.send("PASS secret\r\n")
			if got := lc.line(); !strings.HasPrefix(got, "+OK") {
				t.Errorf("%s: PASS: %q", name, got)
			}
			lc.send("QUIT\r\n")
		} else {
			if tc.starttls == "" {
				lc.until("* OK")
			}
			lc.send("a LOGIN alice secret\r\n")
			if got := lc.until("a "); !strings.HasPrefix(got, "a OK") {
				t.Errorf("%s: LOGIN: %q", name, got)
			}
			lc.send("b LOGOUT\r\n")
		}
		lc.readAll()
	}

	// Each refusal is counted once, as reason alpn, on its listener.
	waitFor(t, "the refusals counted", 10*time.Second, func() bool {
		mfs, _ := scrape(t, p)
		for lst, n := range refused {
			if v, _ := value(mfs, "portico_tls_handshake_failures_total", l("listener", lst, "reason", "alpn")); v != float64(n) {
				return false
			}
		}
		return true
	})
	mfs, _ := scrape(t, p)
	if v, _ := value(mfs, "portico_tls_handshake_failures_total", l("reason", "error")); v != 0 {
		t.Errorf("%v handshake failures counted as error", v)
	}
}

// The same with OpenSSL's client, which speaks STARTTLS itself.
func TestTLSPolicyALPNOpenSSL(t *testing.T) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.97"})
	p := runPortico(t, tlsPolicyConfig(t, dc, ""), daemon.Options{Logger: testLogger(t)})
	for _, tc := range []struct {
		listener string
		args     []string
		want     string
	}{
		{"imaps", []string{"-alpn", "imap"}, "ALPN protocol: imap"},
		{"imaps", []string{"-alpn", "h2,http/1.1"}, "no application protocol"},
		{"imaps", nil, "No ALPN negotiated"},
		{"imap", []string{"-starttls", "imap", "-alpn", "imap"}, "ALPN protocol: imap"},
		{"imap", []string{"-starttls", "imap", "-alpn", "pop3"}, "no application protocol"},
		{"pop3", []string{"-starttls", "pop3", "-alpn", "pop3"}, "ALPN protocol: pop3"},
		{"pop3", []string{"-starttls", "pop3", "-alpn", "http/1.1"}, "no application protocol"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		args := append([]string{"s_client", "-connect", p.addr(tc.listener), "-servername", "localhost"}, tc.args...)
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Stdin = strings.NewReader("") // EOF after the handshake: s_client exits
		out, _ := cmd.CombinedOutput()
		cancel()
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("openssl %s: want %q in:\n%s", strings.Join(args[1:], " "), tc.want, out)
		}
	}
}

// min_version: TLS 1.1 is refused by default (protocol_version alert,
// counted as reason version) and served where it is set explicitly,
// which the node logs as a warning; a reload can set it too.
func TestTLSPolicyMinVersion(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Addr: "127.0.0.97"})
	logs := &lockedBuf{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	legacy := `    tls_min_version: "1.1"`
	p := runPortico(t, tlsPolicyConfig(t, dc, legacy), daemon.Options{Logger: log})

	const warning = "listeners[4].tls_min_version (line 14): listener legacy accepts TLS 1.1"
	if !strings.Contains(logs.String(), "configuration weakens security") || !strings.Contains(logs.String(), warning) {
		t.Errorf("no warning logged at start:\n%s", logs.String())
	}
	tls11 := tlsClient(nil, tls.VersionTLS11, tls.VersionTLS11)
	for _, l := range []string{"imaps", "imap", "pop3s", "pop3"} {
		starttls := ""
		if l == "imap" || l == "pop3" {
			starttls = "yes"
		}
		if _, _, err := dialTLS(t, p.addr(l), starttls, tls11); err == nil || !strings.Contains(err.Error(), "protocol version not supported") {
			t.Errorf("%s: TLS 1.1 client: %v, want the protocol_version alert", l, err)
		}
	}
	tc, br, err := dialTLS(t, p.addr("legacy"), "", tls11)
	if err != nil {
		t.Fatalf("legacy listener, TLS 1.1 client: %v", err)
	}
	if v := tc.ConnectionState().Version; v != tls.VersionTLS11 {
		t.Fatalf("negotiated %s", tls.VersionName(v))
	}
	lc := &lineConn{t: t, c: tc, br: br}
	lc.until("* OK")
	lc.send("a LOGIN alice secret\r\n")
	if got := lc.until("a "); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("LOGIN over TLS 1.1: %q", got)
	}
	waitFor(t, "the refusals counted", 10*time.Second, func() bool {
		mfs, _ := scrape(t, p)
		v, _ := value(mfs, "portico_tls_handshake_failures_total", l("reason", "version"))
		return v == 4
	})

	// Reload: TLS 1.1 on imaps too, for new connections, without a restart.
	before := p.addr("imaps")
	next := tlsPolicyConfig(t, dc, legacy)
	next.Listeners[0].TLSMinVersion = "1.1"
	if err := p.d.Reload(next); err != nil {
		t.Fatal(err)
	}
	if p.addr("imaps") != before {
		t.Fatal("imaps rebound by the reload")
	}
	if _, _, err := dialTLS(t, p.addr("imaps"), "", tls11); err != nil {
		t.Errorf("imaps after the reload, TLS 1.1: %v", err)
	}
	if !strings.Contains(logs.String(), "listener imaps accepts TLS 1.1") {
		t.Errorf("no warning logged at reload:\n%s", logs.String())
	}
}

// portico check-config prints the TLS 1.0/1.1 warning (and still passes)
// and refuses an insecure cipher suite with its line.
func TestCheckConfigTLSPolicy(t *testing.T) {
	bin := porticoBinary(t)
	dir := t.TempDir()
	cert, key, _, err := testcert.Write(dir, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	write := func(policy string) string {
		f := filepath.Join(dir, "portico.yaml")
		yml := fmt.Sprintf(`tls:
  certificates: [{cert: %q, key: %q}]
%slisteners:
  - {name: pop3s, protocol: pop3, address: "127.0.0.1:995", tls: implicit}
`, cert, key, policy)
		if err := os.WriteFile(f, []byte(yml), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	out, err := exec.Command(bin, "check-config", "--config", write("  min_version: \"1.0\"\n")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "warning: tls.min_version (line 3): listener pop3s accepts TLS 1.0") || !strings.Contains(string(out), ": OK") {
		t.Errorf("TLS 1.0: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "check-config", "--config", write("  cipher_suites:\n    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n    - TLS_RSA_WITH_AES_128_CBC_SHA\n")).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "tls.cipher_suites[1] (line 5): TLS_RSA_WITH_AES_128_CBC_SHA is insecure") {
		t.Errorf("insecure suite: %v\n%s", err, out)
	}
}

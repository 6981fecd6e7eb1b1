package node

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/testcert"
	"github.com/portico-mail/portico/node/relay"
	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// startTLSServer runs an implicit-TLS listener per policy (echoHandler
// behind it) with a throwaway certificate.
func startTLSServer(t *testing.T, policies map[string]TLSPolicy) (*Server, *CertStore) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile, _, err := testcert.Write(dir, "mail.test")
	if err != nil {
		t.Fatal(err)
	}
	certs := &CertStore{}
	if err := certs.Load([]CertPair{{CertFile: certFile, KeyFile: keyFile}}); err != nil {
		t.Fatal(err)
	}
	engine, err := relay.NewEngine()
	if err != nil {
		t.Fatal(err)
	}
	var cfg Config
	for name, p := range policies {
		cfg.Listeners = append(cfg.Listeners, ListenerConfig{
			Name: name, Protocol: routing.IMAP, Address: "127.0.0.1:0", TLS: routing.TLSImplicit,
			Limits: session.DefaultLimits(routing.IMAP), TLSPolicy: p,
		})
	}
	env := &session.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s := NewServer(cfg, env, map[routing.Protocol]session.Handler{routing.IMAP: echoHandler{echoBackend(t)}}, certs, engine)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		engine.Close()
	})
	return s, certs
}

// handshake connects with cfg and, when the handshake succeeds, reads the
// greeting through TLS. It returns the connection state or the error.
func handshake(t *testing.T, addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	cfg = cfg.Clone()
	cfg.InsecureSkipVerify = true
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "* OK") {
		t.Fatalf("after the handshake: %q %v", line, err)
	}
	return c.ConnectionState(), nil
}

// ALPN (RFC 7301): clients that send none, or the listener's protocol,
// are served; any other protocol is refused with no_application_protocol
// before a byte of IMAP is exchanged (cross-protocol attacks, ALPACA).
func TestListenerALPN(t *testing.T) {
	s, _ := startTLSServer(t, map[string]TLSPolicy{
		"default": {},
		"legacy":  {ALPN: []string{"imap", "x-legacy-imap"}},
	})
	cases := []struct {
		listener string
		offer    []string
		want     string // negotiated protocol, or "refused"
	}{
		{"default", nil, ""},
		{"default", []string{"imap"}, "imap"},
		{"default", []string{"h2", "imap"}, "imap"},
		{"default", []string{"pop3"}, "refused"},
		{"default", []string{"h2"}, "refused"},
		{"default", []string{"http/1.1"}, "refused"},
		{"default", []string{"h2", "http/1.1"}, "refused"},
		{"default", []string{"IMAP"}, "refused"}, // ids are compared exactly
		{"default", []string{"x-legacy-imap"}, "refused"},
		{"legacy", []string{"x-legacy-imap"}, "x-legacy-imap"},
		{"legacy", []string{"imap"}, "imap"},
		{"legacy", nil, ""},
		{"legacy", []string{"smtp"}, "refused"},
	}
	for _, tc := range cases {
		st, err := handshake(t, s.Addrs()[tc.listener].String(), &tls.Config{NextProtos: tc.offer})
		switch {
		case tc.want == "refused":
			if err == nil || !strings.Contains(err.Error(), "no application protocol") {
				t.Errorf("%s offering %q: err %v (negotiated %q), want no_application_protocol", tc.listener, tc.offer, err, st.NegotiatedProtocol)
			}
		case err != nil:
			t.Errorf("%s offering %q: %v", tc.listener, tc.offer, err)
		case st.NegotiatedProtocol != tc.want:
			t.Errorf("%s offering %q: negotiated %q, want %q", tc.listener, tc.offer, st.NegotiatedProtocol, tc.want)
		}
	}
}

func TestListenerMinVersion(t *testing.T) {
	s, _ := startTLSServer(t, map[string]TLSPolicy{
		"default": {},
		"old":     {MinVersion: tls.VersionTLS10},
		"modern":  {MinVersion: tls.VersionTLS13},
	})
	client := func(v uint16) *tls.Config { return &tls.Config{MinVersion: v, MaxVersion: v} }
	cases := []struct {
		listener string
		version  uint16
		ok       bool
	}{
		{"default", tls.VersionTLS10, false},
		{"default", tls.VersionTLS11, false},
		{"default", tls.VersionTLS12, true},
		{"default", tls.VersionTLS13, true},
		{"old", tls.VersionTLS10, true},
		{"old", tls.VersionTLS11, true},
		{"old", tls.VersionTLS13, true},
		{"modern", tls.VersionTLS12, false},
		{"modern", tls.VersionTLS13, true},
	}
	for _, tc := range cases {
		st, err := handshake(t, s.Addrs()[tc.listener].String(), client(tc.version))
		name := tls.VersionName(tc.version)
		switch {
		case tc.ok && err != nil:
			t.Errorf("%s, %s client: %v", tc.listener, name, err)
		case tc.ok && st.Version != tc.version:
			t.Errorf("%s, %s client: negotiated %s", tc.listener, name, tls.VersionName(st.Version))
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), "protocol version not supported")):
			t.Errorf("%s, %s client: err %v, want protocol_version", tc.listener, name, err)
		}
	}
}

func TestListenerCipherSuites(t *testing.T) {
	only := tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
	s, _ := startTLSServer(t, map[string]TLSPolicy{"l": {CipherSuites: []uint16{only}}})
	addr := s.Addrs()["l"].String()
	tls12 := func(suites ...uint16) *tls.Config {
		return &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: suites}
	}
	st, err := handshake(t, addr, tls12(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, only))
	if err != nil || st.CipherSuite != only {
		t.Fatalf("suite %s, err %v; want %s", tls.CipherSuiteName(st.CipherSuite), err, tls.CipherSuiteName(only))
	}
	if _, err := handshake(t, addr, tls12(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)); err == nil || !strings.Contains(err.Error(), "handshake failure") {
		t.Fatalf("a client without the configured suite: %v, want handshake_failure", err)
	}
	// TLS 1.3 is not affected by the list.
	if st, err := handshake(t, addr, &tls.Config{MinVersion: tls.VersionTLS13}); err != nil || st.Version != tls.VersionTLS13 {
		t.Fatalf("TLS 1.3: %v", err)
	}
}

// A reload changes a listener's policy for new connections without
// rebinding it.
func TestReconfigureTLSPolicy(t *testing.T) {
	s, _ := startTLSServer(t, map[string]TLSPolicy{"l": {}})
	addr := s.Addrs()["l"].String()
	old := &tls.Config{MinVersion: tls.VersionTLS11, MaxVersion: tls.VersionTLS11, NextProtos: []string{"x-legacy"}}
	if _, err := handshake(t, addr, old); err == nil {
		t.Fatal("TLS 1.1 with an unknown ALPN accepted by default")
	}
	cfg := *s.conf()
	cfg.Listeners = append([]ListenerConfig(nil), cfg.Listeners...)
	cfg.Listeners[0].TLSPolicy = TLSPolicy{MinVersion: tls.VersionTLS11, ALPN: []string{"imap", "x-legacy"}}
	if err := s.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	if got := s.Addrs()["l"].String(); got != addr {
		t.Fatalf("rebound: %s -> %s", addr, got)
	}
	if st, err := handshake(t, addr, old); err != nil || st.NegotiatedProtocol != "x-legacy" {
		t.Fatalf("after reload: %v %q", err, st.NegotiatedProtocol)
	}
}

func TestParseTLSVersion(t *testing.T) {
	for s, want := range map[string]uint16{"1.0": tls.VersionTLS10, "1.1": tls.VersionTLS11, "1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13} {
		if v, err := ParseTLSVersion(s); err != nil || v != want {
			t.Errorf("%s: %x %v", s, v, err)
		}
	}
	for _, s := range []string{"", "1", "1.4", "TLS1.2", "tls1.2", "1.2 ", "3.0", "ssl3"} {
		if _, err := ParseTLSVersion(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestCipherSuiteID(t *testing.T) {
	id, vers, err := CipherSuiteID("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256")
	if err != nil || id != tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 || len(vers) != 1 || vers[0] != tls.VersionTLS12 {
		t.Errorf("chacha: %x %v %v", id, vers, err)
	}
	if _, vers, err := CipherSuiteID("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"); err != nil || vers[0] != tls.VersionTLS10 {
		t.Errorf("CBC-SHA (TLS 1.0-1.2): %v %v", vers, err)
	}
	for name, want := range map[string]string{
		"TLS_RSA_WITH_AES_128_GCM_SHA256":         "insecure", // RSA key exchange
		"TLS_ECDHE_RSA_WITH_RC4_128_SHA":          "insecure",
		"TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA":     "insecure",
		"TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "insecure",
		"TLS_AES_128_GCM_SHA256":                  "TLS 1.3",
		"TLS_CHACHA20_POLY1305_SHA256":            "TLS 1.3",
		"ECDHE-RSA-AES128-GCM-SHA256":             "not a TLS 1.2 cipher suite name", // OpenSSL's name
		"tls_ecdhe_rsa_with_aes_128_gcm_sha256":   "not a TLS 1.2 cipher suite name",
		"":                                        "not a TLS 1.2 cipher suite name",
	} {
		if _, _, err := CipherSuiteID(name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", name, err, want)
		}
	}
}

// The certificate descriptions the expiry gauge reads: file, first name,
// and the earliest expiry of the chain served (here the intermediate's).
func TestCertificatesInfo(t *testing.T) {
	dir := t.TempDir()
	now := time.Now().Truncate(time.Second)
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(5 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "ignored"},
		DNSNames: []string{"imap.example.com", "pop.example.com"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(90 * 24 * time.Hour)}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(leafKey)
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...)
	chainFile, keyFile := filepath.Join(dir, "chain.pem"), filepath.Join(dir, "chain.key")
	os.WriteFile(chainFile, chain, 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	otherCert, otherKey, _, err := testcert.Write(filepath.Join(dir, "other"), "mail.test")
	if err != nil {
		t.Fatal(err)
	}

	var s CertStore
	if s.Certificates() != nil {
		t.Fatal("certificates before Load")
	}
	if err := s.Load([]CertPair{{chainFile, keyFile}, {otherCert, otherKey}}); err != nil {
		t.Fatal(err)
	}
	got := s.Certificates()
	if len(got) != 2 || got[0].File != chainFile || got[0].Name != "imap.example.com" || !got[0].NotAfter.Equal(now.Add(5*24*time.Hour)) {
		t.Fatalf("chain: %+v", got)
	}
	if got[1].File != otherCert || got[1].Name != "mail.test" || time.Until(got[1].NotAfter) < 9*365*24*time.Hour {
		t.Fatalf("second: %+v", got[1])
	}
	// A failed load keeps the old set; a reload replaces it.
	if err := s.Load([]CertPair{{keyFile, keyFile}}); err == nil {
		t.Fatal("a key as certificate loaded")
	}
	if len(s.Certificates()) != 2 {
		t.Fatal("failed load changed the set")
	}
	if err := s.Load([]CertPair{{otherCert, otherKey}}); err != nil {
		t.Fatal(err)
	}
	if got := s.Certificates(); len(got) != 1 || got[0].File != otherCert {
		t.Fatalf("after reload: %+v", got)
	}
}

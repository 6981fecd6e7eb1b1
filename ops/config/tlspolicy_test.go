package config

import (
	"crypto/tls"
	"slices"
	"strings"
	"testing"
)

// tlsConfig is a valid file with a TLS section and three listeners; the
// line numbers of the error tests below refer to it.
const tlsConfig = `tls:
  certificates: [{cert: c.pem, key: k.pem}]
listeners:
  - name: imaps
    protocol: imap
    address: 127.0.0.1:993
    tls: implicit
  - name: pop3
    protocol: pop3
    address: 127.0.0.1:110
    tls: starttls
  - name: plain
    protocol: imap
    address: 127.0.0.1:143
`

// with inserts extra lines after the line that starts with "    tls: "+mode
// (listener keys) or after "tls:" (top level, when mode is "").
func with(mode, extra string) string {
	anchor := "tls:\n"
	if mode != "" {
		anchor = "    tls: " + mode + "\n"
	}
	return strings.Replace(tlsConfig, anchor, anchor+extra, 1)
}

func TestTLSPolicyDefaults(t *testing.T) {
	c, err := Parse([]byte(tlsConfig))
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range c.NodeConfig().Listeners {
		p := l.TLSPolicy
		if p.MinVersion != 0 || p.CipherSuites != nil || p.ALPN != nil {
			t.Errorf("listener %d: %+v, want the zero (default) policy", i, p)
		}
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("warnings %q", w)
	}
}

func TestTLSPolicyTranslated(t *testing.T) {
	yml := with("", "  min_version: \"1.3\"\n") // the default for every listener
	yml = strings.Replace(yml, "    tls: implicit\n", `    tls: implicit
    tls_min_version: 1.1
    tls_cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
    alpn: [imap, x-legacy-imap]
`, 1)
	c, err := Parse([]byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	ls := c.NodeConfig().Listeners
	imaps, pop3 := ls[0].TLSPolicy, ls[1].TLSPolicy
	if imaps.MinVersion != tls.VersionTLS11 ||
		!slices.Equal(imaps.CipherSuites, []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}) ||
		!slices.Equal(imaps.ALPN, []string{"imap", "x-legacy-imap"}) {
		t.Errorf("imaps policy %+v", imaps)
	}
	if pop3.MinVersion != tls.VersionTLS13 || pop3.CipherSuites != nil || pop3.ALPN != nil {
		t.Errorf("pop3 policy %+v (inherits min_version 1.3 only)", pop3)
	}
	// TLS 1.1, set explicitly: valid, with a warning naming where.
	w := c.Warnings()
	if len(w) != 1 || !strings.HasPrefix(w[0], "listeners[0].tls_min_version (line 9): listener imaps accepts TLS 1.1") {
		t.Errorf("warnings %q", w)
	}
	// Set in the tls section: the warning points there, once per listener.
	c, err = Parse([]byte(with("", "  min_version: \"1.0\"\n")))
	if err != nil {
		t.Fatal(err)
	}
	w = c.Warnings()
	if len(w) != 2 || !strings.HasPrefix(w[0], "tls.min_version (line 2): listener imaps accepts TLS 1.0") ||
		!strings.Contains(w[1], "listener pop3 accepts TLS 1.0") {
		t.Errorf("warnings %q", w) // not for the listener without TLS
	}
	// The rendered configuration omits unset policy keys and parses back.
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "alpn") || strings.Contains(string(out), "cipher_suites") || !strings.Contains(string(out), "min_version: \"1.0\"") {
		t.Errorf("marshalled:\n%s", out)
	}
}

func TestTLSPolicyErrors(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"bad version", with("implicit", "    tls_min_version: \"1.4\"\n"),
			`listeners[0].tls_min_version (line 8): "1.4" is not one of 1.0, 1.1, 1.2, 1.3`},
		{"bad global version", with("", "  min_version: TLS1.2\n"),
			`tls.min_version (line 2): "TLS1.2" is not one of`},
		{"unknown suite", with("implicit", "    tls_cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, ECDHE-RSA-AES256-GCM-SHA384]\n"),
			`listeners[0].tls_cipher_suites[1] (line 8): "ECDHE-RSA-AES256-GCM-SHA384" is not a TLS 1.2 cipher suite name`},
		{"insecure suite", with("starttls", "    tls_cipher_suites:\n      - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n      - TLS_RSA_WITH_AES_128_GCM_SHA256\n"),
			`listeners[1].tls_cipher_suites[1] (line 14): TLS_RSA_WITH_AES_128_GCM_SHA256 is insecure`},
		{"insecure global suite", with("", "  cipher_suites: [TLS_ECDHE_RSA_WITH_RC4_128_SHA]\n"),
			`tls.cipher_suites[0] (line 2): TLS_ECDHE_RSA_WITH_RC4_128_SHA is insecure`},
		{"TLS 1.3 suite", with("implicit", "    tls_cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
			`TLS_AES_128_GCM_SHA256 is a TLS 1.3 suite: TLS 1.3 suites are not configurable`},
		{"duplicate suite", with("implicit", "    tls_cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n"),
			"is listed twice"},
		{"suites with 1.3 only", with("implicit", "    tls_min_version: \"1.3\"\n    tls_cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n"),
			"listeners[0].tls_cipher_suites (line 9): no effect with listeners[0].tls_min_version 1.3"},
		{"no suite for TLS 1.0", with("", "  min_version: \"1.0\"\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n"),
			"tls.cipher_suites (line 3): none works with TLS 1.0 (tls.min_version)"},
		{"policy on a plaintext listener", strings.Replace(tlsConfig, "address: 127.0.0.1:143\n", "address: 127.0.0.1:143\n    alpn: [imap]\n    tls_min_version: \"1.3\"\n", 1),
			"listeners[2].tls_min_version (line 16): has no effect on a listener with tls none"},
		{"alpn http", with("implicit", "    alpn: [imap, h2]\n"),
			`listeners[0].alpn[1] (line 8): "h2" is another protocol's ALPN id`},
		{"alpn http/1.1 any case", with("implicit", "    alpn: [imap, HTTP/1.1]\n"),
			`"HTTP/1.1" is another protocol's ALPN id`},
		{"alpn pop3 on imap", with("implicit", "    alpn: [imap, pop3]\n"),
			`"pop3" is another protocol's ALPN id: accepting it would let cross-protocol (ALPACA) connections in`},
		{"alpn imap on pop3", with("starttls", "    alpn: [pop3, imap]\n"),
			`listeners[1].alpn[1] (line 12): "imap" is another protocol's ALPN id`},
		{"alpn without own id", with("implicit", "    alpn: [x-legacy-imap]\n"),
			`listeners[0].alpn (line 8): must include "imap"`},
		{"alpn empty id", with("implicit", "    alpn: [imap, \"\"]\n"),
			"1 to 255 bytes"},
		{"alpn long id", with("implicit", "    alpn: [imap, "+strings.Repeat("x", 256)+"]\n"),
			"1 to 255 bytes"},
		{"alpn space", with("implicit", "    alpn: [imap, \"imap 4\"]\n"),
			"only printable ASCII"},
		{"alpn duplicate", with("implicit", "    alpn: [imap, imap]\n"),
			`"imap" is listed twice`},
		{"alpn in tls section", with("", "  alpn: [imap]\n"),
			"field alpn not found"},
		{"unknown policy key", with("implicit", "    tls_max_version: \"1.2\"\n"),
			"field tls_max_version not found"},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
	// Every problem is reported at once.
	_, err := Parse([]byte(with("implicit", "    tls_min_version: \"9\"\n    alpn: [h2]\n    tls_cipher_suites: [nope]\n")))
	if errs, ok := err.(Errors); !ok || len(errs) != 4 { // version, suite, h2, missing imap
		t.Errorf("all problems: %v", err)
	}
}

func TestSessionTicketsConfig(t *testing.T) {
	c, err := Parse([]byte(tlsConfig))
	if err != nil {
		t.Fatal(err)
	}
	if !c.TLS.SessionTicketsOn() || c.TLS.SessionTicketRotation.D() != DefaultTicketRotation {
		t.Fatalf("defaults: %q %v", c.TLS.SessionTickets, c.TLS.SessionTicketRotation)
	}
	for _, l := range c.NodeConfig().Listeners {
		if l.TLSPolicy.SessionTicketsOff {
			t.Fatalf("listener %s: tickets off by default", l.Name)
		}
	}
	c, err = Parse([]byte(with("", "  session_tickets: \"off\"\n  session_ticket_rotation: 1h\n")))
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS.SessionTicketsOn() || c.TLS.SessionTicketRotation.D().Hours() != 1 {
		t.Fatalf("off: %q %v", c.TLS.SessionTickets, c.TLS.SessionTicketRotation)
	}
	for _, l := range c.NodeConfig().Listeners {
		if !l.TLSPolicy.SessionTicketsOff {
			t.Fatalf("listener %s: tickets on", l.Name)
		}
	}
	for extra, want := range map[string]string{
		"  session_tickets: maybe\n":         `tls.session_tickets (line 2): "maybe" is not one of on, off`,
		"  session_ticket_rotation: 100h\n":  "tls.session_ticket_rotation (line 2): between 1s and 56h0m0s",
		"  session_ticket_rotation: 100ms\n": "tls.session_ticket_rotation (line 2): between 1s and 56h0m0s",
	} {
		_, err := Parse([]byte(with("", extra)))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", extra, err, want)
		}
	}
}

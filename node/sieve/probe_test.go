package sieve

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/routing"
)

// probeWith runs Probe against a server that sends script and answers
// LOGOUT with logout ("" closes instead).
func probeWith(t *testing.T, script, logout string) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = c.Write([]byte(script))
		buf := make([]byte, 64)
		if n, _ := c.Read(buf); strings.HasPrefix(string(buf[:n]), "LOGOUT") && logout != "" {
			_, _ = c.Write([]byte(logout))
		}
	}()
	tc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	nc, err := netx.NewConn(tc.(*net.TCPConn), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := netx.NewStream(nc)
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	b := &routing.Backend{ID: "b", Host: "127.0.0.1", SievePort: 1}
	err = Probe(context.Background(), s, b, func(*routing.Backend) (*tls.Config, error) { return &tls.Config{}, nil })
	s.Close()
	<-done
	return err
}

func TestProbe(t *testing.T) {
	greeting := "\"IMPLEMENTATION\" \"x\"\r\n\"SASL\" \"PLAIN\"\r\nOK \"ready\"\r\n"
	if err := probeWith(t, greeting, "OK \"bye\"\r\n"); err != nil {
		t.Fatalf("healthy backend: %v", err)
	}
	for _, tc := range []struct{ name, script, logout, want string }{
		{"refusing greeting", "BYE \"overloaded\"\r\n", "", "reading greeting: unexpected backend greeting"},
		{"garbage", strings.Repeat("x", 10000), "", "reading greeting: line too long"},
		{"too many capabilities", strings.Repeat("\"X\"\r\n", 100) + "OK\r\n", "", "more than 64 capabilities"},
		{"huge literal", "{99999999}\r\n", "", "literals over"},
		{"LOGOUT refused", greeting, "NO \"no\"\r\n", "LOGOUT: backend answered"},
		{"closed at LOGOUT", greeting, "", "LOGOUT: EOF"},
	} {
		if err := probeWith(t, tc.script, tc.logout); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

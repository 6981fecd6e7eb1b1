package testcert

import (
	"crypto/tls"
	"testing"
)

func TestGenerateServesVerifiedTLS(t *testing.T) {
	certFile, keyFile, pool, _ := Generate(t, "", "localhost", "127.0.0.1", "carol.example.com")
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	for _, name := range []string{"", "localhost", "carol.example.com"} {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: name})
		if err != nil {
			t.Fatalf("server name %q: %v", name, err)
		}
		c.Close()
	}
	// A name not in the certificate must be rejected.
	if c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "other.example"}); err == nil {
		c.Close()
		t.Fatal("unexpected success for a host name not in the certificate")
	}
}

func TestWriteDefaultHosts(t *testing.T) {
	_, _, certPEM, err := Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(certPEM) == 0 {
		t.Fatal("empty certificate")
	}
}

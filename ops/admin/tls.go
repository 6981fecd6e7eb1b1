package admin

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// LoadKeyPair loads the admin listener's PEM certificate chain and key.
func LoadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("admin TLS needs both a certificate and a key file")
	}
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("admin TLS: %w", err)
	}
	return &c, nil
}

// SetCertificate replaces the certificate of a listener that serves HTTPS
// (reload); new handshakes use it, open connections keep theirs. A plain
// HTTP listener cannot start TLS while running.
func (s *Server) SetCertificate(c *tls.Certificate) error {
	if s.cert.Load() == nil {
		return errors.New("the admin listener serves plain HTTP: turning TLS on needs a restart")
	}
	s.cert.Store(c)
	return nil
}

func (s *Server) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cert.Load(), nil
		},
	}
}

// ClientTLS is the TLS configuration a client of an admin listener uses
// (the portico CLI, a node calling a peer's API). It trusts the CAs in
// caFile only; without one, the system's roots and the certificates in
// certFile (the listener's own certificate when it is self-signed, or the
// same certificate on every node); with neither, the system's roots.
func ClientTLS(caFile, certFile string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case caFile != "":
		pool, err := readPool(x509.NewCertPool(), caFile)
		if err != nil {
			return nil, err
		}
		c.RootCAs = pool
	case certFile != "":
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if pool, err = readPool(pool, certFile); err != nil {
			return nil, err
		}
		c.RootCAs = pool
	}
	return c, nil
}

func readPool(pool *x509.CertPool, file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("admin TLS CA: %w", err)
	}
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("admin TLS CA: no PEM certificate in %s", file)
	}
	return pool, nil
}

// Package testcert generates throwaway self-signed TLS certificates for
// tests, demos and integration backends.
package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// DefaultHosts are used when no host is passed to Write or Generate.
var DefaultHosts = []string{"localhost", "127.0.0.1"}

// File names written into the target directory.
const (
	CertFileName = "cert.pem"
	KeyFileName  = "key.pem"
)

// Write creates a self-signed ECDSA P-256 certificate valid for hosts (DNS
// names or IP addresses; DefaultHosts when empty) and writes it and its key
// as PEM to dir/cert.pem and dir/key.pem. The certificate is its own CA, so
// certPEM can be used directly as a trust root.
//
// The key file is written with mode 0644: it is a throwaway test key and
// servers that read it after dropping privileges must be able to.
func Write(dir string, hosts ...string) (certFile, keyFile string, certPEM []byte, err error) {
	certPEM, keyPEM, err := New(hosts...)
	if err != nil {
		return "", "", nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", nil, fmt.Errorf("testcert: %w", err)
	}
	certFile = filepath.Join(dir, CertFileName)
	keyFile = filepath.Join(dir, KeyFileName)
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return "", "", nil, fmt.Errorf("testcert: %w", err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o644); err != nil {
		return "", "", nil, fmt.Errorf("testcert: %w", err)
	}
	return certFile, keyFile, certPEM, nil
}

// New returns a PEM-encoded self-signed certificate and its PEM-encoded
// (PKCS#8) private key, without touching the file system.
func New(hosts ...string) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		hosts = DefaultHosts
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("testcert: generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("testcert: serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hosts[0], Organization: []string{"Portico test"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, h := range hosts {
		if h == "" {
			return nil, nil, errors.New("testcert: empty host name")
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("testcert: create certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("testcert: marshal key: %w", err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return certPEM, keyPEM, nil
}

// Generate is Write for tests: dir defaults to t.TempDir() when empty, any
// error fails the test, and a pool trusting the certificate is returned.
func Generate(t testing.TB, dir string, hosts ...string) (certFile, keyFile string, pool *x509.CertPool, certPEM []byte) {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	certFile, keyFile, certPEM, err := Write(dir, hosts...)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	if !pool.AppendCertsFromPEM(certPEM) {
		t.Fatal("testcert: generated certificate does not parse")
	}
	return certFile, keyFile, pool, certPEM
}

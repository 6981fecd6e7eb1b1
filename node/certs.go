package node

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
)

// CertPair names a certificate chain and key in PEM files.
type CertPair struct {
	CertFile string
	KeyFile  string
}

// CertStore holds the server certificates and picks one per handshake by
// SNI. Load replaces the whole set atomically, so certificates can be
// renewed without a restart; handshakes in flight keep the old set.
type CertStore struct {
	set atomic.Pointer[certSet]
}

type certSet struct {
	byName map[string]*tls.Certificate // exact names and "*.domain" wildcards
	first  *tls.Certificate            // for clients without (matching) SNI
}

// Load reads pairs and, if all are valid, makes them the current set.
func (s *CertStore) Load(pairs []CertPair) error {
	if len(pairs) == 0 {
		return errors.New("no certificates")
	}
	set := &certSet{byName: make(map[string]*tls.Certificate)}
	for _, p := range pairs {
		c, err := tls.LoadX509KeyPair(p.CertFile, p.KeyFile)
		if err != nil {
			return fmt.Errorf("certificate %s / key %s: %w", p.CertFile, p.KeyFile, err)
		}
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			return fmt.Errorf("certificate %s: %w", p.CertFile, err)
		}
		c.Leaf = leaf
		if set.first == nil {
			set.first = &c
		}
		names := leaf.DNSNames
		if len(names) == 0 && leaf.Subject.CommonName != "" {
			names = []string{leaf.Subject.CommonName}
		}
		for _, n := range names {
			n = strings.ToLower(n)
			if _, dup := set.byName[n]; !dup {
				set.byName[n] = &c
			}
		}
	}
	s.set.Store(set)
	return nil
}

// Loaded reports whether certificates are present.
func (s *CertStore) Loaded() bool { return s.set.Load() != nil }

// GetCertificate implements tls.Config.GetCertificate.
func (s *CertStore) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	set := s.set.Load()
	if set == nil {
		return nil, errors.New("no certificate loaded")
	}
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if name != "" {
		if c := set.byName[name]; c != nil {
			return c, nil
		}
		if i := strings.IndexByte(name, '.'); i > 0 {
			if c := set.byName["*"+name[i:]]; c != nil {
				return c, nil
			}
		}
	}
	return set.first, nil
}

// ServerConfig returns a TLS server configuration using the store.
func (s *CertStore) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: s.GetCertificate,
	}
}

package node

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
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
	info   []CertInfo                  // in configuration order
}

// CertInfo describes a loaded certificate chain (for metrics).
type CertInfo struct {
	File string // the configured certificate file
	Name string // the leaf's first DNS name, else its common name
	// NotAfter is the earliest expiry in the chain as served (leaf and
	// intermediates): clients refuse the chain from then on.
	NotAfter time.Time
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
		ci := CertInfo{File: p.CertFile, Name: leaf.Subject.CommonName, NotAfter: leaf.NotAfter}
		if len(leaf.DNSNames) > 0 {
			ci.Name = leaf.DNSNames[0]
		}
		for i, der := range c.Certificate[1:] {
			ic, err := x509.ParseCertificate(der)
			if err != nil {
				return fmt.Errorf("certificate %s: chain certificate %d: %w", p.CertFile, i+2, err)
			}
			if ic.NotAfter.Before(ci.NotAfter) {
				ci.NotAfter = ic.NotAfter
			}
		}
		set.info = append(set.info, ci)
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

// Certificates describes the current set, in configuration order (nil
// before the first Load).
func (s *CertStore) Certificates() []CertInfo {
	if set := s.set.Load(); set != nil {
		return append([]CertInfo(nil), set.info...)
	}
	return nil
}

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

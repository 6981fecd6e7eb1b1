// Package pki is the cluster's public-key infrastructure: a cluster CA,
// node certificates issued by it, and the checks every node-to-node
// connection and every signed gossip message rely on.
//
// A node's identity is its certificate: issued by a CA in the cluster's
// trust bundle, valid now, usable for both TLS client and server
// authentication, with the node name as its subject common name. Raft and
// the internal RPC run over mutual TLS 1.3 with these certificates, and a
// node's gossip is signed with the certificate's key, so a peer can be
// held to speaking only for its own name.
//
// Keys are ECDSA (P-256, P-384) or Ed25519: their signatures are small
// enough for gossip packets and node metadata (RSA's are not).
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"
)

// KeyID identifies a public key: the first 8 bytes of the SHA-256 of its
// DER SubjectPublicKeyInfo.
type KeyID [8]byte

func (k KeyID) String() string { return fmt.Sprintf("%x", k[:]) }

// KeyIDOf returns the key id of pub.
func KeyIDOf(pub crypto.PublicKey) (KeyID, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return KeyID{}, err
	}
	sum := sha256.Sum256(der)
	var id KeyID
	copy(id[:], sum[:8])
	return id, nil
}

// Identity is a verified node certificate.
type Identity struct {
	Name     string // the node name (subject common name)
	Key      crypto.PublicKey
	KeyID    KeyID
	NotAfter time.Time
}

// Material is what a node needs to speak for itself: the trust bundle, its
// own certificate chain and key.
type Material struct {
	Roots *x509.CertPool
	Cert  tls.Certificate // with Leaf set
	Self  Identity
	// CAs are the trust bundle's certificates (for status and expiry).
	CAs []*x509.Certificate
}

// Signer returns the node's private key.
func (m *Material) Signer() crypto.Signer { return m.Cert.PrivateKey.(crypto.Signer) }

// Load reads the trust bundle (one or more CA certificates: during a CA
// rotation both the old and the new), the node's certificate (optionally
// followed by intermediates) and its key, and checks that they fit
// together: the certificate is issued by the bundle, valid now, for client
// and server authentication, with a supported key. node, if not empty,
// must be the certificate's name.
func Load(caFile, certFile, keyFile, node string) (*Material, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	m, err := Parse(caPEM, certPEM, keyPEM, time.Now())
	if err != nil {
		return nil, err
	}
	if node != "" && m.Self.Name != node {
		return nil, fmt.Errorf("node certificate %s is for node %q, but this node is %q (issue one with: portico tls cert create --node %s)", certFile, m.Self.Name, node, node)
	}
	return m, nil
}

// Parse is Load from memory, checked at time now.
func Parse(caPEM, certPEM, keyPEM []byte, now time.Time) (*Material, error) {
	roots := x509.NewCertPool()
	var cas []*x509.Certificate
	for _, c := range pemCerts(caPEM) {
		if !c.IsCA {
			return nil, fmt.Errorf("cluster CA bundle: certificate %q is not a CA", c.Subject.CommonName)
		}
		roots.AddCert(c)
		cas = append(cas, c)
	}
	if len(cas) == 0 {
		return nil, errors.New("cluster CA bundle: no certificate found")
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("node certificate and key: %w", err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("node certificate: %w", err)
		}
	}
	var chain [][]byte
	if len(cert.Certificate) > 1 {
		chain = cert.Certificate[1:]
	}
	id, err := verify(cert.Leaf, chain, roots, now)
	if err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	if _, ok := cert.PrivateKey.(crypto.Signer); !ok {
		return nil, errors.New("node key cannot sign")
	}
	return &Material{Roots: roots, Cert: cert, Self: id, CAs: cas}, nil
}

func pemCerts(b []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

// Verify checks a peer's certificate chain as presented in a TLS
// handshake (leaf first, as tls.ConnectionState.PeerCertificates) against
// roots at time now, and returns the peer's identity.
func Verify(certs []*x509.Certificate, roots *x509.CertPool, now time.Time) (Identity, error) {
	if len(certs) == 0 {
		return Identity{}, errors.New("no certificate presented")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	return verifyLeaf(certs[0], inter, roots, now)
}

func verify(leaf *x509.Certificate, chain [][]byte, roots *x509.CertPool, now time.Time) (Identity, error) {
	inter := x509.NewCertPool()
	for _, raw := range chain {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return Identity{}, fmt.Errorf("intermediate certificate: %w", err)
		}
		inter.AddCert(c)
	}
	return verifyLeaf(leaf, inter, roots, now)
}

func verifyLeaf(leaf *x509.Certificate, inter, roots *x509.CertPool, now time.Time) (Identity, error) {
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return Identity{}, fmt.Errorf("not a certificate of this cluster: %w", err)
	}
	if !hasUsage(leaf, x509.ExtKeyUsageServerAuth) || !hasUsage(leaf, x509.ExtKeyUsageClientAuth) {
		return Identity{}, errors.New("certificate is not for both client and server authentication")
	}
	name := leaf.Subject.CommonName
	if err := CheckNodeName(name); err != nil {
		return Identity{}, fmt.Errorf("certificate subject: %w", err)
	}
	switch k := leaf.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return Identity{}, errors.New("certificate key: ECDSA curves P-256 and P-384 only")
		}
	case ed25519.PublicKey:
	default:
		return Identity{}, fmt.Errorf("certificate key %T: ECDSA or Ed25519 only", leaf.PublicKey)
	}
	kid, err := KeyIDOf(leaf.PublicKey)
	if err != nil {
		return Identity{}, err
	}
	return Identity{Name: name, Key: leaf.PublicKey, KeyID: kid, NotAfter: leaf.NotAfter}, nil
}

func hasUsage(c *x509.Certificate, u x509.ExtKeyUsage) bool {
	for _, x := range c.ExtKeyUsage {
		if x == u || x == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

// CheckNodeName validates a node name (the same rule as node_name).
func CheckNodeName(name string) error {
	if name == "" || len(name) > 128 || bytes.ContainsAny([]byte(name), " \t\r\n/\x00") {
		return fmt.Errorf("node name %q: 1-128 bytes, no spaces or slashes", name)
	}
	return nil
}

// Sign signs msg with key (SHA-256 then ECDSA ASN.1, or Ed25519 on msg).
func Sign(key crypto.Signer, msg []byte) ([]byte, error) {
	if _, ok := key.Public().(ed25519.PublicKey); ok {
		return key.Sign(rand.Reader, msg, crypto.Hash(0))
	}
	sum := sha256.Sum256(msg)
	return key.Sign(rand.Reader, sum[:], crypto.SHA256)
}

// VerifySignature checks sig over msg with pub.
func VerifySignature(pub crypto.PublicKey, msg, sig []byte) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		sum := sha256.Sum256(msg)
		return ecdsa.VerifyASN1(k, sum[:], sig)
	case ed25519.PublicKey:
		return len(sig) == ed25519.SignatureSize && ed25519.Verify(k, msg, sig)
	}
	return false
}

// CreateCA returns a new self-signed cluster CA (ECDSA P-256) valid for
// validity, as PEM certificate and PEM key.
func CreateCA(name string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Portico cluster"}},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	return encode(der, key)
}

// CreateNodeCert issues a node certificate (ECDSA P-256) for node from
// the CA given as PEM, valid for validity (never beyond the CA's own
// expiry). hosts (IP addresses or DNS names) are added as subject
// alternative names for operators' tools; Portico itself identifies
// nodes by the common name.
func CreateNodeCert(caCertPEM, caKeyPEM []byte, node string, validity time.Duration, hosts []string) (certPEM, keyPEM []byte, err error) {
	if err := CheckNodeName(node); err != nil {
		return nil, nil, err
	}
	ca, err := tls.X509KeyPair(caCertPEM, caKeyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate and key: %w", err)
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	if !caCert.IsCA {
		return nil, nil, errors.New("the CA certificate is not a CA")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(caCert.NotAfter) {
		notAfter = caCert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: node, Organization: []string{"Portico cluster"}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		return nil, nil, err
	}
	return encode(der, key)
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func encode(der []byte, key *ecdsa.PrivateKey) (certPEM, keyPEM []byte, err error) {
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	return certPEM, keyPEM, nil
}

// Ephemeral returns material for a node that has no peers (a single-node
// cluster with no configured certificates): a CA and a certificate made in
// memory for this process only. Nobody else holds a certificate from that
// CA, so the node's raft port refuses every connection.
func Ephemeral(node string) (*Material, error) {
	caCert, caKey, err := CreateCA("Portico ephemeral CA for "+node, 100*365*24*time.Hour)
	if err != nil {
		return nil, err
	}
	cert, key, err := CreateNodeCert(caCert, caKey, node, 100*365*24*time.Hour, nil)
	if err != nil {
		return nil, err
	}
	return Parse(caCert, cert, key, time.Now())
}

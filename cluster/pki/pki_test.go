package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

func mustCA(t *testing.T) (cert, key []byte) {
	t.Helper()
	c, k, err := CreateCA("test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

func TestIssueAndVerify(t *testing.T) {
	caC, caK := mustCA(t)
	c, k, err := CreateNodeCert(caC, caK, "mail-proxy-1", 48*time.Hour, []string{"10.0.0.1", "proxy1.example"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := Parse(caC, c, k, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if m.Self.Name != "mail-proxy-1" || m.Cert.Leaf == nil {
		t.Fatalf("identity %+v", m.Self)
	}
	// The node certificate never outlives its CA.
	ca, _ := x509.ParseCertificate(pemBlock(t, caC))
	if m.Self.NotAfter.After(ca.NotAfter) {
		t.Errorf("node certificate expires %v, after its CA %v", m.Self.NotAfter, ca.NotAfter)
	}
	if len(m.Cert.Leaf.IPAddresses) != 1 || len(m.Cert.Leaf.DNSNames) != 1 {
		t.Errorf("SANs %v %v", m.Cert.Leaf.IPAddresses, m.Cert.Leaf.DNSNames)
	}
	// Signatures: good, tampered, wrong key.
	sig, err := Sign(m.Signer(), []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if !VerifySignature(m.Self.Key, []byte("hello"), sig) || VerifySignature(m.Self.Key, []byte("hellp"), sig) {
		t.Error("signature check")
	}
	c2, k2, _ := CreateNodeCert(caC, caK, "other", time.Hour, nil)
	m2, err := Parse(caC, c2, k2, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if VerifySignature(m2.Self.Key, []byte("hello"), sig) || m2.Self.KeyID == m.Self.KeyID {
		t.Error("another node's key verified the signature, or has the same id")
	}
	// The peer view of the same chain.
	id, err := Verify([]*x509.Certificate{m.Cert.Leaf}, m.Roots, time.Now())
	if err != nil || id.Name != "mail-proxy-1" || id.KeyID != m.Self.KeyID {
		t.Fatalf("Verify: %+v %v", id, err)
	}
}

func pemBlock(t *testing.T, b []byte) []byte {
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("no PEM")
	}
	return blk.Bytes
}

// What is not a cluster certificate is refused, each with a reason.
func TestRefusals(t *testing.T) {
	caC, caK := mustCA(t)
	otherC, otherK := mustCA(t)
	c, k, _ := CreateNodeCert(caC, caK, "n1", time.Hour, nil)
	oc, ok, _ := CreateNodeCert(otherC, otherK, "n1", time.Hour, nil)

	if _, err := Parse(caC, oc, ok, time.Now()); err == nil || !strings.Contains(err.Error(), "not a certificate of this cluster") {
		t.Errorf("other CA: %v", err)
	}
	if _, err := Parse(caC, c, k, time.Now().Add(2*time.Hour)); err == nil {
		t.Error("expired certificate accepted")
	}
	if _, err := Parse(caC, c, ok, time.Now()); err == nil {
		t.Error("certificate with another key accepted")
	}
	if _, err := Parse(c, c, k, time.Now()); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("leaf as CA bundle: %v", err)
	}
	if _, err := Parse([]byte("junk"), c, k, time.Now()); err == nil {
		t.Error("empty bundle accepted")
	}
	// A CA rotation bundle (old and new) accepts both.
	bundle := append(append([]byte{}, otherC...), caC...)
	if _, err := Parse(bundle, c, k, time.Now()); err != nil {
		t.Errorf("rotation bundle: %v", err)
	}
	if _, err := Parse(bundle, oc, ok, time.Now()); err != nil {
		t.Errorf("rotation bundle, old CA: %v", err)
	}
	// Server-only usage, a bad node name, an RSA key.
	ca, _ := x509.ParseCertificate(pemBlock(t, caC))
	caKey, _ := x509.ParsePKCS8PrivateKey(pemBlock(t, caK))
	issue := func(cn string, usage []x509.ExtKeyUsage) []byte {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: usage, KeyUsage: x509.KeyUsageDigitalSignature}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	for name, der := range map[string][]byte{
		"server only": issue("n1", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}),
		"bad name":    issue("a b/c", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}),
		"no name":     issue("", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}),
	} {
		leaf, _ := x509.ParseCertificate(der)
		if _, err := Verify([]*x509.Certificate{leaf}, mustPool(ca), time.Now()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := Verify(nil, mustPool(ca), time.Now()); err == nil {
		t.Error("no certificate accepted")
	}
	if _, _, err := CreateNodeCert(caC, caK, "has space", time.Hour, nil); err == nil {
		t.Error("bad node name issued")
	}
}

func mustPool(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}

func TestEphemeral(t *testing.T) {
	a, err := Ephemeral("solo")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Ephemeral("solo")
	if a.Self.Name != "solo" {
		t.Fatal(a.Self.Name)
	}
	// Two throwaway identities never trust each other.
	if _, err := Verify([]*x509.Certificate{b.Cert.Leaf}, a.Roots, time.Now()); err == nil {
		t.Error("one ephemeral identity trusts another")
	}
}

package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/portico-mail/portico/cluster/pki"
)

func init() {
	register(&command{name: "tls", summary: "make the cluster CA and node certificates", subs: []*command{
		{name: "ca", summary: "the cluster CA", subs: []*command{
			{name: "create", summary: "create a cluster CA: " + defaultCAFile + " and " + defaultCAKeyFile, setup: setupCACreate},
		}},
		{name: "cert", summary: "node certificates", subs: []*command{
			{name: "create", summary: "create a node's certificate, signed by the cluster CA", setup: setupCertCreate},
			{name: "show", args: "FILE...", argFiles: true, summary: "show certificates: subject, issuer, validity, key", setup: func(*flag.FlagSet) func([]string) error { return tlsCertShow }},
		}},
	}})
}

const (
	defaultCAFile    = "portico-ca.pem"
	defaultCAKeyFile = "portico-ca-key.pem"
)

func setupCACreate(fs *flag.FlagSet) func([]string) error {
	var dir string
	pathVar(fs, &dir, dirArg, "dir", ".", "directory to write "+defaultCAFile+" and "+defaultCAKeyFile+" in")
	days := fs.Int("days", 5*365, "validity in days")
	name := fs.String("name", "", "the CA's common name (default: Portico cluster CA and the date)")
	return func([]string) error { return tlsCACreate(dir, *days, *name) }
}

func tlsCACreate(dir string, days int, name string) error {
	if days < 1 {
		return errors.New("--days must be at least 1")
	}
	if name == "" {
		name = "Portico cluster CA " + time.Now().UTC().Format("2006-01-02")
	}
	certPEM, keyPEM, err := pki.CreateCA(name, time.Duration(days)*24*time.Hour)
	if err != nil {
		return err
	}
	cf, kf := filepath.Join(dir, defaultCAFile), filepath.Join(dir, defaultCAKeyFile)
	if err := writeNew(kf, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeNew(cf, certPEM, 0o644); err != nil {
		_ = os.Remove(kf)
		return err
	}
	fmt.Printf("wrote %s (give it to every node: cluster.tls.ca_file)\nwrote %s (keep it off the nodes: it issues node certificates)\n", cf, kf)
	return nil
}

// certOptions are the flags of tls cert create.
type certOptions struct {
	node, ca, caKey, dir string
	days                 int
	hosts                multiFlag
}

func setupCertCreate(fs *flag.FlagSet) func([]string) error {
	var o certOptions
	fs.StringVar(&o.node, "node", "", "the node's `name` (its node_name): required")
	pathVar(fs, &o.ca, fileArg, "ca", defaultCAFile, "the CA certificate")
	pathVar(fs, &o.caKey, fileArg, "ca-key", defaultCAKeyFile, "the CA key")
	pathVar(fs, &o.dir, dirArg, "dir", ".", "directory to write NAME.pem and NAME-key.pem in")
	fs.IntVar(&o.days, "days", 2*365, "validity in days (at most the CA's)")
	fs.Var(&o.hosts, "host", "an IP address or DNS `name` to add as a subject alternative name (repeatable; optional)")
	return func([]string) error { return tlsCertCreate(&o) }
}

func tlsCertCreate(o *certOptions) error {
	if o.node == "" {
		return errors.New("--node NAME is required (the node_name of the node it is for)")
	}
	if o.days < 1 {
		return errors.New("--days must be at least 1")
	}
	caPEM, err := os.ReadFile(o.ca)
	if err != nil {
		return fmt.Errorf("CA certificate: %w (create one with: portico tls ca create)", err)
	}
	caKeyPEM, err := os.ReadFile(o.caKey)
	if err != nil {
		return fmt.Errorf("CA key: %w", err)
	}
	certPEM, keyPEM, err := pki.CreateNodeCert(caPEM, caKeyPEM, o.node, time.Duration(o.days)*24*time.Hour, o.hosts)
	if err != nil {
		return err
	}
	// Check the result as a node will (the same code path).
	if _, err := pki.Parse(caPEM, certPEM, keyPEM, time.Now()); err != nil {
		return fmt.Errorf("the new certificate does not verify: %w", err)
	}
	cf, kf := filepath.Join(o.dir, o.node+".pem"), filepath.Join(o.dir, o.node+"-key.pem")
	if err := writeNew(kf, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeNew(cf, certPEM, 0o644); err != nil {
		_ = os.Remove(kf)
		return err
	}
	fmt.Printf("wrote %s and %s (node %s: cluster.tls.cert_file and key_file)\n", cf, kf, o.node)
	return nil
}

func tlsCertShow(files []string) error {
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		n := 0
		for {
			var blk *pem.Block
			blk, b = pem.Decode(b)
			if blk == nil {
				break
			}
			if blk.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return fmt.Errorf("%s: %w", f, err)
			}
			n++
			kid, _ := pki.KeyIDOf(c.PublicKey)
			kind := "node"
			if c.IsCA {
				kind = "CA"
			}
			left := time.Until(c.NotAfter).Round(time.Hour)
			fmt.Printf("%s: %s %q issued by %q, valid %s to %s (%s left), key %s\n", f, kind, c.Subject.CommonName, c.Issuer.CommonName,
				c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339), left, kid)
		}
		if n == 0 {
			return fmt.Errorf("%s: no certificate found", f)
		}
	}
	return nil
}

// writeNew writes a file that must not exist yet (never overwrite a key).
func writeNew(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s exists: not overwriting it", path)
		}
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// multiFlag is a repeatable string flag (also comma-separated).
type multiFlag []string

func (m *multiFlag) String() string { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*m = append(*m, s)
		}
	}
	return nil
}

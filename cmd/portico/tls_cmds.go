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
	commands["tls"] = command{"tls ca create | cert create --node NAME | cert show FILE\n                                 make the cluster CA and node certificates", cmdTLS}
}

const (
	defaultCAFile    = "portico-ca.pem"
	defaultCAKeyFile = "portico-ca-key.pem"
)

func cmdTLS(args []string) error {
	const usage = "tls ca create [--dir D] [--days N] | tls cert create --node NAME [--ca F] [--ca-key F] [--dir D] [--days N] [--host H]... | tls cert show FILE..."
	what, rest, err := sub(args, usage)
	if err != nil {
		return err
	}
	verb, rest, err := sub(rest, usage)
	if err != nil {
		return err
	}
	switch what + " " + verb {
	case "ca create":
		return tlsCACreate(rest)
	case "cert create":
		return tlsCertCreate(rest)
	case "cert show":
		return tlsCertShow(rest)
	}
	return fmt.Errorf("usage: portico %s", usage)
}

func tlsCACreate(args []string) error {
	fs := flag.NewFlagSet("tls ca create", flag.ContinueOnError)
	dir := fs.String("dir", ".", "directory to write "+defaultCAFile+" and "+defaultCAKeyFile+" in")
	days := fs.Int("days", 5*365, "validity in days")
	name := fs.String("name", "", "the CA's common name (default: Portico cluster CA and the date)")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if *days < 1 {
		return errors.New("--days must be at least 1")
	}
	if *name == "" {
		*name = "Portico cluster CA " + time.Now().UTC().Format("2006-01-02")
	}
	certPEM, keyPEM, err := pki.CreateCA(*name, time.Duration(*days)*24*time.Hour)
	if err != nil {
		return err
	}
	cf, kf := filepath.Join(*dir, defaultCAFile), filepath.Join(*dir, defaultCAKeyFile)
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

func tlsCertCreate(args []string) error {
	fs := flag.NewFlagSet("tls cert create", flag.ContinueOnError)
	node := fs.String("node", "", "the node's name (its node_name): required")
	ca := fs.String("ca", defaultCAFile, "the CA certificate")
	caKey := fs.String("ca-key", defaultCAKeyFile, "the CA key")
	dir := fs.String("dir", ".", "directory to write NAME.pem and NAME-key.pem in")
	days := fs.Int("days", 2*365, "validity in days (at most the CA's)")
	var hosts multiFlag
	fs.Var(&hosts, "host", "an IP address or DNS name to add as a subject alternative name (repeatable; optional)")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if *node == "" {
		return errors.New("--node NAME is required (the node_name of the node it is for)")
	}
	if *days < 1 {
		return errors.New("--days must be at least 1")
	}
	caPEM, err := os.ReadFile(*ca)
	if err != nil {
		return fmt.Errorf("CA certificate: %w (create one with: portico tls ca create)", err)
	}
	caKeyPEM, err := os.ReadFile(*caKey)
	if err != nil {
		return fmt.Errorf("CA key: %w", err)
	}
	certPEM, keyPEM, err := pki.CreateNodeCert(caPEM, caKeyPEM, *node, time.Duration(*days)*24*time.Hour, hosts)
	if err != nil {
		return err
	}
	// Check the result as a node will (the same code path).
	if _, err := pki.Parse(caPEM, certPEM, keyPEM, time.Now()); err != nil {
		return fmt.Errorf("the new certificate does not verify: %w", err)
	}
	cf, kf := filepath.Join(*dir, *node+".pem"), filepath.Join(*dir, *node+"-key.pem")
	if err := writeNew(kf, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeNew(cf, certPEM, 0o644); err != nil {
		_ = os.Remove(kf)
		return err
	}
	fmt.Printf("wrote %s and %s (node %s: cluster.tls.cert_file and key_file)\n", cf, kf, *node)
	return nil
}

func tlsCertShow(files []string) error {
	if len(files) == 0 {
		return errors.New("usage: portico tls cert show FILE [FILE ...]")
	}
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

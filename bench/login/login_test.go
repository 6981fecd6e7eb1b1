// Package login benchmarks one IMAP login through a Portico node, in one
// process: the node as `portico proxy` builds it (ops/daemon, forward: id,
// logging formatted at info level into io.Discard), a minimal backend that
// answers like bench/cmd/imapsink, and a client that connects, reads the
// greeting, logs in and keeps the session, one login after another.
//
// Besides ns/op and allocs/op (the node's, the client's and the backend's
// together: the latter two do the same work whatever the node does, so a
// difference between two builds is the node's) it reports the process's
// CPU time per login (cpu-us/op, from getrusage) and its context switches
// per login (ctxsw/op). It is the quick A/B check for changes to the login
// path; bench/logincpu.sh measures the proxy alone, beside nginx.
//
//	go test -run '^$' -bench . -benchtime 3000x -count 5 ./bench/login/
package login

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/ops/daemon"
)

func BenchmarkLoginPlain(b *testing.B) { benchLogin(b, false) }
func BenchmarkLoginTLS(b *testing.B)   { benchLogin(b, true) }

func benchLogin(b *testing.B, useTLS bool) {
	sink := startSink(b)
	certFile, keyFile := writeCert(b)
	cfg, err := config.FromProxyFlags(config.ProxyFlags{
		From: []string{"imap://127.0.0.1:0", "imaps://127.0.0.1:0"}, To: []string{"imap://" + sink},
		Cert: certFile, Key: keyFile, AllowPlaintext: true, Forward: "id",
		MaxConnections: -1, MaxConnectionsPerIP: -1,
	})
	if err != nil {
		b.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := daemon.New(cfg, daemon.Options{Logger: logger})
	if err != nil {
		b.Fatal(err)
	}
	if err := d.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = d.Shutdown(b.Context()) })
	addr := d.Addr("imap-1").String()
	var tlsConf *tls.Config
	if useTLS {
		addr = d.Addr("imaps-2").String()
		// As loadimap: X25519 then P-256, a full handshake every time.
		tlsConf = &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12,
			CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}}
	}
	conns := make([]net.Conn, 0, b.N)
	b.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	// One login first, out of the measurement (first-use costs).
	conns = append(conns, login(b, addr, tlsConf, 0))
	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		conns = append(conns, login(b, addr, tlsConf, i+1))
	}
	b.StopTimer()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/op")
	b.ReportMetric(float64(ru1.Nvcsw+ru1.Nivcsw-ru0.Nvcsw-ru0.Nivcsw)/float64(b.N), "ctxsw/op")
}

// login runs one session up to the tagged OK of LOGIN and returns it open.
func login(b *testing.B, addr string, tlsConf *tls.Config, i int) net.Conn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if tlsConf != nil {
		tc := tls.Client(c, tlsConf)
		if err := tc.Handshake(); err != nil {
			b.Fatal(err)
		}
		c = tc
	}
	r := bufio.NewReaderSize(c, 512)
	if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "* OK") {
		b.Fatalf("greeting %q: %v", l, err)
	}
	if _, err := io.WriteString(c, "a LOGIN user"+strconv.Itoa(i)+" secret\r\n"); err != nil {
		b.Fatal(err)
	}
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			b.Fatal(err)
		}
		if strings.HasPrefix(l, "a ") {
			if !strings.HasPrefix(l, "a OK") {
				b.Fatalf("login: %q", l)
			}
			break
		}
	}
	_ = c.SetDeadline(time.Time{})
	return c
}

// startSink runs a backend that answers like bench/cmd/imapsink (greeting
// with capabilities, ID, AUTHENTICATE PLAIN with an initial response,
// LOGIN), one goroutine per connection, until the benchmark ends.
func startSink(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); serveSink(c) }()
		}
	}()
	b.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func serveSink(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 512)
	if _, err := io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 SASL-IR ID LITERAL+ AUTH=PLAIN] sink ready\r\n"); err != nil {
		return
	}
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return
		}
		f := strings.Fields(l)
		if len(f) < 2 {
			return
		}
		tag, reply := f[0], ""
		switch strings.ToUpper(f[1]) {
		case "ID":
			reply = "* ID (\"name\" \"sink\")\r\n" + tag + " OK ID completed\r\n"
		case "AUTHENTICATE", "LOGIN":
			reply = tag + " OK [CAPABILITY IMAP4rev1 IDLE LITERAL+] Logged in\r\n"
		case "NOOP":
			reply = tag + " OK NOOP completed\r\n"
		default:
			reply = tag + " BAD unknown command\r\n"
		}
		if _, err := io.WriteString(c, reply); err != nil {
			return
		}
	}
}

// writeCert writes a throwaway ECDSA P-256 certificate and key.
func writeCert(b *testing.B) (certFile, keyFile string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		b.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		b.Fatal(err)
	}
	return certFile, keyFile
}

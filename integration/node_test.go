package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/ops/daemon"
)

// portico is an in-process Portico node for single-node tests.
type portico struct {
	d   *daemon.Daemon
	cfg *config.Config
}

func (p *portico) addr(listener string) string { return p.d.Addr(listener).String() }

// startPortico runs a node from YAML (listeners may use port 0). Logs go
// to the test log when -v, else are discarded.
func startPortico(t *testing.T, yamlText string) *portico {
	t.Helper()
	if !strings.Contains(yamlText, "\nadmin:") {
		yamlText += "\nadmin: {address: \"127.0.0.1:0\"}\n"
	}
	if !strings.Contains(yamlText, "\ndata_dir:") {
		yamlText += fmt.Sprintf("\ndata_dir: %q\n", t.TempDir())
	}
	if !strings.Contains(yamlText, "\ncluster:") {
		yamlText += "\ncluster: {raft_address: \"127.0.0.1:0\", gossip_address: \"127.0.0.1:0\"}\n"
	}
	cfg, err := config.Parse([]byte(yamlText))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yamlText)
	}
	return runPortico(t, cfg, daemon.Options{Logger: testLogger(t)})
}

// runPortico starts a node from cfg and stops it when the test ends.
func runPortico(t *testing.T, cfg *config.Config, o daemon.Options) *portico {
	t.Helper()
	d, err := daemon.New(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = d.Shutdown(ctx)
	})
	return &portico{d: d, cfg: cfg}
}

// testLogger writes to the test log when -v, else discards.
func testLogger(t *testing.T) *slog.Logger {
	var out io.Writer = io.Discard
	if testing.Verbose() {
		out = testWriter{t}
	}
	return slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// demoCert returns the example certificate files (self-signed, localhost).
func demoCert(t *testing.T) (cert, key string) {
	cert, key = "../examples/demo-tls/cert.pem", "../examples/demo-tls/key.pem"
	if _, err := os.Stat(cert); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// clientTLS trusts anything: the tests check the proxy, not PKI.
var clientTLS = &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}

// lineConn is a raw protocol client for precise assertions.
type lineConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialLine(t *testing.T, addr string, implicitTLS bool) *lineConn {
	t.Helper()
	var c net.Conn
	var err error
	if implicitTLS {
		c, err = tls.Dial("tcp", addr, clientTLS)
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &lineConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (l *lineConn) send(s string) {
	l.t.Helper()
	if _, err := io.WriteString(l.c, s); err != nil {
		l.t.Fatalf("send %q: %v", s, err)
	}
}

func (l *lineConn) line() string {
	l.t.Helper()
	s, err := l.br.ReadString('\n')
	if err != nil {
		l.t.Fatalf("read: %v (got %q)", err, s)
	}
	return s
}

// until reads lines until one starts with prefix and returns it.
func (l *lineConn) until(prefix string) string {
	l.t.Helper()
	var seen []string
	for {
		s, err := l.br.ReadString('\n')
		if err != nil {
			l.t.Fatalf("waiting for %q: %v; saw %q", prefix, err, seen)
		}
		if strings.HasPrefix(s, prefix) {
			return s
		}
		seen = append(seen, s)
	}
}

// closed reports whether the server closes the connection within d.
func (l *lineConn) closed(d time.Duration) bool {
	_ = l.c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, l.br)
	return err == nil // EOF
}

func tcpAddr(s string) *net.TCPAddr {
	a, err := net.ResolveTCPAddr("tcp", s)
	if err != nil {
		panic(err)
	}
	return a
}

// startTLS upgrades the raw connection after STARTTLS/STLS was accepted.
func (l *lineConn) startTLS() {
	l.t.Helper()
	if l.br.Buffered() > 0 {
		l.t.Fatal("bytes after the STARTTLS reply")
	}
	tc := tls.Client(l.c, clientTLS)
	if err := tc.Handshake(); err != nil {
		l.t.Fatal(err)
	}
	l.c = tc
	l.br = bufio.NewReader(tc)
}

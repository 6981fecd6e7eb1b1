package session

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/testcert"
	"github.com/portico-mail/portico/node/netx"
)

// What ends a session that did not log in, decided in one place.
func TestReasonFor(t *testing.T) {
	live := context.Background()
	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	lis := &Listener{Limits: Limits{PreAuthLifetime: time.Minute}}
	for _, tc := range []struct {
		ctx     context.Context
		started time.Time
		err     error
		reason  string
	}{
		{live, time.Now(), io.EOF, EndClientClosed},
		{live, time.Now(), io.ErrUnexpectedEOF, EndClientClosed},
		{live, time.Now(), fmt.Errorf("read: %w", syscall.ECONNRESET), EndClientClosed},
		{live, time.Now(), fmt.Errorf("write: %w", syscall.EPIPE), EndClientClosed},
		{live, time.Now(), fmt.Errorf("read: %w", os.ErrDeadlineExceeded), EndTimeout},
		{live, time.Now().Add(-2 * time.Minute), fmt.Errorf("read: %w", os.ErrDeadlineExceeded), EndPreauthLifetime},
		{live, time.Now(), errors.New("something else"), EndError},
		{stopped, time.Now(), os.ErrDeadlineExceeded, EndShutdown},
		{stopped, time.Now(), io.EOF, EndShutdown},
	} {
		d := NewDialogue(tc.ctx, &Client{Listener: lis, Started: tc.started})
		if got := d.reasonFor(tc.err); got != tc.reason {
			t.Errorf("reasonFor(ctx err %v, %v) = %q, want %q", tc.ctx.Err(), tc.err, got, tc.reason)
		}
	}
}

// A failed handshake with a client ends the session, classified.
func TestStartTLSFailureClassified(t *testing.T) {
	certPEM, keyPEM, err := testcert.New("localhost")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	lis := &Listener{TLSConfig: &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		NextProtos:   []string{"imap"},
	}, Limits: Limits{TLSHandshakeTimeout: 200 * time.Millisecond}}
	hello := func(cfg *tls.Config) func(net.Conn) {
		return func(c net.Conn) {
			cfg.InsecureSkipVerify = true
			_ = tls.Client(c, cfg).Handshake()
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	for _, tc := range []struct {
		name   string
		client func(net.Conn)
		want   string
	}{
		{"garbage", func(c net.Conn) { io.WriteString(c, "a1 LOGIN alice secret\r\n") }, TLSFailError},
		{"hang up", func(c net.Conn) { c.Close() }, TLSFailClosed},
		{"silent", func(net.Conn) {}, TLSFailTimeout},
		{"TLS 1.1", hello(&tls.Config{MinVersion: tls.VersionTLS11, MaxVersion: tls.VersionTLS11}), TLSFailVersion},
		{"no common suite", hello(&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384}}), TLSFailCipher},
		{"ALPN h2", hello(&tls.Config{NextProtos: []string{"h2", "http/1.1"}}), TLSFailALPN},
		{"ALPN imap", hello(&tls.Config{NextProtos: []string{"imap"}}), ""},
		{"ok", func(c net.Conn) {
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
			_ = tc.Handshake()
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			sc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			nc, err := netx.NewConn(sc.(*net.TCPConn), nil)
			if err != nil {
				t.Fatal(err)
			}
			s := netx.NewStream(nc)
			defer s.Close()
			d := NewDialogue(context.Background(), &Client{Listener: lis, Stream: s})
			go tc.client(cc)
			err = d.StartTLS("STARTTLS")
			if err == nil {
				if tc.want != "" {
					t.Fatalf("handshake succeeded, want %q", tc.want)
				}
				return
			}
			end := d.end(err)
			if end.TLSFailure != tc.want || end.Reason != EndTLSHandshake || end.State != StateTLS {
				t.Fatalf("%+v, want TLSFailure %q", end, tc.want)
			}
		})
	}
}

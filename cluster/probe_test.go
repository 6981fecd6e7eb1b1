package cluster

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/portico-mail/portico/routing"
)

// The injected probe gets a context that ends at the probe timeout, and at
// once when health checking stops; nil uses ConnectProbe.
func TestHealthProbeContext(t *testing.T) {
	blocked := func(ctx context.Context, b *routing.Backend) error {
		<-ctx.Done()
		return ctx.Err()
	}
	h := &Health{cfg: HealthConfig{Timeout: 100 * time.Millisecond, Probe: blocked}, stop: make(chan struct{})}
	b := &routing.Backend{ID: "b", Host: "127.0.0.1", IMAPPort: 1}
	start := time.Now()
	if err := h.probe(b); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("probe past its timeout: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("timeout of 100ms took %v", d)
	}

	h.cfg.Timeout = time.Minute
	go func() {
		time.Sleep(50 * time.Millisecond)
		close(h.stop)
	}()
	start = time.Now()
	if err := h.probe(b); !errors.Is(err, context.Canceled) {
		t.Fatalf("probe when health checking stops: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("stop took %v to end a probe", d)
	}
}

func TestConnectProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b := &routing.Backend{ID: "b", Host: "127.0.0.1", POP3Port: port}
	if err := ConnectProbe(ctx, b); err != nil {
		t.Fatalf("listening port: %v", err)
	}
	ln.Close()
	if err := ConnectProbe(ctx, b); err == nil {
		t.Fatal("closed port: no error")
	}
	if err := ConnectProbe(ctx, &routing.Backend{ID: "none", Host: "127.0.0.1"}); err == nil {
		t.Fatal("backend without ports: no error")
	}
}

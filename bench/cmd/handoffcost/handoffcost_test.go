//go:build linux

package main

import (
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portico-mail/portico/node/relay"
)

// Every hand-off gives the relay a working session: bytes sent by each
// client reach its backend and back, whichever the kind of side.
func TestHandoff(t *testing.T) {
	for _, mode := range []string{"fd", "fileconn"} {
		t.Run(mode, func(t *testing.T) {
			const n = 20
			check := func(e *relay.Engine, conns []conn) error {
				for i := 0; i < n; i++ {
					c, b := conns[2*i].app, conns[2*i+1].app
					msg := []byte(fmt.Sprintf("a%d NOOP\r\n", i))
					if err := roundTrip(c, b, msg); err != nil {
						return fmt.Errorf("session %d, client to backend: %w", i, err)
					}
					if err := roundTrip(b, c, msg); err != nil {
						return fmt.Errorf("session %d, backend to client: %w", i, err)
					}
				}
				return nil
			}
			r, err := run(mode, n, 1000, nil, check)
			if err != nil {
				t.Fatal(err)
			}
			if r.live != n {
				t.Fatalf("%d sessions live, want %d", r.live, n)
			}
		})
	}
}

// roundTrip writes msg on from and reads it on to (blocking sockets,
// with a receive timeout).
func roundTrip(from, to int, msg []byte) error {
	if err := unix.SetsockoptTimeval(to, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
		return err
	}
	if _, err := unix.Write(from, msg); err != nil {
		return err
	}
	got := make([]byte, 0, len(msg))
	buf := make([]byte, len(msg))
	for len(got) < len(msg) {
		k, err := unix.Read(to, buf[:len(msg)-len(got)])
		if err != nil {
			return err
		}
		if k == 0 {
			return fmt.Errorf("end of stream after %q", got)
		}
		got = append(got, buf[:k]...)
	}
	if string(got) != string(msg) {
		return fmt.Errorf("got %q, want %q", got, msg)
	}
	return nil
}

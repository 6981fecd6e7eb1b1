package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// whileNoLeader retries only ErrNoLeader, 50 ms more each time, and
// gives up after an election wait or when the context ends, saying so.
func TestWhileNoLeader(t *testing.T) {
	n := &Agent{} // the default timings: an election wait of 3 s
	ctx := context.Background()

	other := errors.New("conflict")
	calls := 0
	if err := n.whileNoLeader(ctx, func() error { calls++; return other }); err != other || calls != 1 {
		t.Fatalf("another error: %v after %d calls", err, calls)
	}

	calls = 0
	start := time.Now()
	err := n.whileNoLeader(ctx, func() error {
		if calls++; calls < 3 {
			return ErrNoLeader
		}
		return nil
	})
	if took := time.Since(start); err != nil || calls != 3 || took < 150*time.Millisecond {
		t.Fatalf("a leader after two tries: %v after %d calls in %v", err, calls, took)
	}

	cctx, cancel := context.WithTimeout(ctx, 120*time.Millisecond)
	defer cancel()
	err = n.whileNoLeader(cctx, func() error { return ErrNoLeader })
	if !errors.Is(err, ErrNoLeader) || !strings.Contains(err.Error(), context.DeadlineExceeded.Error()) {
		t.Fatalf("context ended: %v", err)
	}

	start = time.Now()
	err = n.whileNoLeader(ctx, func() error { return ErrNoLeader })
	if took := time.Since(start); !errors.Is(err, ErrNoLeader) || !strings.Contains(err.Error(), "(none for 3s)") || took < 3*time.Second {
		t.Fatalf("no leader: %v after %v", err, took)
	}
}

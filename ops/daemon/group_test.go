package daemon

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// The group stops in two steps: background goroutines when shutdown
// begins, late ones once the proxy has stopped; wait joins them all and
// nothing starts after its step.
func TestGroupStopsInTwoSteps(t *testing.T) {
	g := newGroup()
	var early, late atomic.Int32
	earlyDone, lateDone := make(chan struct{}), make(chan struct{})
	g.Go(func(ctx context.Context) { <-ctx.Done(); early.Add(1); close(earlyDone) })
	g.GoLate(func(ctx context.Context) { <-ctx.Done(); late.Add(1); close(lateDone) })

	g.stop()
	<-earlyDone
	select {
	case <-lateDone:
		t.Fatal("a late goroutine stopped with the background ones")
	case <-time.After(50 * time.Millisecond):
	}
	if g.Go(func(context.Context) { t.Error("started after stop") }) {
		t.Fatal("Go accepted after stop")
	}
	if !g.GoLate(func(ctx context.Context) { <-ctx.Done(); late.Add(1) }) {
		t.Fatal("GoLate refused before the proxy stopped")
	}
	if err := g.wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if early.Load() != 1 || late.Load() != 2 {
		t.Fatalf("joined %d early, %d late", early.Load(), late.Load())
	}
	if g.GoLate(func(context.Context) { t.Error("started after wait") }) {
		t.Fatal("GoLate accepted after wait")
	}
}

// wait gives up when its context ends, with the goroutine still running.
func TestGroupWaitBounded(t *testing.T) {
	g := newGroup()
	release := make(chan struct{})
	g.Go(func(context.Context) { <-release })
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if err := g.wait(ctx); err == nil {
		t.Fatal("wait returned nil with a goroutine still running")
	}
	close(release)
	if err := g.wait(t.Context()); err != nil {
		t.Fatal(err)
	}
}

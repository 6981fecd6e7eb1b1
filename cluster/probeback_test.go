package cluster

import (
	"io"
	"log/slog"
	"testing"
	"time"
)

// TestProbeAnsweredAfterSilence: a member that answers gossip probes again
// after leaving silentProbes of its turns unanswered is reported back (the
// OnMemberJoin hooks run); answers at the usual pace, or a first answer,
// are not.
func TestProbeAnsweredAfterSilence(t *testing.T) {
	n := &Agent{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	n.cfg.NodeName = "n1"
	n.cfg.Timing.ProbeInterval = 500 * time.Millisecond
	d := newDelegate(n)
	var back []string
	d.onJoin = append(d.onJoin, func(name string) { back = append(back, name) })

	t0 := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	// Without a memberlist the agent counts one member: one peer, so a
	// member is probed every interval and silence is 4 intervals (2 s).
	d.probeAnswered("n3", t0)
	for i := 1; i <= 5; i++ {
		d.probeAnswered("n3", t0.Add(time.Duration(i)*time.Second))
	}
	if len(back) != 0 {
		t.Fatalf("answers a second apart reported as returns: %v", back)
	}
	d.probeAnswered("n3", t0.Add(5*time.Second+2100*time.Millisecond))
	if len(back) != 1 || back[0] != "n3" {
		t.Fatalf("an answer after 2.1 s of silence: reported %v, want [n3]", back)
	}
	d.probeAnswered("n2", t0.Add(time.Hour))
	if len(back) != 1 {
		t.Fatalf("a member's first answer reported as a return: %v", back)
	}
	d.probeAnswered("n1", t0)
	d.probeAnswered("n1", t0.Add(time.Hour))
	if len(back) != 1 {
		t.Fatalf("this node itself reported back: %v", back)
	}
}

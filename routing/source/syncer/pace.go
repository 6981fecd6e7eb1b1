package syncer

import (
	"context"
	"math"
	"time"

	"github.com/portico-mail/portico/routing"
)

// Pacing a sync's writes. A full sync of a large source is hundreds of
// import commands; written back to back, every node spends the whole
// sync applying them, and on a loaded machine the leader's heartbeats
// then miss the leader lease: it steps down, its sync is cancelled and
// the next leader starts over (bench/RESULTS.md, the SQL source's run 3).
// So the commands of one sync are written one at a time (each Apply
// returns once this node, the leader, applied it: never two in flight),
// and after each the next waits in proportion to how long that one
// took: applying then takes at most WriteShare of the sync's wall time
// on the leader, and the followers, which apply the same command at the
// same time, get the pause to catch up in. The pause follows the
// measured cost, so it adapts to the table's size, the batch and the
// machine's load, and a sync of one or two small commands (an
// incremental sync) waits a few milliseconds at most.

const (
	// DefaultWriteShare is write_share's default: applying takes at most
	// half of a long sync's wall time.
	DefaultWriteShare = 0.5
	// MaxPause bounds one pause: an Apply that took long because
	// leadership was moving (it waits for a new leader) does not stall
	// the sync for as long again.
	MaxPause = 5 * time.Second
)

// pacer spaces the commands of one sync.
type pacer struct {
	share float64
	now   func() time.Time
	sleep func(context.Context, time.Duration) error
	apply func(context.Context, routing.Command) error
	met   *Metrics
	name  string

	owed    time.Duration // the pause before the next command
	cmds    int           // commands written
	paused  time.Duration // total pause
	writing time.Duration // total time inside apply
}

// pauseAfter is the pause that follows a command that took d to apply.
func pauseAfter(d time.Duration, share float64) time.Duration {
	if share >= 1 || d <= 0 {
		return 0
	}
	return min(time.Duration(math.Round(float64(d)*(1-share)/share)), MaxPause)
}

// write applies c once the pause owed for the previous command is over,
// and measures it.
func (p *pacer) write(ctx context.Context, c routing.Command) error {
	if p.owed > 0 {
		if err := p.sleep(ctx, p.owed); err != nil {
			return err
		}
		p.paused += p.owed
		p.met.paused(p.name, p.owed)
		p.owed = 0
	}
	start := p.now()
	err := p.apply(ctx, c)
	d := p.now().Sub(start)
	p.writing += d
	if err != nil {
		return err
	}
	p.cmds++
	p.met.wrote(p.name)
	p.owed = pauseAfter(d, p.share)
	return nil
}

// sleepCtx waits d, or until ctx ends (its error then).
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

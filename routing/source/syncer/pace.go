package syncer

import (
	"context"
	"math"
	"time"

	"github.com/portico-mail/portico/routing"
)

// Pacing a sync. A full sync of a large source is a burst of work on
// the leader (reading the source, diffing it against the table) and then
// hundreds of import commands that every node applies. Done flat out, on
// a loaded machine, the leader's heartbeats miss the leader lease: it
// steps down, its sync is cancelled, and the next leader starts over
// (bench/RESULTS.md: the SQL source's runs, where the leaders stepped
// down during the read and diff as well as while the batches were
// applied). So a sync works in slices and pauses in proportion to each:
// after work (entries read and diffed, a command applied) that took d on
// the wall clock, it waits d*(1-share)/share (at most MaxPause), so that
// it works at most share of its time. The commands are written one at a
// time (each Apply returns once the leader applied it: never two in
// flight), with such a pause before each but the first, and the
// followers, which apply the same command meanwhile, get the pause to
// catch up in. The pause follows the measured cost, so it adapts to the
// source's and the table's size, the batch and the machine's load; a
// small sync (an incremental one) waits a few milliseconds at most.

const (
	// DefaultWorkShare is work_share's default: a sync works at most
	// half of its wall time.
	DefaultWorkShare = 0.5
	// MaxPause bounds one pause: an Apply that took long because
	// leadership was moving (it waits for a new leader) does not stall
	// the sync for as long again.
	MaxPause = 5 * time.Second
	// workSlice is how long a loop of the leader's (reading, diffing)
	// runs before it pauses; stepCheck how many steps pass between two
	// looks at the clock.
	workSlice = 20 * time.Millisecond
	stepCheck = 256
	// minPause: shorter pauses are not taken (the work is carried over
	// to the next one).
	minPause = time.Millisecond
)

// pacer paces one sync.
type pacer struct {
	share float64
	now   func() time.Time
	sleep func(context.Context, time.Duration) error
	apply func(context.Context, routing.Command) error
	met   *Metrics
	name  string

	mark    time.Time // when the work not paused for yet began
	steps   int
	cmds    int           // commands written
	paused  time.Duration // total pause
	writing time.Duration // total time inside apply
}

func (s *Syncer) newPacer() *pacer {
	return &pacer{share: s.cfg.WorkShare, now: s.now, sleep: s.sleep, apply: s.cl.Apply, met: s.met, name: s.cfg.Name, mark: s.now()}
}

// pauseAfter is the pause that follows work that took d.
func pauseAfter(d time.Duration, share float64) time.Duration {
	if share >= 1 || d <= 0 {
		return 0
	}
	return min(time.Duration(math.Round(float64(d)*(1-share)/share)), MaxPause)
}

// rest pauses for the work done since the last pause (if that calls for
// minPause or more).
func (p *pacer) rest(ctx context.Context) error {
	d := pauseAfter(p.now().Sub(p.mark), p.share)
	if d < minPause {
		return ctx.Err()
	}
	if err := p.sleep(ctx, d); err != nil {
		return err
	}
	p.paused += d
	p.met.paused(p.name, d)
	p.mark = p.now()
	return nil
}

// step is called for each unit of a long loop (an entry read, diffed):
// once the work since the last pause ran for workSlice, it pauses.
func (p *pacer) step(ctx context.Context) error {
	p.steps++
	if p.steps%stepCheck != 0 || p.now().Sub(p.mark) < workSlice {
		return nil
	}
	return p.rest(ctx)
}

// write applies c after the pause owed for the work before it (the
// previous command, or the reading and diffing), and measures it.
func (p *pacer) write(ctx context.Context, c routing.Command) error {
	if err := p.rest(ctx); err != nil {
		return err
	}
	start := p.now()
	err := p.apply(ctx, c)
	p.writing += p.now().Sub(start)
	if err != nil {
		return err
	}
	p.cmds++
	p.met.wrote(p.name)
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

package daemon

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"time"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/node"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/routing"
)

// TLS session-ticket keys (tls.session_tickets). Every listener seals its
// tickets with d.tickets (node.TicketKeys). Where the keys come from:
//
//   - in a cluster, from the replicated ring (routing.FSM.Tickets): the
//     leader writes a rotation when the ring is empty or older than
//     tls.session_ticket_rotation, and every node installs the ring it
//     applies, so a ticket issued by one node resumes on all of them;
//   - on a standalone node, from a ring the node keeps and rotates
//     itself;
//   - after an in-place upgrade, from the old process (upgrade.Secrets),
//     until the cluster's ring (restored from the snapshot taken at the
//     handoff) replaces them: a standalone node carries its ring on.
//
// Until then, the node seals with a key of its own process.

// ticketState is what an in-place upgrade hands on (through a pipe).
type ticketState struct {
	// Keys are the keys in use, the sealing key first.
	Keys []routing.TicketKey `json:"keys"`
	// Ring is a standalone node's ring (nil in a cluster: the
	// replicated one is restored from the raft snapshot).
	Ring *routing.TicketRing `json:"ring,omitempty"`
}

// setupTickets creates the node's ticket keys (before the routing stage,
// whose FSM restore may install the cluster's) and takes those an
// in-place upgrade handed over.
func (d *Daemon) setupTickets(cfg *config.Config) {
	d.tickets = node.NewTicketKeys()
	if b := d.inherit.Secrets(); len(b) > 0 {
		var st ticketState
		if err := json.Unmarshal(b, &st); err != nil {
			d.Log.Warn("in-place upgrade: the session-ticket keys handed over are unreadable; clients will make full TLS handshakes", "error", err)
		} else {
			keys := make([][32]byte, len(st.Keys))
			for i, k := range st.Keys {
				keys[i] = k
			}
			d.tickets.Set(keys)
			d.ticketRing = st.Ring
			d.Log.Debug("in-place upgrade: session-ticket keys handed over", "keys", len(keys))
		}
	}
	if cfg.Standalone && d.ticketRing.Empty() {
		r, _ := newTicketRotation(nil, time.Now())
		d.ticketRing, _ = (*routing.TicketRing)(nil).Rotate(*r)
	}
	if d.ticketRing != nil {
		d.tickets.Set(d.ticketRing.ServerKeys())
	}
}

// ticketSecrets is upgrade.Config.Secrets: the keys in use and a
// standalone node's ring.
func (d *Daemon) ticketSecrets() []byte {
	st := ticketState{Ring: d.standaloneRing()}
	for _, k := range d.tickets.Keys() {
		st.Keys = append(st.Keys, routing.TicketKey(k))
	}
	b, err := json.Marshal(st)
	if err != nil {
		return nil
	}
	return b
}

func (d *Daemon) standaloneRing() *routing.TicketRing {
	d.ticketMu.Lock()
	defer d.ticketMu.Unlock()
	return d.ticketRing.Clone()
}

// installTickets is the FSM's OnTickets: a node installs every ring it
// applies (raft's FSM goroutine: it must not block).
func (d *Daemon) installTickets(r *routing.TicketRing) {
	d.tickets.Set(r.ServerKeys())
	d.Log.Info("TLS session-ticket keys installed", "sealing", r.Sealing(), "keys", len(r.Keys), "rotated", time.UnixMilli(r.Rotated).UTC().Format(time.RFC3339))
}

// newTicketRotation returns a rotation of ring r written at now, with
// fresh random keys: two for an empty ring (the pending and the sealing
// key), else one (the next pending key).
func newTicketRotation(r *routing.TicketRing, now time.Time) (*routing.TicketRotation, error) {
	n := 1
	if r.Empty() {
		n = 2
	}
	rot := &routing.TicketRotation{Keep: config.TicketKeysKept, At: now.UnixMilli()}
	for range n {
		var k routing.TicketKey
		if _, err := rand.Read(k[:]); err != nil {
			return nil, err
		}
		rot.Keys = append(rot.Keys, k)
	}
	return rot, nil
}

// ticketDue returns how long until ring r is due for rotation (0 or less:
// now). A ring rotated, by its writer's clock, more than a period after
// now is due now: a leader whose clock ran ahead (or a buggy member's
// command) must not stop the rotation until this clock catches up.
func ticketDue(r *routing.TicketRing, now time.Time, period time.Duration) time.Duration {
	if r.Empty() {
		return 0
	}
	at := time.UnixMilli(r.Rotated)
	if at.After(now.Add(period)) {
		return 0
	}
	return at.Add(period).Sub(now)
}

// maxTicketWait bounds each wait of the rotation loops, so that a reload
// (another period, tickets turned on) takes effect within it.
const maxTicketWait = time.Minute

// rotateTicketsWhileLeader is the leader's rotation loop (a
// RunWhileLeader function): it writes a rotation whenever the replicated
// ring is empty or due. A cluster with a node that does not know the
// command yet (a rolling upgrade) refuses it; the loop tries again later
// and the nodes keep their own keys meanwhile.
func (d *Daemon) rotateTicketsWhileLeader(ctx context.Context) {
	warned := false
	for {
		wait := maxTicketWait
		tc := d.conf().TLS
		if tc.SessionTicketsOn() {
			r := d.fsm.Tickets()
			due := ticketDue(r, time.Now(), tc.SessionTicketRotation.D())
			if due > 0 {
				wait = min(due, maxTicketWait)
			} else if err := d.writeTicketRotation(ctx, r); err != nil {
				if ctx.Err() != nil {
					return
				}
				wait = 5 * time.Second
				if errors.Is(err, cluster.ErrUnsupported) {
					wait = maxTicketWait
					if warned {
						err = nil
					}
					warned = true
				}
				if err != nil {
					d.Log.Warn("rotating the TLS session-ticket keys", "error", err)
				}
			} else {
				wait = min(tc.SessionTicketRotation.D(), maxTicketWait)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (d *Daemon) writeTicketRotation(ctx context.Context, r *routing.TicketRing) error {
	rot, err := newTicketRotation(r, time.Now())
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return d.cluster.Apply(actx, routing.Command{Type: routing.CmdTicketKeys, Tickets: rot})
}

// rotateTicketsStandalone is a standalone node's rotation loop.
func (d *Daemon) rotateTicketsStandalone(ctx context.Context) {
	for {
		wait := maxTicketWait
		tc := d.conf().TLS
		if tc.SessionTicketsOn() {
			d.ticketMu.Lock()
			r := d.ticketRing
			due := ticketDue(r, time.Now(), tc.SessionTicketRotation.D())
			if due > 0 {
				wait = min(due, maxTicketWait)
			} else if rot, err := newTicketRotation(r, time.Now()); err == nil {
				if n, err := r.Rotate(*rot); err == nil {
					d.ticketRing = n
					d.tickets.Set(n.ServerKeys())
					d.Log.Info("TLS session-ticket keys rotated", "sealing", n.Sealing(), "keys", len(n.Keys))
				}
				wait = min(tc.SessionTicketRotation.D(), maxTicketWait)
			}
			d.ticketMu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// ticketStatus is the status's tls_session_tickets section.
func (d *Daemon) ticketStatus() TicketStatus {
	ts := TicketStatus{Enabled: d.conf().TLS.SessionTicketsOn(), Source: "process"}
	keys := d.tickets.Keys()
	ts.Keys = len(keys)
	if len(keys) > 0 {
		ts.Sealing = routing.TicketKey(keys[0]).ID()
	}
	var r *routing.TicketRing
	if d.fsm != nil {
		r = d.fsm.Tickets()
		if !r.Empty() && r.Sealing() == ts.Sealing {
			ts.Source = "cluster"
		}
	} else if r = d.standaloneRing(); !r.Empty() && r.Sealing() == ts.Sealing {
		ts.Source = "node"
	}
	if ts.Source != "process" {
		ts.Rotated = time.UnixMilli(r.Rotated).UTC().Format(time.RFC3339)
	}
	return ts
}

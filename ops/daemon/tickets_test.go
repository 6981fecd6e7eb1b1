package daemon

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/routing"
)

func waitTickets(t *testing.T, d *Daemon, what string, ok func(TicketStatus) bool) TicketStatus {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := d.ticketStatus()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: status %+v", what, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The leader writes the first ring at once and rotates it on schedule;
// every listener seals with the ring's sealing key; the ring keeps
// config.TicketKeysKept keys. Its keys are in the data directory (the
// raft log): the node restarted on it seals with the same key.
func TestTicketRingClusterRotation(t *testing.T) {
	dir := t.TempDir()
	cfgText := clusterNode + "data_dir: " + dir + "\ntls: {session_ticket_rotation: 1s}\n"
	d := startNode(t, cfgText)
	first := waitTickets(t, d, "first ring", func(s TicketStatus) bool { return s.Source == "cluster" })
	if !first.Enabled || first.Keys != 2 || first.Rotated == "" {
		t.Fatalf("first ring: %+v", first)
	}
	waitTickets(t, d, "rotations", func(s TicketStatus) bool {
		return s.Source == "cluster" && s.Keys == config.TicketKeysKept && s.Sealing != first.Sealing
	})
	r := d.fsm.Tickets()
	keys := d.tickets.Keys()
	if len(r.Keys) != config.TicketKeysKept || keys[0] != r.ServerKeys()[0] || len(keys) != len(r.Keys) {
		t.Fatalf("ring %v, keys in use %d", r.Keys, len(keys))
	}
	// Restart on the same data directory, with rotation far away.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	before := d.fsm.Tickets()
	d2 := startNode(t, clusterNode+"data_dir: "+dir+"\n")
	st := waitTickets(t, d2, "restored ring", func(s TicketStatus) bool { return s.Source == "cluster" })
	if st.Sealing != before.Sealing() {
		t.Fatalf("after a restart the node seals with %s, before with %s", st.Sealing, before.Sealing())
	}
}

// A standalone node keeps and rotates its own ring; with tickets off its
// leaderless loop does nothing.
func TestTicketRingStandalone(t *testing.T) {
	cfg, err := config.FromProxyFlags(config.ProxyFlags{From: []string{"imap://127.0.0.1:0"}, To: []string{"imap://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Admin.Address = "off"
	cfg.TLS.SessionTicketRotation = config.Duration(time.Second)
	d := startCfg(t, cfg)
	first := d.ticketStatus()
	if first.Source != "node" || first.Keys != 2 {
		t.Fatalf("standalone: %+v", first)
	}
	waitTickets(t, d, "rotation", func(s TicketStatus) bool { return s.Source == "node" && s.Sealing != first.Sealing })

	// What an upgrade hands on: the keys in use and the ring (read again
	// if a rotation came in between).
	var st ticketState
	var keys [][32]byte
	for range 5 {
		if err := json.Unmarshal(d.ticketSecrets(), &st); err != nil {
			t.Fatal(err)
		}
		if keys = d.tickets.Keys(); len(st.Keys) > 0 && [32]byte(st.Keys[0]) == keys[0] {
			break
		}
	}
	if len(st.Keys) != len(keys) || [32]byte(st.Keys[0]) != keys[0] || st.Ring.Empty() || st.Ring.Sealing() != routing.TicketKey(keys[0]).ID() {
		t.Fatalf("handed on %d keys, ring %v", len(st.Keys), st.Ring)
	}
}

func TestTicketDue(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	if ticketDue(nil, now, time.Hour) > 0 {
		t.Fatal("an empty ring is not due")
	}
	r := &routing.TicketRing{Keys: []routing.TicketKey{{1}}, Rotated: now.Add(-30 * time.Minute).UnixMilli()}
	if got := ticketDue(r, now, time.Hour); got != 30*time.Minute {
		t.Fatalf("due in %v", got)
	}
	if ticketDue(r, now, 10*time.Minute) > 0 {
		t.Fatal("a shorter period (reload) is not due")
	}
	// Written by a clock a year ahead: due now, not in a year (the keys
	// would not change for as long); a little ahead counts as written.
	ahead := &routing.TicketRing{Keys: []routing.TicketKey{{1}}, Rotated: now.Add(365 * 24 * time.Hour).UnixMilli()}
	if got := ticketDue(ahead, now, time.Hour); got > 0 {
		t.Fatalf("a ring rotated a year ahead is due in %v", got)
	}
	ahead.Rotated = now.Add(time.Minute).UnixMilli()
	if got := ticketDue(ahead, now, time.Hour); got != time.Hour+time.Minute {
		t.Fatalf("a ring rotated a minute ahead is due in %v", got)
	}
	rot, err := newTicketRotation(nil, now)
	if err != nil || len(rot.Keys) != 2 || rot.Keys[0] == rot.Keys[1] || rot.At != now.UnixMilli() || rot.Keep != config.TicketKeysKept {
		t.Fatalf("first rotation %+v %v", rot, err)
	}
	if rot, _ := newTicketRotation(r, now); len(rot.Keys) != 1 {
		t.Fatalf("next rotation %d keys", len(rot.Keys))
	}
}

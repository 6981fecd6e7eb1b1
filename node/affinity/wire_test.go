package affinity

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"
)

// bus delivers broadcasts between tables sharing a clock, like the
// cluster's gossip (each message signed by, and merged under, its
// sender's name).
type bus struct {
	mu     sync.Mutex // guards sent
	tables map[string]*Table
	sent   map[string][][]byte // by sender
	hold   bool                // queue instead of delivering
}

func newBus() *bus { return &bus{tables: map[string]*Table{}, sent: map[string][][]byte{}} }

func (b *bus) join(name string, tb *Table) *Table {
	b.tables[name] = tb
	tb.SetGossip(&Gossip{Self: name, Broadcast: func(m []byte) {
		b.mu.Lock()
		b.sent[name] = append(b.sent[name], bytes.Clone(m))
		b.mu.Unlock()
		if !b.hold {
			b.deliver(name, m)
		}
	}})
	return tb
}

func (b *bus) deliver(from string, m []byte) {
	for name, tb := range b.tables {
		if name != from {
			tb.MergeRemote(from, m)
		}
	}
}

// A node's bindings reach the others in its broadcasts: live, then ended,
// then gone after Expire (by the receiver's clock).
func TestGossipBroadcast(t *testing.T) {
	c := newClock()
	b := newBus()
	n1 := b.join("n1", newTable(c, time.Minute))
	n2 := b.join("n2", newTable(c, time.Minute))
	end := n1.Bind("alice", "b", false)
	want(t, n2, "alice") // not flushed yet
	n1.flush()
	want(t, n2, "alice", "b")
	if _, r := n2.Counts(); r != 1 {
		t.Fatalf("n2 holds %d remote bindings", r)
	}
	c.add(30 * time.Second)
	end()
	n1.flush()
	want(t, n2, "alice", "b")
	c.add(59 * time.Second)
	want(t, n2, "alice", "b")
	c.add(time.Second)
	want(t, n2, "alice")
	n2.sweep()
	if _, r := n2.Counts(); r != 0 {
		t.Fatalf("after the sweep n2 holds %d remote bindings", r)
	}
	// A node's own messages (if they came back) are not merged.
	n1.MergeRemote("n1", n1.LocalState())
	if _, r := n1.Counts(); r != 0 {
		t.Fatal("n1 merged its own state")
	}
}

// A state replaces what the receiver held from its sender, except what a
// later broadcast already told it; a node that joins learns everything
// from states.
func TestGossipState(t *testing.T) {
	c := newClock()
	b := newBus()
	b.hold = true
	n1 := b.join("n1", newTable(c, time.Hour))
	n2 := b.join("n2", newTable(c, time.Hour))
	e1 := n1.Bind("u1", "a", false)
	n1.Bind("u2", "b", false)
	n1.Bind("u3", "a", false)
	e1()
	state := n1.LocalState()
	n2.MergeRemote("n1", state)
	want(t, n2, "u1", "a")
	want(t, n2, "u2", "b")
	if _, r := n2.Counts(); r != 3 {
		t.Fatalf("n2 holds %d, want 3", r)
	}
	// u3 cleared on n1 without telling n2 (its broadcast lost): the next
	// state drops it.
	n1.applyClear(clearMsg{k: userKey("u3"), at: c.now().UnixMilli()})
	n1.tmu.Lock()
	delete(n1.tombs, userKey("u3"))
	n1.tmu.Unlock()
	c.add(time.Millisecond)
	old := n1.LocalState()
	// Then u4 binds and its broadcast arrives before the older state.
	n1.Bind("u4", "b", false)
	b.sent["n1"] = nil
	n1.flush()
	for _, m := range b.sent["n1"] {
		n2.MergeRemote("n1", m)
	}
	want(t, n2, "u4", "b")
	n2.MergeRemote("n1", old)
	want(t, n2, "u3")
	want(t, n2, "u4", "b") // newer than the state: kept
	want(t, n2, "u2", "b")
	if _, r := n2.Counts(); r != 3 {
		t.Fatalf("n2 holds %d, want 3 (u1, u2, u4)", r)
	}
}

// A restarted node (a new epoch under the same name) replaces what its
// previous run said with its first message.
func TestGossipEpoch(t *testing.T) {
	c := newClock()
	b := newBus()
	n1 := b.join("n1", newTable(c, time.Hour))
	n2 := b.join("n2", newTable(c, time.Hour))
	n1.Bind("u", "a", false)
	n1.flush()
	want(t, n2, "u", "a")
	restarted := b.join("n1", newTable(c, time.Hour))
	restarted.Bind("v", "b", false)
	restarted.flush()
	want(t, n2, "u")
	want(t, n2, "v", "b")
}

// The live bindings of a node not heard from for Lease count as ended
// then, and expire Expire later; a heartbeat keeps them live.
func TestGossipLease(t *testing.T) {
	c := newClock()
	b := newBus()
	n1 := b.join("n1", newTable(c, time.Minute))
	n2 := b.join("n2", newTable(c, time.Minute))
	n1.Bind("u", "a", false)
	n1.flush()
	for i := 0; i < 10; i++ { // heartbeats keep it live for 10 leases
		c.add(heartbeatEvery)
		n1.flush()
		c.add(Lease - heartbeatEvery)
		want(t, n2, "u", "a")
	}
	n1.flush() // last message at L
	c.add(Lease + time.Minute - time.Millisecond)
	want(t, n2, "u", "a") // silent: ended at L+Lease, not expired yet
	c.add(time.Millisecond)
	want(t, n2, "u")
	n2.sweep()
	if _, r := n2.Counts(); r != 0 {
		t.Fatalf("n2 holds %d", r)
	}
}

// Clear reaches every node: each drops the bindings the tombstone covers,
// whoever gossiped them, and refuses them when they come late; states
// carry tombstones to a node that missed the broadcast.
func TestGossipClear(t *testing.T) {
	c := newClock()
	b := newBus()
	n1 := b.join("n1", newTable(c, time.Hour))
	n2 := b.join("n2", newTable(c, time.Hour))
	n3 := b.join("n3", newTable(c, time.Hour))
	n1.Bind("u", "a", false)
	n1.flush()
	c.add(time.Millisecond)
	n3.Bind("u", "b", false)
	b.hold = true
	n3.flush() // queued: arrives after the clear
	stale := b.sent["n3"][len(b.sent["n3"])-1]
	b.hold = false
	want(t, n2, "u", "a")
	c.add(time.Millisecond)
	n2.Clear("u")
	for _, n := range []*Table{n1, n2, n3} {
		want(t, n, "u")
	}
	n2.MergeRemote("n3", stale)
	n1.MergeRemote("n3", stale)
	want(t, n2, "u")
	want(t, n1, "u")
	// New sessions after the clear bind again, everywhere.
	c.add(time.Millisecond)
	n3.Bind("u", "c", false)
	n3.flush()
	want(t, n1, "u", "c")
	// A node that missed the clear learns it from a state.
	n4 := newTable(c, time.Hour)
	n4.MergeRemote("n3", stale) // before: bound to b
	want(t, n4, "u", "b")
	n4.MergeRemote("n2", n2.LocalState())
	want(t, n4, "u")
	// Tombstones go after Expire + Lease.
	c.add(time.Hour + Lease + time.Second)
	n2.sweep()
	if len(n2.tombs) != 0 {
		t.Fatalf("%d tombstones left", len(n2.tombs))
	}
}

// Broadcasts stay within a packet, at most maxPerFlush per flush; every
// change arrives over a few flushes; an idle node sends a heartbeat.
func TestBroadcastBounds(t *testing.T) {
	c := newClock()
	b := newBus()
	n1 := b.join("n1", newTable(c, time.Hour))
	n2 := b.join("n2", newTable(c, time.Hour))
	const users = 1000
	for i := 0; i < users; i++ {
		n1.Bind(fmt.Sprintf("user%d@example.com", i), "backend-with-a-longish-name-01", false)
	}
	flushes := 0
	for _, r := n2.Counts(); r < users; _, r = n2.Counts() {
		before := len(b.sent["n1"])
		n1.flush()
		flushes++
		if sent := len(b.sent["n1"]) - before; sent > maxPerFlush || sent == 0 {
			t.Fatalf("flush %d sent %d messages", flushes, sent)
		}
		if flushes > users {
			t.Fatal("changes never all arrive")
		}
	}
	for i, m := range b.sent["n1"] {
		if len(m) > maxBroadcast {
			t.Fatalf("message %d: %d bytes", i, len(m))
		}
	}
	n := len(b.sent["n1"])
	n1.flush()
	if len(b.sent["n1"]) != n {
		t.Fatal("a flush with nothing new sent something before the heartbeat was due")
	}
	c.add(heartbeatEvery)
	n1.flush()
	if len(b.sent["n1"]) != n+1 {
		t.Fatal("no heartbeat")
	}
	if m, err := decode(b.sent["n1"][n]); err != nil || len(m.binds) != 0 || m.kind != kindUpdate {
		t.Fatalf("heartbeat: %+v %v", m, err)
	}
	if len(n1.LocalState()) > maxState {
		t.Fatal("state too large")
	}
}

// encodeMsg builds a message for the validation tests.
func encodeMsg(kind byte, epoch, seq uint64, binds []wireBinding, clears []clearMsg) []byte {
	var bb, cb []byte
	for i := range binds {
		bb = appendBinding(bb, &binds[i])
	}
	for i := range clears {
		cb = appendClear(cb, &clears[i])
	}
	return encode(kind, epoch, seq, len(binds), bb, len(clears), cb)
}

// Every field from the network is checked; a malformed message is
// dropped whole and counted.
func TestMergeValidation(t *testing.T) {
	c := newClock()
	now := c.now().UnixMilli()
	good := wireBinding{k: userKey("u"), backend: "b", live: true, since: now - 1000, ver: 1}
	valid := encodeMsg(kindUpdate, 7, 1, []wireBinding{good}, nil)
	if _, err := decode(valid); err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(valid)) }
	bad := map[string][]byte{
		"empty":         nil,
		"version":       mutate(func(b []byte) []byte { b[0] = 2; return b }),
		"kind":          mutate(func(b []byte) []byte { b[1] = 3; return b }),
		"truncated":     valid[:len(valid)-1],
		"trailing":      append(bytes.Clone(valid), 0),
		"count too big": mutate(func(b []byte) []byte { b[11] = 50; return b }),
		"backend chars": encodeMsg(kindUpdate, 7, 1, []wireBinding{{k: good.k, backend: "b/../x", live: true, ver: 1}}, nil),
		"backend empty": encodeMsg(kindUpdate, 7, 1, []wireBinding{{k: good.k, backend: "", live: true, ver: 1}}, nil),
		"backend long":  encodeMsg(kindUpdate, 7, 1, []wireBinding{{k: good.k, backend: string(bytes.Repeat([]byte("x"), 129)), live: true, ver: 1}}, nil),
		"live and idle": encodeMsg(kindUpdate, 7, 1, []wireBinding{{k: good.k, backend: "b", live: true, idle: 5, ver: 1}}, nil),
		"flags":         mutate(func(b []byte) []byte { b[headerLen+1+16+1+1] = 3; return b }),
		"duplicate":     encodeMsg(kindUpdate, 7, 1, []wireBinding{good, good}, nil),
		"time range":    encodeMsg(kindUpdate, 7, 1, []wireBinding{{k: good.k, backend: "b", since: maxTimeMs + 1, ver: 1}}, nil),
		"clear range":   encodeMsg(kindUpdate, 7, 1, nil, []clearMsg{{k: good.k, at: maxTimeMs + 1}}),
		"seq range":     encodeMsg(kindUpdate, 7, maxSeq+1, nil, nil),
	}
	for name, m := range bad {
		tb := newTable(c, time.Hour)
		tb.MergeRemote("n1", m)
		if tb.stats.invalid.Load() != 1 {
			t.Errorf("%s: not counted invalid", name)
		}
		if _, r := tb.Counts(); r != 0 {
			t.Errorf("%s: merged", name)
		}
	}
	// Valid syntax, values that cannot be right here: dropped one by one.
	tb := newTable(c, time.Hour)
	tb.MergeRemote("n1", encodeMsg(kindUpdate, 7, 2, []wireBinding{
		{k: userKey("future"), backend: "b", live: true, since: now + maxSkew + 1, ver: 1},
		good,
	}, []clearMsg{{k: userKey("x"), at: now + maxSkew + 1}}))
	if tb.stats.invalid.Load() != 2 {
		t.Errorf("future binding and clear: %d invalid, want 2", tb.stats.invalid.Load())
	}
	want(t, tb, "future")
	want(t, tb, "u", "b")
	if len(tb.tombs) != 0 {
		t.Error("a tombstone from the future was kept")
	}
	// An ended binding already past Expire is not kept.
	tb.MergeRemote("n1", encodeMsg(kindUpdate, 7, 3, []wireBinding{{k: userKey("old"), backend: "b", since: now - 3e6, idle: 2 * 3600e3, ver: 3}}, nil))
	want(t, tb, "old")
	// Too many nodes.
	tb = newTable(c, time.Hour)
	for i := 0; i < maxOrigins+5; i++ {
		tb.MergeRemote(fmt.Sprint("n", i), valid)
	}
	if len(tb.origins) != maxOrigins || tb.stats.invalid.Load() != 5 {
		t.Errorf("%d origins, %d invalid", len(tb.origins), tb.stats.invalid.Load())
	}
	// The cap on entries holds for gossiped bindings.
	tb = New(Config{Expire: time.Hour, MaxEntries: 5}, c.now)
	var many []wireBinding
	for i := 0; i < 20; i++ {
		many = append(many, wireBinding{k: userKey(fmt.Sprint("u", i)), backend: "b", live: true, since: now, ver: 1})
	}
	tb.MergeRemote("n1", encodeMsg(kindState, 7, 1, many, nil))
	tb.MergeRemote("n2", encodeMsg(kindUpdate, 8, 1, many, nil))
	if _, r := tb.Counts(); r != 5 {
		t.Errorf("%d remote bindings, cap 5", r)
	}
}

// Binds, lookups, merges, clears, flushes, states and sweeps at once (run
// with -race); the counts stay what the maps hold.
func TestConcurrent(t *testing.T) {
	c := newClock()
	b := newBus()
	n1 := b.join("n1", newTable(c, time.Minute))
	n2 := b.join("n2", newTable(c, time.Minute))
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				u := fmt.Sprintf("u%d", i%37)
				end := n1.Bind(u, fmt.Sprint("b", w), w == 0)
				n2.Backends(u)
				switch i % 50 {
				case 0:
					n2.Clear(u)
				case 1:
					n2.MergeRemote("n1", n1.LocalState())
				case 2:
					n1.sweep()
					n2.sweep()
				}
				end()
				c.add(time.Millisecond)
			}
		}(w)
	}
	stop := make(chan struct{})
	var fw sync.WaitGroup
	fw.Add(1)
	go func() {
		defer fw.Done()
		for {
			select {
			case <-stop:
				return
			default:
				n1.flush()
				n2.flush()
			}
		}
	}()
	wg.Wait()
	close(stop)
	fw.Wait()
	for _, tb := range []*Table{n1, n2} {
		local, remote := tb.Counts()
		n := int64(0)
		for i := range tb.shards {
			for _, bs := range tb.shards[i].m {
				n += int64(len(bs))
			}
		}
		r := int64(0)
		for _, o := range tb.origins {
			if o.n != o.count() {
				t.Errorf("origin counts %d, holds %d", o.n, o.count())
			}
			r += int64(o.count())
		}
		if n != local || r != remote {
			t.Errorf("counts %d/%d, held %d/%d", local, remote, n, r)
		}
	}
}

// A node without live peers broadcasts nothing (memberlist would queue it
// for ever); once a peer is there it sends again, and the peer learns
// what came before from the state.
func TestAloneSendsNothing(t *testing.T) {
	c := newClock()
	var sent int
	peers := false
	n1 := newTable(c, time.Hour)
	n1.SetGossip(&Gossip{Self: "n1", Broadcast: func([]byte) { sent++ }, Peers: func() bool { return peers }})
	n1.Bind("u", "a", false)
	n1.Clear("v")
	for i := 0; i < 5; i++ {
		n1.flush()
		c.add(heartbeatEvery)
	}
	if sent != 0 {
		t.Fatalf("alone, %d broadcasts", sent)
	}
	peers = true
	n1.flush()
	if sent != 1 {
		t.Fatalf("with a peer: %d broadcasts, want a heartbeat", sent)
	}
	n2 := newTable(c, time.Hour)
	n2.MergeRemote("n1", n1.LocalState())
	want(t, n2, "u", "a")
	if len(n2.tombs) != 1 {
		t.Fatal("the tombstone did not come with the state")
	}
}

// A message of a sender's run made before a state already merged from
// that run is dropped: a replayed copy (the cluster's seal and
// memberlist's encryption do not stop a captured packet from being sent
// again) neither brings back a binding that ended and expired since nor
// keeps a silent node's live bindings alive.
func TestGossipStaleMessagesDropped(t *testing.T) {
	c := newClock()
	b := newBus()
	b.hold = true
	n1 := b.join("n1", newTable(c, time.Minute))
	n2 := b.join("n2", newTable(c, time.Minute))
	end := n1.Bind("u", "a", false)
	n1.flush()
	captured := append([][]byte(nil), b.sent["n1"]...) // u live on a
	capturedState := n1.LocalState()
	for _, m := range captured {
		n2.MergeRemote("n1", m)
	}
	want(t, n2, "u", "a")
	// u's session ends, its binding expires on n1; n1's next state says
	// so and n2 drops it.
	end()
	c.add(2 * time.Minute)
	n1.sweep()
	n2.MergeRemote("n1", n1.LocalState())
	want(t, n2, "u")
	invalid := n2.stats.invalid.Load()
	// The captured packets sent again: nothing comes back.
	for _, m := range append(captured, capturedState) {
		n2.MergeRemote("n1", m)
	}
	want(t, n2, "u")
	if got := n2.stats.invalid.Load() - invalid; got != uint64(len(captured)+1) {
		t.Fatalf("%d of %d stale messages counted", got, len(captured)+1)
	}
	// Nor do they keep a silent node's live bindings alive: v is live on
	// n1, which then goes silent; replaying its old messages does not
	// refresh it, and after Lease v counts as ended.
	n1.Bind("v", "b", false)
	b.sent["n1"] = nil
	n1.flush()
	for _, m := range b.sent["n1"] {
		n2.MergeRemote("n1", m)
	}
	n2.MergeRemote("n1", n1.LocalState())
	want(t, n2, "v", "b")
	c.add(Lease + time.Second)
	for _, m := range append(captured, capturedState) {
		n2.MergeRemote("n1", m)
	}
	o := n2.originFor("n1")
	o.mu.RLock()
	defer o.mu.RUnlock()
	if live, _ := o.m[userKey("v")][0].state(o.heard, c.now().UnixMilli()); live {
		t.Fatal("replayed messages kept a silent node's binding live")
	}
}

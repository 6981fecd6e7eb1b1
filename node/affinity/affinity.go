// Package affinity keeps each user of a shared_storage pool on the backend
// its sessions use, across the nodes of a cluster: Dovecot director's user
// affinity (director_user_expire).
//
// # Why
//
// Inside a pool the routing table picks a user's backend by hashing
// (routing.Table.Lookup), so every node makes the same choice from the same
// table and health view, and no state needs sharing while nothing changes.
// The choice changes when the pool does: a backend that was down comes back,
// weights change, a member is added. Sessions already open stay where they
// are, so without more a user's new sessions would open the mailbox on a
// second server while the first still has it open, which shared-storage
// mail servers (Dovecot on NFS or a cluster file system) cannot do safely.
// The table's Backends tells the routing lookup where the user's sessions
// are; the lookup then takes that backend while it can take sessions.
//
// # What is kept
//
// A binding is (user, backend) on one node: how many of the user's relayed
// sessions to that backend the node holds (it is live while that is above
// zero), when the first of them started (since), and when the last one
// ended. Only sessions whose route came from a shared_storage pool bind
// (node calls Bind for them and the function it returns when they end). A
// binding outlives its last session by Config.Expire, then it is gone:
// after that idle time the user goes wherever the hash says.
//
// Backends merges the user's bindings on every node: live ones before ended
// ones, then the most recently established (latest since) first, so that a
// user moved off a backend that went down (or draining, or disabled) stays
// on the new one when the old one comes back. The routing lookup skips
// bindings to backends that cannot take the session, so health, state and
// pool membership always win over affinity, and the next session binds the
// new choice. The only other way a binding goes is Clear (`portico user
// move`).
//
// # Across the cluster
//
// Each node gossips only its own bindings (wire.go has the format): changes
// (a binding becoming live, or ended) in a broadcast within a few hundred
// milliseconds (sent to every member directly as well as by gossip: the
// gossip queue alone missed members, cluster/DESIGN.md), everything in the
// push/pull state memberlist exchanges with a joining node and
// periodically. The cluster signs each message, and
// a node's bindings are stored under the name of the node that signed them,
// so no node can speak for another's. A state replaces what a node held from
// its sender; a binding carries the sender's sequence number at its last
// change, so a state that was overtaken by a later broadcast does not undo
// it; a message made before a state already merged from the same run
// (late, or a captured packet sent again: neither the cluster's seal nor
// memberlist's encryption stops a replay) is dropped. A process run has a
// random epoch: a restarted node's first message drops what its previous
// run said. (So a replayed message of an earlier run still replaces what
// the current run said until its next message: cluster/DESIGN.md,
// "Replayed gossip".) Every node sends a message at least
// every few seconds; the live bindings of a node not heard from for Lease
// count as ended then (a crashed node's sessions are gone) and expire after
// Expire like any other.
//
// User names never leave the node: bindings are keyed by a truncated
// SHA-256 of the normalised name (routing.NormalizeUser), and backend ids
// are the routing table's.
//
// # Clearing
//
// Clear forgets a user's bindings on every node: it records a tombstone
// (the user's key and the time), applies it here and gossips it, and every
// node drops the bindings of that user established up to that time, and
// refuses such bindings arriving later (a message sent before its sender
// had the tombstone) while the tombstone is kept (Expire plus Lease; push/
// pull states carry tombstones, so a node that missed the broadcast learns
// it). Sessions still open keep running but no longer bind. Times of
// different nodes are compared here, so the nodes' clocks must agree to
// within a small fraction of the time clients take to reconnect (NTP).
//
// # Cost
//
// A lookup hashes the name and reads one local shard and each other node's
// map under read locks (about 0.2 µs for a user without bindings, no
// allocation); it never waits on I/O. Writers hold those locks for a map
// update; a push/pull state is built aside and swapped in. Memory is
// bounded by Config.MaxEntries (live bindings are never dropped for room:
// they are bounded by the connection limit), gossip by the message sizes
// in wire.go.
package affinity

import (
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portico-mail/portico/routing"
)

// Config sets how long bindings last and how many are kept.
type Config struct {
	// Expire is how long a user stays bound to a backend after its last
	// session there ended (Dovecot: director_user_expire).
	Expire time.Duration
	// MaxEntries caps the bindings kept (this node's and those gossiped by
	// others). When it is reached, ended bindings of this node make room
	// for new ones, and new bindings from other nodes are dropped.
	MaxEntries int
}

// DefaultConfig returns the defaults: bindings last 15 minutes after the
// user's last session ended (Dovecot's director_user_expire), and at most
// 200,000 are kept (about 30 MB).
func DefaultConfig() Config {
	return Config{Expire: 15 * time.Minute, MaxEntries: 200_000}
}

// Timings of the gossip, fixed: a message at least every heartbeatEvery,
// so that a node's live bindings are believed for Lease after its last
// message.
const (
	flushEvery     = 200 * time.Millisecond
	heartbeatEvery = 5 * time.Second
	sweepEvery     = 5 * time.Second
	peersEvery     = time.Second
	// Lease: a node not heard from for this long has no live sessions.
	Lease = 30 * time.Second
)

// nShards is the number of local shards (a map and a lock each).
const nShards = 64

// key is the hash bindings are keyed by.
type key [16]byte

// keyContext separates these hashes from the throttle's.
const keyContext = "portico-affinity\x00"

// userKey is the truncated SHA-256 of the normalised name.
func userKey(user string) key {
	user = routing.NormalizeUser(user)
	var buf [128]byte
	b := append(append(buf[:0], keyContext...), user...)
	h := sha256.Sum256(b)
	var k key
	copy(k[:], h[:16])
	return k
}

// binding is one of this node's bindings; its shard's lock guards it.
type binding struct {
	backend  string
	sessions int
	since    int64  // unix ms: the first of the current sessions started
	ended    int64  // unix ms: the last session ended (sessions == 0)
	ver      uint64 // Table.seq at the last change
	dirty    bool   // changed since the last broadcast
}

type shard struct {
	mu    sync.RWMutex
	m     map[key][]*binding
	dirty []key // keys with a dirty binding (each binding listed once)
}

// Table holds the bindings: this node's, and those other nodes gossiped.
type Table struct {
	cfg    atomic.Pointer[Config]
	now    func() time.Time
	epoch  uint64
	seq    atomic.Uint64
	shards [nShards]shard

	omu     sync.RWMutex
	origins map[string]*origin // by node name

	tmu      sync.Mutex
	tombs    map[key]tomb
	clearGen atomic.Uint64 // counts tombstones recorded
	pending  []clearMsg    // Clear calls not yet broadcast

	flushMu   sync.Mutex // one flush at a time; guards the next four
	lastSent  int64      // unix ms of the last broadcast (heartbeats)
	cursor    int        // the shard the next flush starts at
	alone     bool       // Gossip.Peers said no other member is alive
	peersNext int64      // unix ms of the next Gossip.Peers call
	sweepNext int64      // unix ms of the loop's next sweep

	gossip atomic.Pointer[Gossip]
	stats  stats

	startOnce, stopOnce sync.Once
	stop, done          chan struct{}
}

type tomb struct {
	at   int64 // bindings established up to this time (issuer's clock) go
	keep int64 // local unix ms until which it is kept
}

type clearMsg struct {
	k  key
	at int64
}

type stats struct {
	local, remote atomic.Int64  // bindings kept
	steered       atomic.Uint64 // sessions bound where the hash would not have sent them
	invalid       atomic.Uint64 // gossip messages or bindings dropped as invalid
}

// New returns an empty table. now may be nil (time.Now).
func New(cfg Config, now func() time.Time) *Table {
	if now == nil {
		now = time.Now
	}
	t := &Table{now: now, origins: map[string]*origin{}, tombs: map[key]tomb{},
		stop: make(chan struct{}), done: make(chan struct{})}
	var b [8]byte
	_, _ = rand.Read(b[:])
	t.epoch = binary.BigEndian.Uint64(b[:])
	for i := range t.shards {
		t.shards[i].m = map[key][]*binding{}
	}
	t.SetConfig(cfg)
	return t
}

// SetConfig replaces the configuration (reload); zero fields take
// DefaultConfig's.
func (t *Table) SetConfig(cfg Config) {
	d := DefaultConfig()
	if cfg.Expire <= 0 {
		cfg.Expire = d.Expire
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = d.MaxEntries
	}
	t.cfg.Store(&cfg)
}

// Config returns the configuration in use.
func (t *Table) Config() Config { return *t.cfg.Load() }

func (t *Table) ms() int64 { return t.now().UnixMilli() }

func (t *Table) shard(k key) *shard { return &t.shards[k[0]%nShards] }

// Bind records a relayed session of user on backend, until the returned
// function is called (once; later calls do nothing). steered says the
// user's affinity chose the backend over the hash's choice (counted).
func (t *Table) Bind(user, backend string, steered bool) (unbind func()) {
	if steered {
		t.stats.steered.Add(1)
	}
	k := userKey(user)
	now := t.ms()
	sh := t.shard(k)
	sh.mu.Lock()
	var b *binding
	for _, x := range sh.m[k] {
		if x.backend == backend {
			b = x
			break
		}
	}
	if b == nil {
		t.makeRoom(sh, now)
		b = &binding{backend: backend}
		sh.m[k] = append(sh.m[k], b)
		t.stats.local.Add(1)
	}
	if b.sessions == 0 {
		b.since, b.ended = now, 0
		t.changed(sh, k, b)
	}
	b.sessions++
	sh.mu.Unlock()
	var done atomic.Bool
	return func() {
		if done.CompareAndSwap(false, true) {
			t.unbind(k, b)
		}
	}
}

// unbind ends one session of binding b (unless Clear dropped it).
func (t *Table) unbind(k key, b *binding) {
	sh := t.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if !slices.Contains(sh.m[k], b) {
		return
	}
	b.sessions--
	if b.sessions == 0 {
		b.ended = t.ms()
		t.changed(sh, k, b)
	}
}

// changed gives b a new version and queues it for broadcast (sh locked).
func (t *Table) changed(sh *shard, k key, b *binding) {
	b.ver = t.seq.Add(1)
	if !b.dirty {
		b.dirty = true
		sh.dirty = append(sh.dirty, k)
	}
}

// makeRoom drops an ended binding of sh when the table is full (sh
// locked): the one that ended first among a few.
func (t *Table) makeRoom(sh *shard, now int64) {
	if t.stats.local.Load()+t.stats.remote.Load() < int64(t.cfg.Load().MaxEntries) {
		return
	}
	var vk key
	var victim *binding
	seen := 0
	for k, bs := range sh.m {
		for _, b := range bs {
			if b.sessions == 0 && (victim == nil || b.ended < victim.ended) {
				vk, victim = k, b
			}
		}
		if seen++; seen >= 8 && victim != nil {
			break
		}
	}
	if victim != nil {
		t.dropLocal(sh, vk, victim)
	}
}

// dropLocal removes b from sh (locked).
func (t *Table) dropLocal(sh *shard, k key, b *binding) {
	bs := slices.DeleteFunc(sh.m[k], func(x *binding) bool { return x == b })
	if len(bs) == 0 {
		delete(sh.m, k)
	} else {
		sh.m[k] = bs
	}
	t.stats.local.Add(-1)
}

// candidate is one backend of a user, for Backends.
type candidate struct {
	backend string
	live    bool
	since   int64
}

// Backends implements routing.Affinity: the backends user's live or
// recently ended sessions use on any node, live ones first, then the most
// recently established first.
func (t *Table) Backends(user string) []string {
	k := userKey(user)
	now := t.ms()
	exp := t.cfg.Load().Expire.Milliseconds()
	var buf [4]candidate
	cs := buf[:0]
	add := func(backend string, live bool, since int64) {
		for i := range cs {
			if cs[i].backend == backend {
				cs[i].live = cs[i].live || live
				cs[i].since = max(cs[i].since, since)
				return
			}
		}
		cs = append(cs, candidate{backend, live, since})
	}
	sh := t.shard(k)
	sh.mu.RLock()
	for _, b := range sh.m[k] {
		if b.sessions > 0 || now-b.ended < exp {
			add(b.backend, b.sessions > 0, b.since)
		}
	}
	sh.mu.RUnlock()
	t.omu.RLock()
	for _, o := range t.origins {
		o.mu.RLock()
		if rs := o.m[k]; len(rs) > 0 {
			heard := o.heard
			for _, r := range rs {
				live, ended := r.state(heard, now)
				if live || now-ended < exp {
					add(r.backend, live, r.since)
				}
			}
		}
		o.mu.RUnlock()
	}
	t.omu.RUnlock()
	if len(cs) == 0 {
		return nil
	}
	slices.SortFunc(cs, func(a, b candidate) int {
		if a.live != b.live {
			if a.live {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(b.since, a.since); c != 0 {
			return c
		}
		return cmp.Compare(a.backend, b.backend)
	})
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.backend
	}
	return out
}

// Clear forgets user's bindings on every node (see the package
// documentation): here at once, elsewhere when the gossip arrives.
func (t *Table) Clear(user string) {
	c := clearMsg{k: userKey(user), at: t.ms()}
	t.applyClear(c)
	if t.gossip.Load() != nil {
		t.tmu.Lock()
		t.pending = append(t.pending, c)
		t.tmu.Unlock()
		t.flush()
	}
}

// applyClear records the tombstone and drops the bindings it covers.
func (t *Table) applyClear(c clearMsg) {
	now := t.ms()
	cfg := t.cfg.Load()
	t.tmu.Lock()
	old, had := t.tombs[c.k]
	if had && old.at >= c.at {
		t.tmu.Unlock()
		return
	}
	if !had && len(t.tombs) >= cfg.MaxEntries {
		t.tmu.Unlock()
		t.stats.invalid.Add(1)
		return
	}
	t.tombs[c.k] = tomb{at: c.at, keep: now + (cfg.Expire + Lease).Milliseconds()}
	t.clearGen.Add(1)
	t.tmu.Unlock()
	sh := t.shard(c.k)
	sh.mu.Lock()
	for _, b := range slices.Clone(sh.m[c.k]) {
		if b.since <= c.at {
			t.dropLocal(sh, c.k, b)
		}
	}
	sh.mu.Unlock()
	t.omu.RLock()
	for _, o := range t.origins {
		o.mu.Lock()
		o.dropCovered(t, c)
		o.mu.Unlock()
	}
	t.omu.RUnlock()
}

// cleared reports whether a binding of k established at since is covered
// by a tombstone.
func (t *Table) cleared(k key, since int64) bool {
	t.tmu.Lock()
	defer t.tmu.Unlock()
	tb, ok := t.tombs[k]
	return ok && since <= tb.at
}

// Start runs the background loop: broadcasts and expiry.
func (t *Table) Start() {
	t.startOnce.Do(func() { go t.loop() })
}

// Close stops the background loop (safe without Start).
func (t *Table) Close() {
	t.stopOnce.Do(func() { close(t.stop) })
	started := true
	t.startOnce.Do(func() { started = false })
	if started {
		<-t.done
	}
}

func (t *Table) loop() {
	defer close(t.done)
	tick := time.NewTicker(flushEvery)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
			t.flush()
			if now := t.ms(); now >= t.sweepNext {
				t.sweepNext = now + sweepEvery.Milliseconds()
				t.sweep()
			}
		}
	}
}

// sweep removes expired bindings and tombstones.
func (t *Table) sweep() {
	now := t.ms()
	exp := t.cfg.Load().Expire.Milliseconds()
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for k, bs := range sh.m {
			for _, b := range slices.Clone(bs) {
				if b.sessions == 0 && now-b.ended >= exp {
					t.dropLocal(sh, k, b)
				}
			}
		}
		sh.mu.Unlock()
	}
	t.omu.Lock()
	for name, o := range t.origins {
		o.mu.Lock()
		o.expire(t, now, exp)
		gone := len(o.m) == 0 && now-o.heard > Lease.Milliseconds()+exp
		o.mu.Unlock()
		if gone {
			delete(t.origins, name)
		}
	}
	t.omu.Unlock()
	t.tmu.Lock()
	for k, tb := range t.tombs {
		if now > tb.keep {
			delete(t.tombs, k)
		}
	}
	t.tmu.Unlock()
}

// Counts returns the bindings kept: this node's and other nodes'.
func (t *Table) Counts() (local, remote int64) {
	return max(t.stats.local.Load(), 0), max(t.stats.remote.Load(), 0)
}

// Steered returns how many sessions were bound where affinity, not the
// hash, sent them.
func (t *Table) Steered() uint64 { return t.stats.steered.Load() }

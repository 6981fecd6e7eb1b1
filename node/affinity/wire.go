package affinity

import (
	"encoding/binary"
	"errors"
	"slices"

	"github.com/portico-mail/portico/node/internal/wire"
)

// Gossip messages. Broadcasts and push/pull states share one format:
//
//	message = version:1 kind:1 epoch:8 seq:uvarint
//	          nbind:uvarint binding*nbind nclear:uvarint clear*nclear
//	binding = user:16 backend_len:1 backend flags:1 since_ms:uvarint
//	          idle_ms:uvarint ver:uvarint
//	clear   = user:16 at_ms:uvarint
//
// kind is 1 for a state (every binding of the sender, live ones first, and
// the tombstones it keeps: it replaces what the receiver holds from the
// sender) or 2 for an update (bindings that changed, tombstones just made;
// also sent empty as a heartbeat). epoch identifies the sender's process
// run; seq is its sequence number when the message was made and ver the
// one at a binding's last change. flags bit 0 is "live" (the sender holds
// sessions of it); since is the sender's clock (unix ms) when the first of
// them started; idle is how long ago the last one ended (0 while live), so
// that the receiver's clock times the expiry. A backend id is what the
// routing table allows (1-128 of letters, digits, '-', '_', '.'). A message
// that breaks any of this is dropped whole.

const (
	wireVersion  = 1
	kindState    = 1
	kindUpdate   = 2
	flagLive     = 1
	maxBackendID = 128
	// maxBroadcast keeps a broadcast within one gossip packet (memberlist
	// sends UDP packets of at most 1,400 bytes; the cluster's signed
	// envelope adds up to about 220 bytes).
	maxBroadcast = 800
	// maxPerFlush bounds the broadcasts of one flush; more changes wait
	// for the next (or for a push/pull).
	maxPerFlush = 8
	// maxState bounds a push/pull state: live bindings go first.
	maxState = 4 << 20
	// maxTimeMs bounds a time field (the year 3000, in unix ms).
	maxTimeMs = 32503680000000
	maxSeq    = 1 << 62
	// maxSkew: a binding established further in the future than this (by
	// the receiver's clock) is dropped.
	maxSkew = 60_000
	// minBinding and minClear are the smallest encoded entries.
	minBinding = 16 + 1 + 1 + 1 + 1 + 1 + 1
	minClear   = 16 + 1
	headerLen  = 1 + 1 + 8 + 1
)

var errMalformed = errors.New("affinity: malformed gossip message")

// Gossip sends messages to the other members of a cluster
// (cluster.Agent.Broadcast on the affinity's channel).
type Gossip struct {
	// Self is this node's name: messages signed by it are not merged.
	Self      string
	Broadcast func(b []byte)
	// Peers, if set, reports whether another member is alive. While none
	// is, nothing is broadcast (a lone memberlist never sends, so its
	// queue would only grow); a node that joins gets the state.
	Peers func() bool
}

// SetGossip enables sharing through g (nil: none, a node on its own).
// Call it before Start.
func (t *Table) SetGossip(g *Gossip) { t.gossip.Store(g) }

// wireBinding is one decoded binding.
type wireBinding struct {
	k       key
	backend string
	live    bool
	since   int64
	idle    int64
	ver     uint64
}

// message is a decoded message.
type message struct {
	kind   byte
	epoch  uint64
	seq    uint64
	binds  []wireBinding
	clears []clearMsg
}

func appendHeader(b []byte, kind byte, epoch, seq uint64) []byte {
	b = append(b, wireVersion, kind)
	b = binary.BigEndian.AppendUint64(b, epoch)
	return binary.AppendUvarint(b, seq)
}

func appendBinding(b []byte, w *wireBinding) []byte {
	b = append(b, w.k[:]...)
	b = append(b, byte(len(w.backend)))
	b = append(b, w.backend...)
	var f byte
	if w.live {
		f = flagLive
	}
	b = append(b, f)
	b = binary.AppendUvarint(b, uint64(max(w.since, 0)))
	b = binary.AppendUvarint(b, uint64(max(w.idle, 0)))
	return binary.AppendUvarint(b, w.ver)
}

func appendClear(b []byte, c *clearMsg) []byte {
	b = append(b, c.k[:]...)
	return binary.AppendUvarint(b, uint64(max(c.at, 0)))
}

// encode assembles a message from encoded bindings and clears.
func encode(kind byte, epoch, seq uint64, nb int, binds []byte, nc int, clears []byte) []byte {
	out := make([]byte, 0, headerLen+8+len(binds)+len(clears)+2*binary.MaxVarintLen64)
	out = appendHeader(out, kind, epoch, seq)
	out = binary.AppendUvarint(out, uint64(nb))
	out = append(out, binds...)
	out = binary.AppendUvarint(out, uint64(nc))
	return append(out, clears...)
}

type reader = wire.Reader

// validBackend reports whether id is a backend id the routing table
// allows.
func validBackend(id []byte) bool {
	if len(id) == 0 || len(id) > maxBackendID {
		return false
	}
	for _, c := range id {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// decode parses and checks a message's syntax and ranges; the checks that
// need the clock and the configuration are made when merging.
func decode(b []byte) (*message, error) {
	r := reader{B: b}
	m := &message{}
	if r.Byte() != wireVersion {
		return nil, errMalformed
	}
	m.kind = r.Byte()
	if m.kind != kindState && m.kind != kindUpdate {
		return nil, errMalformed
	}
	m.epoch = r.U64()
	m.seq = r.Uvarint(maxSeq)
	nb := r.Uvarint(uint64(len(r.B) / minBinding))
	if r.Err {
		return nil, errMalformed
	}
	type bk struct {
		k       key
		backend string
	}
	var seen map[bk]struct{}
	if nb > 1 {
		seen = make(map[bk]struct{}, nb)
	}
	if nb > 0 {
		m.binds = make([]wireBinding, 0, nb)
	}
	for i := uint64(0); i < nb; i++ {
		var w wireBinding
		copy(w.k[:], r.Bytes(16))
		id := r.Bytes(int(r.Byte()))
		f := r.Byte()
		w.since = int64(r.Uvarint(maxTimeMs))
		w.idle = int64(r.Uvarint(maxTimeMs))
		w.ver = r.Uvarint(maxSeq)
		if r.Err || !validBackend(id) || f&^flagLive != 0 {
			return nil, errMalformed
		}
		w.backend, w.live = string(id), f&flagLive != 0
		if w.live && w.idle != 0 {
			return nil, errMalformed
		}
		if seen != nil {
			if _, dup := seen[bk{w.k, w.backend}]; dup {
				return nil, errMalformed
			}
			seen[bk{w.k, w.backend}] = struct{}{}
		}
		m.binds = append(m.binds, w)
	}
	nc := r.Uvarint(uint64(len(r.B) / minClear))
	if r.Err {
		return nil, errMalformed
	}
	if nc > 0 {
		m.clears = make([]clearMsg, 0, nc)
	}
	for i := uint64(0); i < nc; i++ {
		var c clearMsg
		copy(c.k[:], r.Bytes(16))
		c.at = int64(r.Uvarint(maxTimeMs))
		if r.Err {
			return nil, errMalformed
		}
		m.clears = append(m.clears, c)
	}
	if r.Err || len(r.B) != 0 {
		return nil, errMalformed
	}
	return m, nil
}

// LocalState implements cluster.Channel: every binding of this node (live
// ones first, then the ended ones that have not expired, up to maxState)
// and the tombstones it keeps.
func (t *Table) LocalState() []byte {
	seq := t.seq.Load() // every change up to seq is reflected below
	now := t.ms()
	exp := t.cfg.Load().Expire.Milliseconds()
	var body []byte
	n := 0
	full := false
	for pass := 0; pass < 2 && !full; pass++ {
		for i := range t.shards {
			sh := &t.shards[i]
			sh.mu.RLock()
			for k, bs := range sh.m {
				for _, b := range bs {
					live := b.sessions > 0
					if live != (pass == 0) || !live && now-b.ended >= exp {
						continue
					}
					if len(body) > maxState-300 {
						full = true
						break
					}
					body = appendBinding(body, t.wire(k, b, now))
					n++
				}
			}
			sh.mu.RUnlock()
		}
	}
	var cbody []byte
	nc := 0
	t.tmu.Lock()
	for k, tb := range t.tombs {
		if len(body)+len(cbody) > maxState-100 {
			break
		}
		cbody = appendClear(cbody, &clearMsg{k: k, at: tb.at})
		nc++
	}
	t.tmu.Unlock()
	return encode(kindState, t.epoch, seq, n, body, nc, cbody)
}

// wire is b as gossiped (b's shard locked).
func (t *Table) wire(k key, b *binding, now int64) *wireBinding {
	w := &wireBinding{k: k, backend: b.backend, live: b.sessions > 0, since: b.since, ver: b.ver}
	if !w.live {
		w.idle = max(now-b.ended, 0)
	}
	return w
}

// flush broadcasts changed bindings and new tombstones, in at most
// maxPerFlush packet-sized messages (the rest wait for the next flush or
// the next push/pull), or an empty message when nothing was sent for
// heartbeatEvery.
func (t *Table) flush() {
	g := t.gossip.Load()
	if g == nil || g.Broadcast == nil {
		return
	}
	t.flushMu.Lock()
	defer t.flushMu.Unlock()
	now := t.ms()
	t.tmu.Lock()
	clears := t.pending
	t.pending = nil
	t.tmu.Unlock()
	if g.Peers != nil && now >= t.peersNext {
		t.peersNext = now + peersEvery.Milliseconds()
		t.alone = !g.Peers()
	}
	if g.Peers != nil && t.alone {
		// Nobody to tell: the changes so far reach a joiner in the state.
		for i := range t.shards {
			sh := &t.shards[i]
			sh.mu.Lock()
			for _, k := range sh.dirty {
				for _, b := range sh.m[k] {
					b.dirty = false
				}
			}
			sh.dirty = sh.dirty[:0]
			sh.mu.Unlock()
		}
		t.lastSent = now
		return
	}
	sent := 0
	for sent < maxPerFlush {
		seq := t.seq.Load()
		var body []byte
		n := 0
		full := false
		for i := 0; i < nShards && !full; i++ {
			sh := &t.shards[(t.cursor+i)%nShards]
			sh.mu.Lock()
			j := 0
			for ; j < len(sh.dirty) && !full; j++ {
				k := sh.dirty[j]
				for _, b := range sh.m[k] {
					if !b.dirty {
						continue
					}
					before := len(body)
					body = appendBinding(body, t.wire(k, b, now))
					if len(body) > maxBroadcast-64 && n > 0 {
						body = body[:before]
						full = true
						break
					}
					b.dirty = false
					n++
				}
			}
			if full {
				j-- // the key may still have a dirty binding
			}
			sh.dirty = append(sh.dirty[:0], sh.dirty[j:]...)
			sh.mu.Unlock()
		}
		if !full {
			t.cursor = (t.cursor + 1) % nShards
		}
		var cbody []byte
		nc := 0
		for len(clears) > 0 && len(body)+len(cbody) < maxBroadcast-64-minClear-10 {
			cbody = appendClear(cbody, &clears[0])
			clears = clears[1:]
			nc++
		}
		if n == 0 && nc == 0 {
			break
		}
		g.Broadcast(encode(kindUpdate, t.epoch, seq, n, body, nc, cbody))
		sent++
	}
	if len(clears) > 0 {
		t.tmu.Lock()
		t.pending = append(clears, t.pending...)
		t.tmu.Unlock()
	}
	if sent == 0 && now-t.lastSent >= heartbeatEvery.Milliseconds() {
		g.Broadcast(encode(kindUpdate, t.epoch, t.seq.Load(), 0, nil, 0, nil))
		sent++
	}
	if sent > 0 {
		t.lastSent = now
	}
}

// MergeRemote implements cluster.Channel: it validates a state or update
// sent (and signed, the cluster checked) by node from and merges it under
// from's name. It never blocks on I/O. A state (up to a node's every
// binding) is built aside and swapped in, so lookups wait only for the
// swap.
func (t *Table) MergeRemote(from string, b []byte) {
	if g := t.gossip.Load(); g != nil && from == g.Self {
		return
	}
	m, err := decode(b)
	if err != nil {
		t.stats.invalid.Add(1)
		return
	}
	now := t.ms()
	for _, c := range m.clears {
		if c.at > now+maxSkew {
			t.stats.invalid.Add(1)
			continue
		}
		t.applyClear(c)
	}
	o := t.originFor(from)
	if o == nil {
		t.stats.invalid.Add(1)
		return
	}
	o.merge.Lock()
	defer o.merge.Unlock()
	gen := t.clearGen.Load()
	o.mu.RLock()
	fresh := !o.known || o.epoch != m.epoch // a new process run: forget the old one's
	if !fresh && m.seq < o.stateSeq {
		// Made before a state already merged, which reflects all of it:
		// late, or replayed (the cluster's seal and memberlist's
		// encryption do not stop a captured packet from being sent
		// again). Merging it would bring back what ended since, and
		// keep a silent node's live bindings alive (heard).
		o.mu.RUnlock()
		t.stats.invalid.Add(1)
		return
	}
	var target map[key][]rbinding
	size := 0
	if m.kind == kindState {
		// A state replaces what was held, except bindings that changed
		// after it was made (a broadcast overtook it).
		target = make(map[key][]rbinding, len(m.binds))
		for k, rs := range o.m {
			for _, r := range rs {
				if !fresh && r.ver > m.seq {
					target[k] = append(target[k], r)
					size++
				}
			}
		}
	}
	held := o.n
	o.mu.RUnlock()
	if m.kind == kindState {
		t.mergeInto(target, &size, held, m, now)
		o.mu.Lock()
		if t.clearGen.Load() != gen {
			size -= dropCleared(t, target) // a clear came meanwhile
		}
		o.heard, o.known, o.epoch = now, true, m.epoch
		if fresh || m.seq > o.stateSeq {
			o.stateSeq = m.seq
		}
		o.install(t, target, size)
		o.mu.Unlock()
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.heard, o.known, o.epoch = now, true, m.epoch
	if fresh {
		o.install(t, map[key][]rbinding{}, 0)
		o.stateSeq = 0
	}
	size = o.n
	t.mergeInto(o.m, &size, o.n, m, now)
	o.install(t, o.m, size)
}

// mergeInto merges m's bindings into target, which holds *size bindings
// and replaces held ones (for the cap).
func (t *Table) mergeInto(target map[key][]rbinding, size *int, held int, m *message, now int64) {
	cfg := t.cfg.Load()
	exp := cfg.Expire.Milliseconds()
	// Room: the cap less everything else held.
	room := int64(cfg.MaxEntries) - t.stats.local.Load() - (t.stats.remote.Load() - int64(held))
	for i := range m.binds {
		w := &m.binds[i]
		if w.since > now+maxSkew {
			t.stats.invalid.Add(1)
			continue
		}
		if t.cleared(w.k, w.since) || !w.live && w.idle >= exp {
			// Gone at the sender: drop an older copy.
			if remove(target, w.k, w.backend, w.ver) {
				*size--
			}
			continue
		}
		r := rbinding{backend: w.backend, live: w.live, since: w.since, ver: w.ver}
		if !w.live {
			r.ended = now - w.idle
		}
		if int64(*size) >= room && !has(target, w.k, w.backend) {
			continue // full
		}
		if put(target, w.k, r) {
			*size++
		}
	}
}

// dropCleared drops the bindings of m that tombstones cover and returns
// how many.
func dropCleared(t *Table, m map[key][]rbinding) int {
	n := 0
	for k, rs := range m {
		kept := slices.DeleteFunc(rs, func(r rbinding) bool { return t.cleared(k, r.since) })
		n += len(rs) - len(kept)
		if len(kept) == 0 {
			delete(m, k)
		} else {
			m[k] = kept
		}
	}
	return n
}

// has reports whether m holds a binding (k, backend).
func has(m map[key][]rbinding, k key, backend string) bool {
	for _, r := range m[k] {
		if r.backend == backend {
			return true
		}
	}
	return false
}

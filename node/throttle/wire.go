package throttle

import (
	"encoding/binary"
	"errors"

	"github.com/portico-mail/portico/node/internal/wire"
)

// Gossip messages. Broadcasts and push/pull states share one format:
//
//	message = version:1 window_ms:uvarint n:uvarint entry*n
//	entry   = kind:1 [net:16 if kind is ip or user_ip] [user:16 if kind is
//	          user_ip or user] reset_ms:uvarint until_ms:uvarint
//	          nslots:1 slot*nslots
//	slot    = origin:8 win:uvarint cur:uvarint prev:uvarint
//
// A broadcast carries, for a few changed entries, only this node's slot;
// a push/pull state carries every slot of every entry (up to a bound).
// Both merge the same way (see the package documentation). A message with
// another version or window length is dropped (nodes disagree on the
// configuration; counts would not line up), as is any malformed one, whole.

const (
	wireVersion = 1
	// maxBroadcast keeps a broadcast within one gossip packet
	// (memberlist sends UDP packets of at most 1,400 bytes; the cluster's
	// signed envelope adds up to about 220 bytes).
	maxBroadcast = 800
	// maxState bounds a push/pull state: blocked entries go first, then
	// the others in no particular order.
	maxState = 4 << 20
	// maxTimeMs bounds a time field (the year 3000, in unix ms).
	maxTimeMs = 32503680000000
	// minEntry is the smallest encoded entry (a user key, no slots).
	minEntry = 1 + 16 + 1 + 1 + 1
)

var errMalformed = errors.New("throttle: malformed gossip message")

// wireEntry is one decoded entry.
type wireEntry struct {
	k       key
	resetAt int64
	until   int64
	slots   []slot
}

func appendHeader(b []byte, windowMs int64, n int) []byte {
	b = append(b, wireVersion)
	b = binary.AppendUvarint(b, uint64(windowMs))
	return binary.AppendUvarint(b, uint64(n))
}

// appendEntry encodes e's key, times and slots (all of them, or only
// origin's when only is true).
func appendEntry(b []byte, k *key, e *entry, only bool, origin uint64) []byte {
	b = append(b, byte(k.kind))
	if k.kind != kindUser {
		b = append(b, k.net[:]...)
	}
	if k.kind != kindIP {
		b = append(b, k.user[:]...)
	}
	b = binary.AppendUvarint(b, uint64(max(e.resetAt, 0)))
	b = binary.AppendUvarint(b, uint64(max(e.until, 0)))
	n := 0
	for _, s := range e.slots {
		if !only || s.origin == origin {
			n++
		}
	}
	b = append(b, byte(n))
	for _, s := range e.slots {
		if only && s.origin != origin {
			continue
		}
		b = binary.BigEndian.AppendUint64(b, s.origin)
		b = binary.AppendUvarint(b, uint64(max(s.win, 0)))
		b = binary.AppendUvarint(b, uint64(s.cur))
		b = binary.AppendUvarint(b, uint64(s.prev))
	}
	return b
}

type reader = wire.Reader

// decode parses and checks a message's syntax and ranges; the checks that
// need the clock and configuration are made when merging. windowMs must
// match the message's.
func decode(b []byte, windowMs int64) ([]wireEntry, error) {
	r := reader{B: b}
	if r.Byte() != wireVersion || r.Err {
		return nil, errMalformed
	}
	if w := r.Uvarint(maxTimeMs); r.Err || int64(w) != windowMs {
		return nil, errMalformed
	}
	n := r.Uvarint(uint64(len(r.B) / minEntry))
	if r.Err {
		return nil, errMalformed
	}
	out := make([]wireEntry, 0, n)
	maxWin := uint64(maxTimeMs / max(windowMs, 1))
	for i := uint64(0); i < n; i++ {
		var e wireEntry
		e.k.kind = kind(r.Byte())
		switch e.k.kind {
		case kindIP:
			r.Bytes16(&e.k.net)
		case kindUserIP:
			r.Bytes16(&e.k.net)
			r.Bytes16(&e.k.user)
		case kindUser:
			r.Bytes16(&e.k.user)
		default:
			return nil, errMalformed
		}
		e.resetAt = int64(r.Uvarint(maxTimeMs))
		e.until = int64(r.Uvarint(maxTimeMs))
		ns := int(r.Byte())
		if r.Err || ns > maxSlots {
			return nil, errMalformed
		}
		if ns > 0 {
			e.slots = make([]slot, 0, ns)
		}
		for j := 0; j < ns; j++ {
			s := slot{origin: r.U64(), win: int64(r.Uvarint(maxWin))}
			s.cur = uint32(r.Uvarint(maxCount))
			s.prev = uint32(r.Uvarint(maxCount))
			if r.Err {
				return nil, errMalformed
			}
			for _, o := range e.slots {
				if o.origin == s.origin {
					return nil, errMalformed
				}
			}
			e.slots = append(e.slots, s)
		}
		if r.Err {
			return nil, errMalformed
		}
		out = append(out, e)
	}
	if r.Err || len(r.B) != 0 {
		return nil, errMalformed
	}
	return out, nil
}

// Gossip sends messages to the other members of a cluster
// (cluster.Agent.Broadcast on the throttle's channel).
type Gossip struct {
	Broadcast func(b []byte)
}

// SetGossip enables sharing through g (nil: none, the standalone mode).
// Call it before Start.
func (l *Limiter) SetGossip(g *Gossip) { l.gossip.Store(g) }

// LocalState implements cluster.Channel: the state for a push/pull
// exchange (blocked entries first), bounded by maxState. It carries this
// process's own counters only (a receiver accepts counters only from
// their origin, see MergeRemote), with every entry's block and reset
// times.
func (l *Limiter) LocalState() []byte {
	cfg := l.cfg.Load()
	c := l.clock(cfg)
	var body []byte
	n := 0
	for pass := 0; pass < 2; pass++ {
		for i := range l.shards {
			sh := &l.shards[i]
			sh.mu.Lock()
			for k, e := range sh.m {
				blocked := e.until > c.ms
				if blocked != (pass == 0) {
					continue
				}
				if len(body) > maxState-200 {
					break
				}
				body = appendEntry(body, &k, e, true, l.origin)
				n++
			}
			sh.mu.Unlock()
		}
	}
	out := appendHeader(make([]byte, 0, len(body)+16), cfg.Window.Milliseconds(), n)
	return append(out, body...)
}

// MergeRemote implements cluster.Channel: it validates a state or
// broadcast sent (and signed, the cluster checked) by node from, and
// merges it. A node speaks only for its own counters: each origin belongs
// to the first node seen sending it (origins are random per process run),
// and a counter under an origin that belongs to another node is dropped.
// Block and reset times are taken from any member. It never blocks on I/O.
func (l *Limiter) MergeRemote(from string, b []byte) {
	cfg := l.cfg.Load()
	entries, err := decode(b, cfg.Window.Milliseconds())
	if err != nil {
		l.stats.gossipInvalid.Add(1)
		return
	}
	c := l.clock(cfg)
	for i := range entries {
		e := &entries[i]
		kept := e.slots[:0]
		for _, s := range e.slots {
			if l.ownedBy(s.origin, from) {
				kept = append(kept, s)
			} else {
				l.stats.gossipForeign.Add(1)
			}
		}
		e.slots = kept
		l.merge(e, cfg, c)
	}
}

// maxOrigins bounds the origin owners remembered.
const maxOrigins = 4096

// ownedBy reports whether origin belongs to node from, binding it to from
// if it is new. This process's own origin belongs to nobody else.
func (l *Limiter) ownedBy(origin uint64, from string) bool {
	if origin == l.origin {
		return false
	}
	l.ownMu.Lock()
	defer l.ownMu.Unlock()
	if l.owners == nil {
		l.owners = map[uint64]string{}
	}
	owner, ok := l.owners[origin]
	if !ok {
		if len(l.owners) >= maxOrigins {
			for k := range l.owners { // forget one at random
				delete(l.owners, k)
				break
			}
		}
		l.owners[origin] = from
		return true
	}
	return owner == from
}

// merge applies one remote entry (see the package documentation). Values
// that cannot be right here are dropped or clamped: a network key masked
// differently (another prefix configuration), a reset in the future, a
// block longer than BlockFor from now, a counter in a future window.
func (l *Limiter) merge(r *wireEntry, cfg *Config, c clock) {
	if r.k.kind != kindUser && !validNet(r.k.net, cfg) {
		return
	}
	if r.resetAt > c.ms+60_000 {
		return
	}
	r.until = min(r.until, c.ms+cfg.BlockFor.Milliseconds())
	sh := l.shard(&r.k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.m[r.k]
	if e == nil {
		if r.until <= c.ms && !anyLive(r.slots, c.win) && r.resetAt <= c.ms-2*cfg.Window.Milliseconds() {
			return // nothing worth a new entry
		}
		e = l.insert(sh, &r.k, cfg, c)
	}
	switch {
	case r.resetAt < e.resetAt:
		return // from before a reset we know of
	case r.resetAt > e.resetAt:
		e.resetAt, e.until, e.slots = r.resetAt, 0, e.slots[:0]
	}
	e.until = max(e.until, r.until)
	for _, s := range r.slots {
		if s.win > c.win+1 || s.win < c.win-1 {
			continue
		}
		e.mergeSlot(s)
	}
	e.touched = c.ms
}

func anyLive(slots []slot, w int64) bool {
	for _, s := range slots {
		if s.win >= w-1 && s.win <= w+1 {
			return true
		}
	}
	return false
}

// flush broadcasts changed entries, at most one packet-sized message per
// tick (the rest wait for the next tick or the next push/pull).
func (l *Limiter) flush() {
	g := l.gossip.Load()
	if g == nil || g.Broadcast == nil {
		return
	}
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	cfg := l.cfg.Load()
	var body []byte
	n := 0
	full := false
	for i := 0; i < nShards && !full; i++ {
		sh := &l.shards[(l.cursor+i)%nShards]
		sh.mu.Lock()
		j := 0
		for ; j < len(sh.dirty); j++ {
			k := sh.dirty[j]
			e := sh.m[k]
			if e == nil || !e.dirty {
				continue
			}
			before := len(body)
			body = appendEntry(body, &k, e, true, l.origin)
			if len(body) > maxBroadcast-16 && n > 0 {
				body = body[:before]
				full = true
				break
			}
			e.dirty = false
			n++
		}
		sh.dirty = append(sh.dirty[:0], sh.dirty[j:]...)
		sh.mu.Unlock()
	}
	l.cursor = (l.cursor + 1) % nShards
	if n == 0 {
		return
	}
	msg := appendHeader(make([]byte, 0, len(body)+16), cfg.Window.Milliseconds(), n)
	g.Broadcast(append(msg, body...))
}

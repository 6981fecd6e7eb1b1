// Package throttle slows down and then blocks repeated failed logins
// (password guessing) in every authentication mode, with its counters
// shared by the nodes of a cluster over gossip.
//
// # What is counted
//
// A failed login (wrong password or unknown user, as decided by the backend
// or an auth_http server) counts for three keys:
//
//   - ip: the client's network (the address masked to /32 for IPv4 and /64
//     for IPv6 by default: an IPv6 host usually owns a whole /64);
//   - user_ip: the user from that network;
//   - user: the user from all networks.
//
// Counts are failures in a sliding window (two fixed, clock-aligned windows
// weighted by the time elapsed in the current one). A failure's reply is
// delayed by Delay, doubled for each earlier failure of the user from that
// network, up to MaxDelay. When the ip or user_ip count reaches its limit,
// that key is blocked for BlockFor: attempts are answered at once with a
// temporary failure (IMAP NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP]) without
// contacting the backend or the auth server. A successful login clears the
// user_ip key (the user proved the password from there); it never clears
// the ip or user keys, or an attacker holding one valid account could wipe
// its own record between guesses at others.
//
// # Why a user is never blocked everywhere
//
// Blocking a user from all networks after N failures would let anyone lock
// any user out (a denial of service by design), so the user key never blocks
// by itself. When it reaches UserLimit the user is "under attack" (for
// BlockFor after the last failure): from then on a network whose user_ip
// count reaches the much lower UnderAttackLimit is blocked for that user.
// The real user, whose own network has no recent failure, still logs in with
// the right password; a botnet spreading guesses at one account over many
// addresses gets UnderAttackLimit guesses per address instead of
// UserIPLimit. A blocked attacker network likewise never stops the user
// from another network: blocks are keyed by network or by (user, network).
//
// Networks listed in Trusted (webmail servers, monitoring, by default the
// loopback networks) are neither counted nor blocked.
//
// # Attempts in flight
//
// A failure is only known when the backend (or auth server) answers, so a
// burst of parallel attempts would all pass a check of the failures alone.
// Begin therefore counts an attempt as in flight, for its network and its
// user from that network, before the backend is asked, and an attempt is let
// through only while the failures so far plus the attempts in flight stay
// below each limit: were they all to fail, the limit would be reached and
// not passed. Further attempts wait until one in flight ends (or their
// context is done, and they are refused like a blocked attempt), in the
// order they came: each attempt that ends wakes one waiter, not all of
// them (thousands of clients behind one address in a reconnect storm). The
// reservation an attempt holds ends exactly once: converted into a failure
// (Failed, under the same lock, so that no check sees neither), cleared
// (Succeeded), or dropped (Release: timeouts, an unavailable backend,
// cancellation, anything that says nothing about the password). Attempts in
// flight are this node's alone (they are not gossiped): a burst spread over
// n nodes can reach the backend up to n times the limit before the nodes
// learn each other's failures.
//
// # Memory and locking
//
// Entries live in a fixed number of shards (a map and a mutex each), so
// concurrent logins rarely contend. The total is capped at MaxEntries: a new
// key in a full shard evicts the least valuable of a few sampled entries
// (never a block if an unblocked one is in the sample). One goroutine per
// Limiter sweeps expired entries and sends gossip; there is no goroutine or
// timer per entry.
//
// # Sharing across the cluster
//
// Each entry holds per-origin counters (an origin is one process run of one
// node, a random 64-bit id), and the count is their sum: failures spread over
// several nodes add up. A counter is the pair (current window, previous
// window) of one origin; two copies merge by taking, per origin, the
// element-wise maximum after shifting both to the later window. The block
// time merges by maximum, and a reset (successful login) by the later reset
// time, which discards everything counted before it. All three merges are
// idempotent, commutative and associative, so repeated broadcasts and full
// push/pull exchanges in any order converge to the same state. Each node
// sends only its own counters (the cluster signs every message, and a
// counter is accepted only from the node its origin belongs to), with the
// block and reset times of every entry. A restarted node starts a new
// origin and learns the blocks in force and the other nodes' counters from
// them; its previous run's counters stay counted on the other nodes. See
// wire.go for the message format; every message from the network is
// validated before it is merged.
package throttle

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"hash/maphash"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/routing"
)

// Config sets the limits. Zero limits disable their rule.
type Config struct {
	Enabled bool
	// Window is the span failures are counted over (sliding).
	Window time.Duration
	// BlockFor is how long a key stays blocked after reaching its limit.
	BlockFor time.Duration
	// Delay is the delay of the first failure's reply (from a network, for
	// a user); it doubles with each further failure up to MaxDelay.
	Delay, MaxDelay time.Duration
	// IPLimit: failures from one network (all users) before it is blocked.
	IPLimit int
	// UserIPLimit: failures of one user from one network before that pair
	// is blocked.
	UserIPLimit int
	// UserLimit: failures of one user from all networks before the user is
	// under attack (see the package documentation).
	UserLimit int
	// UnderAttackLimit replaces UserIPLimit while the user is under attack.
	UnderAttackLimit int
	// IPv4Prefix and IPv6Prefix are the prefix lengths of a "network".
	IPv4Prefix, IPv6Prefix int
	// Trusted networks are exempt.
	Trusted []netip.Prefix
	// MaxEntries caps the tracked keys (all kinds together).
	MaxEntries int
}

// DefaultConfig returns the defaults documented in the README.
func DefaultConfig() Config {
	return Config{
		Enabled:          true,
		Window:           10 * time.Minute,
		BlockFor:         15 * time.Minute,
		Delay:            time.Second,
		MaxDelay:         15 * time.Second,
		IPLimit:          50,
		UserIPLimit:      10,
		UserLimit:        100,
		UnderAttackLimit: 3,
		IPv4Prefix:       32,
		IPv6Prefix:       64,
		Trusted:          []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
		MaxEntries:       100000,
	}
}

// Scopes of a block (metric label values and log text).
const (
	ScopeIP     = "ip"      // the client network
	ScopeUserIP = "user_ip" // the user from that network
	ScopeUser   = "user"    // the user is under attack and this network failed for it
)

type kind uint8

const (
	kindIP kind = iota + 1
	kindUserIP
	kindUser
	numKinds = 3
)

// key identifies an entry. User names are hashed (lower-cased first): the
// map and the gossip never hold them, and a key has a fixed size whatever
// the client sent.
type key struct {
	kind kind
	net  [16]byte // masked address (IPv4 as IPv4-mapped IPv6); zero for kindUser
	user [16]byte // truncated SHA-256 of the lower-cased user; zero for kindIP
}

// slot is one origin's failure count: cur in window win, prev in win-1.
type slot struct {
	origin    uint64
	win       int64
	cur, prev uint32
}

// at returns the slot's counts shifted to window w (>= s.win).
func (s slot) at(w int64) (cur, prev uint32) {
	switch s.win {
	case w:
		return s.cur, s.prev
	case w - 1:
		return 0, s.cur
	}
	return 0, 0
}

type entry struct {
	resetAt int64 // unix ms of the last reset; everything below belongs to it
	until   int64 // blocked (ip, user_ip) or under attack (user) until, unix ms
	touched int64 // unix ms of the last change (expiry)
	slots   []slot
	dirty   bool // queued for broadcast
}

const (
	nShards  = 32
	maxSlots = 32      // origins per entry (nodes times recent restarts)
	maxCount = 1 << 24 // per slot and window
)

type shard struct {
	mu    sync.Mutex
	m     map[key]*entry
	dirty []key // entries to broadcast (dirty set), oldest first
}

// Limiter implements the throttle. Its methods are safe for concurrent use.
type Limiter struct {
	cfg    atomic.Pointer[Config]
	origin uint64
	now    func() time.Time
	seed   maphash.Seed
	shards [nShards]shard

	// gossip (nil without a cluster)
	gossip  atomic.Pointer[Gossip]
	flushMu sync.Mutex
	cursor  int // flush round-robin start (under flushMu)
	ownMu   sync.Mutex
	owners  map[uint64]string // origin -> the node that sends it (wire.go)

	// flightMu guards flights, the attempts in flight per key (ip and
	// user_ip). It is taken before any shard lock, never after.
	flightMu sync.Mutex
	flights  map[key]*flight

	stats   stats
	onBlock atomic.Pointer[func(scope string, ip netip.Addr, user string, until time.Time)]

	startOnce, stopOnce sync.Once
	stop, done          chan struct{}
}

type stats struct {
	delayed       atomic.Uint64
	blocked       [numKinds]atomic.Uint64 // attempts refused, by scope
	blocks        [numKinds]atomic.Uint64 // blocks started here, by scope
	entries       [numKinds]atomic.Int64
	gossipInvalid atomic.Uint64
	inFlight      atomic.Int64  // attempts reserved by Begin and not yet ended
	held          atomic.Uint64 // attempts Begin made wait for others in flight
	gossipForeign atomic.Uint64 // counters dropped: another node's origin
}

// New returns a Limiter with cfg. now may be nil (time.Now).
func New(cfg Config, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	l := &Limiter{now: now, seed: maphash.MakeSeed(), flights: map[key]*flight{}, stop: make(chan struct{}), done: make(chan struct{})}
	var b [8]byte
	_, _ = rand.Read(b[:])
	l.origin = binary.BigEndian.Uint64(b[:])
	for i := range l.shards {
		l.shards[i].m = map[key]*entry{}
	}
	l.SetConfig(cfg)
	return l
}

// SetConfig replaces the configuration (reload). Changing Window makes the
// counts start over; the other settings apply to the next attempt.
func (l *Limiter) SetConfig(cfg Config) {
	cfg.Trusted = append([]netip.Prefix(nil), cfg.Trusted...)
	if cfg.Window < time.Second {
		cfg.Window = time.Second
	}
	if cfg.MaxEntries < nShards {
		cfg.MaxEntries = nShards
	}
	if cfg.IPv4Prefix <= 0 || cfg.IPv4Prefix > 32 {
		cfg.IPv4Prefix = DefaultConfig().IPv4Prefix
	}
	if cfg.IPv6Prefix <= 0 || cfg.IPv6Prefix > 128 {
		cfg.IPv6Prefix = DefaultConfig().IPv6Prefix
	}
	l.cfg.Store(&cfg)
}

// Config returns the configuration in use.
func (l *Limiter) Config() Config { return *l.cfg.Load() }

func (c *Config) trusted(ip netip.Addr) bool {
	for _, p := range c.Trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// clock is one instant in the units of the counters.
type clock struct {
	ms   int64   // unix milliseconds
	win  int64   // current window index
	frac float64 // elapsed fraction of the current window
}

func (l *Limiter) clock(cfg *Config) clock {
	ms := l.now().UnixMilli()
	w := cfg.Window.Milliseconds()
	return clock{ms: ms, win: ms / w, frac: float64(ms%w) / float64(w)}
}

// count is the entry's failures in the sliding window.
func (e *entry) count(c clock) float64 {
	var n float64
	for _, s := range e.slots {
		cur, prev := s.at(c.win)
		n += float64(cur) + float64(prev)*(1-c.frac)
	}
	return n
}

// reached reports count >= limit (limit > 0), tolerating float rounding.
func reached(n float64, limit int) bool { return limit > 0 && n >= float64(limit)-1e-9 }

func (e *entry) add(origin uint64, w int64) {
	for i := range e.slots {
		s := &e.slots[i]
		if s.origin == origin {
			W := max(s.win, w)
			cur, prev := s.at(W)
			s.win, s.cur, s.prev = W, min(cur+1, maxCount), prev
			return
		}
	}
	if len(e.slots) >= maxSlots {
		// Make room for our own counter: drop the smallest other one.
		j := 0
		for i := range e.slots {
			if e.slots[i].cur+e.slots[i].prev < e.slots[j].cur+e.slots[j].prev {
				j = i
			}
		}
		e.slots = append(e.slots[:j], e.slots[j+1:]...)
	}
	e.slots = append(e.slots, slot{origin: origin, win: w, cur: 1})
}

// mergeSlot merges a remote copy of an origin's counter.
func (e *entry) mergeSlot(r slot) {
	for i := range e.slots {
		s := &e.slots[i]
		if s.origin == r.origin {
			W := max(s.win, r.win)
			sc, sp := s.at(W)
			rc, rp := r.at(W)
			s.win, s.cur, s.prev = W, max(sc, rc), max(sp, rp)
			return
		}
	}
	if len(e.slots) < maxSlots {
		e.slots = append(e.slots, r)
	}
}

// expired: nothing left to count, block or remember. A reset is kept for
// two windows, until no counter from before it can matter.
func (e *entry) expired(c clock, windowMs int64) bool {
	if e.until > c.ms || e.resetAt > c.ms-2*windowMs {
		return false
	}
	for _, s := range e.slots {
		if s.win >= c.win-1 {
			return false
		}
	}
	return true
}

func (l *Limiter) keys(ip netip.Addr, user string, cfg *Config) (kIP, kUserIP, kUser key) {
	kIP = key{kind: kindIP, net: maskNet(ip, cfg)}
	kUser = key{kind: kindUser, user: userKey(user)}
	kUserIP = key{kind: kindUserIP, net: kIP.net, user: kUser.user}
	return
}

// userKey is the hash a user's keys hold: a truncated SHA-256 of the
// name's canonical key (routing.NormalizeUser), the one the routing table
// looks the user up by. Every way of writing one account ("Bücher",
// "BÜCHER", its NFD form, an IDNA or Unicode domain) is one user here as
// it is for routing: a guesser cannot spread attempts on one account over
// spellings of its name to stay under the per-user limits.
func userKey(user string) (u [16]byte) {
	h := sha256.Sum256([]byte(routing.NormalizeUser(user)))
	copy(u[:], h[:16])
	return u
}

func maskNet(ip netip.Addr, cfg *Config) [16]byte {
	ip = ip.Unmap().WithZone("")
	bits := cfg.IPv6Prefix
	if ip.Is4() {
		bits = cfg.IPv4Prefix
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return ip.As16()
	}
	return p.Addr().As16()
}

// validNet reports whether b is a network key under cfg (masked, of the
// right family form).
func validNet(b [16]byte, cfg *Config) bool {
	a := netip.AddrFrom16(b)
	if a.Is4In6() {
		return maskNet(a, cfg) == b
	}
	p, err := a.Prefix(cfg.IPv6Prefix)
	return err == nil && p.Addr() == a
}

func (l *Limiter) shard(k *key) *shard {
	var h maphash.Hash
	h.SetSeed(l.seed)
	h.WriteByte(byte(k.kind))
	h.Write(k.net[:])
	h.Write(k.user[:])
	return &l.shards[h.Sum64()%nShards]
}

// exempt reports whether the throttle ignores this attempt.
func (c *Config) exempt(ip netip.Addr) bool {
	return !c.Enabled || !ip.IsValid() || c.trusted(ip.Unmap())
}

// Blocked reports whether a login attempt by user from ip must be refused
// without trying it, and why (one of the Scope constants); "" allows it.
// It does not count the attempt as in flight: logins use Begin.
func (l *Limiter) Blocked(ip netip.Addr, user string) string {
	cfg := l.cfg.Load()
	if cfg.exempt(ip) {
		return ""
	}
	c := l.clock(cfg)
	kIP, kUserIP, kUser := l.keys(ip, user, cfg)
	scope := l.blockedScope(cfg, c, &kIP, &kUserIP, &kUser)
	if scope != "" {
		l.stats.blocked[scopeIndex(scope)].Add(1)
	}
	return scope
}

// blockedScope is Blocked without the statistics.
func (l *Limiter) blockedScope(cfg *Config, c clock, kIP, kUserIP, kUser *key) string {
	if cfg.IPLimit > 0 {
		if until, _ := l.peek(kIP, c); until > c.ms {
			return ScopeIP
		}
	}
	if cfg.UserIPLimit > 0 || cfg.UserLimit > 0 {
		until, n := l.peek(kUserIP, c)
		switch {
		case cfg.UserIPLimit > 0 && until > c.ms:
			return ScopeUserIP
		case cfg.UserLimit > 0 && reached(n, cfg.UnderAttackLimit):
			if attack, _ := l.peek(kUser, c); attack > c.ms {
				return ScopeUser
			}
		}
	}
	return ""
}

// Pending is a login attempt counted as in flight by Begin. Exactly one of
// its methods ends it; later calls do nothing (so a deferred Release after
// Failed or Succeeded is harmless).
//
// (An unnamed interface type, so that node/session can name the same type
// without either package importing the other.)
type Pending = interface {
	// Failed records the attempt as a failed login (bad credentials) and
	// returns how long its reply should be delayed, like Limiter.Failed.
	Failed() time.Duration
	// Succeeded records a successful login, like Limiter.Succeeded.
	Succeeded()
	// Release ends the attempt without a verdict on the password (backend
	// unavailable, timeout, cancellation, a temporary refusal).
	Release()
}

// flight counts the attempts in flight for one key, and queues the
// attempts waiting for one of them to end (each waits on its own channel).
// An attempt that ends wakes one waiter, which takes the freed place or,
// held back by another key or blocked, passes the wake-up on to the next:
// with thousands of clients behind one address in a reconnect storm,
// waking every waiter at each end would make every end cost thousands of
// wake-ups (all of them runnable at once, all taking l.flightMu).
type flight struct {
	n       int
	waiters []chan struct{} // FIFO
}

// wakeOne wakes the first waiter, if any.
func (f *flight) wakeOne() {
	if f == nil || len(f.waiters) == 0 {
		return
	}
	close(f.waiters[0])
	f.waiters[0] = nil
	f.waiters = f.waiters[1:]
	if len(f.waiters) == 0 {
		f.waiters = nil
	}
}

// remove takes c out of the queue; false if it is not there (woken).
func (f *flight) remove(c chan struct{}) bool {
	if f == nil {
		return false
	}
	for i, x := range f.waiters {
		if x == c {
			f.waiters = append(f.waiters[:i], f.waiters[i+1:]...)
			return true
		}
	}
	return false
}

// reservation is a Pending attempt that holds in-flight counts.
type reservation struct {
	l    *Limiter
	ip   netip.Addr
	user string
	keys [2]key // in-flight keys held (kind 0: none)
	done bool   // under l.flightMu
}

// exemptAttempt is the Pending of an attempt the throttle ignores.
type exemptAttempt struct{}

func (exemptAttempt) Failed() time.Duration { return 0 }
func (exemptAttempt) Succeeded()            {}
func (exemptAttempt) Release()              {}

// Begin is asked before a login attempt by user from ip reaches the backend
// or the auth server. If the attempt is blocked it returns the scope (one
// of the Scope constants) and a nil Pending. Otherwise it counts the
// attempt as in flight and returns its Pending, which the caller must end
// (Failed, Succeeded or Release) when the outcome is known. While the
// attempts already in flight could, by failing, reach a limit, Begin waits
// for one of them to end; if ctx is done first, the attempt is refused with
// that limit's scope.
func (l *Limiter) Begin(ctx context.Context, ip netip.Addr, user string) (Pending, string) {
	held := false
	var woken *key // the key whose queue woke this attempt (nil: not woken)
	for {
		cfg := l.cfg.Load()
		if cfg.exempt(ip) {
			return exemptAttempt{}, ""
		}
		c := l.clock(cfg)
		kIP, kUserIP, kUser := l.keys(ip, user, cfg)
		l.flightMu.Lock()
		scope := l.blockedScope(cfg, c, &kIP, &kUserIP, &kUser)
		if scope != "" {
			if woken != nil {
				l.flights[*woken].wakeOne() // not taking the place: pass it on
			}
			l.flightMu.Unlock()
			l.stats.blocked[scopeIndex(scope)].Add(1)
			return nil, scope
		}
		wait, busy := l.busy(cfg, c, &kIP, &kUserIP, &kUser)
		if wait == nil {
			r := &reservation{l: l, ip: ip, user: user}
			if cfg.IPLimit > 0 {
				r.keys[0] = kIP
			}
			if cfg.UserIPLimit > 0 || cfg.UserLimit > 0 {
				r.keys[1] = kUserIP
			}
			for i := range r.keys {
				if k := &r.keys[i]; k.kind != 0 {
					f := l.flights[*k]
					if f == nil {
						f = &flight{}
						l.flights[*k] = f
					}
					f.n++
				}
			}
			l.stats.inFlight.Add(1)
			l.flightMu.Unlock()
			return r, ""
		}
		if woken != nil && *woken != *wait {
			// Woken by a place freed on one key, held back by the other:
			// the place goes to the next waiter.
			l.flights[*woken].wakeOne()
		}
		f := l.flights[*wait]
		ch := make(chan struct{})
		if woken != nil {
			// It waited its turn already: first in line again.
			f.waiters = append([]chan struct{}{ch}, f.waiters...)
		} else {
			f.waiters = append(f.waiters, ch)
		}
		waitKey := *wait
		l.flightMu.Unlock()
		if !held {
			held = true
			l.stats.held.Add(1)
		}
		var cancelled bool
		netx.Block(ctx, func() {
			select {
			case <-ch:
			case <-ctx.Done():
				cancelled = true
			}
		})
		if cancelled {
			l.flightMu.Lock()
			if f := l.flights[waitKey]; !f.remove(ch) {
				f.wakeOne() // woken meanwhile: pass it on
			}
			l.flightMu.Unlock()
			l.stats.blocked[scopeIndex(busy)].Add(1)
			return nil, busy
		}
		woken = &waitKey
	}
}

// busy reports whether the attempts in flight for kIP or kUserIP would,
// if they all failed, reach a limit; it then returns that key (an attempt
// waits in its queue) and the scope of the limit. l.flightMu is held.
func (l *Limiter) busy(cfg *Config, c clock, kIP, kUserIP, kUser *key) (*key, string) {
	if f := l.flights[*kIP]; cfg.IPLimit > 0 && f != nil && f.n > 0 {
		if reached(l.countOf(kIP, c)+float64(f.n), cfg.IPLimit) {
			return kIP, ScopeIP
		}
	}
	f := l.flights[*kUserIP]
	if f == nil || f.n == 0 {
		return nil, ""
	}
	limit, scope := cfg.UserIPLimit, ScopeUserIP
	if cfg.UserLimit > 0 && (limit <= 0 || cfg.UnderAttackLimit < limit) {
		if attack, _ := l.peek(kUser, c); attack > c.ms {
			limit, scope = cfg.UnderAttackLimit, ScopeUser
		}
	}
	if limit > 0 && reached(l.countOf(kUserIP, c)+float64(f.n), limit) {
		return kUserIP, scope
	}
	return nil, ""
}

// end releases r's in-flight counts and wakes the attempts waiting for
// them; it reports false if r had already ended. l.flightMu is held.
func (r *reservation) end() bool {
	if r.done {
		return false
	}
	r.done = true
	l := r.l
	for i := range r.keys {
		k := &r.keys[i]
		if k.kind == 0 {
			continue
		}
		f := l.flights[*k]
		if f == nil {
			continue
		}
		if f.n--; f.n <= 0 {
			// Nothing in flight for the key any more: every waiter may
			// go (those held back by the other key queue there).
			for len(f.waiters) > 0 {
				f.wakeOne()
			}
			delete(l.flights, *k)
			continue
		}
		f.wakeOne()
	}
	l.stats.inFlight.Add(-1)
	return true
}

func (r *reservation) Failed() time.Duration {
	r.l.flightMu.Lock()
	if !r.end() {
		r.l.flightMu.Unlock()
		return 0
	}
	// Counted before the in-flight count drops, under the same lock: no
	// Begin sees the attempt as neither.
	d, blocks := r.l.recordFailure(r.ip, r.user)
	r.l.flightMu.Unlock()
	r.l.notifyAll(blocks)
	return d
}

func (r *reservation) Succeeded() {
	r.l.flightMu.Lock()
	ok := r.end()
	r.l.flightMu.Unlock()
	if ok {
		r.l.Succeeded(r.ip, r.user)
	}
}

func (r *reservation) Release() {
	r.l.flightMu.Lock()
	r.end()
	r.l.flightMu.Unlock()
}

// InFlight returns the number of attempts Begin counted as in flight that
// have not ended yet.
func (l *Limiter) InFlight() int64 { return l.stats.inFlight.Load() }

func scopeIndex(s string) int {
	switch s {
	case ScopeIP:
		return 0
	case ScopeUserIP:
		return 1
	}
	return 2
}

// peek returns an entry's block time and count (0, 0 if absent).
func (l *Limiter) peek(k *key, c clock) (until int64, n float64) {
	sh := l.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e := sh.m[*k]; e != nil {
		return e.until, e.count(c)
	}
	return 0, 0
}

// Failed records a failed login (bad credentials) of user from ip and
// returns how long its reply should be delayed.
func (l *Limiter) Failed(ip netip.Addr, user string) time.Duration {
	d, blocks := l.recordFailure(ip, user)
	l.notifyAll(blocks)
	return d
}

// blockStart is a block that a failure started, to report (OnBlock)
// outside any lock.
type blockStart struct {
	scope string
	ip    netip.Addr
	user  string
	until time.Time
}

// recordFailure is Failed without the notifications, which it returns.
func (l *Limiter) recordFailure(ip netip.Addr, user string) (time.Duration, []blockStart) {
	cfg := l.cfg.Load()
	if cfg.exempt(ip) {
		return 0, nil
	}
	c := l.clock(cfg)
	kIP, kUserIP, kUser := l.keys(ip, user, cfg)
	var blocks []blockStart
	started := func(scope string) {
		blocks = append(blocks, blockStart{scope, ip, user, time.UnixMilli(c.ms).Add(cfg.BlockFor)})
	}
	// The user_ip count also sets the delay; the others are kept only
	// when their rule is on.
	if cfg.IPLimit > 0 && l.fail(&kIP, cfg.IPLimit, cfg, c) {
		started(ScopeIP)
	}
	blocked := l.fail(&kUserIP, cfg.UserIPLimit, cfg, c)
	n := l.countOf(&kUserIP, c)
	if blocked {
		started(ScopeUserIP)
	}
	if cfg.UserLimit > 0 && l.fail(&kUser, cfg.UserLimit, cfg, c) {
		started(ScopeUser)
	}
	if cfg.Delay <= 0 {
		return 0, blocks
	}
	l.stats.delayed.Add(1)
	return backoff(cfg.Delay, cfg.MaxDelay, n), blocks
}

// backoff is base doubled for each failure after the first, capped.
func backoff(base, capd time.Duration, failures float64) time.Duration {
	k := math.Ceil(failures) - 1
	if k < 0 {
		k = 0
	}
	if k > 30 {
		k = 30
	}
	d := base << int(k)
	if capd > 0 && (d > capd || d < base) {
		d = capd
	}
	return d
}

// notifyAll reports blocks that started (OnBlock), outside any lock.
func (l *Limiter) notifyAll(blocks []blockStart) {
	if len(blocks) == 0 {
		return
	}
	if f := l.onBlock.Load(); f != nil {
		for _, b := range blocks {
			(*f)(b.scope, b.ip, b.user, b.until)
		}
	}
}

// OnBlock sets a function called when a failure on this node starts a
// block (scope ip, user_ip, or user: under attack), e.g. to log it.
func (l *Limiter) OnBlock(f func(scope string, ip netip.Addr, user string, until time.Time)) {
	l.onBlock.Store(&f)
}

// countOf returns k's count (0 if absent).
func (l *Limiter) countOf(k *key, c clock) float64 {
	_, n := l.peek(k, c)
	return n
}

// fail counts one failure for k and starts a block when it reaches limit;
// it reports whether a block started.
func (l *Limiter) fail(k *key, limit int, cfg *Config, c clock) bool {
	sh := l.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.m[*k]
	if e == nil {
		e = l.insert(sh, k, cfg, c)
	}
	e.add(l.origin, c.win)
	e.touched = c.ms
	n := e.count(c)
	urgent := false
	if reached(n, limit) {
		if e.until <= c.ms {
			l.stats.blocks[k.kind-1].Add(1)
			urgent = true
		}
		e.until = max(e.until, c.ms+cfg.BlockFor.Milliseconds())
	}
	l.markDirty(sh, k, e, urgent)
	return urgent
}

// Succeeded records a successful login: the user's record for ip is
// cleared (everywhere, through gossip).
func (l *Limiter) Succeeded(ip netip.Addr, user string) {
	cfg := l.cfg.Load()
	if cfg.exempt(ip) {
		return
	}
	c := l.clock(cfg)
	_, k, _ := l.keys(ip, user, cfg)
	sh := l.shard(&k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.m[k]
	if e == nil || (len(e.slots) == 0 && e.until == 0) {
		return
	}
	l.reset(sh, &k, e, c)
}

// reset forgets e's failures and lifts its block, and queues the reset for
// the cluster (a newer reset wins over every counter from before it).
// sh.mu is held.
func (l *Limiter) reset(sh *shard, k *key, e *entry, c clock) {
	e.resetAt = max(c.ms, e.resetAt+1)
	e.slots = e.slots[:0]
	e.until = 0
	e.touched = c.ms
	l.markDirty(sh, k, e, true)
}

// insert adds an empty entry for k, evicting one when the shard is full.
// sh.mu is held.
func (l *Limiter) insert(sh *shard, k *key, cfg *Config, c clock) *entry {
	if len(sh.m) >= cfg.MaxEntries/nShards {
		l.evict(sh, c)
	}
	e := &entry{touched: c.ms}
	sh.m[*k] = e
	l.stats.entries[k.kind-1].Add(1)
	return e
}

// evict removes the least valuable of a few entries (Go's map iteration
// starts at a random place): an unblocked one with the smallest count,
// then the least recently touched.
func (l *Limiter) evict(sh *shard, c clock) {
	const sample = 8
	var victim key
	var vBlocked bool
	var vCount float64
	var vTouched int64
	i := 0
	for k, e := range sh.m {
		blocked := e.until > c.ms
		n := e.count(c)
		better := i == 0 ||
			(!blocked && vBlocked) ||
			(blocked == vBlocked && (n < vCount || n == vCount && e.touched < vTouched))
		if better {
			victim, vBlocked, vCount, vTouched = k, blocked, n, e.touched
		}
		if i++; i >= sample {
			break
		}
	}
	if i > 0 {
		l.remove(sh, &victim)
	}
}

func (l *Limiter) remove(sh *shard, k *key) {
	if _, ok := sh.m[*k]; ok {
		delete(sh.m, *k)
		l.stats.entries[k.kind-1].Add(-1)
	}
}

// markDirty queues e for broadcast (only with a cluster). Urgent changes
// (a block started, a reset) go first.
func (l *Limiter) markDirty(sh *shard, k *key, e *entry, urgent bool) {
	if l.gossip.Load() == nil {
		return
	}
	if urgent {
		e.dirty = true
		sh.dirty = append([]key{*k}, sh.dirty...)
	} else if !e.dirty {
		e.dirty = true
		sh.dirty = append(sh.dirty, *k)
	}
	if limit := 4*len(sh.m) + 16; len(sh.dirty) > limit {
		// Far behind (a flood of new keys): leave the rest to push/pull.
		for _, dk := range sh.dirty[limit:] {
			if de := sh.m[dk]; de != nil {
				de.dirty = false
			}
		}
		sh.dirty = sh.dirty[:limit]
	}
}

// sweep removes expired entries.
func (l *Limiter) sweep() {
	cfg := l.cfg.Load()
	c := l.clock(cfg)
	wms := cfg.Window.Milliseconds()
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for k, e := range sh.m {
			if e.expired(c, wms) {
				delete(sh.m, k)
				l.stats.entries[k.kind-1].Add(-1)
			}
		}
		// Trim the shard if the cap was lowered by a reload.
		for len(sh.m) > cfg.MaxEntries/nShards {
			l.evict(sh, c)
		}
		sh.mu.Unlock()
	}
}

// Start runs the background loop: expiry sweeps and, with a cluster,
// broadcasts of changed entries.
func (l *Limiter) Start() {
	l.startOnce.Do(func() { go l.loop() })
}

// Close stops the background loop (it is safe to call without Start).
func (l *Limiter) Close() {
	l.stopOnce.Do(func() { close(l.stop) })
	started := true
	l.startOnce.Do(func() { started = false })
	if started {
		<-l.done
	}
}

const (
	flushEvery = 100 * time.Millisecond
	sweepEvery = 10 * time.Second
)

func (l *Limiter) loop() {
	defer close(l.done)
	flush := time.NewTicker(flushEvery)
	defer flush.Stop()
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-flush.C:
			l.flush()
		case <-sweep.C:
			l.sweep()
		}
	}
}

// Entries returns the number of tracked entries by scope (ip, user_ip, user).
func (l *Limiter) Entries() map[string]int64 {
	return map[string]int64{
		ScopeIP:     l.stats.entries[0].Load(),
		ScopeUserIP: l.stats.entries[1].Load(),
		ScopeUser:   l.stats.entries[2].Load(),
	}
}

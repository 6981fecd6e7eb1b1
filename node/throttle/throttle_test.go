package throttle

import (
	"bytes"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock is a settable clock.
type fakeClock struct{ ns atomic.Int64 }

func newClock() *fakeClock {
	c := &fakeClock{}
	// Aligned to a 10-minute window start, so tests know where they are.
	c.ns.Store(time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func testConfig() Config {
	c := DefaultConfig()
	c.Trusted = nil
	return c
}

func newTest(t *testing.T, cfg Config) (*Limiter, *fakeClock) {
	clk := newClock()
	return New(cfg, clk.now), clk
}

var (
	attacker = netip.MustParseAddr("198.51.100.7")
	home     = netip.MustParseAddr("203.0.113.9")
)

func TestProgressiveDelay(t *testing.T) {
	cfg := testConfig()
	cfg.UserIPLimit = 100
	l, _ := newTest(t, cfg)
	want := []time.Duration{1, 2, 4, 8, 15, 15, 15}
	for i, w := range want {
		if got := l.Failed(attacker, "alice"); got != w*time.Second {
			t.Errorf("failure %d: delay %v, want %v", i+1, got, w*time.Second)
		}
	}
	// Another user from the same address starts at the base delay.
	if got := l.Failed(attacker, "bob"); got != time.Second {
		t.Errorf("other user: delay %v", got)
	}
}

func TestBlockUserIP(t *testing.T) {
	cfg := testConfig() // user_ip limit 10
	cfg.BlockFor = 5 * time.Minute
	l, clk := newTest(t, cfg)
	for i := 0; i < 9; i++ {
		l.Failed(attacker, "alice")
		if s := l.Blocked(attacker, "alice"); s != "" {
			t.Fatalf("blocked (%s) after %d failures", s, i+1)
		}
	}
	l.Failed(attacker, "alice")
	if s := l.Blocked(attacker, "alice"); s != ScopeUserIP {
		t.Fatalf("after 10 failures: %q, want user_ip", s)
	}
	// The user from another network, and another user from this one, pass.
	if s := l.Blocked(home, "alice"); s != "" {
		t.Errorf("alice from home blocked: %s", s)
	}
	if s := l.Blocked(attacker, "bob"); s != "" {
		t.Errorf("bob from the attacker's address blocked: %s", s)
	}
	// Case does not evade the count.
	if s := l.Blocked(attacker, "ALICE"); s != ScopeUserIP {
		t.Errorf("ALICE: %q", s)
	}
	// The block lasts block_for, then one more failure re-blocks while
	// the window still holds the earlier ones.
	clk.advance(4 * time.Minute)
	if s := l.Blocked(attacker, "alice"); s == "" {
		t.Error("unblocked before block_for")
	}
	clk.advance(2 * time.Minute)
	if s := l.Blocked(attacker, "alice"); s != "" {
		t.Errorf("still blocked after block_for: %s", s)
	}
	l.Failed(attacker, "alice")
	if s := l.Blocked(attacker, "alice"); s != ScopeUserIP {
		t.Errorf("not re-blocked: %q", s)
	}
	if n := l.stats.blocks[1].Load(); n != 2 {
		t.Errorf("blocks started: %d", n)
	}
	if n := l.stats.blocked[1].Load(); n != 4 {
		t.Errorf("blocked attempts counted: %d", n)
	}
}

// TestSpellingsOfOneUser: failures under every spelling of one account
// (case, Unicode normalization form, Unicode or IDNA domain) count as one
// user, as routing sees them (routing.NormalizeUser); another account
// does not share the count.
func TestSpellingsOfOneUser(t *testing.T) {
	cfg := testConfig() // user_ip limit 10
	l, _ := newTest(t, cfg)
	spellings := []string{
		"bücher@exämple.org",
		"BÜCHER@EXÄMPLE.ORG",
		"bu\u0308cher@exa\u0308mple.org", // NFD
		"bücher@xn--exmple-cua.org",
		"Bücher@XN--EXMPLE-CUA.ORG",
	}
	for i := 0; i < 10; i++ {
		l.Failed(attacker, spellings[i%len(spellings)])
	}
	for _, u := range spellings {
		if s := l.Blocked(attacker, u); s != ScopeUserIP {
			t.Errorf("%q after 10 failures over its spellings: %q, want user_ip", u, s)
		}
	}
	if s := l.Blocked(attacker, "bucher@example.org"); s != "" {
		t.Errorf("another account (no umlauts) blocked: %s", s)
	}
}

func TestBlockIP(t *testing.T) {
	cfg := testConfig()
	cfg.IPLimit = 5
	l, _ := newTest(t, cfg)
	for i := 0; i < 5; i++ {
		l.Failed(attacker, fmt.Sprintf("user%d", i))
	}
	if s := l.Blocked(attacker, "anyone"); s != ScopeIP {
		t.Errorf("got %q, want ip", s)
	}
	if s := l.Blocked(home, "user1"); s != "" {
		t.Errorf("other address blocked: %s", s)
	}
}

func TestIPv6Network(t *testing.T) {
	cfg := testConfig()
	cfg.IPLimit = 3
	l, _ := newTest(t, cfg)
	for i := 1; i <= 3; i++ {
		l.Failed(netip.MustParseAddr(fmt.Sprintf("2001:db8:1:2::%d", i)), "u")
	}
	if s := l.Blocked(netip.MustParseAddr("2001:db8:1:2:ffff::1"), "x"); s != ScopeIP {
		t.Errorf("same /64: %q", s)
	}
	if s := l.Blocked(netip.MustParseAddr("2001:db8:1:3::1"), "x"); s != "" {
		t.Errorf("other /64: %q", s)
	}
	// IPv4-mapped addresses count as IPv4.
	l.Failed(netip.MustParseAddr("::ffff:192.0.2.1"), "v")
	l.Failed(netip.MustParseAddr("192.0.2.1"), "v")
	l.Failed(netip.MustParseAddr("192.0.2.1"), "w")
	if s := l.Blocked(netip.MustParseAddr("192.0.2.1"), "x"); s != ScopeIP {
		t.Errorf("mapped: %q", s)
	}
}

func TestSlidingWindowExpiry(t *testing.T) {
	cfg := testConfig()
	cfg.UserIPLimit = 3
	l, clk := newTest(t, cfg)
	l.Failed(attacker, "alice")
	l.Failed(attacker, "alice")
	// 11 minutes on: the two failures are in the previous window, weighted
	// by 0.9: 1.8 + 1 < 3.
	clk.advance(11 * time.Minute)
	l.Failed(attacker, "alice")
	if s := l.Blocked(attacker, "alice"); s != "" {
		t.Errorf("old failures counted in full: %s", s)
	}
	// Two windows later everything is gone, and the sweep frees it.
	clk.advance(25 * time.Minute)
	if d := l.Failed(attacker, "alice"); d != time.Second {
		t.Errorf("delay after expiry %v, want the base", d)
	}
	clk.advance(25 * time.Minute)
	l.sweep()
	if n := total(l); n != 0 {
		t.Errorf("%d entries after expiry", n)
	}
}

func total(l *Limiter) int64 {
	var n int64
	for _, v := range l.Entries() {
		n += v
	}
	return n
}

func TestTrustedAndDisabled(t *testing.T) {
	cfg := testConfig()
	cfg.UserIPLimit = 1
	cfg.Trusted = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	l, _ := newTest(t, cfg)
	if d := l.Failed(attacker, "alice"); d != 0 {
		t.Errorf("trusted delayed %v", d)
	}
	if s := l.Blocked(attacker, "alice"); s != "" || total(l) != 0 {
		t.Errorf("trusted counted: %q, %d entries", s, total(l))
	}
	cfg.Enabled = false
	l.SetConfig(cfg)
	if d := l.Failed(home, "alice"); d != 0 || l.Blocked(home, "alice") != "" || total(l) != 0 {
		t.Error("disabled throttle counted")
	}
	if d := l.Failed(netip.Addr{}, "alice"); d != 0 {
		t.Error("invalid address counted")
	}
}

func TestSuccessResetsUserIP(t *testing.T) {
	cfg := testConfig()
	cfg.UserIPLimit = 3
	cfg.IPLimit = 5
	l, _ := newTest(t, cfg)
	l.Failed(home, "alice")
	l.Failed(home, "alice")
	l.Succeeded(home, "alice")
	if d := l.Failed(home, "alice"); d != time.Second {
		t.Errorf("delay after a success %v, want the base", d)
	}
	l.Failed(home, "alice")
	if s := l.Blocked(home, "alice"); s != "" {
		t.Errorf("blocked after 2 failures since the success: %s", s)
	}
	// The network's count is not reset by a success.
	l.Failed(home, "bob")
	if s := l.Blocked(home, "carol"); s != ScopeIP {
		t.Errorf("ip count reset by a success: %q", s)
	}
}

// A distributed attack on one user: no network reaches user_ip_limit,
// but the user count puts the user under attack; networks that failed
// for it are then blocked at the lower limit, and the user's own network
// still works.
func TestUnderAttack(t *testing.T) {
	cfg := testConfig()
	cfg.UserLimit = 20
	cfg.UnderAttackLimit = 2
	l, _ := newTest(t, cfg)
	bot := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(i % 250)}) }
	for i := 0; i < 10; i++ {
		l.Failed(bot(i), "alice")
		l.Failed(bot(i), "alice")
	}
	if s := l.Blocked(bot(0), "alice"); s != ScopeUser {
		t.Errorf("bot with 2 failures: %q, want user", s)
	}
	if s := l.Blocked(bot(100), "alice"); s != "" {
		t.Errorf("fresh address blocked: %q", s)
	}
	if s := l.Blocked(home, "alice"); s != "" {
		t.Errorf("alice's own network blocked: %q", s)
	}
	if s := l.Blocked(bot(0), "bob"); s != "" {
		t.Errorf("bob blocked from a bot: %q", s)
	}
}

func TestBoundedMemory(t *testing.T) {
	cfg := testConfig()
	cfg.MaxEntries = 320 // 10 per shard
	cfg.UserIPLimit = 2
	l, _ := newTest(t, cfg)
	// A block made early survives a flood of single failures.
	l.Failed(home, "alice")
	l.Failed(home, "alice")
	for i := 0; i < 20000; i++ {
		l.Failed(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), fmt.Sprint("u", i))
	}
	if n := total(l); n > int64(cfg.MaxEntries) {
		t.Errorf("%d entries, cap %d", n, cfg.MaxEntries)
	}
	n := 0
	for i := range l.shards {
		n += len(l.shards[i].m)
	}
	if int64(n) != total(l) {
		t.Errorf("entries gauge %d, maps hold %d", total(l), n)
	}
	if s := l.Blocked(home, "alice"); s != ScopeUserIP {
		t.Errorf("block evicted by the flood: %q", s)
	}
}

func TestConcurrent(t *testing.T) {
	l, _ := newTest(t, testConfig())
	l.SetGossip(&Gossip{Broadcast: func([]byte) {}})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				ip := netip.AddrFrom4([4]byte{10, 0, byte(g), byte(i)})
				l.Blocked(ip, "alice")
				l.Failed(ip, "alice")
				if i%7 == 0 {
					l.Succeeded(ip, "alice")
				}
				if i%100 == 0 {
					l.MergeRemote("self", l.LocalState())
					l.flush()
				}
			}
		}()
	}
	wg.Wait()
}

func TestStartClose(t *testing.T) {
	l, _ := newTest(t, testConfig())
	l.Close() // never started
	l2, _ := newTest(t, testConfig())
	l2.Start()
	l2.Start()
	l2.Close()
	l2.Close()
}

// bus connects limiters as a cluster: broadcasts reach every other one.
type bus struct {
	mu  sync.Mutex
	ls  []*Limiter
	log []sent // every broadcast, for replays
}

// sent is a message and the node that sent it.
type sent struct {
	from string
	msg  []byte
}

// name is a test limiter's node name.
func name(l *Limiter) string { return fmt.Sprintf("node-%x", l.origin) }

func (b *bus) join(l *Limiter) {
	b.mu.Lock()
	b.ls = append(b.ls, l)
	b.mu.Unlock()
	l.SetGossip(&Gossip{Broadcast: func(m []byte) {
		b.mu.Lock()
		b.log = append(b.log, sent{name(l), m})
		others := append([]*Limiter(nil), b.ls...)
		b.mu.Unlock()
		for _, o := range others {
			if o != l {
				o.MergeRemote(name(l), m)
			}
		}
	}})
}

func TestGossipSumsNodes(t *testing.T) {
	cfg := testConfig()
	cfg.UserIPLimit = 6
	clk := newClock()
	var b bus
	nodes := []*Limiter{New(cfg, clk.now), New(cfg, clk.now), New(cfg, clk.now)}
	for _, n := range nodes {
		b.join(n)
	}
	// Two failures on each node: six in all.
	for _, n := range nodes {
		n.Failed(attacker, "alice")
		n.Failed(attacker, "alice")
		n.flush()
	}
	// The sixth failure (on node 3) saw the others' four: it blocked.
	for i, n := range nodes {
		if s := n.Blocked(attacker, "alice"); s != ScopeUserIP {
			t.Errorf("node %d: %q, want user_ip", i+1, s)
		}
	}
	// Replaying every broadcast and state, in any order, changes nothing.
	for round := 0; round < 3; round++ {
		for i := len(b.log) - 1; i >= 0; i-- {
			for _, n := range nodes {
				n.MergeRemote(b.log[i].from, b.log[i].msg)
			}
		}
		for _, from := range nodes {
			st := from.LocalState()
			for _, to := range nodes {
				to.MergeRemote(name(from), st)
			}
		}
	}
	after := states(nodes)
	for i := range nodes {
		if got := count(nodes[i], attacker, "alice"); got != 6 {
			t.Errorf("node %d: count %v after replays, want 6", i+1, got)
		}
		if i > 0 && !bytes.Equal(after[i], after[0]) {
			t.Errorf("node %d state differs from node 1 after push/pull", i+1)
		}
	}
}

// states returns a canonical dump of each limiter's entries.
func states(ls []*Limiter) [][]byte {
	var out [][]byte
	for _, l := range ls {
		cfg := l.cfg.Load()
		c := l.clock(cfg)
		var lines []string
		for i := range l.shards {
			sh := &l.shards[i]
			sh.mu.Lock()
			for k, e := range sh.m {
				lines = append(lines, fmt.Sprintf("%v %d %d %.3f", k, e.resetAt, e.until, e.count(c)))
			}
			sh.mu.Unlock()
		}
		sortStrings(lines)
		var b bytes.Buffer
		for _, s := range lines {
			b.WriteString(s + "\n")
		}
		out = append(out, b.Bytes())
	}
	return out
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func count(l *Limiter, ip netip.Addr, user string) float64 {
	cfg := l.cfg.Load()
	_, k, _ := l.keys(ip, user, cfg)
	_, n := l.peek(&k, l.clock(cfg))
	return n
}

// A restarted node (a new Limiter: new origin, empty) learns the blocks
// in force and the others' counters from a push/pull; the others never
// lose its earlier run's counts. (A node sends only its own counters, so
// the restarted node itself does not relearn its earlier run's.)
func TestGossipRestart(t *testing.T) {
	cfg := testConfig()
	cfg.UserIPLimit = 4
	clk := newClock()
	a, b := New(cfg, clk.now), New(cfg, clk.now)
	var bs bus
	bs.join(a)
	bs.join(b)
	for i := 0; i < 3; i++ {
		a.Failed(attacker, "alice")
	}
	b.Failed(attacker, "bob")
	for i := 0; i < 4; i++ {
		b.Failed(home, "carol") // blocked
	}
	a.flush()
	b.flush()
	// a restarts.
	a2 := New(cfg, clk.now)
	bs.join(a2)
	a2.MergeRemote(name(b), b.LocalState())
	if got := count(a2, attacker, "bob"); got != 1 {
		t.Fatalf("restarted node learned %v of b's failures, want 1", got)
	}
	if s := a2.Blocked(home, "carol"); s != ScopeUserIP {
		t.Fatalf("restarted node did not learn the block: %q", s)
	}
	a2.Failed(attacker, "alice")
	a2.flush()
	b.MergeRemote(name(a2), a2.LocalState())
	if got := count(b, attacker, "alice"); got != 4 {
		t.Errorf("peer counts %v, want 4 (3 from the old run, 1 from the new)", got)
	}
	// The next failure anywhere that sees the whole count blocks.
	b.Failed(attacker, "alice")
	b.flush()
	if s := a2.Blocked(attacker, "alice"); s != ScopeUserIP {
		t.Errorf("restarted node after the peer's block: %q", s)
	}
}

// A reset (successful login) on one node wins over older counts anywhere,
// including a stale state arriving later.
func TestGossipReset(t *testing.T) {
	cfg := testConfig()
	cfg.UserIPLimit = 3
	clk := newClock()
	a, b := New(cfg, clk.now), New(cfg, clk.now)
	var bs bus
	bs.join(a)
	bs.join(b)
	for i := 0; i < 3; i++ {
		b.Failed(home, "alice")
	}
	b.flush()
	stale := b.LocalState()
	if s := a.Blocked(home, "alice"); s != ScopeUserIP {
		t.Fatalf("a: %q", s)
	}
	clk.advance(time.Second)
	a.Succeeded(home, "alice")
	a.flush()
	if s := b.Blocked(home, "alice"); s != "" {
		t.Errorf("b still blocked after the reset: %s", s)
	}
	a.MergeRemote(name(b), stale)
	b.MergeRemote(name(b), stale)
	for i, l := range []*Limiter{a, b} {
		if got := count(l, home, "alice"); got != 0 {
			t.Errorf("node %d: count %v after a stale state", i, got)
		}
	}
}

// A node speaks only for its own counters: counters under another node's
// origin are dropped, whoever relays them; blocks and resets are shared.
func TestGossipForeignCounters(t *testing.T) {
	cfg := testConfig()
	cfg.UserIPLimit = 3
	clk := newClock()
	a, b, c := New(cfg, clk.now), New(cfg, clk.now), New(cfg, clk.now)
	a.Failed(attacker, "alice")
	a.flush()
	c.MergeRemote(name(a), a.LocalState()) // binds a's origin to a
	if got := count(c, attacker, "alice"); got != 1 {
		t.Fatalf("c counts %v", got)
	}
	// b forges a's counter (a's origin, a high count) in its own message.
	_, k, _ := c.keys(attacker, "alice", c.cfg.Load())
	cc := c.clock(c.cfg.Load())
	ent := &entry{slots: []slot{{origin: a.origin, win: cc.win, cur: 50}}}
	forged := append(appendHeader(nil, cfg.Window.Milliseconds(), 1), appendEntry(nil, &k, ent, false, 0)...)
	c.MergeRemote(name(b), forged)
	if got := count(c, attacker, "alice"); got != 1 {
		t.Errorf("forged counter merged: c counts %v", got)
	}
	if c.stats.gossipForeign.Load() != 1 {
		t.Errorf("foreign counters: %d", c.stats.gossipForeign.Load())
	}
	// Nor can anyone speak for the receiver's own origin.
	ent.slots[0].origin = c.origin
	own := append(appendHeader(nil, cfg.Window.Milliseconds(), 1), appendEntry(nil, &k, ent, false, 0)...)
	c.MergeRemote(name(a), own)
	if got := count(c, attacker, "alice"); got != 1 {
		t.Errorf("counter under the receiver's own origin merged: c counts %v", got)
	}
}

func TestGossipValidation(t *testing.T) {
	cfg := testConfig()
	cfg.UserIPLimit = 3
	clk := newClock()
	a := New(cfg, clk.now)
	for i := 0; i < 3; i++ {
		a.Failed(attacker, "alice")
	}
	good := a.LocalState()

	// Another window length: dropped.
	other := cfg
	other.Window = time.Hour
	b := New(other, clk.now)
	b.MergeRemote("a", good)
	if total(b) != 0 || b.stats.gossipInvalid.Load() != 1 {
		t.Errorf("message with another window merged (%d entries)", total(b))
	}
	// Every truncation is rejected whole.
	c := New(cfg, clk.now)
	for i := 0; i < len(good); i++ {
		c.MergeRemote("a", good[:i])
	}
	if total(c) != 0 {
		t.Errorf("a truncated message was merged: %d entries", total(c))
	}
	// A block far in the future is clamped to block_for.
	e, err := decode(good, cfg.Window.Milliseconds())
	if err != nil {
		t.Fatal(err)
	}
	var msg []byte
	for i := range e {
		ent := &entry{resetAt: e[i].resetAt, until: e[i].until + int64(100*24*time.Hour/time.Millisecond), slots: e[i].slots}
		msg = appendEntry(msg, &e[i].k, ent, false, 0)
	}
	msg = append(appendHeader(nil, cfg.Window.Milliseconds(), len(e)), msg...)
	c.MergeRemote("a", msg)
	cc := c.clock(c.cfg.Load())
	for i := range c.shards {
		for _, en := range c.shards[i].m {
			if en.until > cc.ms+cfg.BlockFor.Milliseconds() {
				t.Errorf("block until %d not clamped (now %d)", en.until, cc.ms)
			}
		}
	}
	// A network key masked with another prefix is ignored.
	d := New(cfg, clk.now)
	k := key{kind: kindIP, net: netip.MustParseAddr("2001:db8::1").As16()}
	ent := &entry{until: cc.ms + 1000, slots: []slot{{origin: 1, win: cc.win, cur: 5}}}
	d.MergeRemote("a", append(appendHeader(nil, cfg.Window.Milliseconds(), 1), appendEntry(nil, &k, ent, false, 0)...))
	if total(d) != 0 {
		t.Error("unmasked IPv6 key merged")
	}
}

func TestDecodeRoundTrip(t *testing.T) {
	cfg := testConfig()
	l, _ := newTest(t, cfg)
	for i := 0; i < 50; i++ {
		l.Failed(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), fmt.Sprint("u", i%7))
	}
	st := l.LocalState()
	e, err := decode(st, cfg.Window.Milliseconds())
	if err != nil {
		t.Fatal(err)
	}
	if len(e) != int(total(l)) {
		t.Errorf("state has %d entries, limiter %d", len(e), total(l))
	}
}

func FuzzDecode(f *testing.F) {
	cfg := testConfig()
	clk := newClock()
	l := New(cfg, clk.now)
	l.Failed(attacker, "alice")
	l.Failed(netip.MustParseAddr("2001:db8::1"), "bob")
	l.Succeeded(attacker, "alice")
	f.Add(l.LocalState())
	f.Add([]byte{1})
	f.Add([]byte{1, 0x80, 0x9f, 0x49, 1, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		w := cfg.Window.Milliseconds()
		e, err := decode(b, w)
		if err != nil {
			return
		}
		// What decodes re-encodes to the same bytes (the format has one
		// encoding per value, uvarints aside), and merges without harm.
		var body []byte
		for i := range e {
			body = appendEntry(body, &e[i].k, &entry{resetAt: e[i].resetAt, until: e[i].until, slots: e[i].slots}, false, 0)
		}
		again, err := decode(append(appendHeader(nil, w, len(e)), body...), w)
		if err != nil || len(again) != len(e) {
			t.Fatalf("re-encoded message does not decode: %v", err)
		}
		m := New(cfg, clk.now)
		m.MergeRemote("peer", b)
		m.MergeRemote("peer", b)
		if total(m) > int64(len(e)) {
			t.Fatalf("%d entries from %d", total(m), len(e))
		}
	})
}

func TestOnBlockAndRulesOff(t *testing.T) {
	cfg := testConfig()
	cfg.IPLimit, cfg.UserLimit, cfg.UserIPLimit = 0, 0, 2
	l, _ := newTest(t, cfg)
	var got []string
	l.OnBlock(func(scope string, ip netip.Addr, user string, until time.Time) {
		got = append(got, fmt.Sprint(scope, " ", ip, " ", user))
	})
	l.Failed(attacker, "alice")
	l.Failed(attacker, "alice")
	l.Failed(attacker, "alice") // already blocked: no second report
	if len(got) != 1 || got[0] != "user_ip 198.51.100.7 alice" {
		t.Errorf("OnBlock calls %q", got)
	}
	if e := l.Entries(); e[ScopeIP] != 0 || e[ScopeUser] != 0 || e[ScopeUserIP] != 1 {
		t.Errorf("entries with ip and user rules off: %v", e)
	}
}

// Merging is order-free and idempotent: random states from random nodes
// (with failures, resets and blocks at random times), merged in different
// orders and repeated, leave every receiver in the same state.
func TestMergeOrderFree(t *testing.T) {
	cfg := testConfig()
	cfg.UserIPLimit = 4
	cfg.IPLimit = 6
	for seed := 0; seed < 20; seed++ {
		clk := newClock()
		rng := uint64(seed*7919 + 1)
		rnd := func(n int) int {
			rng ^= rng << 13
			rng ^= rng >> 7
			rng ^= rng << 17
			return int(rng % uint64(n))
		}
		senders := []*Limiter{New(cfg, clk.now), New(cfg, clk.now), New(cfg, clk.now)}
		var msgs []sent
		ips := []netip.Addr{attacker, home, netip.MustParseAddr("2001:db8::5")}
		users := []string{"alice", "bob"}
		for step := 0; step < 60; step++ {
			s := senders[rnd(len(senders))]
			ip, u := ips[rnd(len(ips))], users[rnd(len(users))]
			switch rnd(6) {
			case 0:
				s.Succeeded(ip, u)
			case 1:
				clk.advance(time.Duration(rnd(120)) * time.Second)
			default:
				s.Failed(ip, u)
			}
			if rnd(4) == 0 {
				msgs = append(msgs, sent{name(s), s.LocalState()})
			}
		}
		for _, s := range senders {
			msgs = append(msgs, sent{name(s), s.LocalState()})
		}
		a, b := New(cfg, clk.now), New(cfg, clk.now)
		for _, m := range msgs {
			a.MergeRemote(m.from, m.msg)
		}
		for i := len(msgs) - 1; i >= 0; i-- {
			b.MergeRemote(msgs[i].from, msgs[i].msg)
			m := msgs[rnd(len(msgs))]
			b.MergeRemote(m.from, m.msg)
		}
		for _, m := range msgs {
			b.MergeRemote(m.from, m.msg)
		}
		st := states([]*Limiter{a, b})
		if bytes.Count(st[0], []byte("\n")) < 3 {
			t.Fatalf("seed %d: too little state to compare:\n%s", seed, st[0])
		}
		if !bytes.Equal(st[0], st[1]) {
			t.Fatalf("seed %d: merge order changed the result\n%s\nvs\n%s", seed, st[0], st[1])
		}
	}
}

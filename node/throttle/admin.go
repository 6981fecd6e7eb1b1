package throttle

import (
	"encoding/hex"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Entry is one tracked throttle key as an operator sees it. User names
// are never stored (keys hold a hash of the lower-cased name): UserHash
// identifies a user, and a caller that filtered by user name knows whose
// it is.
type Entry struct {
	Scope    string       `json:"scope"`               // ScopeIP, ScopeUserIP or ScopeUser
	Network  netip.Prefix `json:"network,omitzero"`    // the client network (ip, user_ip)
	UserHash string       `json:"user_hash,omitempty"` // user_ip, user
	Failures float64      `json:"failures"`            // in the sliding window, cluster-wide as gossiped
	// Until: blocked (ip, user_ip) or under attack (user) until then;
	// zero when not.
	Until time.Time `json:"until,omitzero"`
}

// Blocked reports whether the entry refuses logins (or, for a user,
// marks the user as under attack) now.
func (e Entry) Blocked(now time.Time) bool { return e.Until.After(now) }

// UserHash returns the hash a user's entries carry (Entry.UserHash).
func UserHash(user string) string {
	var k key
	k.user = userKey(user)
	return hex.EncodeToString(k.user[:])
}

// Filter selects entries: a valid IP selects its network's ip and user_ip
// entries; a User selects that user's user_ip and user entries; both
// select their user_ip entry (and, for Unblock, nothing else). A zero
// filter selects everything (List only).
type Filter struct {
	IP   netip.Addr
	User string
}

func (l *Limiter) matcher(f Filter, cfg *Config) func(k *key) bool {
	var net [16]byte
	var user [16]byte
	if f.IP.IsValid() {
		net = maskNet(f.IP, cfg)
	}
	if f.User != "" {
		user = userKey(f.User)
	}
	return func(k *key) bool {
		switch {
		case f.IP.IsValid() && f.User != "":
			return k.kind == kindUserIP && k.net == net && k.user == user
		case f.IP.IsValid():
			return k.kind != kindUser && k.net == net
		case f.User != "":
			return k.kind != kindIP && k.user == user
		}
		return true
	}
}

// List returns the entries f selects that count failures or block now,
// blocked ones first, then by failures.
func (l *Limiter) List(f Filter) []Entry {
	cfg := l.cfg.Load()
	c := l.clock(cfg)
	match := l.matcher(f, cfg)
	var out []Entry
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for k, e := range sh.m {
			if !match(&k) {
				continue
			}
			n := e.count(c)
			if n <= 0 && e.until <= c.ms {
				continue
			}
			en := Entry{Scope: scopeName(k.kind), Failures: n}
			if k.kind != kindUser {
				a := netip.AddrFrom16(k.net).Unmap()
				bits := cfg.IPv6Prefix
				if a.Is4() {
					bits = cfg.IPv4Prefix
				}
				en.Network = netip.PrefixFrom(a, bits)
			}
			if k.kind != kindIP {
				en.UserHash = hex.EncodeToString(k.user[:])
			}
			if e.until > c.ms {
				en.Until = time.UnixMilli(e.until)
			}
			out = append(out, en)
		}
		sh.mu.Unlock()
	}
	now := time.UnixMilli(c.ms)
	slices.SortFunc(out, func(a, b Entry) int {
		if ab, bb := a.Blocked(now), b.Blocked(now); ab != bb {
			if ab {
				return -1
			}
			return 1
		}
		if a.Failures != b.Failures {
			if a.Failures > b.Failures {
				return -1
			}
			return 1
		}
		if c := strings.Compare(a.Scope, b.Scope); c != 0 {
			return c
		}
		if c := a.Network.Addr().Compare(b.Network.Addr()); c != 0 {
			return c
		}
		return strings.Compare(a.UserHash, b.UserHash)
	})
	return out
}

// Unblock forgets the failures and lifts the blocks of the entries f
// selects (a zero filter selects none), as a successful login does for
// its user and network: the reset is gossiped, so every node of a
// cluster lifts them too. It returns how many entries it reset.
func (l *Limiter) Unblock(f Filter) int {
	if f == (Filter{}) {
		return 0
	}
	cfg := l.cfg.Load()
	c := l.clock(cfg)
	match := l.matcher(f, cfg)
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for k, e := range sh.m {
			if !match(&k) || (len(e.slots) == 0 && e.until == 0) {
				continue
			}
			l.reset(sh, &k, e, c)
			n++
		}
		sh.mu.Unlock()
	}
	return n
}

func scopeName(k kind) string {
	switch k {
	case kindIP:
		return ScopeIP
	case kindUserIP:
		return ScopeUserIP
	}
	return ScopeUser
}

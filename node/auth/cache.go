package auth

import (
	"container/list"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"sync"
	"time"
)

// CacheConfig configures a Cache. A zero TTL turns that half off; a zero
// MaxEntries takes its default (DefaultCacheConfig).
type CacheConfig struct {
	PositiveTTL time.Duration // Auth-Status: OK answers
	NegativeTTL time.Duration // refusals with a text (wrong password...)
	MaxEntries  int           // bound on both halves together
}

// DefaultCacheConfig returns the defaults documented in the README: OK
// answers not cached (an auth server that decides by client address would
// see one login per TTL), refusals for 5 s, 10,000 entries.
func DefaultCacheConfig() CacheConfig {
	return CacheConfig{NegativeTTL: 5 * time.Second, MaxEntries: 10000}
}

// Cache remembers auth_http answers for a short time, so that a client
// that logs in again and again (a phone polling every minute, a bot
// retrying one wrong password) does not cost a request each time.
//
// Entries are keyed by an HMAC-SHA256, under a random key made when the
// process starts, of the protocol, listener, TLS or not, user names and
// password: the password
// is never stored, and the key cannot be used to test guesses offline
// (it never leaves the process). A password change therefore misses the
// cache, and a new password is always checked by the auth server.
//
// Only final answers are cached: OK (with its server and overrides) and
// refusals with a text; never WAIT or an error. The client IP is not part
// of the key: an auth server that decides by address (rate limits, geo
// fences) sees only the first login of a TTL. That is the trade-off the
// positive TTL buys, which is why it is off by default.
type Cache struct {
	cfg    CacheConfig
	secret [32]byte
	now    func() time.Time

	mu  sync.Mutex
	m   map[cacheKey]*list.Element
	lru list.List // front: most recently stored
}

type cacheKey [16]byte

type cacheEntry struct {
	k       cacheKey
	expires time.Time
	resp    *Response
}

// NewCache returns a cache, or nil when both TTLs are zero.
func NewCache(cfg CacheConfig) *Cache {
	if cfg.PositiveTTL <= 0 && cfg.NegativeTTL <= 0 {
		return nil
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = DefaultCacheConfig().MaxEntries
	}
	c := &Cache{cfg: cfg, now: time.Now, m: make(map[cacheKey]*list.Element)}
	if _, err := rand.Read(c.secret[:]); err != nil {
		panic("auth: no randomness for the cache key: " + err.Error())
	}
	return c
}

// key derives the cache key of a login. scope holds what else the auth
// server sees that may change its answer and is not the client's address
// (protocol, listener, TLS or not): an answer given over TLS is never
// reused for a plaintext login. Fields are length-prefixed so that no two
// different logins share an input.
func (c *Cache) key(scope, authzID, user, pass string) cacheKey {
	h := hmac.New(sha256.New, c.secret[:])
	for _, s := range []string{scope, authzID, user, pass} {
		var n [4]byte
		n[0], n[1], n[2], n[3] = byte(len(s)>>24), byte(len(s)>>16), byte(len(s)>>8), byte(len(s))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	var k cacheKey
	copy(k[:], h.Sum(nil))
	return k
}

// get returns a cached answer, or nil.
func (c *Cache) get(k cacheKey) *Response {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok {
		return nil
	}
	ce := e.Value.(*cacheEntry)
	if !c.now().Before(ce.expires) {
		c.lru.Remove(e)
		delete(c.m, k)
		return nil
	}
	return ce.resp
}

// put stores an answer if it is cacheable (OK or a text refusal) and that
// half of the cache is on. resp must not be modified afterwards.
func (c *Cache) put(k cacheKey, resp *Response) {
	var ttl time.Duration
	switch {
	case resp.HasErr:
		ttl = c.cfg.NegativeTTL
	case resp.OK && !resp.Wait:
		ttl = c.cfg.PositiveTTL
	}
	if ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		c.lru.Remove(e)
		delete(c.m, k)
	}
	for len(c.m) >= c.cfg.MaxEntries {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.m, old.Value.(*cacheEntry).k)
	}
	c.m[k] = c.lru.PushFront(&cacheEntry{k: k, expires: c.now().Add(ttl), resp: resp})
}

// Len returns the number of entries (expired ones included until touched).
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

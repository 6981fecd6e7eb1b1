package routing

import (
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/text/unicode/norm"
)

// NormalizeUser returns the canonical key of a user name: the one form
// that rules are stored under, looked up by, and hashed on, so that every
// way of writing one address reaches the same rule and the same backend.
//
//   - The local part (everything before the last '@', or the whole name
//     without one) is lower-cased and in Unicode NFC: "BÜCHER", "bücher"
//     and "bu\u0308cher" (NFD) are one name.
//   - The domain (after the last '@') is lower-cased; a domain that is not
//     plain ASCII is mapped and converted to its IDNA ASCII form (RFC 5891
//     section 5, UTS #46 non-transitional mapping), so "Exämple.org", its
//     NFD form and "xn--exmple-cua.org" are one domain. A domain IDNA
//     rejects (it is not a valid host name) keeps its lower-cased NFC form.
//
// The ASCII form is the canonical one because it is already what a name
// typed without Unicode looks like: an ASCII name that is lower case is
// returned as it is, without allocating (the hot path of every login).
//
// NormalizeUser is idempotent (FuzzNormalizeUser). It depends only on its
// input and on the Unicode and IDNA tables of golang.org/x/text and
// golang.org/x/net, so every node of a cluster running one build computes
// the same key.
func NormalizeUser(u string) string {
	upper := false
	for i := 0; i < len(u); i++ {
		c := u[i]
		if c >= utf8.RuneSelf {
			return normalizeUnicode(u)
		}
		if 'A' <= c && c <= 'Z' {
			upper = true
		}
	}
	if upper {
		return strings.ToLower(u)
	}
	return u
}

// NormalizeDomain returns the canonical key of a domain, as NormalizeUser
// writes the part after the '@' (a leading '@' is not removed).
func NormalizeDomain(d string) string {
	for i := 0; i < len(d); i++ {
		if d[i] >= utf8.RuneSelf {
			return normalizeUnicodeDomain(d)
		}
	}
	return strings.ToLower(d)
}

// normalizeUnicode is NormalizeUser for a name that is not plain ASCII.
func normalizeUnicode(u string) string {
	at := strings.LastIndexByte(u, '@')
	if at < 0 {
		return foldName(u)
	}
	return foldName(u[:at]) + "@" + NormalizeDomain(u[at+1:])
}

// foldName lower-cases s in NFC. Lower-casing a composed character can
// leave a sequence that composes differently, hence NFC after as well as
// before.
func foldName(s string) string {
	return norm.NFC.String(strings.ToLower(norm.NFC.String(s)))
}

// userIDNA is the IDNA profile of domain keys. It is spelled out rather
// than idna.Lookup, whose options may change between releases: a change
// would move users to other backends.
var userIDNA = idna.New(
	idna.MapForLookup(),
	idna.Transitional(false), // "ß" stays "ß" (IDNA2008), not "ss"
	idna.BidiRule(),
)

func normalizeUnicodeDomain(d string) string {
	folded := foldName(d)
	if isLowerASCII(folded) {
		// NFC made it ASCII ("\u212a.org", KELVIN SIGN, is "k.org"): keep it
		// as the ASCII path would have.
		return folded
	}
	a, err := userIDNA.ToASCII(folded)
	if err != nil || !isLowerASCII(a) {
		return folded
	}
	return a
}

func isLowerASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= utf8.RuneSelf || 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

// HashKey says which part of a user's canonical name the rendezvous hash
// of a pool is computed on (as Dovecot director's director_username_hash
// does): the whole address (the default), the local part, or the domain.
// With HashDomain every user of a domain lands on the same backend of a
// pool.
type HashKey string

const (
	HashAddress HashKey = "address" // the whole canonical name (the default)
	HashLocal   HashKey = "local"   // the part before the last '@'
	HashDomain  HashKey = "domain"  // the part after the last '@'
)

// ParseHashKey checks a hash key as written in a configuration file or a
// command; "" is HashAddress.
func ParseHashKey(s string) (HashKey, error) {
	switch k := HashKey(s); k {
	case "", HashAddress:
		return HashAddress, nil
	case HashLocal, HashDomain:
		return k, nil
	}
	return "", invalid("hash key %q is not address, local or domain", s)
}

// Of returns the part of user (a canonical name, NormalizeUser) that is
// hashed. A name without '@' is hashed whole whatever the key (it has no
// domain: hashing an empty domain would put every such user on one
// backend).
func (k HashKey) Of(user string) string {
	if k == "" || k == HashAddress {
		return user
	}
	at := strings.LastIndexByte(user, '@')
	if at < 0 {
		return user
	}
	if k == HashLocal {
		return user[:at]
	}
	return user[at+1:]
}

// String implements fmt.Stringer.
func (k HashKey) String() string {
	if k == "" {
		return string(HashAddress)
	}
	return string(k)
}

// HashKey returns the part of users' names that pools hash on.
func (t *Table) HashKey() HashKey {
	if t.hashKey == "" {
		return HashAddress
	}
	return t.hashKey
}

// WithHashKey returns a table whose pools hash on k.
func (t *Table) WithHashKey(k HashKey) (*Table, error) {
	k, err := ParseHashKey(string(k))
	if err != nil {
		return nil, err
	}
	n := *t
	n.hashKey = k
	return &n, nil
}

// preferKey decides between two names written differently that have the
// same canonical key (rules written before the key was canonical, e.g. a
// snapshot of an older version holding both "bücher@exämple.org" and
// "bücher@xn--exmple-cua.org"): the one already canonical wins, else the
// smaller. It reports whether key should replace prev. The choice depends
// on the names only, never on the order they are met in, so that every
// node keeps the same one.
func preferKey(canon, key, prev string) bool {
	switch {
	case prev == canon:
		return false
	case key == canon:
		return true
	}
	return key < prev
}

// canonicalKeys returns m with its keys replaced by norm(key); keys that
// meet on one canonical key are decided by preferKey.
func canonicalKeys[V any](m map[string]V, normalize func(string) string) map[string]V {
	out := make(map[string]V, len(m))
	from := make(map[string]string, len(m))
	for k, v := range m {
		c := normalize(k)
		if prev, dup := from[c]; dup && !preferKey(c, k, prev) {
			continue
		}
		from[c] = k
		out[c] = v
	}
	return out
}

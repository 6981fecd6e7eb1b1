package routing

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/text/unicode/norm"
)

func TestNormalizeUserExamples(t *testing.T) {
	cases := []struct{ in, want string }{
		{"alice@example.org", "alice@example.org"},
		{"Alice@Example.ORG", "alice@example.org"},
		{"alice", "alice"},
		{"ALICE", "alice"},
		{"", ""},
		{"BÜCHER@Exämple.org", "bücher@xn--exmple-cua.org"},
		{"bu\u0308cher@exa\u0308mple.org", "bücher@xn--exmple-cua.org"}, // NFD
		{"BU\u0308CHER@EXA\u0308MPLE.ORG", "bücher@xn--exmple-cua.org"}, // NFD, upper case
		{"bücher@xn--exmple-cua.org", "bücher@xn--exmple-cua.org"},      // punycode
		{"BÜCHER@XN--EXMPLE-CUA.ORG", "bücher@xn--exmple-cua.org"},      // punycode, upper case
		{"user@straße.de", "user@xn--strae-oqa.de"},                     // IDNA2008: ß stays
		{"user@ＥＸＡＭＰＬＥ.org", "user@example.org"},                        // UTS #46 width mapping
		{"\u212aelvin@\u212a.org", "kelvin@k.org"},                      // KELVIN SIGN is K in NFC
		{"Ωmega@x", "ωmega@x"},                                          // Greek
		{"ДМИТРИЙ@пример.рф", "дмитрий@xn--e1afmkfd.xn--p1ai"},          // Cyrillic
		{"a@b@Exämple.org", "a@b@xn--exmple-cua.org"},                   // the last '@' splits
		{"ü@", "ü@"},                     // empty domain
		{"ü@bad_domäin", "ü@bad_domäin"}, // not a host name: NFC, lower case
		{"ÜSER@Exa\u0308mple.org.", "üser@xn--exmple-cua.org."},                          // trailing dot kept
		{"x@\u0301combining.org", "x@\u0301combining.org"},                               // IDNA refuses a leading mark
		{"MÜLLER+tag@Example.com", "müller+tag@example.com"},                             // ASCII domain stays as is
		{"müller@xn--invalid-punycode-zzzz.com", "müller@xn--invalid-punycode-zzzz.com"}, // invalid A-label: lower case
	}
	for _, c := range cases {
		if got := NormalizeUser(c.in); got != c.want {
			t.Errorf("NormalizeUser(%q) = %q, want %q", c.in, got, c.want)
		}
		if got := NormalizeUser(NormalizeUser(c.in)); got != c.want {
			t.Errorf("NormalizeUser twice (%q) = %q, want %q", c.in, got, c.want)
		}
	}
	if got := NormalizeDomain("Exämple.ORG"); got != "xn--exmple-cua.org" {
		t.Errorf("NormalizeDomain: %q", got)
	}
}

// The hot path: a plain ASCII name in lower case costs nothing.
func TestNormalizeUserASCIIAllocationFree(t *testing.T) {
	for _, u := range []string{"alice@example.org", "user4242@example.net", "xn--bcher-kva@xn--exmple-cua.org", "bob"} {
		if n := testing.AllocsPerRun(100, func() { _ = NormalizeUser(u) }); n != 0 {
			t.Errorf("NormalizeUser(%q): %v allocations, want 0", u, n)
		}
	}
	tbl := testTable(t, false)
	req := Request{User: "someone@elsewhere.example", Protocol: IMAP}
	if n := testing.AllocsPerRun(100, func() { _, _ = tbl.Lookup(req, nil) }); n != 0 {
		t.Errorf("Lookup of an ASCII name: %v allocations, want 0", n)
	}
}

// Letters that have a case and survive a round trip through upper case
// (so that an upper-case spelling is the same name), and some that have
// none. Not "ı" (dotless i) or "ς" (final sigma): their upper case is that
// of "i" and "σ", so a name spelt in upper case is another name.
var (
	localRunes  = []rune("abcdefghijklmnopqrstuvwxyz0123456789.-_+äöüéèêëñçøåæœßłżźśąęσωδлджщюяğş")
	domainRunes = []rune("abcdefghijklmnopqrstuvwxyz0123456789äöüéèêëñçøåæœßłżźśąęσωδлджщюя")
)

func randomWord(r *rand.Rand, alphabet []rune, min, max int) string {
	var b strings.Builder
	for n := min + r.IntN(max-min+1); n > 0; n-- {
		b.WriteRune(alphabet[r.IntN(len(alphabet))])
	}
	return b.String()
}

// randomCase upper-cases each letter with probability 1/2 where the upper
// case maps back to the same letter.
func randomCase(r *rand.Rand, s string) string {
	var b strings.Builder
	for _, c := range s {
		if u := unicode.ToUpper(c); r.IntN(2) == 0 && unicode.ToLower(u) == c {
			c = u
		}
		b.WriteRune(c)
	}
	return b.String()
}

func randomForm(r *rand.Rand, s string) string {
	switch r.IntN(3) {
	case 0:
		return norm.NFC.String(s)
	case 1:
		return norm.NFD.String(s)
	}
	return s
}

// Property: every spelling of a random name (NFC or NFD, any case, the
// domain in Unicode or punycode) has one key, lands on the same backend
// of a pool under every hash key, and meets the rules written under any
// other spelling.
func TestUserSpellingsRouteIdentically(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 3))
	backends := []Backend{}
	var ids []string
	for i := 0; i < 7; i++ {
		id := fmt.Sprintf("b%d", i)
		ids = append(ids, id)
		backends = append(backends, Backend{ID: id, Host: "10.0.0.1", IMAPPort: 143, Weight: 1 + i%3})
	}
	for i := 0; i < 1500; i++ {
		local := randomWord(r, localRunes, 1, 12)
		var labels []string
		for n := 1 + r.IntN(2); n > 0; n-- {
			labels = append(labels, randomWord(r, domainRunes, 1, 10))
		}
		domain := strings.Join(append(labels, []string{"org", "de", "com"}[r.IntN(3)]), ".")
		ascii, err := idna.Lookup.ToASCII(domain)
		if err != nil {
			t.Fatalf("test generator: %q: %v", domain, err)
		}
		want := norm.NFC.String(strings.ToLower(local)) + "@" + ascii
		spell := func() string {
			d := randomForm(r, randomCase(r, domain))
			if r.IntN(3) == 0 {
				d = randomCase(r, ascii)
			}
			return randomForm(r, randomCase(r, local)) + "@" + d
		}
		spellings := []string{local + "@" + domain, strings.ToUpper(local) + "@" + ascii, norm.NFD.String(local + "@" + domain)}
		for j := 0; j < 5; j++ {
			spellings = append(spellings, spell())
		}
		for _, s := range spellings {
			if got := NormalizeUser(s); got != want {
				t.Fatalf("NormalizeUser(%q) = %q, want %q (name %q@%q)", s, got, want, local, domain)
			}
		}
		// Rules written under one spelling, looked up by all of them.
		ruleUser, ruleDomain := spellings[r.IntN(len(spellings))], spellings[r.IntN(len(spellings))]
		ruleDomain = ruleDomain[strings.LastIndexByte(ruleDomain, '@')+1:]
		for _, key := range []HashKey{HashAddress, HashLocal, HashDomain} {
			pools := []Pool{{Name: "main", Backends: ids}, {Name: "dom", Backends: ids[2:]}}
			tbl, err := NewTable(TableSpec{Backends: backends, Pools: pools, DefaultPool: "main", HashKey: key})
			if err != nil {
				t.Fatal(err)
			}
			var first string
			for _, s := range spellings {
				rt, err := tbl.Lookup(Request{User: s, Protocol: IMAP}, nil)
				if err != nil {
					t.Fatal(err)
				}
				if first == "" {
					first = rt.Backend.ID
				} else if rt.Backend.ID != first {
					t.Fatalf("hash key %s: %q went to %s, another spelling to %s", key, s, rt.Backend.ID, first)
				}
			}
			tbl, _ = NewTable(TableSpec{Backends: backends, Pools: pools, DefaultPool: "main", HashKey: key,
				Users: map[string]Target{ruleUser: {Backend: "b6"}}})
			dtbl, _ := NewTable(TableSpec{Backends: backends, Pools: pools, DefaultPool: "main", HashKey: key,
				Domains: map[string]string{ruleDomain: "dom"}})
			for _, s := range spellings {
				if rt, err := tbl.Lookup(Request{User: s, Protocol: IMAP}, nil); err != nil || rt.Rule != "user" || rt.Backend.ID != "b6" {
					t.Fatalf("user rule %q, lookup %q: %+v %v", ruleUser, s, rt, err)
				}
				if rt, err := dtbl.Lookup(Request{User: s, Protocol: IMAP}, nil); err != nil || rt.Rule != "domain" {
					t.Fatalf("domain rule %q, lookup %q: %+v %v", ruleDomain, s, rt, err)
				}
			}
		}
	}
}

func TestHashKeyModes(t *testing.T) {
	var backends []Backend
	var ids []string
	for i := 0; i < 5; i++ {
		id := fmt.Sprintf("b%d", i)
		ids = append(ids, id)
		backends = append(backends, Backend{ID: id, Host: "10.0.0.1", IMAPPort: 143})
	}
	table := func(k HashKey) *Table {
		tbl, err := NewTable(TableSpec{Backends: backends, Pools: []Pool{{Name: "main", Backends: ids}}, DefaultPool: "main", HashKey: k})
		if err != nil {
			t.Fatal(err)
		}
		if tbl.HashKey() != k && !(k == "" && tbl.HashKey() == HashAddress) {
			t.Fatalf("hash key %q, want %q", tbl.HashKey(), k)
		}
		return tbl
	}
	route := func(tbl *Table, u string) string {
		rt, err := tbl.Lookup(Request{User: u, Protocol: IMAP}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return rt.Backend.ID
	}
	spread := func(m map[string]bool) int { return len(m) }

	// domain: every user of a domain on one backend; domains spread.
	tbl := table(HashDomain)
	domains := map[string]bool{}
	for d := 0; d < 40; d++ {
		dom := fmt.Sprintf("d%d.example", d)
		want := route(tbl, "postmaster@"+dom)
		domains[want] = true
		for u := 0; u < 30; u++ {
			if got := route(tbl, fmt.Sprintf("user%d@%s", u, strings.ToUpper(dom))); got != want {
				t.Fatalf("hash_key domain: user%d@%s on %s, postmaster on %s", u, dom, got, want)
			}
		}
	}
	if spread(domains) < 4 {
		t.Errorf("hash_key domain: 40 domains on only %d of 5 backends", spread(domains))
	}
	// The Unicode and punycode spellings of a domain are one domain.
	if a, b := route(tbl, "a@Exämple.org"), route(tbl, "z@xn--exmple-cua.org"); a != b {
		t.Errorf("hash_key domain: Unicode domain on %s, punycode on %s", a, b)
	}
	// Names without a domain are hashed whole: they spread.
	plain := map[string]bool{}
	for u := 0; u < 50; u++ {
		plain[route(tbl, fmt.Sprintf("user%d", u))] = true
	}
	if spread(plain) < 4 {
		t.Errorf("hash_key domain: 50 names without a domain on %d backends", spread(plain))
	}

	// local: one local part on one backend whatever the domain.
	tbl = table(HashLocal)
	locals := map[string]bool{}
	for u := 0; u < 40; u++ {
		want := route(tbl, fmt.Sprintf("user%d", u))
		locals[want] = true
		for d := 0; d < 10; d++ {
			if got := route(tbl, fmt.Sprintf("USER%d@d%d.example", u, d)); got != want {
				t.Fatalf("hash_key local: user%d@d%d on %s, user%d on %s", u, d, got, u, want)
			}
		}
	}
	if spread(locals) < 4 {
		t.Errorf("hash_key local: 40 local parts on %d backends", spread(locals))
	}

	// address (the default): the users of one domain spread, and the
	// choice is the one versions before hash keys made.
	for _, k := range []HashKey{"", HashAddress} {
		tbl = table(k)
		users := map[string]bool{}
		for u := 0; u < 60; u++ {
			name := fmt.Sprintf("user%d@one.example", u)
			got := route(tbl, name)
			users[got] = true
			if want := highestScore(ids, name); got != want {
				t.Fatalf("hash_key %q: %s on %s, the whole name's hash says %s", k, name, got, want)
			}
		}
		if spread(users) < 4 {
			t.Errorf("hash_key %q: 60 users of one domain on %d backends", k, spread(users))
		}
	}
}

// highestScore is rendezvous hashing written out: the backend (weight 1)
// with the highest score for key.
func highestScore(ids []string, key string) string {
	best, bestScore := "", -1.0
	for _, id := range ids {
		if s := Score(hashString(key), id, 1); s > bestScore {
			best, bestScore = id, s
		}
	}
	return best
}

func TestHashKeyCommand(t *testing.T) {
	for _, s := range []string{"", "address", "local", "domain"} {
		if _, err := ParseHashKey(s); err != nil {
			t.Errorf("ParseHashKey(%q): %v", s, err)
		}
	}
	for _, s := range []string{"Domain", "user", "%Ld", " address"} {
		if _, err := ParseHashKey(s); err == nil {
			t.Errorf("ParseHashKey(%q) accepted", s)
		}
	}
	if _, err := NewTable(TableSpec{HashKey: "realm"}); err == nil {
		t.Error("NewTable accepted hash key realm")
	}
	base := testTable(t, false)
	c := Command{Type: CmdSetHashKey, Target: "domain"}
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	d, err := DecodeCommand(b)
	if err != nil || d.Type != CmdSetHashKey || d.Target != "domain" || d.Type.String() != "set-hash-key" {
		t.Fatalf("decoded %+v %v", d, err)
	}
	n, err := base.Apply(d)
	if err != nil || n.HashKey() != HashDomain || base.HashKey() != HashAddress {
		t.Fatalf("apply: %v %v, base %v", n.HashKey(), err, base.HashKey())
	}
	for _, bad := range []string{"", "realm"} {
		if _, err := base.Apply(Command{Type: CmdSetHashKey, Target: bad}); err == nil {
			t.Errorf("set-hash-key %q applied", bad)
		}
	}
	// The key is replicated in snapshots; the default is not written, so
	// a snapshot of a table that never changed it is what older versions
	// wrote and read.
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, n); err != nil {
		t.Fatal(err)
	}
	back, err := ReadSnapshot(&buf)
	if err != nil || back.HashKey() != HashDomain {
		t.Fatalf("snapshot: %v %v", back, err)
	}
	buf.Reset()
	WriteSnapshot(&buf, base)
	if bytes.Contains(buf.Bytes(), []byte("hash_key")) {
		t.Error("a default hash key is written into the snapshot")
	}
	// Other changes keep the key.
	n2, err := n.WithDefaultPool("other")
	if err != nil || n2.HashKey() != HashDomain {
		t.Fatalf("default pool change lost the hash key: %v", err)
	}
	n3, _ := n.WithUsers([]UserRoute{{User: "x", Target: Target{Pool: "main"}}})
	if n3.HashKey() != HashDomain {
		t.Fatal("user change lost the hash key")
	}
}

// A snapshot written before keys were canonical holds names in older
// forms; restoring it stores them under today's key, and two old names of
// one user keep one rule, the same whatever order they are read in.
func TestSnapshotMigratesOldKeys(t *testing.T) {
	base := testTable(t, false)
	old := base.clone()
	// What an older version stored: lower-cased only.
	old.users = base.users.update([]userPut{
		{"bücher@exämple.org", Target{Backend: "b"}},        // old form: loses to the canonical one below
		{"bücher@xn--exmple-cua.org", Target{Backend: "a"}}, // already canonical
		{"bu\u0308cher@exa\u0308mple.org", Target{Backend: "c"}},
		{"ödön@exämple.org", Target{Backend: "c"}}, // two old forms: the smaller wins
		{"o\u0308do\u0308n@exämple.org", Target{Backend: "b"}},
		{"plain@example.org", Target{Pool: "main"}},
	}, nil)
	old.domains["exämple.org"] = "other"
	old.domains["straße.de"] = "main"
	old.domains["xn--strae-oqa.de"] = "other" // canonical: wins
	var want string
	for i := 0; i < 20; i++ { // map order differs between writes
		var buf bytes.Buffer
		if err := WriteSnapshot(&buf, old); err != nil {
			t.Fatal(err)
		}
		got, err := ReadSnapshot(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			want = canon(got)
			_, _, users, domains := got.Len()
			if users != 4 || domains != 3 {
				t.Fatalf("%d users, %d domains after migration:\n%s", users, domains, want)
			}
			check := func(u, backend string) {
				tg, ok := got.UserRoute(u)
				if !ok || tg.Backend != backend {
					t.Errorf("%s: %+v %v, want backend %s", u, tg, ok, backend)
				}
			}
			check("BÜCHER@EXÄMPLE.ORG", "a")
			check("ÖDÖN@xn--exmple-cua.org", "b") // "o\u0308..." < "ödön..."
			check("plain@example.org", "")
			if got.Domains()["xn--exmple-cua.org"] != "other" || got.Domains()["xn--strae-oqa.de"] != "other" {
				t.Errorf("domains: %v", got.Domains())
			}
			if rt, err := got.Lookup(Request{User: "x@EXA\u0308MPLE.org", Protocol: IMAP}, nil); err != nil || rt.Rule != "domain" || rt.Pool != "other" {
				t.Errorf("domain rule after migration: %+v %v", rt, err)
			}
		} else if c := canon(got); c != want {
			t.Fatalf("restores differ:\n%s\nvs\n%s", c, want)
		}
	}
}

// FuzzNormalizeUser: no input panics, the key is a fixed point (N(N(x)) ==
// N(x)), NFC and NFD spellings have one key, and lower-case ASCII is kept
// as it is.
func FuzzNormalizeUser(f *testing.F) {
	for _, s := range []string{"alice@example.org", "BÜCHER@Exämple.org", "bu\u0308cher@exa\u0308mple.org",
		"bücher@xn--exmple-cua.org", "a@b@c", "@", "", "\xff\xfe@\xc3", "İ@İ.com", "ǅ@ǈ.ǋ", "x@\u0301.org",
		"ß@ẞ.de", "user@ＥＸＡＭＰＬＥ.org", "\u212a@\u212a", "a@xn--", "a@xn--zz.", "a@.ü.", "ς@Σ.gr", "ﬃ@ﬃ.com"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k := NormalizeUser(s)
		if again := NormalizeUser(k); again != k {
			t.Fatalf("not idempotent: %q -> %q -> %q", s, k, again)
		}
		if utf8.ValidString(s) {
			for _, form := range []norm.Form{norm.NFC, norm.NFD} {
				if got := NormalizeUser(form.String(s)); got != k {
					t.Fatalf("%v of %q has key %q, %q has %q", form, s, got, s, k)
				}
			}
		}
		ascii := true
		for i := 0; i < len(s); i++ {
			if s[i] >= utf8.RuneSelf || 'A' <= s[i] && s[i] <= 'Z' {
				ascii = false
			}
		}
		if ascii && k != s {
			t.Fatalf("lower-case ASCII %q changed to %q", s, k)
		}
		for i := 0; i < len(k); i++ {
			if 'A' <= k[i] && k[i] <= 'Z' {
				t.Fatalf("key %q of %q has an upper-case ASCII letter", k, s)
			}
		}
		if at := strings.LastIndexByte(s, '@'); at >= 0 {
			if d := NormalizeDomain(s[at+1:]); !strings.HasSuffix(k, "@"+d) {
				t.Fatalf("key %q of %q does not end in its domain's key %q", k, s, d)
			}
		}
	})
}

// A key can be longer than the name it was made from ("Ⱥ", 2 bytes, is
// "ⱥ", 3 bytes, in lower case): a name whose key is too long is refused,
// and a table holding a long key (an older version let one in) still
// restores from its snapshot.
func TestLongKeys(t *testing.T) {
	tbl := testTable(t, false)
	if _, err := tbl.WithUsers([]UserRoute{{User: strings.Repeat("Ⱥ", 256), Target: Target{Backend: "a"}}}); err == nil {
		t.Error("a name of 512 bytes whose key has 768 was accepted")
	}
	n, err := tbl.WithUsers([]UserRoute{{User: strings.Repeat("Ⱥ", 170), Target: Target{Backend: "a"}}})
	if err != nil {
		t.Fatal(err)
	}
	old := n.clone()
	old.users = n.users.update([]userPut{{strings.Repeat("ⱥ", 256), Target{Backend: "b"}}}, nil)
	var buf bytes.Buffer
	if err := WriteSnapshot(&buf, old); err != nil {
		t.Fatal(err)
	}
	back, err := ReadSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if tg, ok := back.UserRoute(strings.Repeat("Ⱥ", 256)); !ok || tg.Backend != "b" {
		t.Errorf("long key after restore: %+v %v", tg, ok)
	}
}

package routing

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"
)

// Validation errors are of two kinds, so that the API can answer 400 or 409.
var (
	// ErrInvalid: the change itself is malformed.
	ErrInvalid = errors.New("invalid")
	// ErrConflict: the change is well-formed but contradicts the table
	// (an unknown reference, or deleting something still referenced).
	ErrConflict = errors.New("conflict")
)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

func conflict(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrConflict, fmt.Sprintf(format, args...))
}

// validName checks identifiers of backends and pools.
func validName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// validUser checks a user name used as a rule key.
func validUser(u string) bool {
	return u != "" && len(u) <= 512 && utf8.ValidString(u) && !strings.ContainsAny(u, "\x00\r\n")
}

// ValidUser reports whether u can name a user rule (and a backend login):
// 1-512 bytes of UTF-8 without NUL, CR or LF, its canonical key too.
func ValidUser(u string) bool { return validUser(u) && validUser(NormalizeUser(u)) }

// normaliseBackend fills defaults and validates b.
func normaliseBackend(b *Backend) error {
	if !validName(b.ID) {
		return invalid("backend id %q: use 1-128 letters, digits, '-', '_', '.'", b.ID)
	}
	if b.Host == "" || len(b.Host) > 255 || strings.ContainsAny(b.Host, " /\x00") {
		return invalid("backend %s: bad host %q", b.ID, b.Host)
	}
	if b.IMAPPort == 0 && b.POP3Port == 0 && b.SievePort == 0 && b.SubmissionPort == 0 {
		return invalid("backend %s: needs imap_port, pop3_port, sieve_port or submission_port", b.ID)
	}
	for _, p := range []int{b.IMAPPort, b.POP3Port, b.SievePort, b.SubmissionPort} {
		if p < 0 || p > 65535 {
			return invalid("backend %s: port %d out of range", b.ID, p)
		}
	}
	if b.Weight < 0 || b.Weight > 1000000 {
		return invalid("backend %s: weight %d out of range 0..1000000", b.ID, b.Weight)
	}
	if b.Weight == 0 {
		b.Weight = 1
	}
	switch b.State {
	case "":
		b.State = StateActive
	case StateActive, StateDraining, StateDisabled:
	default:
		return invalid("backend %s: state %q is not active, draining or disabled", b.ID, b.State)
	}
	switch b.TLS {
	case "":
		b.TLS = TLSNone
	case TLSNone, TLSStartTLS, TLSImplicit:
	default:
		return invalid("backend %s: tls %q is not none, starttls or implicit", b.ID, b.TLS)
	}
	switch b.Forward {
	case "":
		b.Forward = ForwardNone
	case ForwardNone, ForwardID, ForwardProxy:
	default:
		return invalid("backend %s: forward %q is not none, id or proxy", b.ID, b.Forward)
	}
	return nil
}

func (t *Table) checkPool(p *Pool) error {
	if !validName(p.Name) {
		return invalid("pool name %q: use 1-128 letters, digits, '-', '_', '.'", p.Name)
	}
	if len(p.Backends) == 0 {
		return invalid("pool %s: needs at least one backend", p.Name)
	}
	seen := map[string]bool{}
	for _, id := range p.Backends {
		if seen[id] {
			return invalid("pool %s: backend %s listed twice", p.Name, id)
		}
		seen[id] = true
		if t.backends[id] == nil {
			return conflict("pool %s: unknown backend %q", p.Name, id)
		}
	}
	return nil
}

func (t *Table) checkTarget(tgt Target) error {
	switch {
	case tgt.Backend != "" && tgt.Pool != "":
		return invalid("both backend and pool set")
	case tgt.Backend != "":
		if t.backends[tgt.Backend] == nil {
			return conflict("unknown backend %q", tgt.Backend)
		}
	case tgt.Pool != "":
		if t.pools[tgt.Pool] == nil {
			return conflict("unknown pool %q", tgt.Pool)
		}
	default:
		return invalid("neither backend nor pool set")
	}
	return nil
}

// clone copies the small parts of the table; users, and the parts no
// mutation here changes in place (each With* of theirs builds new ones),
// are shared. Every field must be carried (TestCloneKeepsEveryField): the
// VIP placements and leader marker once were not, so any backend, pool or
// domain change wiped them.
func (t *Table) clone() *Table {
	n := &Table{
		backends:    make(map[string]*Backend, len(t.backends)+1),
		pools:       make(map[string]*Pool, len(t.pools)+1),
		users:       t.users,
		domains:     make(map[string]string, len(t.domains)+1),
		defaultPool: t.defaultPool,
		hashKey:     t.hashKey,
		seed:        t.seed,
		regex:       t.regex,
		sources:     t.sources,
		vips:        t.vips,
		vipLeader:   t.vipLeader,
	}
	for k, v := range t.backends {
		n.backends[k] = v
	}
	for k, v := range t.pools {
		n.pools[k] = v
	}
	for k, v := range t.domains {
		n.domains[k] = v
	}
	return n
}

// EmptyTable returns a table with nothing in it.
func EmptyTable() *Table {
	return &Table{backends: map[string]*Backend{}, pools: map[string]*Pool{}, domains: map[string]string{}}
}

// WithBackend returns a table with b added or replaced.
func (t *Table) WithBackend(b Backend) (*Table, error) {
	if err := normaliseBackend(&b); err != nil {
		return nil, err
	}
	n := t.clone()
	n.backends[b.ID] = &b
	return n, nil
}

// WithoutBackend returns a table without backend id. Deleting a backend
// that a pool or a user rule still names is a conflict; deleting one that
// does not exist is not an error (deletes are idempotent).
func (t *Table) WithoutBackend(id string) (*Table, error) {
	if t.backends[id] == nil {
		return t, nil
	}
	for _, p := range t.sortedPools() {
		for _, b := range p.Backends {
			if b == id {
				return nil, conflict("backend %s is in pool %s", id, p.Name)
			}
		}
	}
	var user string
	t.users.each(func(u string, tg Target) bool {
		if tg.Backend == id && (user == "" || u < user) {
			user = u
		}
		return true
	})
	if user != "" {
		return nil, conflict("backend %s is the route of user %s", id, user)
	}
	n := t.clone()
	delete(n.backends, id)
	return n, nil
}

// WithPool returns a table with p added or replaced.
func (t *Table) WithPool(p Pool) (*Table, error) {
	p.Backends = append([]string(nil), p.Backends...)
	if err := t.checkPool(&p); err != nil {
		return nil, err
	}
	n := t.clone()
	n.pools[p.Name] = &p
	return n, nil
}

// WithoutPool returns a table without pool name (idempotent; a conflict
// while a domain, user rule or the default names it).
func (t *Table) WithoutPool(name string) (*Table, error) {
	if t.pools[name] == nil {
		return t, nil
	}
	if t.defaultPool == name {
		return nil, conflict("pool %s is the default pool", name)
	}
	for _, d := range sortedKeys(t.domains) {
		if t.domains[d] == name {
			return nil, conflict("pool %s is the route of domain %s", name, d)
		}
	}
	var user string
	t.users.each(func(u string, tg Target) bool {
		if tg.Pool == name && (user == "" || u < user) {
			user = u
		}
		return true
	})
	if user != "" {
		return nil, conflict("pool %s is the route of user %s", name, user)
	}
	n := t.clone()
	delete(n.pools, name)
	return n, nil
}

// UserRoute is one exact-user rule.
type UserRoute struct {
	User string `json:"user"`
	Target
}

// WithUsers returns a table with the rules added or replaced, all or none.
func (t *Table) WithUsers(routes []UserRoute) (*Table, error) {
	puts, err := t.userPuts(routes, nil)
	if err != nil {
		return nil, err
	}
	n := *t
	n.users = t.users.update(puts, nil)
	return &n, nil
}

// userPuts validates routes and returns them keyed by their canonical
// names, in order (a later rule for a user wins, as written), with Source
// replaced by *source when source is not nil.
func (t *Table) userPuts(routes []UserRoute, source *string) ([]userPut, error) {
	puts := make([]userPut, len(routes))
	for i, r := range routes {
		if source != nil {
			r.Source = *source
		}
		// The key too: lower case, NFC and IDNA can make a name longer.
		key := NormalizeUser(r.User)
		if !validUser(r.User) || !validUser(key) {
			return nil, invalid("bad user name %q", r.User)
		}
		if err := t.checkTarget(r.Target); err != nil {
			return nil, fmt.Errorf("user %s: %w", r.User, err)
		}
		if r.Login != "" && !validUser(r.Login) {
			return nil, invalid("user %s: bad login name %q", r.User, r.Login)
		}
		if r.Source != "" && !ValidSource(r.Source) {
			return nil, invalid("user %s: bad source %q", r.User, r.Source)
		}
		puts[i] = userPut{key: key, t: t.shareNames(r.Target)}
	}
	return puts, nil
}

// shareNames returns tg naming its backend or pool with the table's own
// string: a million rules decoded from commands or a snapshot name a few
// backends, and each would otherwise hold its own copy of the name.
func (t *Table) shareNames(tg Target) Target {
	if b := t.backends[tg.Backend]; b != nil {
		tg.Backend = b.ID
	}
	if p := t.pools[tg.Pool]; p != nil {
		tg.Pool = p.Name
	}
	return tg
}

// WithoutUsers returns a table without the given user rules (idempotent).
func (t *Table) WithoutUsers(users []string) *Table {
	dels := make([]string, len(users))
	for i, u := range users {
		dels[i] = NormalizeUser(u)
	}
	n := *t
	n.users = t.users.update(nil, dels)
	return &n
}

// WithDomain returns a table routing @domain to pool.
func (t *Table) WithDomain(domain, pool string) (*Table, error) {
	domain = normalDomain(domain)
	if domain == "" || strings.ContainsAny(domain, "@ \x00\r\n") || len(domain) > 255 {
		return nil, invalid("bad domain %q", domain)
	}
	if t.pools[pool] == nil {
		return nil, conflict("domain %s: unknown pool %q", domain, pool)
	}
	n := t.clone()
	n.domains[domain] = pool
	return n, nil
}

// WithoutDomain returns a table without the domain rule (idempotent).
func (t *Table) WithoutDomain(domain string) *Table {
	domain = normalDomain(domain)
	if _, ok := t.domains[domain]; !ok {
		return t
	}
	n := t.clone()
	delete(n.domains, domain)
	return n
}

// WithDefaultPool returns a table with the default pool set ("" clears it).
func (t *Table) WithDefaultPool(pool string) (*Table, error) {
	if pool != "" && t.pools[pool] == nil {
		return nil, conflict("unknown pool %q", pool)
	}
	n := t.clone()
	n.defaultPool = pool
	return n, nil
}

// Read access for the API (returned values must not be modified).

// Backends returns the backends sorted by id.
func (t *Table) Backends() []*Backend {
	out := make([]*Backend, 0, len(t.backends))
	for _, k := range sortedKeys(t.backends) {
		out = append(out, t.backends[k])
	}
	return out
}

// Pool returns the pool with the given name, or nil.
func (t *Table) Pool(name string) *Pool { return t.pools[name] }

// Pools returns the pools sorted by name.
func (t *Table) Pools() []*Pool { return t.sortedPools() }

func (t *Table) sortedPools() []*Pool {
	out := make([]*Pool, 0, len(t.pools))
	for _, k := range sortedKeys(t.pools) {
		out = append(out, t.pools[k])
	}
	return out
}

// UserRoute returns the exact rule for user, if any.
func (t *Table) UserRoute(user string) (Target, bool) { return t.users.get(NormalizeUser(user)) }

// UserRoutes returns up to limit user rules whose user starts with prefix,
// sorted, starting after the user "after" (for paging).
func (t *Table) UserRoutes(prefix, after string, limit int) []UserRoute {
	var out []UserRoute
	prefix = NormalizeUser(prefix)
	t.users.each(func(u string, tg Target) bool {
		if strings.HasPrefix(u, prefix) && u > after {
			out = append(out, UserRoute{User: u, Target: tg})
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].User < out[j].User })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// EachUser calls f with every user rule, in no order, until f returns
// false (a walk over a million rules without sorting or copying them).
func (t *Table) EachUser(f func(user string, tg Target) bool) { t.users.each(f) }

// Domains returns the domain rules.
func (t *Table) Domains() map[string]string {
	m := make(map[string]string, len(t.domains))
	for k, v := range t.domains {
		m[k] = v
	}
	return m
}

// DefaultPool returns the default pool ("" if none).
func (t *Table) DefaultPool() string { return t.defaultPool }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Package routing decides which backend server holds a user's mailbox.
//
// The proxy's hot path calls Router.Route once per login attempt. Routes are
// read from an immutable Table published through an atomic pointer, so a
// lookup takes no lock and a change (a configuration reload, a raft apply
// in FSM) never blocks logins: it builds a new Table and swaps the pointer.
//
// User names are compared and hashed in their canonical form
// (NormalizeUser: lower case, NFC, the domain in IDNA ASCII form).
// Resolution order for a user name:
//  1. an exact user rule ("alice@example.com" -> backend or pool),
//  2. the first rule of the regex popmap that matches (RegexRule),
//  3. a domain rule ("@example.com" -> pool), for the part after the last '@',
//  4. the default pool.
//
// Inside a pool, a user always maps to the same backend by weighted
// rendezvous (highest random weight) hashing over the pool's active
// backends, so all of one user's sessions meet on one server (Dovecot
// director semantics) and removing a backend moves only its own users.
// The table's HashKey says whether the whole name, its local part or its
// domain is hashed (director_username_hash).
//
// The hash's choice changes when the pool does (a backend comes back up,
// weights change, a member is added). In a shared_storage pool an Affinity
// (node/affinity) then keeps a user whose sessions are open, or ended
// only recently, on the backend they use, for as long as that backend can
// take sessions, so that two servers never open one mailbox at once.
package routing

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
)

// Protocol is a mail access protocol spoken to clients and backends.
type Protocol string

const (
	IMAP Protocol = "imap"
	POP3 Protocol = "pop3"
	// Sieve is ManageSieve (RFC 5804).
	Sieve Protocol = "sieve"
	// Submission is SMTP message submission (RFC 6409, RFC 8314).
	Submission Protocol = "submission"
)

// TLSMode says how a connection is secured.
type TLSMode string

const (
	TLSNone     TLSMode = "none"     // plaintext
	TLSStartTLS TLSMode = "starttls" // plaintext, upgraded with STARTTLS/STLS
	TLSImplicit TLSMode = "implicit" // TLS from the first byte (RFC 8314)
)

// ForwardMode says how the real client address is passed to a backend.
type ForwardMode string

const (
	ForwardNone  ForwardMode = "none"  // the backend sees the proxy's address
	ForwardID    ForwardMode = "id"    // IMAP ID x-originating-ip (RFC 2971, Dovecot), POP3, ManageSieve and SMTP XCLIENT
	ForwardProxy ForwardMode = "proxy" // a PROXY protocol v2 header before the first byte
)

// BackendState is an operator-set state of a backend.
type BackendState string

const (
	StateActive   BackendState = "active"   // takes new sessions
	StateDraining BackendState = "draining" // no new sessions; existing ones continue
	StateDisabled BackendState = "disabled" // no sessions at all
)

// Backend is one IMAP/POP3 server. It is plain data, so that it can be
// stored in configuration files and replicated.
type Backend struct {
	ID       string `json:"id"`
	Host     string `json:"host"`
	IMAPPort int    `json:"imap_port,omitempty"` // 0: this backend does not serve IMAP
	POP3Port int    `json:"pop3_port,omitempty"` // 0: this backend does not serve POP3
	// SievePort is the ManageSieve port (usually 4190); 0: none.
	SievePort int `json:"sieve_port,omitempty"`
	// SubmissionPort is the SMTP submission port (587 with STARTTLS, 465
	// with implicit TLS); 0: none.
	SubmissionPort int `json:"submission_port,omitempty"`

	TLS                TLSMode `json:"tls"`
	TLSServerName      string  `json:"tls_server_name,omitempty"` // name to verify; default Host
	TLSCAFile          string  `json:"tls_ca_file,omitempty"`     // PEM bundle to verify against; empty: system roots
	InsecureSkipVerify bool    `json:"tls_insecure_skip_verify,omitempty"`

	Forward ForwardMode  `json:"forward"`
	Weight  int          `json:"weight"` // relative share inside a pool; 0 means 1
	State   BackendState `json:"state"`
}

// Port returns the backend's port for protocol p (0 if it has none).
func (b *Backend) Port(p Protocol) int {
	switch p {
	case IMAP:
		return b.IMAPPort
	case POP3:
		return b.POP3Port
	case Sieve:
		return b.SievePort
	case Submission:
		return b.SubmissionPort
	}
	return 0
}

// Addr returns host:port for protocol p, or "" if the backend does not serve p.
func (b *Backend) Addr(p Protocol) string {
	port := b.Port(p)
	if port == 0 {
		return ""
	}
	// Asked on every login: no fmt.
	if strings.IndexByte(b.Host, ':') >= 0 && !strings.HasPrefix(b.Host, "[") {
		return "[" + b.Host + "]:" + strconv.Itoa(port)
	}
	return b.Host + ":" + strconv.Itoa(port)
}

// Pool is a named set of backends.
type Pool struct {
	Name     string   `json:"name"`
	Backends []string `json:"backends"` // backend IDs
	// SharedStorage: every member can serve every user of the pool, so a
	// user may be moved to another member when its backend is down.
	SharedStorage bool `json:"shared_storage"`
}

// Target is the right-hand side of a rule: exactly one of Backend or Pool.
type Target struct {
	Backend string `json:"backend,omitempty"`
	Pool    string `json:"pool,omitempty"`
	// Login, on a user rule, is the name the proxy logs in to the backend
	// with instead of the client's (Perdition's popmap "user:
	// newname@host"); "" keeps the client's.
	Login string `json:"login,omitempty"`
	// Source, on a user rule, names the import that wrote it (CmdImport):
	// an import with --replace removes only the rules its own source
	// wrote. "" for rules written by the API or a configuration file.
	Source string `json:"source,omitempty"`
}

// Request is what a lookup is keyed on.
type Request struct {
	User     string
	Protocol Protocol
	// Pool, if set, routes the user inside this pool, whatever the rules
	// say (a listener whose logins all go to one pool, such as the
	// submission servers): Route.Rule is then "pool".
	Pool string
}

// Route is the result of a lookup.
type Route struct {
	Backend *Backend
	Pool    string // pool the backend was chosen from ("" for a direct rule)
	Rule    string // "user", "regex", "domain", "default" or "pool" (Request.Pool): which rule matched
	// SharedStorage: Backend was chosen from a shared_storage pool, so a
	// session opened there binds the user's affinity to it.
	SharedStorage bool
	// Steered: the user's affinity chose Backend, which is not the hash's
	// choice (the pool changed while the user's sessions were open).
	Steered bool
	// Login is the name to log in to the backend with, when the user's
	// rule renames the user (Target.Login); "" keeps the client's.
	Login string
}

var (
	// ErrNoRoute: no rule matches the user and there is no default pool.
	ErrNoRoute = errors.New("no route for user")
	// ErrUnavailable: a rule matched, but no backend can take the session.
	ErrUnavailable = errors.New("no backend available")
	// ErrNotReady: the replicated table has not caught up with the cluster
	// since this node started (FSM.SetLoaded), so it can say neither where
	// a user goes nor that the user has no route. Not the user's fault:
	// the proxy answers "try again later", never "wrong password".
	ErrNotReady = errors.New("routing table not caught up with the cluster yet")
)

// Router is the lookup interface the proxy uses. Implementations must be
// safe for concurrent use and must not block on I/O.
type Router interface {
	Route(Request) (Route, error)
}

// HealthFunc reports whether a backend is believed down. nil means all up.
type HealthFunc func(backendID string) (down bool)

// Affinity keeps the users of shared_storage pools on the backend their
// sessions use (Dovecot director's user affinity; node/affinity keeps it
// for the cluster). Implementations must be safe for concurrent use and
// must not block on I/O.
type Affinity interface {
	// Backends returns the backends the live or recently ended sessions
	// of user (normalised, NormalizeUser) use, the most preferred first;
	// nil if none. A lookup takes the first one that is a member of the
	// user's pool and can take the session (active, serving the protocol,
	// not down), else the hash's choice.
	Backends(user string) []string
}

// Table is an immutable routing snapshot. Build it with NewTable; never
// modify it afterwards.
type Table struct {
	backends    map[string]*Backend
	pools       map[string]*Pool
	users       *userMap
	domains     map[string]string // domain -> pool
	defaultPool string
	// hashKey: the part of a user's name pools hash on ("" is
	// HashAddress).
	hashKey HashKey
	// seed records what the configuration file named at the last seed
	// (WithSeed); nil if the table was never seeded.
	seed *seedRecord
	// regex is the regex popmap (WithRegexMap), tried in order after the
	// exact user rules.
	regex []regexRule
	// sources is the sync state of the directory sources
	// (WithSourceState), by source name; nil when none.
	sources map[string]SourceState
	// vips places virtual addresses on nodes (WithVIPs), by address.
	vips map[string]VIPAssignment
	// vipLeader is the VIP leader marker (WithVIPs).
	vipLeader string
}

// TableSpec is the input to NewTable.
type TableSpec struct {
	Backends    []Backend
	Pools       []Pool
	Users       map[string]Target // user -> target
	Domains     map[string]string // domain (without '@') -> pool
	DefaultPool string
	HashKey     HashKey // "" is HashAddress
}

// NewTable validates spec and builds an immutable table.
func NewTable(spec TableSpec) (*Table, error) {
	var err error
	t := &Table{
		backends: make(map[string]*Backend, len(spec.Backends)),
		pools:    make(map[string]*Pool, len(spec.Pools)),
		domains:  make(map[string]string, len(spec.Domains)),
	}
	for i := range spec.Backends {
		b := spec.Backends[i]
		if _, dup := t.backends[b.ID]; dup && b.ID != "" {
			return nil, fmt.Errorf("backend %q: defined twice", b.ID)
		}
		if err := normaliseBackend(&b); err != nil {
			return nil, fmt.Errorf("backend %d: %w", i, err)
		}
		t.backends[b.ID] = &b
	}
	for i := range spec.Pools {
		p := spec.Pools[i]
		if _, dup := t.pools[p.Name]; dup && p.Name != "" {
			return nil, fmt.Errorf("pool %q: defined twice", p.Name)
		}
		if err := t.checkPool(&p); err != nil {
			return nil, fmt.Errorf("pool %d: %w", i, err)
		}
		p.Backends = append([]string(nil), p.Backends...)
		t.pools[p.Name] = &p
	}
	for u, tgt := range spec.Users {
		if err := t.checkTarget(tgt); err != nil {
			return nil, fmt.Errorf("user %q: %w", u, err)
		}
		if u == "" {
			return nil, errors.New("empty user name")
		}
	}
	// Two names of one user (configuration validation refuses them; a
	// snapshot of an older version may hold them): one rule, the same on
	// every node.
	users := canonicalKeys(spec.Users, NormalizeUser)
	puts := make([]userPut, 0, len(users))
	for u, tg := range users {
		puts = append(puts, userPut{key: u, t: tg})
	}
	t.users = (*userMap)(nil).update(puts, nil)
	for d, pool := range canonicalKeys(spec.Domains, normalDomain) {
		if t.pools[pool] == nil {
			return nil, fmt.Errorf("domain %q: unknown pool %q", d, pool)
		}
		t.domains[d] = pool
	}
	if spec.DefaultPool != "" && t.pools[spec.DefaultPool] == nil {
		return nil, fmt.Errorf("default pool %q: unknown pool", spec.DefaultPool)
	}
	t.defaultPool = spec.DefaultPool
	if t.hashKey, err = ParseHashKey(string(spec.HashKey)); err != nil {
		return nil, err
	}
	return t, nil
}

// Backend returns the backend with the given id, or nil.
func (t *Table) Backend(id string) *Backend { return t.backends[id] }

// Len returns the number of backends, pools, user rules and domain rules.
func (t *Table) Len() (backends, pools, users, domains int) {
	return len(t.backends), len(t.pools), t.users.len(), len(t.domains)
}

// Lookup resolves req against the table. down, if not nil, reports backends
// that health checks consider down.
func (t *Table) Lookup(req Request, down HealthFunc) (Route, error) {
	return t.LookupWith(req, down, nil)
}

// LookupWith is Lookup with the users' affinity: aff, if not nil, is asked
// where the user's sessions are when the rule names a shared_storage pool.
func (t *Table) LookupWith(req Request, down HealthFunc, aff Affinity) (Route, error) {
	user := NormalizeUser(req.User)
	if req.Pool != "" {
		if t.pools[req.Pool] == nil {
			return Route{}, fmt.Errorf("%w: pool %s is not in the routing table", ErrUnavailable, req.Pool)
		}
		return t.pick(req.Pool, user, req.Protocol, down, aff, "pool")
	}
	if tgt, ok := t.users.get(user); ok {
		return t.routeTo(tgt, user, req.Protocol, down, aff, "user")
	}
	if len(t.regex) > 0 {
		if rule, val, ok := t.matchRegex(user); ok {
			tgt, err := t.ParseServer(val)
			if err != nil {
				return Route{}, fmt.Errorf("%w: regex rule %q gave %q: %v", ErrUnavailable, rule.Pattern, val, err)
			}
			return t.routeTo(tgt, user, req.Protocol, down, aff, "regex")
		}
	}
	if at := strings.LastIndexByte(user, '@'); at >= 0 {
		if pool, ok := t.domains[user[at+1:]]; ok {
			return t.pick(pool, user, req.Protocol, down, aff, "domain")
		}
	}
	if t.defaultPool != "" {
		return t.pick(t.defaultPool, user, req.Protocol, down, aff, "default")
	}
	return Route{}, ErrNoRoute
}

// routeTo routes user by a rule's target: its backend, or the pick of its
// pool, with its rename.
func (t *Table) routeTo(tgt Target, user string, proto Protocol, down HealthFunc, aff Affinity, rule string) (Route, error) {
	if tgt.Backend != "" {
		b := t.backends[tgt.Backend]
		if !usable(b, proto, down) {
			return Route{}, fmt.Errorf("%w: backend %s is %s", ErrUnavailable, b.ID, why(b, proto, down))
		}
		return Route{Backend: b, Rule: rule, Login: tgt.Login}, nil
	}
	r, err := t.pick(tgt.Pool, user, proto, down, aff, rule)
	if err == nil {
		r.Login = tgt.Login
	}
	return r, err
}

func usable(b *Backend, p Protocol, down HealthFunc) bool {
	return b.State == StateActive && b.Port(p) != 0 && (down == nil || !down(b.ID))
}

func why(b *Backend, p Protocol, down HealthFunc) string {
	switch {
	case b.State != StateActive:
		return string(b.State)
	case b.Port(p) == 0:
		return "not serving " + string(p)
	default:
		return "down"
	}
}

// pick chooses the pool member for user by weighted rendezvous hashing.
// Only active members serving the protocol take part. If the chosen member
// is down: with shared storage the next-best member is used; without, the
// mailbox lives only there and the lookup fails rather than log the user in
// on the wrong server. With shared storage, a member the user's affinity
// names (aff) comes before the hash's choice while it can take sessions.
func (t *Table) pick(poolName, user string, proto Protocol, down HealthFunc, aff Affinity, rule string) (Route, error) {
	p := t.pools[poolName]
	var best, bestUp *Backend
	bestScore, bestUpScore := math.Inf(-1), math.Inf(-1)
	uh := hashString(t.hashKey.Of(user))
	for _, id := range p.Backends {
		b := t.backends[id]
		if b.State != StateActive || b.Port(proto) == 0 {
			continue
		}
		s := Score(uh, b.ID, b.Weight)
		if s > bestScore {
			best, bestScore = b, s
		}
		if (down == nil || !down(b.ID)) && s > bestUpScore {
			bestUp, bestUpScore = b, s
		}
	}
	switch {
	case best == nil:
		return Route{}, fmt.Errorf("%w: pool %s has no active backend for %s", ErrUnavailable, poolName, proto)
	case !p.SharedStorage && best == bestUp:
		return Route{Backend: best, Pool: poolName, Rule: rule}, nil
	case !p.SharedStorage || bestUp == nil:
		return Route{}, fmt.Errorf("%w: backend %s (pool %s) is down", ErrUnavailable, best.ID, poolName)
	}
	r := Route{Backend: bestUp, Pool: poolName, Rule: rule, SharedStorage: true}
	if aff == nil {
		return r, nil
	}
	for _, id := range aff.Backends(user) {
		b := t.backends[id]
		if b == nil || !usable(b, proto, down) || !slices.Contains(p.Backends, id) {
			continue
		}
		if b != bestUp {
			r.Backend, r.Steered = b, true
		}
		break
	}
	return r, nil
}

// Score is the weighted rendezvous score of a backend for a user hash:
// -weight / ln(u), with u uniform in (0,1) derived from the pair. The
// backend with the highest score wins. It depends only on its inputs, so
// every node computes the same choice.
func Score(userHash uint64, backendID string, weight int) float64 {
	h := mix(userHash ^ hashString(backendID))
	// 53 random bits -> u in (0,1), never 0 or 1.
	u := (float64(h>>11) + 0.5) / (1 << 53)
	return -float64(weight) / math.Log(u)
}

// hashString is 64-bit FNV-1a: stable across processes and versions.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix is the splitmix64 finalizer, to spread FNV's weak low bits.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Static is a Router over a table that is replaced as a whole (from the
// configuration file, on start and on reload).
type Static struct {
	table atomic.Pointer[Table]
	down  atomic.Pointer[HealthFunc]
	aff   atomic.Pointer[Affinity]
}

// NewStatic returns a router serving t.
func NewStatic(t *Table) *Static {
	s := &Static{}
	s.table.Store(t)
	return s
}

// Swap publishes a new table; lookups in flight finish on the old one.
func (s *Static) Swap(t *Table) { s.table.Store(t) }

// Table returns the current snapshot.
func (s *Static) Table() *Table { return s.table.Load() }

// SetHealth installs the function that reports down backends.
func (s *Static) SetHealth(f HealthFunc) { s.down.Store(&f) }

// SetAffinity installs the users' affinity (nil: none).
func (s *Static) SetAffinity(a Affinity) { s.aff.Store(&a) }

// Route implements Router.
func (s *Static) Route(req Request) (Route, error) {
	var down HealthFunc
	if f := s.down.Load(); f != nil {
		down = *f
	}
	return s.table.Load().LookupWith(req, down, loadAffinity(&s.aff))
}

// loadAffinity returns the installed affinity, or nil.
func loadAffinity(p *atomic.Pointer[Affinity]) Affinity {
	if a := p.Load(); a != nil {
		return *a
	}
	return nil
}

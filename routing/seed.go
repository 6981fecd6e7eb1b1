package routing

import (
	"slices"
	"strings"
)

// Seed is what a node's configuration file says about the routing table:
// the backends, pools and rules it names. The file seeds the replicated
// table at every start and reload of every node, and the API changes it in
// between, so the table keeps a record of the last seed (replicated and
// in snapshots like the rest) and WithSeed applies only what the file
// changed since:
//
//   - an entry the file names for the first time (not in the record) is
//     written as the file says;
//   - an entry the file names exactly as it did at the last seed is left
//     as the table has it: what the API did to it since (a drain, a new
//     weight, a re-pinned user, a deletion) stays;
//   - an entry the file changed is written again: for a backend, only the
//     fields the file changed (so a drained backend whose port the file
//     changes stays drained, and a changed state in the file applies);
//     for a pool, a user or domain rule and the default pool, the file's
//     value;
//   - the file never deletes: an entry it no longer names stays in the
//     table and leaves the record (named again later, it is new again).
type Seed struct {
	Backends    []Backend         `json:"backends,omitempty"`
	Pools       []Pool            `json:"pools,omitempty"`
	Users       []UserRoute       `json:"users,omitempty"`
	Domains     map[string]string `json:"domains,omitempty"` // domain (without '@') -> pool
	DefaultPool string            `json:"default_pool,omitempty"`
}

// SeedOf returns the seed of a table spec (a configuration file's routing
// section), in a stable order.
func SeedOf(spec TableSpec) Seed {
	s := Seed{Backends: spec.Backends, Pools: spec.Pools, Domains: spec.Domains, DefaultPool: spec.DefaultPool}
	for _, u := range sortedKeys(spec.Users) {
		s.Users = append(s.Users, UserRoute{User: u, Target: spec.Users[u]})
	}
	return s
}

// IsEmpty reports whether the seed names nothing.
func (s Seed) IsEmpty() bool {
	return len(s.Backends) == 0 && len(s.Pools) == 0 && len(s.Users) == 0 && len(s.Domains) == 0 && s.DefaultPool == ""
}

// seedRecord is what the file named at the last seed, normalised.
type seedRecord struct {
	backends    map[string]Backend
	pools       map[string]Pool
	users       map[string]Target
	domains     map[string]string
	defaultPool string
}

func (r *seedRecord) backend(id string) (Backend, bool) {
	if r == nil {
		return Backend{}, false
	}
	b, ok := r.backends[id]
	return b, ok
}

// recordOf builds the record of a seed already applied (from a snapshot).
func recordOf(s Seed) *seedRecord {
	r := &seedRecord{backends: map[string]Backend{}, pools: map[string]Pool{}, users: map[string]Target{},
		domains: map[string]string{}, defaultPool: s.DefaultPool}
	for _, b := range s.Backends {
		r.backends[b.ID] = b
	}
	for _, p := range s.Pools {
		p.Backends = slices.Clone(p.Backends)
		r.pools[p.Name] = p
	}
	for _, u := range s.Users {
		r.users[NormalizeUser(u.User)] = u.Target
	}
	r.domains = canonicalKeys(s.Domains, normalDomain)
	return r
}

func normalDomain(d string) string { return NormalizeDomain(strings.TrimPrefix(d, "@")) }

// Seeded returns the record of the last seed (empty if the table was never
// seeded), sorted.
func (t *Table) Seeded() Seed {
	r := t.seed
	if r == nil {
		return Seed{}
	}
	s := Seed{DefaultPool: r.defaultPool}
	for _, id := range sortedKeys(r.backends) {
		s.Backends = append(s.Backends, r.backends[id])
	}
	for _, name := range sortedKeys(r.pools) {
		p := r.pools[name]
		p.Backends = slices.Clone(p.Backends)
		s.Pools = append(s.Pools, p)
	}
	for _, u := range sortedKeys(r.users) {
		s.Users = append(s.Users, UserRoute{User: u, Target: r.users[u]})
	}
	if len(r.domains) > 0 {
		s.Domains = make(map[string]string, len(r.domains))
		for d, p := range r.domains {
			s.Domains[d] = p
		}
	}
	return s
}

// WithSeed returns the table with a configuration file's seed applied
// against the record of the previous one (see Seed), and s as the new
// record. All or nothing: an entry that does not fit the table (a pool
// naming a backend the API deleted) refuses the whole seed.
func (t *Table) WithSeed(s Seed) (*Table, error) {
	old := t.seed
	if old == nil {
		old = &seedRecord{}
	}
	rec := &seedRecord{backends: map[string]Backend{}, pools: map[string]Pool{}, users: map[string]Target{},
		domains: map[string]string{}, defaultPool: s.DefaultPool}
	n := t
	var err error
	for i := range s.Backends {
		b := s.Backends[i]
		if err := normaliseBackend(&b); err != nil {
			return nil, err
		}
		if _, dup := rec.backends[b.ID]; dup {
			return nil, invalid("seed: backend %s named twice", b.ID)
		}
		rec.backends[b.ID] = b
		was, seen := old.backend(b.ID)
		cur := n.backends[b.ID]
		switch {
		case seen && was == b:
			// Unchanged in the file: the table keeps what the API made of it.
		case !seen || cur == nil:
			n, err = n.WithBackend(b)
		default:
			n, err = n.WithBackend(changedFields(*cur, was, b))
		}
		if err != nil {
			return nil, err
		}
	}
	for _, p := range s.Pools {
		if _, dup := rec.pools[p.Name]; dup {
			return nil, invalid("seed: pool %s named twice", p.Name)
		}
		p.Backends = slices.Clone(p.Backends)
		rec.pools[p.Name] = p
		if was, seen := old.pools[p.Name]; seen && samePool(was, p) {
			continue
		}
		if n, err = n.WithPool(p); err != nil {
			return nil, err
		}
	}
	var users []UserRoute
	for _, u := range s.Users {
		name := NormalizeUser(u.User)
		if _, dup := rec.users[name]; dup {
			return nil, invalid("seed: user %s named twice", name)
		}
		rec.users[name] = u.Target
		if was, seen := old.users[name]; seen && was == u.Target {
			continue
		}
		users = append(users, UserRoute{User: name, Target: u.Target})
	}
	if len(users) > 0 {
		if n, err = n.WithUsers(users); err != nil {
			return nil, err
		}
	}
	for _, d := range sortedKeys(s.Domains) {
		pool, name := s.Domains[d], normalDomain(d)
		if _, dup := rec.domains[name]; dup {
			return nil, invalid("seed: domain %s named twice", name)
		}
		rec.domains[name] = pool
		if was, seen := old.domains[name]; seen && was == pool {
			continue
		}
		if n, err = n.WithDomain(name, pool); err != nil {
			return nil, err
		}
	}
	if s.DefaultPool != "" && s.DefaultPool != old.defaultPool {
		if n, err = n.WithDefaultPool(s.DefaultPool); err != nil {
			return nil, err
		}
	}
	out := *n
	out.seed = rec
	return &out, nil
}

// changedFields returns cur with the fields that the file changed (from
// was to now) set to now's values; the others keep cur's (the API's).
func changedFields(cur, was, now Backend) Backend {
	out := cur
	takeChanged(&out.Host, was.Host, now.Host)
	takeChanged(&out.IMAPPort, was.IMAPPort, now.IMAPPort)
	takeChanged(&out.POP3Port, was.POP3Port, now.POP3Port)
	takeChanged(&out.SievePort, was.SievePort, now.SievePort)
	takeChanged(&out.SubmissionPort, was.SubmissionPort, now.SubmissionPort)
	takeChanged(&out.TLS, was.TLS, now.TLS)
	takeChanged(&out.TLSServerName, was.TLSServerName, now.TLSServerName)
	takeChanged(&out.TLSCAFile, was.TLSCAFile, now.TLSCAFile)
	takeChanged(&out.InsecureSkipVerify, was.InsecureSkipVerify, now.InsecureSkipVerify)
	takeChanged(&out.Forward, was.Forward, now.Forward)
	takeChanged(&out.Weight, was.Weight, now.Weight)
	takeChanged(&out.State, was.State, now.State)
	return out
}

func takeChanged[T comparable](dst *T, was, now T) {
	if was != now {
		*dst = now
	}
}

func samePool(a, b Pool) bool {
	return a.Name == b.Name && a.SharedStorage == b.SharedStorage && slices.Equal(a.Backends, b.Backends)
}

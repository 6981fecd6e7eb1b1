package routing

// userShards splits the user rules so that a change copies one shard, not
// the whole table: at 1,000,000 users a shard holds about 4,000 entries.
const userShards = 256

// userMap is an immutable, sharded map of user rules. Changes return a new
// userMap sharing every untouched shard with the old one.
type userMap struct {
	shards [userShards]map[string]Target
	n      int
}

func shardOf(user string) int { return int(mix(hashString(user)) & (userShards - 1)) }

func (m *userMap) get(user string) (Target, bool) {
	if m == nil {
		return Target{}, false
	}
	t, ok := m.shards[shardOf(user)][user]
	return t, ok
}

func (m *userMap) len() int {
	if m == nil {
		return 0
	}
	return m.n
}

// update returns a copy of m with puts applied and dels removed (users
// already normalised). Each touched shard is copied once.
func (m *userMap) update(puts map[string]Target, dels []string) *userMap {
	next := &userMap{}
	if m != nil {
		*next = *m // copies the shard pointers, not the shards
	}
	copied := [userShards]bool{}
	touch := func(i int) map[string]Target {
		if !copied[i] {
			old := next.shards[i]
			cp := make(map[string]Target, len(old)+1)
			for k, v := range old {
				cp[k] = v
			}
			next.shards[i] = cp
			copied[i] = true
		}
		return next.shards[i]
	}
	for u, t := range puts {
		sh := touch(shardOf(u))
		if _, exists := sh[u]; !exists {
			next.n++
		}
		sh[u] = t
	}
	for _, u := range dels {
		i := shardOf(u)
		if _, exists := next.shards[i][u]; !exists {
			continue
		}
		delete(touch(i), u)
		next.n--
	}
	return next
}

// each calls f for every user rule (in no particular order) until f
// returns false.
func (m *userMap) each(f func(user string, t Target) bool) {
	if m == nil {
		return
	}
	for _, sh := range m.shards {
		for u, t := range sh {
			if !f(u, t) {
				return
			}
		}
	}
}

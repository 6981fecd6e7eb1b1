package routing

import "maps"

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

// userPut is one rule to write: the user's canonical key and its target.
type userPut struct {
	key string
	t   Target
}

// update returns a copy of m with puts written, in order (the last put of
// a key wins), and then dels removed (users already normalised). Each
// shard that a change touches is copied once per update, however many of
// its rules change, and no other is: the cost of an update is the size of
// the shards it touches (GroupByShard). A shard is copied with
// maps.Clone, which copies the map's memory rather than inserting every
// rule again, then changed in place; one that a new rule would create is
// made at its size; one that deletions more than halve is built again,
// so that it does not keep the room of the rules it lost.
func (m *userMap) update(puts []userPut, dels []string) *userMap {
	next := &userMap{}
	if m != nil {
		*next = *m // copies the shard pointers, not the shards
	}
	if len(puts) == 0 && len(dels) == 0 {
		return next
	}
	// The shard of each put, hashed once, and how many each shard gets.
	shard := make([]uint8, len(puts))
	var grow [userShards]int32
	for i, p := range puts {
		s := shardOf(p.key)
		shard[i] = uint8(s)
		grow[s]++
	}
	var before [userShards]int32 // a copied shard's size when copied
	copied := [userShards]bool{}
	touch := func(s int) map[string]Target {
		if !copied[s] {
			old := next.shards[s]
			if len(old) == 0 {
				next.shards[s] = make(map[string]Target, grow[s])
			} else {
				next.shards[s] = maps.Clone(old)
			}
			before[s] = int32(len(old))
			copied[s] = true
		}
		return next.shards[s]
	}
	for i, p := range puts {
		sh := touch(int(shard[i]))
		if _, exists := sh[p.key]; !exists {
			next.n++
		}
		sh[p.key] = p.t
	}
	var shrunk [userShards]bool
	for _, u := range dels {
		s := shardOf(u)
		if _, exists := next.shards[s][u]; !exists {
			continue
		}
		delete(touch(s), u)
		next.n--
		shrunk[s] = true
	}
	for s := range next.shards {
		if !shrunk[s] {
			continue
		}
		switch sh := next.shards[s]; {
		case len(sh) == 0:
			next.shards[s] = nil
		case int32(len(sh)) < before[s]/2:
			// A map never gives back the room of deleted entries:
			// a copy made at its new size does.
			cp := make(map[string]Target, len(sh))
			for k, v := range sh {
				cp[k] = v
			}
			next.shards[s] = cp
		}
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

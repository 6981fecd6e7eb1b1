package routing

// UserShards is the number of shards of a table's user rules. A change
// copies each shard it touches (copy-on-write, see userMap), so a batch
// of rules that falls in few shards is cheap to apply and one spread over
// all of them copies the whole table.
const UserShards = userShards

// GroupByShard numbers shards with a byte.
const _ = uint8(userShards - 1)

// ShardOf returns the shard that holds the rule of user, a canonical key
// (NormalizeUser). It is a property of this binary's table, never of the
// replicated state: a writer may group its batches by it (GroupByShard)
// to make them cheaper to apply, and a node whose table is sharded
// otherwise applies the same commands to the same result, only slower.
func ShardOf(user string) int { return shardOf(user) }

// GroupByShard returns items reordered so that those whose keys (key: the
// item's canonical user key) fall in one shard are adjacent, shards in
// ascending order. The order is stable: items of one shard keep their
// order, so two rules for one user keep theirs. A bulk writer that cuts
// the result into batches (the directory syncer's and the bulk import's
// commands of 5,000 users) writes batches that each touch one or two
// shards, instead of every shard for a batch sorted by name.
func GroupByShard[T any](items []T, key func(T) string) []T {
	if len(items) < 2 {
		return append([]T(nil), items...)
	}
	shard := make([]uint8, len(items))
	var start [userShards + 1]int
	for i, it := range items {
		s := shardOf(key(it))
		shard[i] = uint8(s)
		start[s+1]++
	}
	for s := 1; s <= userShards; s++ {
		start[s] += start[s-1]
	}
	out := make([]T, len(items))
	for i, it := range items {
		s := shard[i]
		out[start[s]] = it
		start[s]++
	}
	return out
}

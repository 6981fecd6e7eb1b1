package affinity

import (
	"slices"
	"sync"
)

// maxOrigins bounds the nodes whose bindings are kept.
const maxOrigins = 256

// origin holds the bindings one other node gossiped, under its name.
// Merges of its messages run one at a time (merge); mu guards the
// fields, which lookups read.
type origin struct {
	merge sync.Mutex
	mu    sync.RWMutex
	known bool   // a message has been merged
	epoch uint64 // the sender's process run
	// stateSeq is the sequence number of the newest state merged from
	// the epoch: a message of the epoch made before it says nothing the
	// state did not (and a replayed one would undo what changed since).
	stateSeq uint64
	heard    int64 // local unix ms of its last message
	m        map[key][]rbinding
	n        int // bindings in m
}

// rbinding is another node's binding.
type rbinding struct {
	backend string
	live    bool
	since   int64 // the sender's clock
	ended   int64 // local unix ms (not live)
	ver     uint64
}

// state says whether r counts as live now, and else when it ended: the
// live bindings of a node not heard from for Lease ended then.
func (r *rbinding) state(heard, now int64) (live bool, ended int64) {
	if !r.live {
		return false, r.ended
	}
	if now-heard <= Lease.Milliseconds() {
		return true, 0
	}
	return false, heard + Lease.Milliseconds()
}

// originFor returns the origin record of node name, creating it; nil when
// there are too many.
func (t *Table) originFor(name string) *origin {
	t.omu.RLock()
	o := t.origins[name]
	t.omu.RUnlock()
	if o != nil {
		return o
	}
	t.omu.Lock()
	defer t.omu.Unlock()
	if o = t.origins[name]; o != nil {
		return o
	}
	if len(t.origins) >= maxOrigins {
		return nil
	}
	o = &origin{m: map[key][]rbinding{}}
	t.origins[name] = o
	return o
}

// count is the number of bindings held (o locked).
func (o *origin) count() int {
	n := 0
	for _, rs := range o.m {
		n += len(rs)
	}
	return n
}

// install replaces the bindings with m, of n bindings (o locked).
func (o *origin) install(t *Table, m map[key][]rbinding, n int) {
	t.stats.remote.Add(int64(n - o.n))
	o.m, o.n = m, n
}

// dropCovered drops the bindings tombstone c covers (o locked).
func (o *origin) dropCovered(t *Table, c clearMsg) {
	rs, ok := o.m[c.k]
	if !ok {
		return
	}
	kept := slices.DeleteFunc(rs, func(r rbinding) bool { return r.since <= c.at })
	o.n -= len(rs) - len(kept)
	t.stats.remote.Add(-int64(len(rs) - len(kept)))
	if len(kept) == 0 {
		delete(o.m, c.k)
	} else {
		o.m[c.k] = kept
	}
}

// expire drops the bindings that expired (o locked).
func (o *origin) expire(t *Table, now, exp int64) {
	for k, rs := range o.m {
		kept := slices.DeleteFunc(rs, func(r rbinding) bool {
			live, ended := r.state(o.heard, now)
			return !live && now-ended >= exp
		})
		o.n -= len(rs) - len(kept)
		t.stats.remote.Add(-int64(len(rs) - len(kept)))
		if len(kept) == 0 {
			delete(o.m, k)
		} else {
			o.m[k] = kept
		}
	}
}

// put stores r under k in m unless m holds a later version of the same
// binding; it reports whether m grew.
func put(m map[key][]rbinding, k key, r rbinding) (added bool) {
	rs := m[k]
	for i := range rs {
		if rs[i].backend == r.backend {
			if rs[i].ver < r.ver {
				rs[i] = r
			}
			return false
		}
	}
	m[k] = append(rs, r)
	return true
}

// remove drops the binding (k, backend) from m if its version is below
// ver; it reports whether m shrank.
func remove(m map[key][]rbinding, k key, backend string, ver uint64) (removed bool) {
	rs := m[k]
	for i := range rs {
		if rs[i].backend == backend && rs[i].ver < ver {
			rs = slices.Delete(rs, i, i+1)
			if len(rs) == 0 {
				delete(m, k)
			} else {
				m[k] = rs
			}
			return true
		}
	}
	return false
}

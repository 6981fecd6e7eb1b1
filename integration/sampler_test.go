package integration

// The observer of the VIP drills (failover_test.go, vipspread_test.go,
// storm_test.go): which node namespaces hold each address, read every
// period from the namespaces themselves (not from what the nodes say),
// every change recorded with its time, so that a drill can ask who held an
// address at any moment and whether two live nodes ever held one at once.

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/netns"
)

// addrSampler samples, every period, which node namespaces hold each
// address (with the process serving or not), and records each change.
type addrSampler struct {
	addrs   []netip.Addr
	mu      sync.Mutex
	samples int
	events  []addrEvent
	last    string
	loop    *periodic
}

// addrEvent is one observed state: per address, the live holders and the
// holders whose process does not serve (an address left by a kill).
type addrEvent struct {
	at   time.Time
	live map[netip.Addr][]string
	dead map[netip.Addr][]string
}

func (e addrEvent) String() string {
	var b strings.Builder
	keys := make([]netip.Addr, 0, len(e.live))
	for a := range e.live {
		keys = append(keys, a)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Less(keys[j]) })
	for _, a := range keys {
		fmt.Fprintf(&b, "%s:%v", a, e.live[a])
		if len(e.dead[a]) > 0 {
			fmt.Fprintf(&b, "(dead %v)", e.dead[a])
		}
		b.WriteString(" ")
	}
	return strings.TrimSpace(b.String())
}

func sampleAddrs(t *testing.T, nodes []*drillNode, addrs []netip.Addr, every time.Duration) *addrSampler {
	s := &addrSampler{addrs: addrs}
	var ws []*netns.Watcher
	for _, nd := range nodes {
		w, err := nd.h.Watch()
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	pass := func(order []int) addrEvent {
		e := addrEvent{at: time.Now(), live: map[netip.Addr][]string{}, dead: map[netip.Addr][]string{}}
		for _, a := range addrs {
			e.live[a] = nil
		}
		for _, i := range order {
			nd := nodes[i]
			alive := nd.serving()
			for _, a := range addrs {
				if has, err := ws[i].HasAddr(a); err != nil || !has {
					continue
				}
				if alive {
					e.live[a] = append(e.live[a], nd.name)
				} else {
					e.dead[a] = append(e.dead[a], nd.name)
				}
			}
		}
		for _, a := range addrs {
			sort.Strings(e.live[a])
		}
		return e
	}
	var fwd, rev []int
	for i := range nodes {
		fwd = append(fwd, i)
		rev = append([]int{i}, rev...)
	}
	s.loop = runEvery(every, func() {
		// Reading the namespaces one after the other can see a handover
		// from an earlier-read node to a later-read one as two holders. A
		// real overlap shows in a second pass in the reverse order too;
		// an artefact cannot: keep what both passes saw.
		e := pass(fwd)
		for _, a := range addrs {
			if len(e.live[a]) > 1 {
				r := pass(rev)
				for _, b := range addrs {
					var both []string
					for _, x := range e.live[b] {
						if slices.Contains(r.live[b], x) {
							both = append(both, x)
						}
					}
					e.live[b] = both
				}
				break
			}
		}
		s.mu.Lock()
		s.samples++
		if k := e.String(); k != s.last {
			s.last = k
			s.events = append(s.events, e)
		}
		s.mu.Unlock()
	}, func() {
		for _, w := range ws {
			w.Close()
		}
	})
	return s
}

func (s *addrSampler) stop() {
	if s != nil {
		s.loop.stop()
	}
}

// periodic runs a function every period in a goroutine of its own until
// stopped (runEvery).
type periodic struct {
	stopc, done chan struct{}
	once        sync.Once
}

// runEvery calls f at once and then every period until stop, and then end
// (if not nil) in the same goroutine.
func runEvery(period time.Duration, f, end func()) *periodic {
	p := &periodic{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		if end != nil {
			defer end()
		}
		tk := time.NewTicker(period)
		defer tk.Stop()
		for {
			f()
			select {
			case <-p.stopc:
				return
			case <-tk.C:
			}
		}
	}()
	return p
}

// stop stops the calls and waits until the last one (and end) returned.
func (p *periodic) stop() {
	p.once.Do(func() { close(p.stopc) })
	<-p.done
}

// since returns the events at or after t, preceded by the state in force
// at t.
func (s *addrSampler) since(t time.Time) []addrEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := sort.Search(len(s.events), func(i int) bool { return !s.events[i].at.Before(t) })
	var out []addrEvent
	if j > 0 && (j == len(s.events) || s.events[j].at.After(t)) {
		out = append(out, s.events[j-1])
	}
	return append(out, s.events[j:]...)
}

// holders returns the live holders of a now.
func (s *addrSampler) holders(a netip.Addr) []string {
	evs := s.since(time.Now())
	if len(evs) == 0 {
		return nil
	}
	return evs[len(evs)-1].live[a]
}

// split returns the first event since t with two live holders of an
// address (nil if none).
func (s *addrSampler) split(t time.Time) *addrEvent {
	for _, e := range s.since(t) {
		for _, h := range e.live {
			if len(h) > 1 {
				return &e
			}
		}
	}
	return nil
}

// changes counts how often a's live holders changed since t.
func (s *addrSampler) changes(t time.Time, a netip.Addr) int {
	n := 0
	var last []string
	for i, e := range s.since(t) {
		if i > 0 && !slices.Equal(e.live[a], last) {
			n++
		}
		last = e.live[a]
	}
	return n
}

// ownerChanges counts how often a moved from one live holder to another
// since t (the moments without a holder in between not counted).
func (s *addrSampler) ownerChanges(t time.Time, a netip.Addr) int {
	n := 0
	var last []string
	for _, e := range s.since(t) {
		if len(e.live[a]) == 0 {
			continue
		}
		if last != nil && !slices.Equal(e.live[a], last) {
			n++
		}
		last = e.live[a]
	}
	return n
}

// firstEvent returns the time of the first event since t that satisfies
// f (t itself if the state in force at t does).
func (s *addrSampler) firstEvent(t time.Time, f func(addrEvent) bool) (time.Time, bool) {
	for _, e := range s.since(t) {
		if f(e) {
			if e.at.Before(t) {
				return t, true
			}
			return e.at, true
		}
	}
	return time.Time{}, false
}

// firstWhen returns the time of the first event since t at which a's live
// holders satisfy f.
func (s *addrSampler) firstWhen(t time.Time, a netip.Addr, f func(live []string) bool) (time.Time, bool) {
	return s.firstEvent(t, func(e addrEvent) bool { return f(e.live[a]) })
}

// waitWhen waits up to d for firstWhen to find a time.
func (s *addrSampler) waitWhen(t time.Time, a netip.Addr, d time.Duration, f func(live []string) bool) (time.Time, bool) {
	for deadline := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		if at, ok := s.firstWhen(t, a, f); ok {
			return at, true
		}
		if time.Now().After(deadline) {
			return time.Time{}, false
		}
	}
}

func (s *addrSampler) dump(t time.Time) string {
	var b strings.Builder
	for _, e := range s.since(t) {
		fmt.Fprintf(&b, "  %+6dms %v\n", e.at.Sub(t).Milliseconds(), e)
	}
	return b.String()
}

// neverSplit fails t if two live nodes held an address at once at any
// sample since start, and returns how many samples were taken.
func (s *addrSampler) neverSplit(t *testing.T, start time.Time) int {
	t.Helper()
	if e := s.split(start); e != nil {
		t.Errorf("two live nodes held an address at once: %v (%v after the start):\n%s", e, e.at.Sub(start), s.dump(start))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples
}

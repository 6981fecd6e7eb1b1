package main

// Reconnect mode (-reconnect): the load of a reconnect storm. loadimap logs
// -n sessions in (at -rate, from the -src addresses in turn), holds them,
// and logs a session in again as soon as it is lost (end of stream, reset,
// or an untagged BYE), as a mail client does: the first attempt at once,
// then with a jittered, doubling back-off from -retry-min to -retry-max.
// With -resume each session keeps the TLS session ticket of its own last
// connection and offers it when it reconnects (a per-client cache, as real
// clients have; one cache shared by every session would hold one ticket),
// and keeps it when a connection breaks during the handshake (see attempt).
//
// What happens is cut into epochs by whoever runs the drill (a test, a
// script) with signals, since the event that causes the storm (a node
// killed, a planned move, an upgrade) is theirs:
//
//	SIGUSR1  start a new epoch now (send it just before causing the event)
//	SIGUSR2  report the current epoch: one "RESULT <epoch> <json>" line
//	SIGTERM  close every session and exit (SIGINT too)
//
// Lines on stdout, one per event, for the driver to wait on:
//
//	READY <json>        every session logged in once (the json is epoch 0)
//	EPOCH <n>           epoch n started
//	BACK <n> <ms> <lost> every session is logged in, ms after epoch n
//	                    started, and <lost> sessions were lost in it (again
//	                    whenever this holds after a loss: sessions ended
//	                    over a spread come back before the last is lost)
//	RESULT <n> <json>   the figures of epoch n (stormEpoch)
//	DONE                after SIGTERM, every session closed
//
// Times are from the epoch's start; "back" counts sessions lost in the
// epoch that are logged in again, and the time until p% are back is over
// the sessions lost in the epoch (bench/README.md, "Reconnect storms").

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/portico-mail/portico/bench/internal/procstat"
	"github.com/portico-mail/portico/bench/internal/rlimit"
)

var (
	reconnect = flag.Bool("reconnect", false, "reconnect mode: hold -n sessions and log each in again as soon as it is lost; epochs cut by SIGUSR1/SIGUSR2 (see bench/README.md)")
	resume    = flag.Bool("resume", false, "reconnect mode: each session offers the TLS session ticket of its own last connection when it reconnects")
	srcList   = flag.String("src", "", "reconnect mode: local addresses to connect from, in turn (comma-separated; FIRST-LAST ranges of IPv4 addresses)")
	retryMin  = flag.Duration("retry-min", 250*time.Millisecond, "reconnect mode: back-off after a failed attempt, doubling per further failure, jittered (the first attempt after a loss is immediate)")
	retryMax  = flag.Duration("retry-max", 5*time.Second, "reconnect mode: longest back-off between attempts")
	slowLog   = flag.Duration("slow", 3*time.Second, "reconnect mode: log every attempt that takes longer than this, with the time of each phase (0: never)")
)

// ticketSlot is one client's TLS session cache: the last ticket it got.
type ticketSlot struct {
	mu sync.Mutex
	cs *tls.ClientSessionState
}

func (t *ticketSlot) Get(string) (*tls.ClientSessionState, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cs, t.cs != nil
}

func (t *ticketSlot) Put(_ string, cs *tls.ClientSessionState) {
	t.mu.Lock()
	t.cs = cs
	t.mu.Unlock()
}

// stormClient is one simulated mail client. Fields below mu are guarded
// by storm.mu.
type stormClient struct {
	id    int
	user  string
	conf  *tls.Config // nil: plaintext
	local *net.TCPAddr

	live      bool
	conn      net.Conn
	lostAt    time.Time
	lostEpoch int
}

// stormEpoch is what loadimap saw in one epoch (the JSON of RESULT).
type stormEpoch struct {
	Epoch int       `json:"epoch"`
	Start time.Time `json:"start"`
	// Sessions is -n; HeldAtStart those logged in when the epoch began.
	Sessions    int `json:"sessions"`
	HeldAtStart int `json:"held_at_start"`
	// Lost: sessions lost in the epoch; LossEvents counts a session lost
	// twice twice; Back: of Lost, logged in again since; LiveNow: sessions
	// logged in at the report.
	Lost        int            `json:"lost"`
	LossEvents  int            `json:"loss_events"`
	LossReasons map[string]int `json:"loss_reasons,omitempty"`
	Back        int            `json:"back"`
	LiveNow     int            `json:"live_now"`
	// From the epoch's start, ms (null: not reached).
	FirstLossMS *float64 `json:"first_loss_ms"`
	LastLossMS  *float64 `json:"last_loss_ms"`
	Back50MS    *float64 `json:"back_50_ms"`
	Back90MS    *float64 `json:"back_90_ms"`
	Back99MS    *float64 `json:"back_99_ms"`
	Back100MS   *float64 `json:"back_100_ms"`
	// Outage: per lost session, from its loss to its login again, ms.
	Outage struct {
		P50 float64 `json:"p50_ms"`
		P99 float64 `json:"p99_ms"`
		Max float64 `json:"max_ms"`
	} `json:"outage"`
	// Attempts: connections tried in the epoch; Failed: those that did
	// not end logged in, by "phase:kind" (dial:refused, tls:eof, login:no,
	// ...) with one message each.
	Attempts       int               `json:"attempts"`
	Failed         int               `json:"failed_attempts"`
	Failures       map[string]int    `json:"failures,omitempty"`
	FailureSamples map[string]string `json:"failure_samples,omitempty"`
	// Logins that succeeded in the epoch, by TLS handshake kind.
	Logins         int `json:"logins"`
	Resumed        int `json:"resumed"`
	FullHandshakes int `json:"full_handshakes"`
	// Logins: connect start -> tagged OK of LOGIN, successful attempts.
	LoginLatency struct {
		P50 float64 `json:"p50_ms"`
		P99 float64 `json:"p99_ms"`
		Max float64 `json:"max_ms"`
	} `json:"login_latency"`
	// loadimap's own CPU and the machine's busy share during the epoch
	// (100 = every core).
	SelfCPUms   float64 `json:"loadimap_cpu_ms"`
	HostBusyPct float64 `json:"host_busy_pct"`
	DurationS   float64 `json:"duration_s"`

	lost      map[int]time.Time
	back      map[int]time.Time
	loginLat  []time.Duration
	errs      *errCounter
	selfCPU0  time.Duration
	host0     procstat.Host
	backShown bool
	reported  *stormEpoch // the figures as of the RESULT line
}

type storm struct {
	base    *tls.Config
	clients []*stormClient
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	outMu sync.Mutex

	mu     sync.Mutex
	live   int
	ep     *stormEpoch
	epochs []*stormEpoch
}

func newEpoch(n, k, held int) *stormEpoch {
	return &stormEpoch{Epoch: k, Start: time.Now(), Sessions: n, HeldAtStart: held,
		lost: map[int]time.Time{}, back: map[int]time.Time{}, errs: newErrCounter(),
		LossReasons: map[string]int{}, selfCPU0: selfCPU(), host0: procstat.ReadHost()}
}

// runReconnect is the reconnect mode's main; it returns the exit status.
func runReconnect() int {
	lim, err := rlimit.RaiseNoFile()
	if err != nil {
		log.Printf("raising RLIMIT_NOFILE: %v", err)
		return 1
	}
	if uint64(*n)+64 > lim {
		log.Printf("-n %d needs more than RLIMIT_NOFILE %d descriptors", *n, lim)
		return 1
	}
	srcs, err := parseSources(*srcList)
	if err != nil {
		log.Printf("-src: %v", err)
		return 2
	}
	st := &storm{}
	if *useTLS {
		if st.base, err = clientTLSConfig(); err != nil {
			log.Print(err)
			return 2
		}
	}
	st.ctx, st.cancel = context.WithCancel(context.Background())
	st.ep = newEpoch(*n, 0, 0)
	st.epochs = []*stormEpoch{st.ep}
	for i := range *n {
		cl := &stormClient{id: i, user: *userPrefix + strconv.Itoa(i), conf: st.base}
		if st.base != nil && *resume {
			cl.conf = st.base.Clone()
			cl.conf.ClientSessionCache = &ticketSlot{}
		}
		if len(srcs) > 0 {
			cl.local = &net.TCPAddr{IP: srcs[i%len(srcs)].AsSlice()}
		}
		st.clients = append(st.clients, cl)
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTERM, syscall.SIGINT)
	st.wg.Add(1)
	go st.spawn()
	if !*quiet {
		go st.progress()
	}
	for sig := range sigs {
		switch sig {
		case syscall.SIGUSR1:
			st.mark()
		case syscall.SIGUSR2:
			st.report()
		default:
			st.shutdown()
			if *jsonOut != "" {
				st.mu.Lock()
				var all []*stormEpoch
				for _, e := range st.epochs {
					// An epoch as it was reported: a later one may
					// lose its sessions again.
					if e.reported == nil {
						e.reported = st.finish(e)
					}
					all = append(all, e.reported)
				}
				st.mu.Unlock()
				b, _ := json.MarshalIndent(all, "", "  ")
				if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
					log.Print(err)
				}
			}
			st.say("DONE")
			return 0
		}
	}
	return 0
}

// parseSources reads "a,b,c-d" (ranges of IPv4 addresses, inclusive).
func parseSources(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(f, "-")
		a, err := netip.ParseAddr(lo)
		if err != nil {
			return nil, err
		}
		if !isRange {
			out = append(out, a)
			continue
		}
		b, err := netip.ParseAddr(hi)
		if err != nil {
			return nil, err
		}
		if !a.Is4() || !b.Is4() || b.Less(a) {
			return nil, fmt.Errorf("bad range %q (IPv4, first <= last)", f)
		}
		for x := a; ; x = x.Next() {
			out = append(out, x)
			if x == b || len(out) > 1<<16 {
				break
			}
		}
	}
	return out, nil
}

func (st *storm) say(format string, args ...any) {
	st.outMu.Lock()
	defer st.outMu.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

// spawn starts client i at t0 + i/rate (open loop, as the login phase).
func (st *storm) spawn() {
	defer st.wg.Done()
	t0 := time.Now()
	for i, cl := range st.clients {
		if st.ctx.Err() != nil {
			return
		}
		if *rate > 0 {
			if d := time.Until(t0.Add(time.Duration(float64(i) / *rate * 1e9))); d > 0 {
				select {
				case <-time.After(d):
				case <-st.ctx.Done():
					return
				}
			}
		}
		st.wg.Add(1)
		go st.run(cl)
	}
}

func (st *storm) progress() {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-st.ctx.Done():
			return
		case <-t.C:
		}
		st.mu.Lock()
		e := st.ep
		log.Printf("epoch %d: live %d/%d, lost %d, back %d, attempts %d, failed %d", e.Epoch, st.live, len(st.clients),
			len(e.lost), len(e.back), e.Attempts, e.Failed)
		st.mu.Unlock()
	}
}

// run is one client's life: log in (retrying), hold until the session is
// lost, again, until the shutdown.
func (st *storm) run(cl *stormClient) {
	defer st.wg.Done()
	for {
		s := st.connect(cl)
		if s == nil {
			return // shutting down
		}
		reason := waitLoss(s)
		s.c.Close()
		if st.ctx.Err() != nil {
			return
		}
		st.lost(cl, reason)
	}
}

// connect tries until a login succeeds (nil: shutdown).
func (st *storm) connect(cl *stormClient) *sess {
	for failures := 0; ; failures++ {
		if failures > 0 {
			d := min(*retryMax, *retryMin<<min(failures-1, 20))
			d = d/2 + rand.N(d/2+1)
			select {
			case <-time.After(d):
			case <-st.ctx.Done():
				return nil
			}
		}
		start := time.Now()
		s, resumed, phase, err := st.attempt(cl)
		if st.ctx.Err() != nil {
			if s != nil {
				s.c.Close()
			}
			return nil
		}
		st.mu.Lock()
		e := st.ep
		e.Attempts++
		if err != nil {
			e.Failed++
			e.errs.add(phase, err)
			st.mu.Unlock()
			continue
		}
		e.Logins++
		e.loginLat = append(e.loginLat, time.Since(start))
		if resumed {
			e.Resumed++
		} else if cl.conf != nil {
			e.FullHandshakes++
		}
		cl.live, cl.conn = true, s.c
		st.live++
		if le := st.epochs[cl.lostEpoch]; !cl.lostAt.IsZero() {
			le.back[cl.id] = time.Now()
		}
		all := st.live == len(st.clients)
		if all && e.Epoch == 0 && !e.backShown {
			e.backShown = true
			b, _ := json.Marshal(st.finish(e))
			st.say("READY %s", b)
		} else if all && len(e.lost) > 0 {
			st.say("BACK %d %.1f %d", e.Epoch, ms(time.Since(e.Start)), len(e.lost))
		}
		st.mu.Unlock()
		return s
	}
}

// attempt is one connection: TCP, TLS, greeting, LOGIN.
func (st *storm) attempt(cl *stormClient) (*sess, bool, string, error) {
	ctx, cancel := context.WithTimeout(st.ctx, *timeout)
	defer cancel()
	d := net.Dialer{}
	if cl.local != nil {
		d.LocalAddr = cl.local
	}
	t0 := time.Now()
	var marks []string
	mark := func(phase string) {
		if *slowLog > 0 {
			marks = append(marks, fmt.Sprintf("%s %.0f ms", phase, ms(time.Since(t0))))
		}
	}
	defer func() {
		if d := time.Since(t0); *slowLog > 0 && d > *slowLog {
			log.Printf("slow attempt: %s from %v, %.0f ms: %s", cl.user, cl.local, ms(d), strings.Join(marks, ", "))
		}
	}()
	c, err := d.DialContext(ctx, "tcp", *addr)
	mark("connect")
	if err != nil {
		return nil, false, "dial", err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	fail := func(phase string, err error) (*sess, bool, string, error) {
		c.Close()
		return nil, false, phase, err
	}
	resumed := false
	if cl.conf != nil {
		slot, _ := cl.conf.ClientSessionCache.(*ticketSlot)
		var ticket *tls.ClientSessionState
		if slot != nil {
			ticket, _ = slot.Get("")
		}
		tc := tls.Client(c, cl.conf)
		err := tc.HandshakeContext(ctx)
		mark("tls")
		if err != nil {
			// crypto/tls drops the ticket whenever a resuming handshake
			// fails; a connection cut before the server answered says
			// nothing about the ticket, and clients built on OpenSSL or
			// NSS keep theirs then: only a TLS-level failure drops it.
			if slot != nil && classify(err) != "tls" {
				slot.Put("", ticket)
			}
			return fail("tls", err)
		}
		resumed = tc.ConnectionState().DidResume
		c = tc
	}
	s := &sess{c: c, r: bufio.NewReaderSize(c, readBuf)}
	l, err := s.readLine()
	mark("greeting")
	if err != nil {
		return fail("greeting", err)
	}
	if !bytes.HasPrefix(l, []byte("* OK")) {
		return fail("greeting", &protoError{"bad_greeting", string(l)})
	}
	_, err = s.command("a", "a LOGIN "+cl.user+" "+*password+"\r\n", nil)
	mark("login")
	if err != nil {
		return fail("login", err)
	}
	if !stop() {
		return fail("login", context.Cause(ctx))
	}
	_ = c.SetDeadline(time.Time{})
	return s, resumed, "", nil
}

// waitLoss reads the idle session until it ends and says why: "bye" (an
// untagged BYE, the server's goodbye) or the read error's kind.
func waitLoss(s *sess) string {
	for {
		l, err := s.readLine()
		if err != nil {
			return classify(err)
		}
		if bytes.HasPrefix(l, []byte("* BYE")) {
			return "bye"
		}
	}
}

func (st *storm) lost(cl *stormClient, reason string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	cl.live, cl.conn = false, nil
	st.live--
	e := st.ep
	now := time.Now()
	e.LossEvents++
	e.LossReasons[reason]++
	if _, ok := e.lost[cl.id]; !ok {
		e.lost[cl.id] = now
	}
	delete(e.back, cl.id)
	cl.lostAt, cl.lostEpoch = now, e.Epoch
}

// mark starts a new epoch.
func (st *storm) mark() {
	st.mu.Lock()
	e := newEpoch(len(st.clients), len(st.epochs), st.live)
	st.ep = e
	st.epochs = append(st.epochs, e)
	st.mu.Unlock()
	st.say("EPOCH %d", e.Epoch)
}

// report prints the current epoch's figures.
func (st *storm) report() {
	st.mu.Lock()
	r := st.finish(st.ep)
	st.ep.reported = r
	st.mu.Unlock()
	b, _ := json.Marshal(r)
	st.say("RESULT %d %s", r.Epoch, b)
}

// finish fills in e's figures as of now (st.mu held) and returns a copy.
func (st *storm) finish(e *stormEpoch) *stormEpoch {
	r := *e
	r.LiveNow = st.live
	r.Lost = len(e.lost)
	r.Failures, r.FailureSamples = e.errs.snapshot()
	now := time.Now()
	r.DurationS = now.Sub(e.Start).Seconds()
	r.SelfCPUms = float64(selfCPU()-e.selfCPU0) / 1e6
	r.HostBusyPct = procstat.BusyPercent(e.host0, procstat.ReadHost())
	var lossT, backT, outage []time.Duration
	for id, at := range e.lost {
		lossT = append(lossT, at.Sub(e.Start))
		// Back only if logged in now: a session lost again and not yet
		// back counts as not back.
		if b, ok := e.back[id]; ok && st.clients[id].live {
			backT = append(backT, b.Sub(e.Start))
			outage = append(outage, b.Sub(at))
		}
	}
	r.Back = len(backT)
	slices.Sort(lossT)
	slices.Sort(backT)
	if len(lossT) > 0 {
		r.FirstLossMS, r.LastLossMS = ptr(ms(lossT[0])), ptr(ms(lossT[len(lossT)-1]))
	}
	// The time by which p of the lost sessions were back (nearest rank
	// over all lost sessions: those not back count as never).
	at := func(p float64) *float64 {
		if r.Lost == 0 {
			return nil
		}
		i := int(math.Ceil(p*float64(r.Lost))) - 1
		if i < len(backT) {
			return ptr(ms(backT[max(i, 0)]))
		}
		return nil
	}
	r.Back50MS, r.Back90MS, r.Back99MS, r.Back100MS = at(0.5), at(0.9), at(0.99), at(1)
	o := summarize(outage)
	r.Outage.P50, r.Outage.P99, r.Outage.Max = o.P50, o.P99, o.Max
	l := summarize(e.loginLat)
	r.LoginLatency.P50, r.LoginLatency.P99, r.LoginLatency.Max = l.P50, l.P99, l.Max
	return &r
}

// shutdown closes every session and waits for the clients to end.
func (st *storm) shutdown() {
	st.cancel()
	st.mu.Lock()
	for _, cl := range st.clients {
		if cl.conn != nil {
			cl.conn.Close()
		}
	}
	st.mu.Unlock()
	st.wg.Wait()
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func ptr(v float64) *float64 { return &v }

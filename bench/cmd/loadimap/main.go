// Command loadimap opens N concurrent IMAP sessions through a proxy, logs
// each in at a limited rate, holds them idle, and measures the proxy: memory
// per held session (PSS and RSS from /proc/PID/smaps_rollup over the process
// tree), CPU per 1,000 logins, greeting/login/NOOP latency, and relay
// throughput and CPU per GB on large FETCHes. See bench/README.md.
package main

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"regexp"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/portico-mail/portico/bench/internal/procstat"
	"github.com/portico-mail/portico/bench/internal/result"
	"github.com/portico-mail/portico/bench/internal/rlimit"
)

type intList []int

func (l *intList) String() string { return fmt.Sprint([]int(*l)) }
func (l *intList) Set(s string) error {
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return err
		}
		*l = append(*l, v)
	}
	return nil
}

type strList []string

func (l *strList) String() string     { return strings.Join(*l, ",") }
func (l *strList) Set(s string) error { *l = append(*l, s); return nil }

var (
	addr       = flag.String("addr", "127.0.0.1:10143", "proxy address (host:port)")
	useTLS     = flag.Bool("tls", false, "implicit TLS to the proxy (certificate not verified)")
	sni        = flag.String("sni", "", "TLS server name (default: host of -addr)")
	curves     = flag.String("tls-curves", "x25519,p256", "comma-separated key exchange groups offered: x25519, p256, x25519mlkem768; empty: Go's default")
	tlsMax     = flag.String("tls-max", "1.3", "highest TLS version offered: 1.2 or 1.3")
	n          = flag.Int("n", 1000, "number of sessions")
	rate       = flag.Float64("rate", 500, "connection+login starts per second (0: unlimited, see -concurrency)")
	conc       = flag.Int("concurrency", 0, "max logins in flight (0: unlimited when -rate>0, 200 otherwise)")
	userPrefix = flag.String("user-prefix", "user", "user names are <prefix>0..<prefix>N-1")
	password   = flag.String("password", "secret", "password sent in LOGIN")
	timeout    = flag.Duration("timeout", 30*time.Second, "deadline for a login, a NOOP or one FETCH")
	settle     = flag.Duration("settle", 10*time.Second, "hold time between the last login and the memory sample")
	noopSample = flag.Int("noop-sample", 0, "sessions probed with NOOP while all are held (0: all)")
	noopSpread = flag.Duration("noop-spread", 3*time.Second, "spread the NOOP probes over this time")
	fetchSess  = flag.Int("fetch-sessions", 4, "sessions that run the FETCH relay test (0: skip)")
	fetchCount = flag.Int("fetch-count", 128, "FETCH 1 BODY[] commands per fetch session")
	hold       = flag.Duration("hold", 0, "keep all sessions open this long after the tests (e.g. to profile the proxy by hand)")
	jsonOut    = flag.String("json", "", "write the result as JSON to this file (\"-\": stdout, text goes to stderr)")
	label      = flag.String("label", "proxy", "proxy name recorded in the result")
	mode       = flag.String("mode", "", "mode recorded in the result (default: plain or tls)")
	note       = flag.String("note", "", "free text recorded in the result")
	quiet      = flag.Bool("q", false, "no progress lines")
	cpuProfile = flag.String("cpuprofile", "", "write loadimap's own CPU profile here (to check it is not the bottleneck)")
	gcPercent  = flag.Int("gc-percent", 400, "GOGC for loadimap itself (less GC work while holding many sessions; memory is not what is measured here)")

	proxyPIDs, authPIDs, sinkPIDs intList
	proxyPIDFiles                 strList
	proxyMatch                    = flag.String("match", "", "regexp on /proc/PID/cmdline selecting the proxy's root processes")
)

func main() {
	flag.Var(&proxyPIDs, "pid", "proxy process id, measured with all its descendants (repeatable)")
	flag.Var(&proxyPIDFiles, "pidfile", "file holding the proxy's root process id (repeatable)")
	flag.Var(&authPIDs, "auth-pid", "auth_http server process id, CPU measured separately (repeatable)")
	flag.Var(&sinkPIDs, "sink-pid", "backend (sink) process id, CPU reported for information (repeatable)")
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetPrefix("loadimap: ")

	debug.SetGCPercent(*gcPercent)
	if *reconnect {
		os.Exit(runReconnect()) // reconnect.go
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	textOut := io.Writer(os.Stdout)
	if *jsonOut == "-" {
		textOut = os.Stderr
	}
	lim, err := rlimit.RaiseNoFile()
	if err != nil {
		log.Fatalf("raising RLIMIT_NOFILE: %v", err)
	}
	if uint64(*n)+64 > lim {
		log.Fatalf("-n %d needs more than RLIMIT_NOFILE %d descriptors", *n, lim)
	}
	if *mode == "" {
		*mode = "plain"
		if *useTLS {
			*mode = "tls"
		}
	}
	proxySel := &procstat.Selector{PIDs: proxyPIDs, PIDFiles: proxyPIDFiles, Exclude: os.Getpid()}
	if *proxyMatch != "" {
		proxySel.Match = regexp.MustCompile(*proxyMatch)
	}
	authSel := &procstat.Selector{PIDs: authPIDs, Exclude: os.Getpid()}
	sinkSel := &procstat.Selector{PIDs: sinkPIDs, Exclude: os.Getpid()}

	var tlsConf *tls.Config
	if *useTLS {
		tlsConf, err = clientTLSConfig()
		if err != nil {
			log.Fatal(err)
		}
		if *tlsResume {
			if err := primeResumption(tlsConf); err != nil {
				log.Fatalf("priming TLS resumption: %v", err)
			}
		}
	}

	res := &result.Result{
		Label: *label, Mode: *mode, Addr: *addr, TLS: *useTLS, Started: time.Now().UTC(),
		Sessions: *n, RateLimit: *rate, Settle: settle.String(), NumCPU: runtime.NumCPU(), Note: *note,
		ProxyTree: proxySel.String(),
	}
	r := &runner{tlsConf: tlsConf, errs: newErrCounter(), tlsSeen: map[string]int{}}

	// How busy is the machine before we start?
	h0 := procstat.ReadHost()
	time.Sleep(time.Second)
	res.HostBusyIdlePct = procstat.BusyPercent(h0, procstat.ReadHost())
	if res.HostBusyIdlePct > 10 {
		log.Printf("warning: the machine is %.0f%% busy before the run; CPU figures will be noisy", res.HostBusyIdlePct)
	}

	// Baseline, before the first connection.
	memBefore := sampleMem(proxySel)
	res.MemBefore = memBefore
	cpu0 := sampleCPU(proxySel, authSel, sinkSel)

	// Login phase.
	r.loginPhase()
	cpu1 := sampleCPU(proxySel, authSel, sinkSel)
	res.Established = r.established
	res.Failed = *n - r.established
	res.Errors, res.ErrorSamples = r.errs.snapshot()
	res.LoginPhaseS = r.loginDur.Seconds()
	if r.spawnDur > 0 {
		res.AchievedPS = float64(*n) / r.spawnDur.Seconds()
	}
	res.TLSVersions = r.tlsSeen
	res.Greeting = summarize(r.greetLat)
	res.Login = summarize(r.loginLat)
	d := diffCPU(cpu0, cpu1)
	res.ProxyLoginCPUms, res.ProxyCPUPer1000 = d.proxy, per1000(d.proxy, res.Established)
	res.ProxySchedCPUms, res.ProxySchedPer1000 = d.proxySched, per1000(d.proxySched, res.Established)
	if res.Established > 0 && d.proxySched != nil {
		v := float64(d.proxySlices) / float64(res.Established)
		res.ProxySlicesPerLogin = &v
	}
	res.AuthLoginCPUms, res.AuthCPUPer1000 = d.auth, per1000(d.auth, res.Established)
	res.SinkLoginCPUms, res.SelfLoginCPUms = d.sink, d.self
	res.HostBusyLoginPct, res.OtherLoginCPUms = d.hostPct, d.other()

	// Hold, then measure memory.
	if !*quiet {
		log.Printf("%d established, %d failed; settling %v", res.Established, res.Failed, *settle)
	}
	time.Sleep(*settle)
	res.MemAfter = sampleMem(proxySel)
	if memBefore != nil && res.MemAfter != nil && res.Established > 0 {
		p := float64(res.MemAfter.PSSKiB-memBefore.PSSKiB) / float64(res.Established)
		q := float64(res.MemAfter.RSSKiB-memBefore.RSSKiB) / float64(res.Established)
		res.PSSPerSess, res.RSSPerSess = &p, &q
	}

	// NOOP round trips while all sessions are held.
	r.noopPhase(res)

	// Relay throughput.
	r.fetchPhase(res, proxySel, sinkSel)
	res.MemAfterOps = sampleMem(proxySel)

	if *hold > 0 {
		log.Printf("holding %d sessions for %v", r.established, *hold)
		time.Sleep(*hold)
	}
	for _, s := range r.sess {
		if s != nil {
			s.c.Close()
		}
	}

	printText(textOut, res)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		b = append(b, '\n')
		if *jsonOut == "-" {
			os.Stdout.Write(b)
		} else if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

func clientTLSConfig() (*tls.Config, error) {
	host := *sni
	if host == "" {
		h, _, err := net.SplitHostPort(*addr)
		if err != nil {
			return nil, err
		}
		host = h
	}
	c := &tls.Config{
		InsecureSkipVerify: true, // self-signed benchmark certificate
		ServerName:         host,
		MinVersion:         tls.VersionTLS12,
		// No ClientSessionCache: every session does a full handshake.
	}
	switch *tlsMax {
	case "1.3":
		c.MaxVersion = tls.VersionTLS13
	case "1.2":
		c.MaxVersion = tls.VersionTLS12
	default:
		return nil, fmt.Errorf("-tls-max must be 1.2 or 1.3")
	}
	if *curves != "" {
		for _, name := range strings.Split(*curves, ",") {
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "x25519":
				c.CurvePreferences = append(c.CurvePreferences, tls.X25519)
			case "p256", "p-256", "prime256v1", "secp256r1":
				c.CurvePreferences = append(c.CurvePreferences, tls.CurveP256)
			case "x25519mlkem768":
				c.CurvePreferences = append(c.CurvePreferences, tls.X25519MLKEM768)
			default:
				return nil, fmt.Errorf("unknown -tls-curves entry %q", name)
			}
		}
	}
	return c, nil
}

// cpuSample is the CPU time of the measured processes at one instant.
type cpuSample struct {
	proxy, auth, sink procstat.CPU
	proxySched        time.Duration // the proxy's threads' schedstat, summed
	proxySlices       int64         // times the proxy's threads were put on a CPU
	proxyOK, authOK   bool
	sinkOK            bool
	self              time.Duration
	host              procstat.Host
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func treeCPU(sel *procstat.Selector) (procstat.CPU, bool) {
	if sel.Empty() {
		return procstat.CPU{}, false
	}
	pids, err := sel.Resolve()
	if err != nil {
		log.Printf("cpu sample: %v", err)
		return procstat.CPU{}, false
	}
	return procstat.ReadCPU(pids), true
}

func sampleCPU(proxy, auth, sink *procstat.Selector) cpuSample {
	var s cpuSample
	s.proxy, s.proxyOK = treeCPU(proxy)
	if s.proxyOK {
		if pids, err := proxy.Resolve(); err == nil {
			s.proxySched, s.proxySlices = procstat.ReadSchedCPU(pids)
		}
	}
	s.auth, s.authOK = treeCPU(auth)
	s.sink, s.sinkOK = treeCPU(sink)
	s.self = selfCPU()
	s.host = procstat.ReadHost()
	return s
}

// cpuDelta is the CPU used between two samples, in ms (nil: not measured).
type cpuDelta struct {
	proxy, auth, sink *float64
	proxySched        *float64 // the proxy from its threads' schedstat
	proxySlices       int64    // the proxy's threads put on a CPU
	self, hostBusy    float64  // hostBusy: all CPUs together, ms
	hostPct           float64  // 100 = every core busy
}

func diffCPU(a, b cpuSample) cpuDelta {
	var d cpuDelta
	ms := func(okA, okB bool, x, y procstat.CPU) *float64 {
		if !okA || !okB {
			return nil
		}
		v := y.Millis() - x.Millis()
		return &v
	}
	d.proxy = ms(a.proxyOK, b.proxyOK, a.proxy, b.proxy)
	d.auth = ms(a.authOK, b.authOK, a.auth, b.auth)
	d.sink = ms(a.sinkOK, b.sinkOK, a.sink, b.sink)
	if a.proxyOK && b.proxyOK {
		v := float64(b.proxySched-a.proxySched) / 1e6
		d.proxySched = &v
		d.proxySlices = b.proxySlices - a.proxySlices
	}
	d.self = float64(b.self-a.self) / 1e6
	d.hostBusy = procstat.BusyMillis(a.host, b.host)
	d.hostPct = procstat.BusyPercent(a.host, b.host)
	return d
}

// other is the busy CPU time not accounted to any measured process.
func (d cpuDelta) other() float64 {
	v := d.hostBusy - d.self
	for _, p := range []*float64{d.proxy, d.auth, d.sink} {
		if p != nil {
			v -= *p
		}
	}
	return v
}

// per1000 scales ms to ms per 1,000 logins.
func per1000(ms *float64, logins int) *float64 {
	if ms == nil || logins == 0 {
		return nil
	}
	v := *ms * 1000 / float64(logins)
	return &v
}

func sampleMem(sel *procstat.Selector) *result.Mem {
	if sel.Empty() {
		return nil
	}
	pids, err := sel.Resolve()
	if err != nil {
		log.Printf("memory sample: %v", err)
		return nil
	}
	m, err := procstat.ReadMem(pids)
	if err != nil {
		log.Printf("memory sample: %v", err)
		return nil
	}
	return &result.Mem{RSSKiB: m.RSSKiB, PSSKiB: m.PSSKiB, Procs: m.Procs}
}

func summarize(ds []time.Duration) result.Latency {
	var v []time.Duration
	for _, d := range ds {
		if d >= 0 {
			v = append(v, d)
		}
	}
	if len(v) == 0 {
		return result.Latency{}
	}
	sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	pct := func(p float64) float64 {
		i := int(p*float64(len(v))+0.999999) - 1 // nearest rank
		i = max(0, min(i, len(v)-1))
		return ms(v[i])
	}
	var sum time.Duration
	for _, d := range v {
		sum += d
	}
	return result.Latency{
		Count: len(v), P50: pct(0.50), P90: pct(0.90), P99: pct(0.99),
		Max: ms(v[len(v)-1]), Mean: ms(sum / time.Duration(len(v))),
	}
}

// errCounter counts errors by kind and keeps one message per kind.
type errCounter struct {
	mu      sync.Mutex
	counts  map[string]int
	samples map[string]string
}

func newErrCounter() *errCounter {
	return &errCounter{counts: map[string]int{}, samples: map[string]string{}}
}

func (e *errCounter) add(phase string, err error) {
	k := phase + ":" + classify(err)
	e.mu.Lock()
	e.counts[k]++
	if _, ok := e.samples[k]; !ok {
		e.samples[k] = err.Error()
	}
	e.mu.Unlock()
}

func (e *errCounter) snapshot() (map[string]int, map[string]string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.counts) == 0 {
		return nil, nil
	}
	c := make(map[string]int, len(e.counts))
	s := make(map[string]string, len(e.samples))
	for k, v := range e.counts {
		c[k] = v
	}
	for k, v := range e.samples {
		s[k] = v
	}
	return c, s
}

func (e *errCounter) total() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := 0
	for _, v := range e.counts {
		t += v
	}
	return t
}

// protoError is an IMAP-level failure; its text is the error kind.
type protoError struct{ kind, msg string }

func (p *protoError) Error() string { return p.kind + ": " + p.msg }

func classify(err error) string {
	var pe *protoError
	var ne net.Error
	var alert tls.AlertError
	var rh tls.RecordHeaderError
	var cv *tls.CertificateVerificationError
	switch {
	case errors.As(err, &pe):
		return pe.kind
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.EPIPE):
		return "broken_pipe"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "addr_not_avail"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "too_many_files"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.As(err, &alert), errors.As(err, &rh), errors.As(err, &cv), strings.Contains(err.Error(), "tls:"):
		return "tls"
	}
	return "other"
}

func printText(w io.Writer, r *result.Result) {
	f := func(p *float64, format string) string {
		if p == nil {
			return "n/a"
		}
		return fmt.Sprintf(format, *p)
	}
	lat := func(l result.Latency) string {
		if l.Count == 0 {
			return "n/a"
		}
		return fmt.Sprintf("p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms (n=%d)", l.P50, l.P90, l.P99, l.Max, l.Count)
	}
	fmt.Fprintf(w, "== %s %s %s, N=%d, rate %.0f/s, settle %s, %d CPUs shared by proxy, sink and load tool (nothing pinned)\n",
		r.Label, r.Mode, r.Addr, r.Sessions, r.RateLimit, r.Settle, r.NumCPU)
	fmt.Fprintf(w, "sessions established %d, failed %d", r.Established, r.Failed)
	if len(r.Errors) > 0 {
		keys := make([]string, 0, len(r.Errors))
		for k := range r.Errors {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "\n  %s: %d (e.g. %s)", k, r.Errors[k], r.ErrorSamples[k])
		}
	}
	if len(r.TLSVersions) > 0 {
		fmt.Fprintf(w, "\nnegotiated: %v", r.TLSVersions)
	}
	fmt.Fprintf(w, "\nlogin phase %.1f s (achieved %.0f starts/s)\n", r.LoginPhaseS, r.AchievedPS)
	fmt.Fprintf(w, "greeting latency: %s\n", lat(r.Greeting))
	fmt.Fprintf(w, "login latency:    %s\n", lat(r.Login))
	if r.MemBefore != nil && r.MemAfter != nil {
		fmt.Fprintf(w, "proxy memory (%s): PSS %d -> %d KiB, RSS %d -> %d KiB, %d -> %d processes\n",
			r.ProxyTree, r.MemBefore.PSSKiB, r.MemAfter.PSSKiB, r.MemBefore.RSSKiB, r.MemAfter.RSSKiB, r.MemBefore.Procs, r.MemAfter.Procs)
		fmt.Fprintf(w, "per session: PSS %s KiB, RSS %s KiB\n", f(r.PSSPerSess, "%.2f"), f(r.RSSPerSess, "%.2f"))
	}
	if r.MemAfterOps != nil {
		fmt.Fprintf(w, "proxy memory after NOOP/FETCH: PSS %d KiB, RSS %d KiB\n", r.MemAfterOps.PSSKiB, r.MemAfterOps.RSSKiB)
	}
	fmt.Fprintf(w, "login CPU: proxy %s ms (%s ms/1000 logins), auth_http %s ms (%s ms/1000), sink %s ms, loadimap %.0f ms, other %.0f ms; host busy %.0f%% (%.0f%% before the run)\n",
		f(r.ProxyLoginCPUms, "%.0f"), f(r.ProxyCPUPer1000, "%.0f"), f(r.AuthLoginCPUms, "%.0f"), f(r.AuthCPUPer1000, "%.0f"),
		f(r.SinkLoginCPUms, "%.0f"), r.SelfLoginCPUms, r.OtherLoginCPUms, r.HostBusyLoginPct, r.HostBusyIdlePct)
	fmt.Fprintf(w, "login CPU from the proxy's threads' schedstat: %s ms (%s ms/1000 logins), %s times on a CPU per login\n",
		f(r.ProxySchedCPUms, "%.0f"), f(r.ProxySchedPer1000, "%.0f"), f(r.ProxySlicesPerLogin, "%.1f"))
	fmt.Fprintf(w, "NOOP latency: %s, failed %d\n", lat(r.Noop), r.NoopFailed)
	for k, v := range r.NoopErrors {
		fmt.Fprintf(w, "  %s: %d\n", k, v)
	}
	if r.FetchSessions > 0 {
		fmt.Fprintf(w, "relay: %d sessions x %d FETCH, %.1f MB in %.2f s = %.1f MB/s, proxy CPU %s ms = %s ms/GB, loadimap %.0f ms, other %.0f ms, host busy %.0f%%, failed %d\n",
			r.FetchSessions, r.FetchCount, float64(r.FetchBytes)/1e6, r.FetchSeconds, r.FetchMBps,
			f(r.ProxyFetchCPUms, "%.0f"), f(r.ProxyCPUPerGB, "%.0f"), r.SelfFetchCPUms, r.OtherFetchCPUms, r.HostBusyFetchPct, r.FetchFailed)
		fmt.Fprintf(w, "FETCH latency: %s\n", lat(r.Fetch))
		for k, v := range r.FetchErrors {
			fmt.Fprintf(w, "  %s: %d\n", k, v)
		}
	}
}

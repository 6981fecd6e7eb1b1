package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portico-mail/portico/bench/internal/procstat"
	"github.com/portico-mail/portico/bench/internal/result"
)

const (
	readBuf    = 512     // per-session read buffer
	maxLineLen = 8 << 10 // longest response line kept
	fetchBuf   = 64 << 10
)

type sess struct {
	c    net.Conn
	r    *bufio.Reader
	long []byte // only allocated for lines longer than readBuf
}

type runner struct {
	tlsConf *tls.Config
	errs    *errCounter
	tlsMu   sync.Mutex
	tlsSeen map[string]int // "TLS 1.3 TLS_AES_128_GCM_SHA256 X25519" -> sessions

	sess               []*sess
	greetLat, loginLat []time.Duration // -1: failed
	established        int
	spawnDur, loginDur time.Duration
}

// readLine returns the next line without CRLF; valid until the next read.
func (s *sess) readLine() ([]byte, error) {
	l, err := s.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		s.long = append(s.long[:0], l...)
		for errors.Is(err, bufio.ErrBufferFull) {
			l, err = s.r.ReadSlice('\n')
			if len(s.long)+len(l) > maxLineLen {
				return nil, &protoError{"line_too_long", "response line over 8 KiB"}
			}
			s.long = append(s.long, l...)
		}
		l = s.long
	}
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(l, "\r\n"), nil
}

// literalSize returns n if line ends with {n} (or {n+}).
func literalSize(line []byte) (int64, bool) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false
	}
	i := bytes.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	spec := bytes.TrimSuffix(line[i+1:len(line)-1], []byte("+"))
	v, err := strconv.ParseInt(string(spec), 10, 64)
	if err != nil || v < 0 {
		return 0, false
	}
	return v, true
}

// command sends line (with CRLF) and reads responses up to the tagged one,
// skipping untagged responses and discarding literals. It returns the number
// of literal bytes received. buf, if not nil, is used to drain literals.
func (s *sess) command(tag, line string, buf []byte) (int64, error) {
	if _, err := io.WriteString(s.c, line); err != nil {
		return 0, err
	}
	return s.response(tag, buf)
}

func (s *sess) response(tag string, buf []byte) (int64, error) {
	var lit int64
	for {
		l, err := s.readLine()
		if err != nil {
			return lit, err
		}
		if n, ok := literalSize(l); ok {
			if buf == nil {
				_, err = io.CopyN(io.Discard, s.r, n)
			} else {
				err = discardN(s.r, n, buf)
			}
			if err != nil {
				return lit, err
			}
			lit += n
			continue // the rest of the response follows on the next "line"
		}
		if len(l) > len(tag) && string(l[:len(tag)]) == tag && l[len(tag)] == ' ' {
			st := l[len(tag)+1:]
			switch {
			case bytes.HasPrefix(st, []byte("OK")):
				return lit, nil
			case bytes.HasPrefix(st, []byte("NO")):
				return lit, &protoError{"no", string(l)}
			case bytes.HasPrefix(st, []byte("BAD")):
				return lit, &protoError{"bad", string(l)}
			}
			return lit, &protoError{"protocol", string(l)}
		}
		if bytes.HasPrefix(l, []byte("* BYE")) {
			return lit, &protoError{"bye", string(l)}
		}
	}
}

func discardN(r *bufio.Reader, n int64, buf []byte) error {
	for n > 0 {
		k := int64(len(buf))
		if n < k {
			k = n
		}
		m, err := r.Read(buf[:k])
		n -= int64(m)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// login runs one session up to the tagged OK of LOGIN.
func (r *runner) login(i int) {
	start := time.Now()
	deadline := start.Add(*timeout)
	c, err := net.DialTimeout("tcp", *addr, *timeout)
	if err != nil {
		r.errs.add("dial", err)
		return
	}
	fail := func(phase string, err error) {
		r.errs.add(phase, err)
		c.Close()
	}
	c.SetDeadline(deadline)
	if r.tlsConf != nil {
		tc := tls.Client(c, r.tlsConf)
		if err := tc.Handshake(); err != nil {
			fail("tls", err)
			return
		}
		st := tc.ConnectionState()
		k := tls.VersionName(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite) + " " + st.CurveID.String()
		if st.DidResume {
			k += " resumed"
		}
		r.tlsMu.Lock()
		r.tlsSeen[k]++
		r.tlsMu.Unlock()
		c = tc
	}
	s := &sess{c: c, r: bufio.NewReaderSize(c, readBuf)}
	l, err := s.readLine()
	if err != nil {
		fail("greeting", err)
		return
	}
	if !bytes.HasPrefix(l, []byte("* OK")) {
		fail("greeting", &protoError{"bad_greeting", string(l)})
		return
	}
	r.greetLat[i] = time.Since(start)
	if _, err := s.command("a", "a LOGIN "+*userPrefix+strconv.Itoa(i)+" "+*password+"\r\n", nil); err != nil {
		fail("login", err)
		return
	}
	r.loginLat[i] = time.Since(start)
	c.SetDeadline(time.Time{})
	r.sess[i] = s
}

func (r *runner) loginPhase() {
	N := *n
	r.sess = make([]*sess, N)
	r.greetLat = make([]time.Duration, N)
	r.loginLat = make([]time.Duration, N)
	for i := range N {
		r.greetLat[i], r.loginLat[i] = -1, -1
	}
	limit := *conc
	if limit == 0 && *rate <= 0 {
		limit = 200
	}
	var sem chan struct{}
	if limit > 0 {
		sem = make(chan struct{}, limit)
	}
	var wg sync.WaitGroup
	var done atomic.Int64
	stop := make(chan struct{})
	if !*quiet {
		go func() {
			t := time.NewTicker(5 * time.Second)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					log.Printf("logins finished %d/%d, failed %d", done.Load(), N, r.errs.total())
				}
			}
		}()
	}
	t0 := time.Now()
	for i := range N {
		if *rate > 0 {
			if d := time.Until(t0.Add(time.Duration(float64(i) / *rate * 1e9))); d > 0 {
				time.Sleep(d)
			}
		}
		if sem != nil {
			sem <- struct{}{}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.login(i)
			done.Add(1)
			if sem != nil {
				<-sem
			}
		}()
	}
	r.spawnDur = time.Since(t0)
	wg.Wait()
	r.loginDur = time.Since(t0)
	close(stop)
	for _, s := range r.sess {
		if s != nil {
			r.established++
		}
	}
}

func (r *runner) live() []*sess {
	var out []*sess
	for _, s := range r.sess {
		if s != nil {
			out = append(out, s)
		}
	}
	return out
}

// noopPhase sends one NOOP on a sample of the held sessions, spread evenly
// over -noop-spread, and records the round trip.
func (r *runner) noopPhase(res *result.Result) {
	live := r.live()
	if len(live) == 0 {
		return
	}
	k := *noopSample
	if k <= 0 || k > len(live) {
		k = len(live)
	}
	sample := make([]*sess, k)
	for j := range k {
		sample[j] = live[j*len(live)/k]
	}
	lat := make([]time.Duration, k)
	errs := newErrCounter()
	var wg sync.WaitGroup
	t0 := time.Now()
	for j, s := range sample {
		if d := time.Until(t0.Add(*noopSpread * time.Duration(j) / time.Duration(k))); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat[j] = -1
			start := time.Now()
			s.c.SetDeadline(start.Add(*timeout))
			defer s.c.SetDeadline(time.Time{})
			if _, err := s.command("n", "n NOOP\r\n", nil); err != nil {
				errs.add("noop", err)
				return
			}
			lat[j] = time.Since(start)
		}()
	}
	wg.Wait()
	res.Noop = summarize(lat)
	res.NoopFailed = errs.total()
	res.NoopErrors, _ = errs.snapshot()
}

// fetchPhase runs -fetch-count sequential FETCH 1 BODY[] on each of
// -fetch-sessions held sessions in parallel and measures throughput and the
// proxy's CPU per GB.
func (r *runner) fetchPhase(res *result.Result, proxySel, sinkSel *procstat.Selector) {
	live := r.live()
	m := min(*fetchSess, len(live))
	if m <= 0 || *fetchCount <= 0 {
		return
	}
	errs := newErrCounter()
	var ready []*sess
	for _, s := range live[:m] {
		s.c.SetDeadline(time.Now().Add(*timeout))
		if _, err := s.command("s", "s SELECT INBOX\r\n", nil); err != nil {
			errs.add("select", err)
			continue
		}
		ready = append(ready, s)
	}
	res.FetchSessions, res.FetchCount = len(ready), *fetchCount
	lat := make([][]time.Duration, len(ready))
	bytesTotal := make([]int64, len(ready))
	var wg sync.WaitGroup
	c0 := sampleCPU(proxySel, &procstat.Selector{}, sinkSel)
	t0 := time.Now()
	for j, s := range ready {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.c.SetDeadline(time.Time{})
			buf := make([]byte, fetchBuf)
			for range *fetchCount {
				start := time.Now()
				s.c.SetDeadline(start.Add(*timeout))
				nb, err := s.command("f", "f FETCH 1 BODY[]\r\n", buf)
				bytesTotal[j] += nb
				if err != nil {
					errs.add("fetch", err)
					return
				}
				lat[j] = append(lat[j], time.Since(start))
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	c1 := sampleCPU(proxySel, &procstat.Selector{}, sinkSel)
	var all []time.Duration
	for j := range ready {
		all = append(all, lat[j]...)
		res.FetchBytes += bytesTotal[j]
	}
	res.FetchSeconds = el.Seconds()
	if el > 0 {
		res.FetchMBps = float64(res.FetchBytes) / 1e6 / el.Seconds()
	}
	res.Fetch = summarize(all)
	res.FetchFailed = errs.total()
	res.FetchErrors, _ = errs.snapshot()
	d := diffCPU(c0, c1)
	res.ProxyFetchCPUms, res.SelfFetchCPUms = d.proxy, d.self
	res.HostBusyFetchPct, res.OtherFetchCPUms = d.hostPct, d.other()
	if res.ProxyFetchCPUms != nil && res.FetchBytes > 0 {
		v := *res.ProxyFetchCPUms / (float64(res.FetchBytes) / 1e9)
		res.ProxyCPUPerGB = &v
	}
}

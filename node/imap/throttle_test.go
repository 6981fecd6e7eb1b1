package imap

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/node/throttle"
	"github.com/portico-mail/portico/routing"
)

// fakeThrottle blocks the users in block and delays failures by delay.
type fakeThrottle struct {
	block map[string]bool
	delay time.Duration

	mu        sync.Mutex
	failed    []string
	succeeded []string
}

func (f *fakeThrottle) Begin(_ context.Context, ip netip.Addr, user string) (session.ThrottleAttempt, string) {
	if f.block[user] {
		return nil, "user_ip"
	}
	return &fakePending{f: f, ip: ip, user: user}, ""
}

// fakePending records how an attempt ended.
type fakePending struct {
	f    *fakeThrottle
	ip   netip.Addr
	user string
}

func (p *fakePending) Failed() time.Duration {
	p.f.mu.Lock()
	defer p.f.mu.Unlock()
	p.f.failed = append(p.f.failed, p.ip.String()+" "+p.user)
	return p.f.delay
}

func (p *fakePending) Succeeded() {
	p.f.mu.Lock()
	defer p.f.mu.Unlock()
	p.f.succeeded = append(p.f.succeeded, p.ip.String()+" "+p.user)
}

func (p *fakePending) Release() {}

type countingDirector struct{ n atomic.Int32 }

func (d *countingDirector) Direct(context.Context, *session.Attempt) (*session.Target, error) {
	d.n.Add(1)
	return nil, &session.Refusal{Kind: session.RefuseAuth, Text: "no"}
}

// A blocked login is answered NO [UNAVAILABLE] without asking the
// Director; a failure is recorded and its reply waits for the throttle's
// delay; blocked attempts count toward max_auth_failures.
func TestThrottle(t *testing.T) {
	lis := listener(routing.TLSNone, nil, true)
	lis.Limits.MaxAuthFailures = 3
	dir := &countingDirector{}
	lis.Director = dir
	th := &fakeThrottle{block: map[string]bool{"mallory": true}, delay: 300 * time.Millisecond}
	r := newRig(t, 1, lis)
	r.env.Throttle = th
	c, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	runDialog(t, c, []step{
		{"a LOGIN mallory x\r\n", "a NO [UNAVAILABLE] Too many failed logins, try again later.\r\n"},
	})
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Errorf("blocked reply took %v (only auth_failure_delay applies)", d)
	}
	if n := dir.n.Load(); n != 0 {
		t.Errorf("director asked %d times for a blocked login", n)
	}
	start = time.Now()
	if _, err := c.Write([]byte("b LOGIN bob y\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 200)
	n, _ := c.Read(buf)
	if got := string(buf[:n]); got != "b NO [AUTHENTICATIONFAILED] Authentication failed.\r\n" {
		t.Errorf("got %q", got)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("throttle delay not applied: %v", d)
	}
	th.mu.Lock()
	if len(th.failed) != 1 || th.failed[0] != "198.51.100.7 bob" {
		t.Errorf("failures recorded: %q", th.failed)
	}
	th.mu.Unlock()
	// The third failed attempt (blocked) ends the session.
	if _, err := c.Write([]byte("c LOGIN mallory z\r\n")); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if want := "c NO [UNAVAILABLE] Too many failed logins, try again later.\r\n* BYE Too many authentication failures.\r\n"; string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
	<-r.results
}

// Issue 10: 40 wrong passwords for one user sent at once on parallel
// connections from one address reach the backend at most user_ip_limit
// times; the others are answered NO [UNAVAILABLE] without reaching it; no
// attempt stays counted as in flight. Then an unreachable backend: every
// attempt ends without a verdict and none stays in flight either.
func TestThrottleParallelBurst(t *testing.T) {
	fb := newFakeBackend(t, "* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN SASL-IR] fake")
	lis := listener(routing.TLSNone, nil, true)
	r := newRig(t, fb.port(), lis)
	cfg := throttle.DefaultConfig()
	cfg.Trusted = nil
	cfg.Delay = 0
	lim := throttle.New(cfg, nil)
	r.env.Throttle = lim
	const n = 40
	replies := make(chan string, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", r.ln.Addr().String())
			if err != nil {
				replies <- err.Error()
				return
			}
			defer c.Close()
			br := bufio.NewReader(c)
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			br.ReadString('\n')
			io.WriteString(c, "a LOGIN alice wrong\r\n")
			line, _ := br.ReadString('\n')
			replies <- line
		}()
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		<-r.results
	}
	close(replies)
	failed, limited := 0, 0
	for l := range replies {
		switch {
		case strings.HasPrefix(l, "a NO [AUTHENTICATIONFAILED]"):
			failed++
		case strings.HasPrefix(l, "a NO [UNAVAILABLE] Too many failed logins"):
			limited++
		default:
			t.Errorf("reply %q", l)
		}
	}
	asked := strings.Count(fb.received(), " AUTHENTICATE PLAIN ")
	if asked > cfg.UserIPLimit || failed != asked || failed+limited != n {
		t.Errorf("backend asked %d times (limit %d); %d failed, %d throttled", asked, cfg.UserIPLimit, failed, limited)
	}
	if lim.InFlight() != 0 {
		t.Errorf("%d attempts left in flight", lim.InFlight())
	}
}

// Attempts that end without a verdict (backend unreachable) release their
// reservation: none stays in flight, none counts as a failure.
func TestThrottleReleasedWhenBackendDown(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	r := newRig(t, port, listener(routing.TLSNone, nil, true))
	cfg := throttle.DefaultConfig()
	cfg.Trusted = nil
	cfg.UserIPLimit = 2
	lim := throttle.New(cfg, nil)
	r.env.Throttle = lim
	c, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	runDialog(t, c, []step{
		{"a LOGIN alice x\r\n", "a NO [UNAVAILABLE] Backend server unavailable"},
		{"b LOGIN alice x\r\n", "b NO [UNAVAILABLE] Backend server unavailable"},
		{"c LOGIN alice x\r\n", "c NO [UNAVAILABLE] Backend server unavailable"},
		{"d LOGOUT\r\n", "d OK"},
	})
	<-r.results
	if lim.InFlight() != 0 || lim.Blocked(netip.MustParseAddr("198.51.100.7"), "alice") != "" {
		t.Errorf("in flight %d, blocked %q", lim.InFlight(), lim.Blocked(netip.MustParseAddr("198.51.100.7"), "alice"))
	}
}

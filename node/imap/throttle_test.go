package imap

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/session"
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

func (f *fakeThrottle) Blocked(_ netip.Addr, user string) string {
	if f.block[user] {
		return "user_ip"
	}
	return ""
}

func (f *fakeThrottle) Failed(ip netip.Addr, user string) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failed = append(f.failed, ip.String()+" "+user)
	return f.delay
}

func (f *fakeThrottle) Succeeded(ip netip.Addr, user string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.succeeded = append(f.succeeded, ip.String()+" "+user)
}

// countingDirector refuses every login as a wrong password and counts.
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

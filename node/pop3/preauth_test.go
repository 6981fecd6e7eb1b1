package pop3

import (
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// A client that keeps its session alive (CAPA every 100 ms) is ended when
// the pre-login lifetime is over.
func TestPreauthLifetime(t *testing.T) {
	lis := testListener(routing.TLSNone, nil, true)
	lis.Limits.PreAuthTimeout = 5 * time.Second
	lis.Limits.PreAuthLifetime = 700 * time.Millisecond
	r := newRig(t, lis, Options{})
	start := time.Now()
	c := dial(t, r.Addr())
	var last string
	for {
		c.Send("USER alice\r\n")
		if last = c.ReadLine(); last != "+OK\r\n" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if last != "-ERR Login time limit exceeded.\r\n" {
		t.Fatalf("last line %q", last)
	}
	c.EOF()
	if d := time.Since(start); d < 700*time.Millisecond || d > 3*time.Second {
		t.Errorf("ended after %v, lifetime 700ms", d)
	}
	r.Result()
}

// "*" cancelling AUTH counts toward max_errors.
func TestAuthCancelCounts(t *testing.T) {
	r := newRig(t, testListener(routing.TLSNone, nil, true), Options{})
	c := dial(t, r.Addr())
	for i := 0; i < 5; i++ {
		c.cmd("AUTH PLAIN", "+ ")
		c.cmd("*", "-ERR Authentication cancelled.")
	}
	c.expect("-ERR Too many invalid commands.")
	c.EOF()
	if res := r.Result(); res.End.Reason != session.EndTooManyErrors {
		t.Fatalf("%+v", res)
	}
}

// A client that pipelines commands and never reads the replies is ended by
// the write deadline (preauth_timeout), not kept with a blocked goroutine.
func TestClientThatNeverReads(t *testing.T) {
	lis := testListener(routing.TLSNone, nil, true)
	lis.Limits.PreAuthTimeout = 500 * time.Millisecond
	lis.Limits.MaxErrors = 0
	r := newRig(t, lis, Options{})
	c := dial(t, r.Addr())
	_ = c.Conn.SetDeadline(time.Time{})
	cmds := []byte(strings.Repeat("CAPA\r\n", 64<<10/6))
	go func() {
		for i := 0; i < 20; i++ {
			if _, err := c.Conn.Write(cmds); err != nil {
				return
			}
		}
	}()
	select {
	case res := <-r.Results:
		if res.Handoff != nil {
			t.Fatal("handoff")
		}
		if res.End.Reason != session.EndTimeout {
			t.Errorf("ended with %+v", res.End)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("session still open 15s after its client stopped reading")
	}
}

package imap

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/routing"
)

// A client that keeps its session alive with NOOPs is ended when the
// pre-login lifetime is over, not kept forever.
func TestPreauthLifetime(t *testing.T) {
	lis := listener(routing.TLSNone, nil, true)
	lis.Limits.PreAuthTimeout = 5 * time.Second
	lis.Limits.PreAuthLifetime = 700 * time.Millisecond
	r := newRig(t, 1, lis)
	c, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	start := time.Now()
	br.ReadString('\n')
	var last string
	for i := 0; ; i++ {
		if _, err := io.WriteString(c, "a NOOP\r\n"); err != nil {
			break
		}
		line, err := br.ReadString('\n')
		if err != nil {
			break
		}
		last = line
		if strings.HasPrefix(line, "* BYE") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if last != "* BYE Login time limit exceeded.\r\n" {
		t.Fatalf("last line %q", last)
	}
	if d := time.Since(start); d < 700*time.Millisecond || d > 3*time.Second {
		t.Errorf("ended after %v, lifetime 700ms", d)
	}
	<-r.results
}

// "*" cancelling AUTHENTICATE counts toward max_errors: it cannot be
// repeated for as long as the session lives.
func TestAuthenticateCancelCounts(t *testing.T) {
	r := newRig(t, 1, listener(routing.TLSNone, nil, true))
	c, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	steps := []step{}
	for i := 0; i < 5; i++ {
		steps = append(steps, step{"a AUTHENTICATE PLAIN\r\n", "+ "}, step{"*\r\n", "a BAD Authentication cancelled."})
	}
	steps = append(steps, step{"", "* BYE Too many invalid IMAP commands."})
	runDialog(t, c, steps)
	if h := <-r.results; h != nil {
		t.Fatal("handoff")
	}
}

// A client that sends commands but never reads the replies: once the
// socket buffers are full the proxy's writes block, and the write deadline
// (preauth_timeout) ends the session instead of pinning its goroutine.
func TestClientThatNeverReads(t *testing.T) {
	lis := listener(routing.TLSNone, nil, true)
	lis.Limits.PreAuthTimeout = 500 * time.Millisecond
	lis.Limits.MaxErrors = 0
	lis.Limits.PreAuthLifetime = time.Hour
	r := newRig(t, 1, lis)
	c, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.(*net.TCPConn).SetReadBuffer(4096)
	// CAPABILITY's reply is ten times its size: 64 KiB of commands fill
	// about 700 KiB of buffers on the way back.
	cmds := []byte(strings.Repeat("a CAPABILITY\r\n", 64<<10/14))
	go func() {
		for i := 0; i < 20; i++ {
			if _, err := c.Write(cmds); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	select {
	case h := <-r.results:
		if h != nil {
			t.Fatal("handoff")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("session still open 15s after its client stopped reading")
	}
	t.Logf("ended %v after the client started sending", time.Since(start).Round(time.Millisecond))
}

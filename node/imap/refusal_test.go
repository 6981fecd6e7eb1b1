package imap

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/session"
	"github.com/portico-mail/portico/routing"
)

// scripted refuses every attempt with the next refusal of its list.
type scripted []*session.Refusal

func (s scripted) Direct(_ context.Context, a *session.Attempt) (*session.Target, error) {
	return nil, s[(a.Number-1)%len(s)]
}

// Refusals with a client-visible text (an auth_http Auth-Status), a
// delay that keeps the session, one that ends it, and the internal error.
func TestRefusalTextWaitAndClose(t *testing.T) {
	lis := listener(routing.TLSNone, nil, true)
	lis.Limits.MaxAuthFailures = 10
	lis.Director = scripted{
		{Kind: session.RefuseAuth, Reply: "Invalid login or password", Wait: 200 * time.Millisecond},
		{Kind: session.RefuseAuth, Reply: "Go away", Close: true},
	}
	r := newRig(t, 1, lis)
	c, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	runDialog(t, c, []step{{"a LOGIN alice x\r\n", "a NO Invalid login or password\r\n"}})
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("Auth-Wait not applied: %v", d)
	}
	if _, err := c.Write([]byte("b LOGIN alice y\r\n")); err != nil {
		t.Fatal(err)
	}
	want := "b NO Go away\r\n"
	buf := make([]byte, 100)
	var got []byte
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if string(got) != want {
		t.Errorf("got %q, want %q then close", got, want)
	}
	<-r.results
}

func TestRefusalInternal(t *testing.T) {
	lis := listener(routing.TLSNone, nil, true)
	lis.Director = scripted{{Kind: session.RefuseInternal, Text: "auth server down"}}
	r := newRig(t, 1, lis)
	c, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	runDialog(t, c, []step{{"a LOGIN alice x\r\n", "* BAD internal server error\r\n"}})
	if n, _ := c.Read(make([]byte, 10)); n != 0 {
		t.Error("session not closed")
	}
	<-r.results
}

// A node whose routing table has not caught up with the cluster (just
// started) answers every login "try again later", for users it has a rule
// for and users it has none for alike, and never counts it as a failed
// login: no wrong-password reply, no disconnect after max_auth_failures.
func TestRoutingTableNotReady(t *testing.T) {
	lis := listener(routing.TLSNone, nil, true)
	lis.Director = session.RouteDirector{Router: routing.NewFSM()} // never loaded
	r := newRig(t, 1, lis)
	c, err := net.Dial("tcp", r.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var steps []step
	for i := 0; i <= lis.Limits.MaxAuthFailures; i++ {
		steps = append(steps, step{fmt.Sprintf("a%d LOGIN alice secret\r\n", i), fmt.Sprintf("a%d NO [UNAVAILABLE] Backend server unavailable, try again later.\r\n", i)})
	}
	steps = append(steps, step{"z LOGOUT\r\n", "z OK"})
	runDialog(t, c, steps)
	<-r.results
}

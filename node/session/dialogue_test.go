package session

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/netx"
	"github.com/portico-mail/portico/routing"
)

// lineProto is a Protocol of one-word lines: "noop", "bad", "fatal",
// "quit", "login", "sasl" (then one more line is read in StateSASL), and
// "cancel" (the session's context is cancelled, as a shutdown or a drain
// does, between two commands).
type lineProto struct {
	d      *Dialogue
	c      *Client
	cancel context.CancelFunc
	be     *netx.Stream // the Handoff's backend
}

func (p *lineProto) Greet() { p.c.Stream.WriteString("hello\r\n") }

func (p *lineProto) Bye(reason string) { p.c.Stream.WriteString("bye " + reason + "\r\n") }

func (p *lineProto) Next() (*Handoff, error) {
	line, err := p.c.Stream.R.ReadString('\n')
	if err != nil {
		return nil, err
	}
	switch strings.TrimSpace(line) {
	case "noop":
		p.c.Stream.WriteString("ok\r\n")
	case "bad":
		return nil, &ProtocolError{Reply: "bad command\r\n"}
	case "fatal":
		return nil, &ProtocolError{Reply: "bad literal\r\nbye\r\n", Fatal: true}
	case "quit":
		p.c.Stream.WriteString("bye quit\r\n")
		return nil, Ending(EndLogout, nil)
	case "login":
		p.c.Stream.WriteString("welcome\r\n")
		return &Handoff{Client: p.c, Backend: p.be}, nil
	case "sasl":
		p.c.Stream.WriteString("+\r\n")
		if err := p.d.Flush(); err != nil {
			return nil, err
		}
		if err := p.d.Await(StateSASL); err != nil {
			return nil, err
		}
		if _, err := p.c.Stream.R.ReadString('\n'); err != nil {
			return nil, err
		}
		p.c.Stream.WriteString("sasl done\r\n")
	case "cancel":
		p.cancel()
		p.c.Stream.WriteString("ok\r\n")
	default:
		return nil, &ProtocolError{Reply: "unknown\r\n"}
	}
	return nil, nil
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close(); sc.Close() })
	_ = cc.SetDeadline(time.Now().Add(10 * time.Second))
	return sc.(*net.TCPConn), cc
}

func stream(t *testing.T, tc *net.TCPConn) *netx.Stream {
	nc, err := netx.NewConn(tc, nil)
	if err != nil {
		t.Fatal(err)
	}
	return netx.NewStream(nc)
}

type dialogueResult struct {
	ho  *Handoff
	end End
}

// runDialogue serves one client with lineProto under lim; it returns the
// client's end of the connection, the dialogue's result, and the
// cancellation of its context.
func runDialogue(t *testing.T, lim Limits) (*bufio.Reader, net.Conn, <-chan dialogueResult, context.CancelFunc) {
	t.Helper()
	sc, cc := tcpPair(t)
	bsc, _ := tcpPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c := &Client{
		Listener: &Listener{Protocol: routing.IMAP, Limits: lim},
		Stream:   stream(t, sc), Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Started: time.Now(),
	}
	p := &lineProto{d: NewDialogue(ctx, c), c: c, cancel: cancel, be: stream(t, bsc)}
	out := make(chan dialogueResult, 1)
	go func() {
		ho, end := p.d.Run(p)
		if ho == nil {
			c.Stream.Close()
		}
		p.be.Close()
		out <- dialogueResult{ho, end}
	}()
	br := bufio.NewReader(cc)
	expect(t, br, "hello")
	return br, cc, out, cancel
}

func expect(t *testing.T, br *bufio.Reader, want string) {
	t.Helper()
	got, err := br.ReadString('\n')
	if err != nil || got != want+"\r\n" {
		t.Fatalf("got %q (%v), want %q", got, err, want)
	}
}

func result(t *testing.T, out <-chan dialogueResult) dialogueResult {
	t.Helper()
	select {
	case r := <-out:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("the dialogue did not end")
		return dialogueResult{}
	}
}

func TestDialogueEnds(t *testing.T) {
	lim := DefaultLimits(routing.IMAP)
	lim.MaxErrors = 3
	short := lim
	short.PreAuthTimeout = 200 * time.Millisecond

	for _, tc := range []struct {
		name    string
		lim     Limits
		send    string
		replies []string
		end     End
	}{
		{"too many errors", lim, "bad\r\nnoop\r\nbad\r\nbad\r\nnoop\r\n",
			[]string{"bad command", "ok", "bad command", "bad command", "bye too_many_errors"},
			End{Reason: EndTooManyErrors, State: StateCommand, ProtocolErrors: 3}},
		{"fatal protocol error", lim, "bad\r\nfatal\r\nnoop\r\n",
			[]string{"bad command", "bad literal", "bye"},
			End{Reason: EndProtocolError, State: StateCommand, ProtocolErrors: 2}},
		{"logout", lim, "noop\r\nquit\r\n",
			[]string{"ok", "bye quit"},
			End{Reason: EndLogout, State: StateCommand}},
		{"inactivity", short, "noop\r\n",
			[]string{"ok", "bye timeout"},
			End{Reason: EndTimeout, State: StateCommand}},
		{"inactivity in a SASL exchange", short, "bad\r\nsasl\r\n",
			[]string{"bad command", "+", "bye timeout"},
			End{Reason: EndTimeout, State: StateSASL, ProtocolErrors: 1}},
		// The context ends between two commands: the session ends at
		// once (the read is armed, then the context checked), not after
		// preauth_timeout (60s here), and without the server's help.
		{"shutdown between commands", lim, "cancel\r\n",
			[]string{"ok", "bye shutdown"},
			End{Reason: EndShutdown, State: StateCommand}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br, cc, out, _ := runDialogue(t, tc.lim)
			start := time.Now()
			io.WriteString(cc, tc.send)
			for _, want := range tc.replies {
				expect(t, br, want)
			}
			r := result(t, out)
			if r.ho != nil {
				t.Fatal("handoff")
			}
			if r.end.Reason != tc.end.Reason || r.end.State != tc.end.State || r.end.ProtocolErrors != tc.end.ProtocolErrors {
				t.Fatalf("end %+v, want %+v", r.end, tc.end)
			}
			if (r.end.Err != nil) != (tc.end.Reason == EndTimeout || tc.end.Reason == EndShutdown || tc.end.Reason == EndProtocolError) {
				t.Errorf("error %v", r.end.Err)
			}
			if rest, _ := io.ReadAll(br); len(rest) > 0 {
				t.Fatalf("after the goodbye: %q", rest)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("ended after %v", d)
			}
		})
	}
}

// The context ends while the client is silent: the blocked read returns at
// once and the client is told why.
func TestDialogueShutdownWhileWaiting(t *testing.T) {
	br, cc, out, cancel := runDialogue(t, DefaultLimits(routing.IMAP))
	io.WriteString(cc, "noop\r\n")
	expect(t, br, "ok")
	cancel()
	expect(t, br, "bye shutdown")
	if r := result(t, out); r.end.Reason != EndShutdown || r.end.State != StateCommand {
		t.Fatalf("end %+v", r.end)
	}
}

func TestDialogueClientHangsUp(t *testing.T) {
	_, cc, out, _ := runDialogue(t, DefaultLimits(routing.IMAP))
	io.WriteString(cc, "bad\r\n")
	cc.(*net.TCPConn).CloseWrite()
	r := result(t, out)
	if r.end.Reason != EndClientClosed || r.end.Err != nil || r.end.ProtocolErrors != 1 {
		t.Fatalf("end %+v", r.end)
	}
}

// A login: the reply is flushed, the protocol errors before it travel with
// the Handoff, and the client's deadlines no longer apply.
func TestDialogueHandOff(t *testing.T) {
	lim := DefaultLimits(routing.IMAP)
	lim.PreAuthTimeout = 100 * time.Millisecond
	br, cc, out, _ := runDialogue(t, lim)
	io.WriteString(cc, "bad\r\nlogin\r\n")
	expect(t, br, "bad command")
	expect(t, br, "welcome")
	r := result(t, out)
	if r.ho == nil || r.ho.ProtocolErrors != 1 {
		t.Fatalf("handoff %+v, end %+v", r.ho, r.end)
	}
	// Not a wait for a condition: the pre-login read deadline must pass.
	time.Sleep(300 * time.Millisecond)
	io.WriteString(cc, "relayed\r\n")
	line, err := r.ho.Client.Stream.R.ReadString('\n')
	if err != nil || line != "relayed\r\n" {
		t.Fatalf("after the hand-off: %q, %v", line, err)
	}
	r.ho.Client.Stream.Close()
}

func TestGoodbyes(t *testing.T) {
	g := Goodbyes{Shutdown: "s\r\n", Timeout: "t\r\n", Lifetime: "l\r\n", TooManyErrors: "e\r\n"}
	for reason, want := range map[string]string{
		EndShutdown: "s\r\n", EndTimeout: "t\r\n", EndPreauthLifetime: "l\r\n", EndTooManyErrors: "e\r\n",
		EndLogout: "", EndClientClosed: "", EndError: "",
	} {
		if got := g.For(reason); got != want {
			t.Errorf("For(%q) = %q, want %q", reason, got, want)
		}
	}
}

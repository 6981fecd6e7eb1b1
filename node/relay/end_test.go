package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// lineFramer is a test framer: a response is a line; a line "LIT n"
// announces n opaque bytes that belong to the same response, which ends
// with the next line.
type lineFramer struct {
	line    []byte
	opaque  int64
	inResp  bool
	skipped int64 // opaque bytes moved unseen (spliced)
}

func (f *lineFramer) ServerData(b []byte) int {
	last := -1
	if !f.inResp && f.opaque == 0 {
		last = 0
	}
	for i := 0; i < len(b); i++ {
		if f.opaque > 0 {
			n := min(f.opaque, int64(len(b)-i))
			f.opaque -= n
			i += int(n) - 1
			continue
		}
		f.inResp = true
		if b[i] != '\n' {
			f.line = append(f.line, b[i])
			continue
		}
		if n, ok := strings.CutPrefix(string(f.line), "LIT "); ok {
			f.opaque, _ = strconv.ParseInt(n, 10, 64)
		} else {
			f.inResp = false
			last = i + 1
		}
		f.line = f.line[:0]
	}
	return last
}
func (f *lineFramer) Opaque() int64          { return f.opaque }
func (f *lineFramer) Skip(n int64)           { f.opaque -= n; f.skipped += n }
func (f *lineFramer) AtBoundary() bool       { return !f.inResp && f.opaque == 0 }
func (f *lineFramer) WantsClientData() bool  { return false }
func (f *lineFramer) ClientData([]byte)      {}
func (f *lineFramer) Bye(text string) []byte { return []byte("BYE " + text + "\n") }

func waitStats(t *testing.T, r *rig) Stats {
	t.Helper()
	select {
	case st := <-r.stats:
		return st
	case <-time.After(5 * time.Second):
		t.Fatal("session did not end")
	}
	return Stats{}
}

func readAll(t *testing.T, r *rig) []byte {
	t.Helper()
	_ = r.client.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(r.client)
	if err != nil && !isReset(err) {
		t.Fatalf("client read: %v", err)
	}
	return b
}

func isReset(err error) bool { return strings.Contains(err.Error(), "reset") }

func TestEndIdleSessionAtOnce(t *testing.T) { eachKind(t, testEndIdleSessionAtOnce) }

func testEndIdleSessionAtOnce(t *testing.T, k plain) {
	for _, tlsClient := range []bool{false, true} {
		t.Run(fmt.Sprintf("clientTLS=%v", tlsClient), func(t *testing.T) {
			e := testEngine(t)
			r := newRig(t, e, k, tlsClient, false, nil, []byte("hello\n"), Options{Framer: &lineFramer{}})
			buf := make([]byte, 6)
			if _, err := io.ReadFull(r.client, buf); err != nil {
				t.Fatal(err)
			}
			r.sess.End("moving")
			if got := string(readAll(t, r)); got != "BYE moving\n" {
				t.Fatalf("client got %q", got)
			}
			if st := waitStats(t, r); st.Reason != ReasonEnded {
				t.Fatalf("reason %q", st.Reason)
			}
		})
	}
}

// A response in progress is completed before the goodbye; what follows it
// is not passed on.
func TestEndWaitsForResponseBoundary(t *testing.T) { eachKind(t, testEndWaitsForResponseBoundary) }

func testEndWaitsForResponseBoundary(t *testing.T, k plain) {
	for _, tlsClient := range []bool{false, true} {
		t.Run(fmt.Sprintf("clientTLS=%v", tlsClient), func(t *testing.T) {
			e := testEngine(t)
			r := newRig(t, e, k, tlsClient, false, nil, nil, Options{Framer: &lineFramer{}})
			body := payload(300 << 10)
			head := []byte(fmt.Sprintf("LIT %d\n", len(body)))
			if _, err := r.backend.Write(append(head, body[:1000]...)); err != nil {
				t.Fatal(err)
			}
			got := make(chan []byte, 1)
			go func() {
				_ = r.client.SetReadDeadline(time.Now().Add(10 * time.Second))
				b, _ := io.ReadAll(r.client)
				got <- b
			}()
			time.Sleep(50 * time.Millisecond)
			r.sess.End("moving")
			time.Sleep(50 * time.Millisecond)
			if r.sess.Closed() {
				t.Fatal("session ended inside a literal")
			}
			rest := append(append([]byte(nil), body[1000:]...), " end\nnext response\n"...)
			for len(rest) > 0 { // in pieces, as a slow server
				n := min(len(rest), 64<<10)
				if _, err := r.backend.Write(rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
			}
			b := <-got
			want := append(append(head, body...), " end\n"...)
			if !bytes.HasPrefix(b, want) {
				t.Fatalf("client got %d bytes, not the whole response first", len(b))
			}
			tail := string(b[len(want):])
			if tail != "BYE moving\n" && tail != "next response\nBYE moving\n" {
				t.Fatalf("after the response the client got %q", tail)
			}
			if st := waitStats(t, r); st.Reason != ReasonEnded {
				t.Fatalf("reason %q", st.Reason)
			}
		})
	}
}

func TestEndAllSpreadAndDeadline(t *testing.T) { eachKind(t, testEndAllSpreadAndDeadline) }

func testEndAllSpreadAndDeadline(t *testing.T, k plain) {
	e := testEngine(t)
	var rigs []*rig
	for i := 0; i < 4; i++ {
		rigs = append(rigs, newRig(t, e, k, false, false, nil, nil, Options{Framer: &lineFramer{}}))
	}
	// The last one is stuck in the middle of a response.
	if _, err := rigs[3].backend.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	start := time.Now()
	n := e.EndAll(ctx, nil, "drain", 200*time.Millisecond)
	if n != 4 {
		t.Fatalf("ended %d sessions, want 4", n)
	}
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Fatalf("EndAll returned after %v, before the deadline for the stuck session", d)
	}
	reasons := map[string]int{}
	for _, r := range rigs {
		reasons[waitStats(t, r).Reason]++
	}
	if reasons[ReasonEnded] != 3 || reasons[ReasonEndLate] != 1 {
		t.Fatalf("reasons %v", reasons)
	}
	if e.Len() != 0 {
		t.Fatalf("%d sessions left", e.Len())
	}
}

// Opaque bytes are spliced (never shown to the framer) when both sides are
// plain TCP.
func TestFramedSplicesOpaque(t *testing.T) { eachKind(t, testFramedSplicesOpaque) }

func testFramedSplicesOpaque(t *testing.T, k plain) {
	e := testEngine(t)
	f := &lineFramer{}
	r := newRig(t, e, k, false, false, nil, nil, Options{Framer: f})
	body := payload(1 << 20)
	go func() {
		_, _ = r.backend.Write([]byte(fmt.Sprintf("LIT %d\n", len(body))))
		time.Sleep(20 * time.Millisecond) // the header alone first
		_, _ = r.backend.Write(append(body, " done\n"...))
	}()
	want := len(body) + len(fmt.Sprintf("LIT %d\n", len(body))) + len(" done\n")
	got := make([]byte, want)
	_ = r.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(r.client, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(got, body) {
		t.Fatal("body corrupted")
	}
	r.sess.End("bye")
	if b := string(readAll(t, r)); b != "BYE bye\n" {
		t.Fatalf("got %q", b)
	}
	waitStats(t, r)
	if f.skipped < int64(len(body))/2 {
		t.Fatalf("only %d of %d literal bytes spliced", f.skipped, len(body))
	}
}

// guardFramer refuses the client's bytes once a line "EVIL" was seen.
type guardFramer struct {
	lineFramer
	mu   sync.Mutex
	line []byte
	bad  bool
}

func (f *guardFramer) WantsClientData() bool { return true }
func (f *guardFramer) ClientData(b []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range b {
		if c != '\n' {
			f.line = append(f.line, c)
			continue
		}
		if string(f.line) == "EVIL" {
			f.bad = true
		}
		f.line = f.line[:0]
	}
}
func (f *guardFramer) ClientRefused() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.bad {
		return errors.New("evil command")
	}
	return nil
}

// A ClientGuard's refusal closes the session before the refused bytes
// reach the backend, whether they came pipelined with the login
// (toBackend) or through the relay.
func TestClientGuardRefuses(t *testing.T) { eachKind(t, testClientGuardRefuses) }

func testClientGuardRefuses(t *testing.T, k plain) {
	for _, pending := range []bool{false, true} {
		t.Run(fmt.Sprintf("pending=%v", pending), func(t *testing.T) {
			e := testEngine(t)
			var toBackend []byte
			if pending {
				toBackend = []byte("ok 1\nEVIL\nok 2\n")
			}
			r := newRig(t, e, k, false, false, toBackend, nil, Options{Framer: &guardFramer{}})
			if !pending {
				if _, err := r.client.Write([]byte("ok 1\n")); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 5)
				_ = r.backend.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(r.backend, buf); err != nil || string(buf) != "ok 1\n" {
					t.Fatalf("backend got %q, %v", buf, err)
				}
				if _, err := r.client.Write([]byte("EVIL\nok 2\n")); err != nil {
					t.Fatal(err)
				}
			}
			st := waitStats(t, r)
			if st.Reason != ReasonClient || st.Err == nil || st.Err.Error() != "evil command" {
				t.Fatalf("stats %+v", st)
			}
			_ = r.backend.SetReadDeadline(time.Now().Add(5 * time.Second))
			rest, _ := io.ReadAll(r.backend)
			if bytes.Contains(rest, []byte("EVIL")) || bytes.Contains(rest, []byte("ok 2")) {
				t.Fatalf("refused bytes reached the backend: %q", rest)
			}
		})
	}
}

// Recent: the sessions active since a time, most recent first, bounded.
func TestRecent(t *testing.T) { eachKind(t, testRecent) }

func testRecent(t *testing.T, k plain) {
	e := testEngine(t)
	var rigs []*rig
	for i := 0; i < 3; i++ {
		rigs = append(rigs, newRig(t, e, k, false, false, nil, nil, Options{Framer: &lineFramer{}}))
	}
	time.Sleep(20 * time.Millisecond)
	since := time.Now()
	time.Sleep(5 * time.Millisecond)
	// Traffic on the second, then on the third.
	for _, i := range []int{1, 2} {
		if _, err := rigs[i].backend.Write([]byte("line\n")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		_ = rigs[i].client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(rigs[i].client, buf); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	all := e.Sessions()
	if len(all) != 3 {
		t.Fatalf("%d sessions", len(all))
	}
	got := e.Recent(nil, since, 0)
	if len(got) != 2 || !got[0].lastActiveAfter(got[1]) {
		t.Fatalf("Recent: %d sessions (want 2, most recent first)", len(got))
	}
	one := e.Recent(nil, since, 1)
	if len(one) != 1 || one[0] != got[0] {
		t.Fatal("Recent with a limit of 1 is not the most recent session")
	}
	if n := len(e.Recent(func(s *Session) bool { return s != got[0] }, since, 0)); n != 1 {
		t.Fatalf("Recent with a match: %d sessions, want 1", n)
	}
	if n := len(e.Recent(nil, time.Now().Add(time.Second), 0)); n != 0 {
		t.Fatalf("Recent since a time to come: %d sessions", n)
	}
}

func (s *Session) lastActiveAfter(o *Session) bool { return s.lastActive.Load() > o.lastActive.Load() }

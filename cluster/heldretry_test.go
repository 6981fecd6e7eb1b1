package cluster

import (
	"testing"
	"time"
)

// TestHeldMessageAsksAgain: a message held for a sender whose key is not
// known makes the book ask for the key again a moment later (once, however
// many messages wait), so it does not wait for the sender's next message;
// nothing is asked once the messages were delivered.
func TestHeldMessageAsksAgain(t *testing.T) {
	n := &Agent{stop: make(chan struct{})}
	b := newPeerBook(n)
	b.hold("n9", 7, []byte("sealed 1"))
	b.hold("n9", 7, []byte("sealed 2"))
	select {
	case name := <-b.fetchCh:
		if name != "n9" {
			t.Fatalf("asked for %q, want n9", name)
		}
	case <-time.After(10 * fetchInterval):
		t.Fatal("a held message never made the book ask for its sender's key again")
	}
	select {
	case name := <-b.fetchCh:
		t.Fatalf("asked again for %q: one retry per sender while it is pending", name)
	case <-time.After(2 * fetchInterval):
	}

	// Delivered meanwhile (the fetch succeeded): the retry asks nothing.
	b.hold("n8", 7, []byte("sealed"))
	b.mu.Lock()
	delete(b.pending, "n8")
	b.mu.Unlock()
	select {
	case name := <-b.fetchCh:
		t.Fatalf("asked for %q although nothing waits for it", name)
	case <-time.After(2 * fetchInterval):
	}
	close(n.stop)
}

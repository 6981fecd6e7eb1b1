package session

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSessionIDsUnique(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100000; i++ {
		id := NewSessionID()
		if seen[id] || len(id) != 16 {
			t.Fatalf("id %q (len %d) repeated or malformed", id, len(id))
		}
		seen[id] = true
	}
}

package cluster

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine an agent starts (and raft's and memberlist's) ends by
// the time its Shutdown returns: none may outlive the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

package ldapsrc

import (
	"testing"

	"go.uber.org/goleak"
)

// Every connection's goroutines (the client's reader and dispatcher) end
// with Close.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

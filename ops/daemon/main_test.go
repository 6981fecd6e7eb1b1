package daemon

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine a daemon starts is joined by its Shutdown (or by a
// failed New): none may outlive the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

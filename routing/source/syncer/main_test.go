package syncer

import (
	"testing"

	"go.uber.org/goleak"
)

// A term's syncers end with their context: none outlives the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

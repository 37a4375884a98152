package vmware_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves goroutines behind: a
// keep-alive that outlives its session, a source whose wait goroutine never
// returns, or a simulator that was not closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

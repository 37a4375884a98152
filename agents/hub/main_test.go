package hub_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves goroutines behind: a
// handler still running after Serve returned, a lease renewer, a client.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

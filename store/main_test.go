package store

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m) // tx.Check runs a goroutine; Check must drain it
}

package peerkit

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any leaves a goroutine behind: a
// session, a Tap or a Recorder that outlives its test would outlive the
// peer program's commands too.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

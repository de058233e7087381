package robustness

import (
	"slices"
	"testing"
	"time"
)

// TestCheckerCatchesBrokenTransport proves the checks can fail: each case
// breaks the transport once, in the final phase of a run without faults
// (tamper_test.go: a hook between the transport and raft), and the check named
// must catch it. A dropped MsgApp is harmless to raft, which sends it
// again, so only the accounting can see it; so for a duplicate, which raft
// ignores; a changed entry passes raft's checks (it compares indexes and
// terms, not data) and leaves one member with a state of its own.
func TestCheckerCatchesBrokenTransport(t *testing.T) {
	tests := []struct {
		name   string
		tamper tamperKind
		check  string
	}{
		{name: "one MsgApp dropped silently", tamper: tamperDrop, check: "accounting"},
		{name: "one MsgApp delivered twice", tamper: tamperDuplicate, check: "accounting"},
		{name: "one entry's data changed", tamper: tamperCorrupt, check: "state"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := newRunConfig(int64(1000+i), 3, 1500*time.Millisecond)
			cfg.NoFaults, cfg.Clean, cfg.Tamper = true, time.Second, tc.tamper
			res := runOnce(t, cfg)
			t.Log(res.line())
			if res.Tampered == "" {
				t.Fatalf("the broken transport never acted: the run proves nothing")
			}
			t.Logf("broken transport: %s", res.Tampered)
			for _, v := range res.Violations {
				t.Logf("caught by %s: %s", v.Check, v.Detail)
			}
			if !slices.Contains(res.checks(), tc.check) {
				t.Errorf("the %s check did not catch %s (failed checks: %v)", tc.check, tc.tamper, res.checks())
			}
		})
	}
}

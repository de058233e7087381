package main

import (
	"bytes"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestDemoTour runs the whole tour in this process with 2,000 keys: three
// members elect a leader, take the writes, a fourth member joins and
// catches up through /raft/snapshot, a follower restarts from its data dir
// and catches up, and every member ends with the same state. runDemo
// returns an error if any of its checks fails.
func TestDemoTour(t *testing.T) {
	var out bytes.Buffer
	err := runDemo(t.Context(), demoConfig{Keys: 2000, Out: &out})
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatalf("runDemo: %v", err)
	}
	for _, want := range []string{
		"elected leader in",
		"member 4 received a snapshot over /raft/snapshot",
		"restarted from its data dir",
		"all 4 members hold identical state (2,500 keys)",
		"all 5 checks passed",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
}

// TestProgress checks both progress displays: a bar redrawn with \r on a
// terminal, plain lines otherwise.
func TestProgress(t *testing.T) {
	for _, tc := range []struct {
		name     string
		terminal bool
		check    func(t *testing.T, out string)
	}{
		{"terminal", true, func(t *testing.T, out string) {
			if !strings.HasPrefix(out, "\r") || !strings.HasSuffix(out, "\n") {
				t.Errorf("got %q, want a line starting with \\r and ending with a newline", out)
			}
			if !strings.Contains(out, "["+strings.Repeat("#", 30)+"] 1,000/1,000 keys") {
				t.Errorf("got %q, want a full bar and 1,000/1,000 keys", out)
			}
		}},
		{"not a terminal", false, func(t *testing.T, out string) {
			if strings.Contains(out, "\r") {
				t.Errorf("got %q, want no \\r", out)
			}
			if lines := strings.Count(out, "\n"); lines < 1 || lines > 4 {
				t.Errorf("got %d lines, want 1 to 4: %q", lines, out)
			}
			if !strings.Contains(out, "1,000/1,000 keys") {
				t.Errorf("got %q, want 1,000/1,000 keys", out)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			d := &demo{cfg: demoConfig{Terminal: tc.terminal}, out: &out}
			var done atomic.Int64
			stop := d.progress(&done, 1000, time.Now())
			done.Store(1000)
			stop()
			tc.check(t, out.String())
		})
	}
}

// TestPercentiles checks the latency percentiles on a known distribution.
func TestPercentiles(t *testing.T) {
	ds := make([]time.Duration, 100)
	for i := range ds {
		ds[i] = time.Duration(100-i) * time.Millisecond // reversed: must sort
	}
	p50, p99 := percentiles(ds)
	if p50 != 51*time.Millisecond || p99 != 100*time.Millisecond {
		t.Errorf("got p50 %v p99 %v, want 51ms and 100ms", p50, p99)
	}
	if p50, p99 := percentiles(nil); p50 != 0 || p99 != 0 {
		t.Errorf("empty: got %v %v, want 0 0", p50, p99)
	}
}

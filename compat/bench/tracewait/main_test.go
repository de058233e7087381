package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"runtime/trace"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitForAnswer blocks on answers, as the heartbeat sender does.
func waitForAnswer(answers <-chan struct{}) { <-answers }

// TestTraceWait records a trace in which one goroutine waits three times,
// the last wait made long by a busy goroutine, and checks that tracewait
// finds the waits and names the busy goroutine in the longest.
func TestTraceWait(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trace.out")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := trace.Start(f); err != nil {
		t.Fatal(err)
	}
	answers := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 3 {
			waitForAnswer(answers)
		}
	}()
	for i := range 3 {
		if i == 2 {
			busy(20 * time.Millisecond)
		}
		answers <- struct{}{}
	}
	<-done
	trace.Stop()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	if err := run([]string{"-wait", "waitForAnswer", "-top", "1", path}, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	got := out.String()
	// The first receive may find the answer already there: 2 or 3 waits.
	for _, want := range []string{"waits; the 1 longest", "tracewait.busy"} {
		if !strings.Contains(got, want) {
			t.Errorf("output does not mention %q:\n%s", want, got)
		}
	}
	if err := run([]string{"-wait", "noSuchFunction", path}, &out); err == nil {
		t.Error("no error for a function no goroutine waited in")
	}
}

// busy spins for d, yielding as it goes: each yield is a state transition
// with busy on the stack, which tracewait names the goroutine by (a spin
// that no preemption interrupted would carry its caller's name).
func busy(d time.Duration) {
	last := time.Now()
	for start := last; time.Since(start) < d; {
		if time.Since(last) > 500*time.Microsecond {
			runtime.Gosched()
			last = time.Now()
		}
	}
}

// TestTraceCount records a trace in which one goroutine blocks three times
// on a channel and checks that -count counts them under its stack.
func TestTraceCount(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trace.out")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := trace.Start(f); err != nil {
		t.Fatal(err)
	}
	answers := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 3 {
			waitForAnswer(answers)
		}
	}()
	for range 3 {
		// Give the receiver time to block before each answer.
		busy(2 * time.Millisecond)
		answers <- struct{}{}
	}
	<-done
	trace.Stop()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run([]string{"-count", "-top", "50", path}, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	got := out.String()
	for _, want := range []string{"blocks: ", "yields: ", "system calls: "} {
		if !strings.Contains(got, want) {
			t.Errorf("output does not mention %q:\n%s", want, got)
		}
	}
	// The receiver blocks at least once (the sender waits 2 ms before
	// each answer), in waitForAnswer.
	found := false
	for l := range strings.Lines(got) {
		found = found || (strings.Contains(l, "chan receive @ ") && strings.Contains(l, "tracewait.waitForAnswer"))
	}
	if !found {
		t.Errorf("no block counted in waitForAnswer:\n%s", got)
	}
}

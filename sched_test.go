package rafthttp

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestBulkClockBusy(t *testing.T) {
	c := newBulkClock()
	now := c.epoch.Add(time.Second)
	if c.busy(now) {
		t.Fatal("busy before any stamp")
	}
	c.stamp(now)
	tests := []struct {
		name  string
		after time.Duration
		want  bool
	}{
		{"at the stamp", 0, true},
		{"just inside", busyFor - time.Microsecond, true},
		{"at the bound", busyFor, false},
		{"long after", time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := c.busy(now.Add(tt.after)); got != tt.want {
				t.Errorf("busy %v after the stamp = %v, want %v", tt.after, got, tt.want)
			}
		})
	}
}

// TestYielderStampsAtBulkRate checks when a loop that measures its traffic
// stamps the bulk clock: only once a window of at least rateWindow has seen
// bulkRate, read every yieldCheck units; and that a loop that does not
// measure never stamps.
func TestYielderStampsAtBulkRate(t *testing.T) {
	window := int64(bulkRate)*int64(rateWindow)/int64(time.Second) + 1 // bytes of a window at bulk rate
	tests := []struct {
		name     string
		measures bool
		bytes    int64         // added per window
		wait     time.Duration // between the windows' ticks
		want     bool          // stamped after the second window
	}{
		{name: "at bulk rate", measures: true, bytes: window, wait: rateWindow, want: true},
		{name: "a raft cluster's appends", measures: true, bytes: window / 8, wait: rateWindow},
		{name: "a burst within a long window", measures: true, bytes: window, wait: 4 * rateWindow},
		{name: "a loop that does not measure", bytes: 4 * window, wait: rateWindow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := newBulkClock()
				time.Sleep(time.Second) // the clock's epoch is not a stamp
				y := yielder{clock: c, measures: tt.measures}
				// The first check opens the first window.
				for range yieldCheck {
					y.tick()
				}
				if c.last.Load() != 0 {
					t.Fatal("stamped on the first check, before any window")
				}
				time.Sleep(tt.wait)
				y.add(int(tt.bytes))
				for range yieldCheck - 1 {
					y.tick()
				}
				if c.last.Load() != 0 {
					t.Fatalf("stamped after %d ticks, want a check only every %d", yieldCheck-1, yieldCheck)
				}
				y.tick()
				if got := c.busy(time.Now()); got != tt.want {
					t.Errorf("clock busy after the window = %v, want %v", got, tt.want)
				}
			})
		})
	}
	var quiet yielder // no clock: must not panic, nothing to stamp
	for range 3 * yieldCheck {
		quiet.tick()
	}
}

// TestYielderYieldsOnlyWhileBusy checks that a loop gives up its P only
// while the bulk clock is busy, at most every yieldEvery.
func TestYielderYieldsOnlyWhileBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newBulkClock()
		time.Sleep(time.Second)
		y := yielder{clock: c}
		check := func() {
			for range yieldCheck {
				y.tick()
			}
		}
		check()
		if !y.last.IsZero() {
			t.Fatal("yield schedule started while the clock was quiet")
		}
		c.stamp(time.Now())
		check()
		first := y.last
		if first.IsZero() {
			t.Fatal("no yield schedule while the clock is busy")
		}
		time.Sleep(yieldEvery / 2)
		check()
		if y.last != first {
			t.Error("yielded again before yieldEvery")
		}
		time.Sleep(yieldEvery / 2)
		c.stamp(time.Now())
		check()
		if y.last == first {
			t.Error("did not yield after yieldEvery while busy")
		}
	})
}

// countingConn counts SetReadDeadline calls: one per slice a read waits.
type countingConn struct {
	net.Conn
	deadlines atomic.Int64
}

func (c *countingConn) SetReadDeadline(t time.Time) error {
	c.deadlines.Add(1)
	return c.Conn.SetReadDeadline(t)
}

// readResult is what one Read returned.
type readResult struct {
	n    int
	err  error
	took time.Duration
}

// TestSlicedConnRead checks how a message stream's Read waits: in slices
// while bulk traffic flows, in one wait otherwise, and within the read
// timeout either way.
func TestSlicedConnRead(t *testing.T) {
	tests := []struct {
		name       string
		rd         time.Duration
		busy       bool          // bulk traffic before the read starts
		startBulk  time.Duration // >0: bulk traffic starts this long into the read
		writeAfter time.Duration // >0: the peer writes this long into the read
		closeAfter time.Duration // >0: the connection is closed this long into the read
		wantData   bool
		wantErr    error // for errors.Is; nil with wantData
		minSlices  int64 // SetReadDeadline calls at least
		maxSlices  int64 // and at most (0: no bound)
	}{
		{name: "quiet: one wait", rd: 5 * time.Second, writeAfter: 20 * time.Millisecond,
			wantData: true, minSlices: 1, maxSlices: 2},
		{name: "busy: slices until the data comes", rd: 5 * time.Second, busy: true,
			writeAfter: 20 * time.Millisecond, wantData: true, minSlices: 5},
		{name: "busy: the read timeout still holds", rd: 30 * time.Millisecond, busy: true,
			wantErr: os.ErrDeadlineExceeded, minSlices: 5},
		{name: "quiet: the read timeout", rd: 30 * time.Millisecond,
			wantErr: os.ErrDeadlineExceeded, minSlices: 1, maxSlices: 2},
		{name: "bulk starts during a quiet wait", rd: 5 * time.Second,
			startBulk: 10 * time.Millisecond, writeAfter: 40 * time.Millisecond, wantData: true, minSlices: 5},
		{name: "closed while busy", rd: 5 * time.Second, busy: true,
			closeAfter: 20 * time.Millisecond, wantErr: io.ErrClosedPipe},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer server.Close()
			cc := &countingConn{Conn: client}
			clock := newBulkClock()
			sc := newSlicedConn(cc, tt.rd, 0, clock)
			defer sc.Close()

			// Keep the clock busy (or start it) from another goroutine, as
			// the bulk loops do, until the read returns.
			stop := make(chan struct{})
			stamped := make(chan struct{})
			go func() {
				defer close(stamped)
				if !tt.busy && tt.startBulk == 0 {
					return
				}
				if tt.startBulk > 0 {
					select {
					case <-time.After(tt.startBulk):
					case <-stop:
						return
					}
				}
				tick := time.NewTicker(busyFor / 4)
				defer tick.Stop()
				for {
					clock.stamp(time.Now())
					select {
					case <-tick.C:
					case <-stop:
						return
					}
				}
			}()
			if tt.busy {
				clock.stamp(time.Now())
			}

			done := make(chan readResult, 1)
			start := time.Now()
			go func() {
				b := make([]byte, 16)
				n, err := sc.Read(b)
				done <- readResult{n, err, time.Since(start)}
			}()
			var actions <-chan time.Time
			switch {
			case tt.writeAfter > 0:
				actions = time.After(tt.writeAfter)
			case tt.closeAfter > 0:
				actions = time.After(tt.closeAfter)
			}
			var res readResult
			select {
			case <-actions:
				if tt.writeAfter > 0 {
					if _, err := server.Write([]byte("hello")); err != nil {
						t.Fatal(err)
					}
				} else {
					sc.Close()
				}
				res = <-done
			case res = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Read did not return")
			}
			close(stop)
			<-stamped

			if tt.wantData {
				if res.err != nil || res.n != 5 {
					t.Fatalf("Read = %d, %v; want 5 bytes", res.n, res.err)
				}
			} else if !errors.Is(res.err, tt.wantErr) {
				t.Fatalf("Read error = %v, want %v", res.err, tt.wantErr)
			}
			if errors.Is(tt.wantErr, os.ErrDeadlineExceeded) && res.took < tt.rd {
				t.Errorf("timed out after %v, before the read timeout %v", res.took, tt.rd)
			}
			n := cc.deadlines.Load()
			if n < tt.minSlices || (tt.maxSlices > 0 && n > tt.maxSlices) {
				t.Errorf("read waited in %d slices, want %d..%d", n, tt.minSlices, tt.maxSlices)
			}
			clock.mu.Lock()
			left := len(clock.waiting)
			clock.mu.Unlock()
			if left != 0 {
				t.Errorf("%d connections still registered as waiting", left)
			}
		})
	}
}

// TestBulkClockWakesOnlyOnStart checks that only the stamp ending a quiet
// spell wakes the waiting connections.
func TestBulkClockWakesOnlyOnStart(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	defer client.Close()
	cc := &countingConn{Conn: client}
	clock := newBulkClock()
	sc := newSlicedConn(cc, 0, 0, clock)
	clock.wait(sc)
	now := time.Now()
	steps := []struct {
		name      string
		at        time.Duration
		wantKicks int64
	}{
		{"first stamp starts bulk traffic", 0, 1},
		{"stamp while busy", busyFor / 2, 1},
		{"stamp after a quiet spell", 3 * busyFor, 2},
	}
	for _, s := range steps {
		clock.stamp(now.Add(s.at))
		if got := cc.deadlines.Load(); got != s.wantKicks {
			t.Fatalf("%s: %d wakes, want %d", s.name, got, s.wantKicks)
		}
	}
	if !sc.kicked.Load() {
		t.Error("kicked not set")
	}
	clock.done(sc)
	clock.stamp(now.Add(10 * busyFor))
	if got := cc.deadlines.Load(); got != 2 {
		t.Errorf("woke a connection no longer waiting: %d wakes", got)
	}
}

// TestConnTimeouts checks that both stream connections bound each Read and
// Write by their timeouts: a plain deadlineConn (msgappv2 streams) and a
// slicedConn (message streams), which takes its Write from it, with the
// bulk clock quiet and busy.
func TestConnTimeouts(t *testing.T) {
	const rd, wr = 3 * time.Second, 2 * time.Second
	tests := []struct {
		name string
		conn func(c net.Conn, clock *bulkClock) net.Conn
		busy bool
	}{
		{name: "deadlineConn", conn: func(c net.Conn, _ *bulkClock) net.Conn { return &deadlineConn{Conn: c, rd: rd, wr: wr} }},
		{name: "slicedConn, quiet", conn: func(c net.Conn, clock *bulkClock) net.Conn { return newSlicedConn(c, rd, wr, clock) }},
		{name: "slicedConn, busy", busy: true,
			conn: func(c net.Conn, clock *bulkClock) net.Conn { return newSlicedConn(c, rd, wr, clock) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				client, server := net.Pipe()
				defer server.Close()
				clock := newBulkClock()
				c := tt.conn(client, clock)
				defer c.Close()
				if tt.busy {
					clock.stamp(time.Now())
				}
				for _, op := range []struct {
					name    string
					do      func() error
					timeout time.Duration
				}{
					{"Read", func() error { _, err := c.Read(make([]byte, 1)); return err }, rd},
					{"Write", func() error { _, err := c.Write([]byte("x")); return err }, wr},
				} {
					start := time.Now()
					err := op.do() // the server neither writes nor reads
					if !errors.Is(err, os.ErrDeadlineExceeded) {
						t.Errorf("%s: %v, want a deadline exceeded", op.name, err)
					}
					if took := time.Since(start); took != op.timeout {
						t.Errorf("%s gave up after %v, want %v", op.name, took, op.timeout)
					}
				}
			})
		})
	}
}

package rafthttp

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// fakeClock is a limiter clock that moves only when told, and counts how
// often it is read.
type fakeClock struct {
	t     atomic.Int64
	reads atomic.Int64
}

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.t.Store(int64(time.Hour)) // any non-zero start: 0 means "never logged"
	return c
}

func (c *fakeClock) now() int64 {
	c.reads.Add(1)
	return c.t.Load()
}

func (c *fakeClock) advance(d time.Duration) { c.t.Add(int64(d)) }

func TestLogLimiterAllow(t *testing.T) {
	type step struct {
		advance   time.Duration // the clock moves this much first
		calls     int           // then allow is called this often
		wantLines int           // calls that said log
		wantCount int64         // what the last of them counted
		wantReads int64         // clock reads during the calls; -1: unchecked
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"the first call logs", []step{{calls: 1, wantLines: 1, wantReads: 1}}},
		{"calls within the interval are counted for the next line", []step{
			{calls: 6, wantLines: 1, wantReads: 6},
			{advance: warnInterval, calls: 1, wantLines: 1, wantCount: 5, wantReads: 1},
		}},
		{"a call just short of the interval is suppressed", []step{
			{calls: 1, wantLines: 1, wantReads: 1},
			{advance: warnInterval - 1, calls: 1, wantReads: 1},
			{advance: 1, calls: 1, wantLines: 1, wantCount: 1, wantReads: 1},
		}},
		{"a quiet interval starts afresh", []step{
			{calls: 3, wantLines: 1, wantReads: 3},
			{advance: time.Hour, calls: 1, wantLines: 1, wantCount: 2, wantReads: 1},
			{advance: time.Hour, calls: 1, wantLines: 1, wantCount: 0, wantReads: 1},
		}},
		{"in bulk the clock is read on the first 16 calls and every 64th", []step{
			{calls: 1, wantLines: 1, wantReads: 1},
			// Calls 1-16 after the line read the clock, then 64, 128, 192.
			{calls: 200, wantReads: 19},
			// 201-255 do not look, so miss the new interval; 256 does.
			{advance: warnInterval, calls: 55, wantReads: 0},
			{calls: 1, wantLines: 1, wantCount: 255, wantReads: 1},
		}},
		{"after a long burst the next interval is seen within 64 calls", []step{
			{calls: 1, wantLines: 1, wantReads: 1},
			// 16 reads, then one per 64th call: 64, 128, ..., 960.
			{calls: 998, wantReads: 31},
			// Calls 999-1023 do not look; 1024 does and logs. The
			// 976 after it count from 1 again: 16 + 15 reads.
			{advance: warnInterval, calls: 1001, wantLines: 1, wantCount: 1023, wantReads: 32},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l logLimiter
			c := newFakeClock()
			for i, s := range tt.steps {
				c.advance(s.advance)
				reads := c.reads.Load()
				lines := 0
				var count int64
				for range s.calls {
					if n, ok := l.allow(c.now); ok {
						lines++
						count = n
					}
				}
				if lines != s.wantLines || count != s.wantCount {
					t.Errorf("step %d: %d lines (the last counting %d), want %d (counting %d)", i, lines, count, s.wantLines, s.wantCount)
				}
				if got := c.reads.Load() - reads; s.wantReads >= 0 && got != s.wantReads {
					t.Errorf("step %d: %d clock reads, want %d", i, got, s.wantReads)
				}
			}
		})
	}
}

// TestLogLimiterCountsExactly checks, under the race detector, that
// goroutines racing for lines lose no count: every call is either a line or
// counted once, in a line or still held.
func TestLogLimiterCountsExactly(t *testing.T) {
	const goroutines, calls = 4, 20000
	var l logLimiter
	c := newFakeClock()
	var lines, counted atomic.Int64
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for i := range calls {
				if i%100 == 0 {
					c.advance(10 * time.Millisecond)
				}
				if n, ok := l.allow(c.now); ok {
					lines.Add(1)
					counted.Add(n)
				}
			}
		})
	}
	wg.Wait()
	held := l.suppressed.Load()
	t.Logf("%d calls: %d lines, %d counted in them, %d held", goroutines*calls, lines.Load(), counted.Load(), held)
	if got := lines.Load() + counted.Load() + held; got != goroutines*calls {
		t.Errorf("lines + counted + held = %d, want %d", got, goroutines*calls)
	}
	// 800 steps of 10 ms: 8 s of clock, so a line at 0 s and at most one
	// a second after.
	if n := lines.Load(); n < 1 || n > 9 {
		t.Errorf("%d lines over 8 s of clock, want 1 to 9", n)
	}
}

// distinctSources returns n addresses of distinct hosts that fall in
// distinct slots of w's per-source table (the seed is random).
func distinctSources(t *testing.T, w *warnLimits, n int) []string {
	t.Helper()
	var addrs []string
	used := map[uint64]bool{}
	for i := 1; len(addrs) < n && i < 255; i++ {
		a := fmt.Sprintf("198.51.100.%d:2380", i)
		slot := sourceKey(w.seed, a) % sourceSlots
		if !used[slot] {
			used[slot] = true
			addrs = append(addrs, a)
		}
	}
	if len(addrs) < n {
		t.Fatalf("found %d sources in distinct slots, want %d", len(addrs), n)
	}
	return addrs
}

func TestWarnLimitsAllowFrom(t *testing.T) {
	tests := []struct {
		name      string
		kind      warnKind
		addrs     func(t *testing.T, w *warnLimits) []string // called in turn, all at one instant
		wantLines int                                        // at most this many if maxLines
		maxLines  bool
	}{
		{"each source of a per-source kind gets its line", warnClusterID,
			func(t *testing.T, w *warnLimits) []string {
				s := distinctSources(t, w, 3)
				return []string{s[0], s[1], s[0], s[2], s[1], s[2]}
			}, 3, false},
		{"another port is the same source", warnVersion,
			func(*testing.T, *warnLimits) []string {
				return []string{"192.0.2.1:40000", "192.0.2.1:40001", "192.0.2.1:40002"}
			}, 1, false},
		{"an IPv4-mapped address is its IPv4 host", warnVersion,
			func(*testing.T, *warnLimits) []string { return []string{"192.0.2.1:1", "[::ffff:192.0.2.1]:2"} }, 1, false},
		{"an IPv6 /64 is one source", warnClusterID,
			func(*testing.T, *warnLimits) []string {
				return []string{"[2001:db8:1:2::1]:2380", "[2001:db8:1:2:ffff::9]:2380", "[2001:db8:1:2::1%eth0]:2380"}
			}, 1, false},
		{"unparsable addresses are one source", warnClusterID,
			func(*testing.T, *warnLimits) []string { return []string{"", "@", "not an address", "/run/raft.sock"} }, 1, false},
		{"other kinds ignore the source", warnMalformed,
			func(t *testing.T, w *warnLimits) []string { return distinctSources(t, w, 4) }, 1, false},
		{"10,000 sources log no more than the slots", warnClusterID,
			func(*testing.T, *warnLimits) []string {
				addrs := make([]string, 10000)
				for i := range addrs {
					addrs[i] = fmt.Sprintf("10.%d.%d.1:2380", i/256, i%256)
				}
				return addrs
			}, sourceSlots, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newFakeClock()
			w := newWarnLimits(c.now)
			lines := 0
			var counted int64
			addrs := tt.addrs(t, w)
			for _, a := range addrs {
				if n, ok := w.allowFrom(tt.kind, a); ok {
					lines++
					counted += n
				}
			}
			if tt.maxLines && lines > tt.wantLines || !tt.maxLines && lines != tt.wantLines {
				t.Errorf("%d lines for %d calls, want %d", lines, len(addrs), tt.wantLines)
			}
			if got := int64(lines) + counted + heldWarnings(w); got != int64(len(addrs)) {
				t.Errorf("lines + counted + held = %d, want %d", got, len(addrs))
			}
		})
	}
}

// heldWarnings is what w's limiters have suppressed and not yet reported.
func heldWarnings(w *warnLimits) int64 {
	var n int64
	for i := range w.kinds {
		n += w.kinds[i].suppressed.Load()
	}
	for k := range w.sources {
		for i := range w.sources[k] {
			n += w.sources[k][i].suppressed.Load()
		}
	}
	return n
}

// TestWarnLimitsNoAllocs checks that a suppressed warning costs no
// allocation, per kind and per source.
func TestWarnLimitsNoAllocs(t *testing.T) {
	w := newWarnLimits(newFakeClock().now)
	tests := []struct {
		name string
		fn   func()
	}{
		{"per kind", func() { w.allow(warnMalformed) }},
		{"per IPv4 source", func() { w.allowFrom(warnVersion, "192.0.2.1:2380") }},
		{"per IPv6 source", func() { w.allowFrom(warnClusterID, "[2001:db8::1%eth0]:2380") }},
		{"unix socket source", func() { w.allowFrom(warnClusterID, "@") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if a := testing.AllocsPerRun(1000, tt.fn); a != 0 {
				t.Errorf("%v allocations per call, want 0", a)
			}
		})
	}
}

// TestHandlerFloodRateLimitsWarnings sends 10,000 malformed requests of
// several kinds, from a few sources, through a Transport's Handler, with
// the limiters' clock moving a step per request, and counts the log lines.
func TestHandlerFloodRateLimitsWarnings(t *testing.T) {
	const requests = 10000
	// The malformed requests, each setting off one warning.
	type bad struct {
		name   string
		method string
		path   string
		kind   htKind
		body   func() io.Reader
		header func(http.Header)
	}
	garbage := func() io.Reader { return strings.NewReader("garbage") }
	none := func() io.Reader { return nil }
	bads := []bad{
		{"bad version", http.MethodPost, RaftPrefix, htPipeline, garbage, setHeader("X-Server-Version", "2.3.0")},
		{"unparsable version", http.MethodGet, RaftStreamPrefix + "/message/b2", htStream, none, setHeader("X-Server-Version", "x.y")},
		{"wrong cluster ID", http.MethodGet, RaftStreamPrefix + "/msgapp/b2", htStream, none, setHeader("X-Etcd-Cluster-ID", "dead")},
		{"garbage message", http.MethodPost, RaftPrefix, htPipeline, garbage, nil},
		{"garbage snapshot", http.MethodPost, RaftSnapshotPrefix, htSnapshot, garbage, nil},
		{"unreadable body", http.MethodPost, RaftPrefix, htPipeline, func() io.Reader { return &htFailingReader{} }, nil},
		{"bad stream path", http.MethodGet, RaftStreamPrefix + "/message/zz", htStream, none, nil},
		{"stream from a removed member", http.MethodGet, RaftStreamPrefix + "/message/c3", htStream, none, nil},
	}
	tests := []struct {
		name    string
		step    time.Duration // the clock moves this much per request
		sources int
	}{
		{"one source over two seconds", 200 * time.Microsecond, 1},
		{"three sources over five seconds", 500 * time.Microsecond, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.InfoLevel)
			clock := newFakeClock()
			tr, fr := newNode(t, htLocal(), withConfig(func(tr *Transport) {
				tr.Logger = zap.New(core)
				tr.logClock = clock.now
			})).parts()
			fr.setRemoved(htStranger)
			// Sources that share a slot share a limit: pick hosts that
			// do not, so that each must be named.
			hosts := distinctSources(t, tr.warns, tt.sources)
			h := tr.Handler()
			for i := range requests {
				b := bads[i%len(bads)]
				req := httptest.NewRequest(b.method, b.path, b.body())
				req.Header = htHeaders(b.kind)
				if b.header != nil {
					b.header(req.Header)
				}
				host := hosts[i%tt.sources]
				req.RemoteAddr = fmt.Sprintf("%s:%d", host[:strings.LastIndexByte(host, ':')], 40000+i%1000)
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code < 400 {
					t.Fatalf("%s: status %d, want an error", b.name, rec.Code)
				}
				clock.advance(tt.step)
			}

			all := logs.All()
			var warnLines, counted int64
			perMsg := map[string]int{}
			sources := map[string]map[string]bool{} // the sources named by each message
			for _, e := range all {
				fields := e.ContextMap()
				n, ok := fields["suppressed"].(int64)
				if !ok {
					continue // not a rate-limited warning ("added new remote peer")
				}
				warnLines++
				counted += n
				perMsg[e.Message]++
				if a, ok := fields["remote-addr"].(string); ok {
					if sources[e.Message] == nil {
						sources[e.Message] = map[string]bool{}
					}
					sources[e.Message][a[:strings.LastIndexByte(a, ':')]] = true
				}
			}
			held := heldWarnings(tr.warns)
			t.Logf("%d requests over %v of clock from %d source(s): %d log lines in all, %d of them warnings; "+
				"they report %d suppressed, %d more held for the next line", requests,
				time.Duration(requests)*tt.step, tt.sources, len(all), warnLines, counted, held)
			for _, msg := range slices.Sorted(maps.Keys(perMsg)) {
				t.Logf("  %3d x %q", perMsg[msg], msg)
			}
			// The kinds limited per source name every source.
			for _, msg := range []string{"failed version compatibility check", "request cluster ID mismatch"} {
				if got := len(sources[msg]); got != tt.sources {
					t.Errorf("%q lines name %d sources, want %d", msg, got, tt.sources)
				}
			}
			if len(all) > 100 {
				t.Errorf("%d log lines for %d requests, want at most 100", len(all), requests)
			}
			if counted == 0 {
				t.Error("no line reported suppressed warnings")
			}
			if got := warnLines + counted + held; got != requests {
				t.Errorf("lines + suppressed + held = %d, want %d (one warning per request)", got, requests)
			}
		})
	}
}

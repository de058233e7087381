package rafthttp

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Bulk traffic and the scheduler.
//
// While MsgApps stream at full speed, both of a small machine's cores always
// have runnable goroutines, and Go's scheduler then delays what the network
// readies: it polls the network only from a P with nothing else to run, or
// from sysmon every 10 ms. A heartbeat that had arrived on the message stream
// waited up to that long before its reader ran (the loaded heartbeat round
// trip's p99 was 5-10 ms; compat/BENCHMARKS.md, scenario 3). Two measures
// keep the small, latency-sensitive traffic moving:
//
//   - the bulk loops (msgappv2 writer, reader and process loop) yield their P
//     every yieldEvery (yielder), so that a goroutine waiting in a run queue
//     is not held up behind a ring of goroutines waking each other, which the
//     scheduler runs back to back in one time slice;
//   - they also stamp the transport's bulk clock, and while it is recent
//     the message streams' readers wait in the network poller with a
//     deadline busyPollInterval away, and read again when it passes: the
//     deadline is a runtime timer, which the scheduler serves at every
//     goroutine switch (deadlineConn.Read).

const (
	yieldCheck       = 16                     // units of work between clock reads
	yieldEvery       = 200 * time.Microsecond // yield at least this often while busy
	busyFor          = 2 * time.Millisecond   // bulk seen this recently counts as busy
	busyPollInterval = 100 * time.Microsecond // message stream polling while busy
)

// bulkClock records when bulk traffic last moved, in monotonic nanoseconds
// since the transport started, and knows the message stream connections
// waiting for the network without slices, to wake them when bulk traffic
// starts.
type bulkClock struct {
	epoch time.Time
	last  atomic.Int64

	mu      sync.Mutex
	waiting map[*deadlineConn]struct{}
}

func newBulkClock() *bulkClock {
	return &bulkClock{epoch: time.Now(), waiting: map[*deadlineConn]struct{}{}}
}

// stamp records bulk traffic at now. When it follows a quiet spell, it ends
// the waits of the connections in wait, so that they go on in slices.
func (c *bulkClock) stamp(now time.Time) {
	t := int64(now.Sub(c.epoch))
	if prev := c.last.Swap(t); prev != 0 && t-prev < int64(busyFor) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for dc := range c.waiting {
		dc.kicked.Store(true)
		_ = dc.Conn.SetReadDeadline(now) // fails only if closed, which ends the read too
	}
}

// wait registers dc as waiting without slices; done ends that.
func (c *bulkClock) wait(dc *deadlineConn) {
	c.mu.Lock()
	c.waiting[dc] = struct{}{}
	c.mu.Unlock()
}

func (c *bulkClock) done(dc *deadlineConn) {
	c.mu.Lock()
	delete(c.waiting, dc)
	c.mu.Unlock()
}

// busy reports whether bulk traffic moved within busyFor of now.
func (c *bulkClock) busy(now time.Time) bool {
	last := c.last.Load()
	return last != 0 && int64(now.Sub(c.epoch))-last < int64(busyFor)
}

// yielder is a bulk loop's yield schedule: the loop calls tick once per unit
// of work; every yieldCheck units tick reads the clock, stamps the bulk
// clock, and if yieldEvery has passed since the loop last yielded gives up
// the P (runtime.Gosched puts the goroutine on the global run queue, so
// what waits in the local one runs first). The cost is one clock read per
// yieldCheck units and a few thousand Gosched calls a second per busy loop.
type yielder struct {
	clock *bulkClock // nil: a loop that does not count as bulk
	n     int
	last  time.Time
}

func (y *yielder) tick() {
	y.n++
	if y.n < yieldCheck {
		return
	}
	y.n = 0
	now := time.Now()
	if y.clock != nil {
		y.clock.stamp(now)
	}
	if now.Sub(y.last) < yieldEvery {
		return
	}
	if !y.last.IsZero() {
		runtime.Gosched()
	}
	y.last = now
}

// bulkYielder is the yield schedule of a stream loop: msgappv2 streams carry
// the bulk traffic and stamp the bulk clock.
func (t *Transport) bulkYielder(typ streamType) yielder {
	if typ == streamTypeMsgAppV2 {
		return yielder{clock: t.bulk}
	}
	return yielder{}
}

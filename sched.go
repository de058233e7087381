package rafthttp

import (
	"errors"
	"net"
	"os"
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
// trip's p99 was 5-10 ms; compat/BENCHMARKS.md, scenario 3). This file owns
// every measure the transport takes about the scheduler, and this list
// names every place one is applied. Each was added for a gain compat/bench
// measured (the scenario is named with it; compat/BENCHMARKS.md), and
// none may go without a run of that scenario showing it no longer helps:
//
//   - What counts as bulk traffic is measured, not assumed: the writer and
//     the reader of a stream the streams table marks bulk (streams.go: the
//     msgappv2 stream) count the bytes they move (yielder.add), and stamp
//     the transport's bulk clock (bulkClock, built by Transport.Start in
//     transport.go) only while that rate is at least bulkRate. A raft
//     cluster's appends of small proposals, one or two per message, stay
//     well below it: there every measure below cost CPU and bought nothing
//     (compat/bench, raft cluster), so none is taken. Transport.bulkYielder
//     is the one place that reads the mark.
//   - While the bulk clock is recent, the loops that hand messages on yield
//     their P every yieldEvery (yielder.tick), so that a goroutine waiting
//     in a run queue is not held up behind a ring of goroutines waking each
//     other, which the scheduler runs back to back in one time slice
//     (heartbeat under load). tick is called once per unit of work by
//     streamWriter.run (stream_writer.go, per message of a batch),
//     streamReader.decodeLoop (stream_reader.go, per frame) and
//     peer.processLoop (peer.go, per message handed to raft), of every
//     stream and of proposals.
//   - While the bulk clock is recent, the message streams' readers wait in
//     the network poller with a deadline busyPollInterval away, and read
//     again when it passes: the deadline is a runtime timer, which the
//     scheduler serves at every goroutine switch (heartbeat under load).
//     newRoundTripper (dial.go) dials the message streams' connections as
//     slicedConns, through which streamReader reads them; a stamp that ends
//     a quiet spell wakes the readers waiting without slices
//     (bulkClock.stamp calls slicedConn.kick).
//   - Transport.Send (transport.go), having dropped a message for a full
//     queue, yields once (yieldAfterFullQueue), so that the goroutine
//     draining the queue runs before the caller queues more (open loop).
//   - A snapshot's read-ahead yields before each write to the store
//     (yieldBeforeStoreWrite, from readAhead.WriteTo in readahead.go), so
//     that the goroutine reading the network is not held up behind a write
//     blocked in the kernel (snapshot).

const (
	yieldCheck       = 16                     // units of work between clock reads
	yieldEvery       = 200 * time.Microsecond // yield at least this often while busy
	busyFor          = 2 * time.Millisecond   // bulk seen this recently counts as busy
	busyPollInterval = 100 * time.Microsecond // message stream polling while busy
	// bulkRate is the rate, in bytes a second over rateWindow, at which a
	// bulk stream's loop counts as moving bulk traffic: far above what a
	// raft cluster of small proposals sends a follower (under 10 MB/s at
	// 50,000 commits/s of 128 B), far below what a stream of appends
	// moves when it fills the cores (1-3 GB/s).
	bulkRate   = 64 << 20
	rateWindow = time.Millisecond
)

// bulkClock records when bulk traffic last moved, in monotonic nanoseconds
// since the transport started, and knows the message stream connections
// waiting for the network without slices, to wake them when bulk traffic
// starts.
type bulkClock struct {
	epoch time.Time
	last  atomic.Int64

	mu      sync.Mutex
	waiting map[*slicedConn]struct{}
}

// newBulkClock returns a clock that has seen no bulk traffic.
func newBulkClock() *bulkClock {
	return &bulkClock{epoch: time.Now(), waiting: map[*slicedConn]struct{}{}}
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
	for sc := range c.waiting {
		sc.kick(now)
	}
}

// wait registers sc as waiting without slices; done ends that.
func (c *bulkClock) wait(sc *slicedConn) {
	c.mu.Lock()
	c.waiting[sc] = struct{}{}
	c.mu.Unlock()
}

// done ends the registration wait made.
func (c *bulkClock) done(sc *slicedConn) {
	c.mu.Lock()
	delete(c.waiting, sc)
	c.mu.Unlock()
}

// busy reports whether bulk traffic moved within busyFor of now.
func (c *bulkClock) busy(now time.Time) bool {
	last := c.last.Load()
	return last != 0 && int64(now.Sub(c.epoch))-last < int64(busyFor)
}

// yielder is the yield schedule of a loop that hands messages on: the loop
// calls tick once per unit of work; every yieldCheck units tick reads the
// clock. A loop that measures (a bulk stream's writer or reader) stamps the
// bulk clock if the bytes it was given (add) over the last rateWindow or
// more came to bulkRate. Any loop with a clock then gives up its P, while
// the clock says busy, if yieldEvery has passed since it last did
// (runtime.Gosched puts the goroutine on the global run queue, so what
// waits in the local one runs first). The cost is one clock read per
// yieldCheck units, and while bulk traffic flows a few thousand Gosched
// calls a second per busy loop.
type yielder struct {
	clock    *bulkClock // nil: never yields (tests)
	measures bool       // rates its own traffic and stamps the clock
	n        int
	bytes    int64     // added since since
	since    time.Time // start of the current rate window
	bulk     bool      // the last full window was at bulk rate
	last     time.Time // the last yield
}

// add counts n bytes the loop moved, toward its rate.
func (y *yielder) add(n int) { y.bytes += int64(n) }

// tick counts one unit of work (see yielder).
func (y *yielder) tick() {
	if y.clock == nil {
		return
	}
	y.n++
	if y.n < yieldCheck {
		return
	}
	y.n = 0
	now := time.Now()
	if y.measures {
		if el := now.Sub(y.since); el >= rateWindow {
			y.bulk = !y.since.IsZero() && float64(y.bytes) >= bulkRate*el.Seconds()
			y.bytes, y.since = 0, now
		}
		if y.bulk {
			y.clock.stamp(now)
		}
	}
	if !y.clock.busy(now) || now.Sub(y.last) < yieldEvery {
		return
	}
	if !y.last.IsZero() {
		runtime.Gosched()
	}
	y.last = now
}

// bulkYielder is the yield schedule of a loop working for a stream of type
// typ (its writer, its reader): the loops of a stream the streams table
// marks bulk measure their rate and stamp the bulk clock. It is the one
// place bulk-ness is read.
func (t *Transport) bulkYielder(typ streamType) yielder {
	return yielder{clock: t.bulk, measures: typ.desc().bulk}
}

// processYielder is the yield schedule of a loop handing received messages
// to raft: it yields while bulk traffic flows, and measures nothing.
func (t *Transport) processYielder() yielder { return yielder{clock: t.bulk} }

// slicedConn is a message stream's connection: a deadlineConn whose Read,
// while MsgApps stream, waits for the network in slices of
// busyPollInterval and tries the socket again after each, rather than
// relying on the network poller alone, which busy cores consult only every
// 10 ms. A read that finds data returns at once either way, and the read
// timeout (rd) still bounds the whole Read.
type slicedConn struct {
	deadlineConn             // the underlying connection, its timeouts, and Write
	bulk         *bulkClock  // when MsgApps last streamed
	kicked       atomic.Bool // the bulk clock ended a wait without slices
}

// newSlicedConn wraps c with read timeout rd and write timeout wr, reading
// in slices while bulk says MsgApps stream.
func newSlicedConn(c net.Conn, rd, wr time.Duration, bulk *bulkClock) *slicedConn {
	return &slicedConn{deadlineConn: deadlineConn{Conn: c, rd: rd, wr: wr}, bulk: bulk}
}

// Read reads from the connection, in slices while MsgApps stream, within
// the read timeout as a whole.
func (c *slicedConn) Read(b []byte) (int, error) {
	now := time.Now()
	var deadline time.Time // zero: none
	if c.rd > 0 {
		deadline = now.Add(c.rd)
	}
	for {
		n, again, err := c.readSlice(b, now, deadline)
		if !again {
			return n, err
		}
		now = time.Now()
		if !deadline.IsZero() && !now.Before(deadline) {
			return n, err
		}
	}
}

// readSlice reads with the transport's read deadline if bulk traffic is
// quiet, or within the next busyPollInterval if not. It asks for another
// slice (again) when the slice, or a wake from the bulk clock, ended the
// read with nothing read.
func (c *slicedConn) readSlice(b []byte, now, deadline time.Time) (n int, again bool, err error) {
	busy := c.bulk.busy(now)
	if !busy {
		// A stamp that starts bulk traffic either comes before the
		// registration, and the second look sees it, or after, and wakes
		// this read (through its deadline, or kicked if it comes before
		// the deadline is set below).
		c.kicked.Store(false)
		c.bulk.wait(c)
		defer c.bulk.done(c)
		busy = c.bulk.busy(time.Now())
	}
	wait := deadline
	if busy {
		wait = now.Add(busyPollInterval)
		if !deadline.IsZero() && deadline.Before(wait) {
			wait = deadline
		}
	}
	if err := c.Conn.SetReadDeadline(wait); err != nil {
		return 0, false, err
	}
	if !busy && c.kicked.Load() {
		return 0, true, nil
	}
	n, err = c.Conn.Read(b)
	if n > 0 || err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return n, false, err
	}
	return n, busy || c.kicked.Load(), err
}

// kick ends a Read waiting without slices, at now: bulk traffic has
// started, and the read goes on in slices. The bulk clock calls it with
// its lock held, for the connections registered as waiting.
func (c *slicedConn) kick(now time.Time) {
	c.kicked.Store(true)
	_ = c.Conn.SetReadDeadline(now) // fails only if closed, which ends the read too
}

// yieldAfterFullQueue is Send's yield after it dropped a message for a full
// queue: the goroutine draining that queue is likely runnable and competing
// with the caller for the same cores, and a caller sending in a loop would
// otherwise keep a core to itself while the queue's writer delivered half
// as much (compat/BENCHMARKS.md, open loop).
func yieldAfterFullQueue() { runtime.Gosched() }

// yieldBeforeStoreWrite is the snapshot read-ahead's yield before each
// write to the store: a write to a file can block in the kernel (page cache
// writeback) while the writing goroutine keeps its P, and the reading
// goroutine it may just have woken would wait on that P until sysmon takes
// it back.
func yieldBeforeStoreWrite() { runtime.Gosched() }

package rafthttp

import (
	"sync/atomic"

	"go.etcd.io/raft/v3/raftpb"
)

// The send budget bounds, per peer (and per remote), the bytes of the
// messages Send has queued to it and not yet written: queued on a stream
// or the pipeline, encoded by a stream writer but not yet written to the
// connection, or in a pipeline POST not yet answered. Queues are bounded in
// messages too, but 4,096 one-MiB appends are 4 GiB: behind a follower that
// reads slowly, count alone lets one peer take all our memory.
//
// Send charges a message to its peer's budget before queueing it, and drops
// it (reported as any drop, reason budget_exceeded) if that would take the
// budget over its limit, unless nothing is charged at the time: a message
// larger than the whole budget still goes, alone. Whoever takes the
// message off the queue gives the charge back when done with it: the
// stream writer when its encoder has written the message to the connection
// (encoders write through every 256 KiB), or after the batch's flush or the
// failure that loses the batch; a pipeline worker after the POST; and the
// code that drains a queue (a detached writer, a stopped peer, a retired
// remote) for each message it drains. A batch is not released as a whole
// at its end: a sender that keeps the queue full can make a batch last for
// up to maxBatch messages, far more than the queue holds at any time (seen
// in BenchmarkSendMsgApp: 512 appends in flight, and batches of 2,048).
//
// The charge is computed again from the message where it is released, not
// carried with it: queues stay queues of pointers, and Send's contract (the
// message must not be modified after Send) keeps both computations equal.
// Only lengths enter it, so renumbering a message's indexes, as the
// benchmarks do once it is processed, cannot change it either.
//
// Small messages (charge at most smallSendBytes: heartbeats, votes,
// responses, one-entry appends) are neither charged nor refused: their
// queues bound them by count, a heartbeat is never dropped because appends
// fill the budget, and their hot path stays free of the atomic.
type sendBudget struct {
	max  int64
	used atomic.Int64
}

const (
	// smallSendBytes is the charge below which a message is not charged
	// (see sendBudget).
	smallSendBytes = 1 << 10
	// sendMessageOverhead and sendEntryOverhead stand for what encoding
	// adds to a message's and an entry's variable-length data: tags,
	// varints and framing. Typical appends encode 20-40 bytes of header
	// and 15-25 bytes per entry (msgappv2 adds an 8-byte size per entry);
	// the charge is an estimate within a few dozen bytes, not the exact
	// encoded size, so that it costs one read of each entry's length rather
	// than raftproto.MessageSize's varint sizing.
	sendMessageOverhead = 64
	sendEntryOverhead   = 24
)

// sendCharge returns what m is charged to its peer's send budget: an
// estimate of its encoded size (sendSize), or 0 if it is small.
func sendCharge(m *raftpb.Message) int64 { return chargeOfSize(sendSize(m)) }

// chargeOfSize is the charge of a message of estimated size n.
func chargeOfSize(n int) int64 {
	if n <= smallSendBytes {
		return 0
	}
	return int64(n)
}

// sendSize estimates the encoded size of m (see sendMessageOverhead).
func sendSize(m *raftpb.Message) int {
	n := sendMessageOverhead + len(m.Context) + len(m.Entries)*sendEntryOverhead
	for _, e := range m.Entries {
		if e != nil {
			n += len(e.Data)
		}
	}
	// A snapshot's metadata (a few IDs) is left to the message's
	// overhead; Responses are carried only by raft's local messages,
	// which Send never queues.
	if s := m.Snapshot; s != nil {
		n += len(s.Data)
	}
	return n
}

// charge charges n bytes and reports whether they fit: within the limit, or
// with nothing charged yet, so that a message larger than the budget is
// still sent when its turn comes. A CAS loop rather than an addition undone
// on failure, so that a refused charge never shows, even briefly, to a
// concurrent Send.
func (b *sendBudget) charge(n int64) bool {
	if n == 0 {
		return true
	}
	for {
		used := b.used.Load()
		if used != 0 && used+n > b.max {
			return false
		}
		if b.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

// release gives back n charged bytes.
func (b *sendBudget) release(n int64) {
	if n != 0 {
		b.used.Add(-n)
	}
}

// releaseMsg gives back what m was charged.
func (b *sendBudget) releaseMsg(m *raftpb.Message) { b.release(sendCharge(m)) }

// inUse returns the bytes charged now.
func (b *sendBudget) inUse() int64 { return b.used.Load() }

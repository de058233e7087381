package rafthttptest

import (
	"context"
	"slices"
	"sync"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/raftkit/rafthttp"
)

// Recorder is a rafthttp.Raft that records what its transport hands to
// raft: every message received, every ReportUnreachable and every
// ReportSnapshot. It stands in for a raft node in tests of the network
// rather than of raft. It keeps everything it is given, so a test that
// sends millions of messages should supply a Raft of its own.
//
// The zero value is ready to use, with no member removed. Its methods are
// safe for concurrent use.
type Recorder struct {
	mu          sync.Mutex
	msgs        []*raftpb.Message
	unreachable map[uint64]int
	snapshots   []SnapshotReport
	removed     map[uint64]bool
	changed     chan struct{} // closed and replaced when a message arrives; nil until waited on
}

var _ rafthttp.Raft = (*Recorder)(nil)

// SnapshotReport is one call of Raft.ReportSnapshot.
type SnapshotReport struct {
	// ID is the member the snapshot was sent to.
	ID uint64
	// Status is how the send ended.
	Status raft.SnapshotStatus
}

// Process records m and returns nil. It never blocks, so the transport's
// receive queues never fill behind it.
func (r *Recorder) Process(_ context.Context, m *raftpb.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, m)
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
	return nil
}

// IsIDRemoved reports whether SetRemoved(id) was called: the transport
// then refuses id's streams.
func (r *Recorder) IsIDRemoved(id uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.removed[id]
}

// SetRemoved marks member id as removed from the cluster, as raft does
// once a ConfChange removing it is applied.
func (r *Recorder) SetRemoved(id uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.removed == nil {
		r.removed = map[uint64]bool{}
	}
	r.removed[id] = true
}

// ReportUnreachable counts the report; see Unreachable.
func (r *Recorder) ReportUnreachable(id uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.unreachable == nil {
		r.unreachable = map[uint64]int{}
	}
	r.unreachable[id]++
}

// ReportSnapshot records the report; see Snapshots.
func (r *Recorder) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.snapshots = append(r.snapshots, SnapshotReport{ID: id, Status: status})
}

// Messages returns the messages received so far, in the order Process was
// called. The transport processes each stream and the pipeline on
// goroutines of their own, so messages that came by different ways may be
// recorded in another order than they were sent.
func (r *Recorder) Messages() []*raftpb.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

// Unreachable returns how many times member id was reported unreachable:
// once per message to it that the transport could not deliver.
func (r *Recorder) Unreachable(id uint64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unreachable[id]
}

// Snapshots returns the ReportSnapshot calls so far, in order.
func (r *Recorder) Snapshots() []SnapshotReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.snapshots)
}

// Wait returns the first message received, since the Recorder was made,
// for which match returns true, waiting for one to arrive if none has; it
// returns ctx's error if ctx ends first. A nil match matches any message.
// Since every call looks at every message from the first, give each message
// a test waits for something to tell it apart (a term, an index, a commit).
func (r *Recorder) Wait(ctx context.Context, match func(*raftpb.Message) bool) (*raftpb.Message, error) {
	seen := 0
	for {
		r.mu.Lock()
		// Appends never change the elements already there: fresh can be
		// read without the lock, so that match may call the Recorder.
		fresh := r.msgs[seen:]
		seen = len(r.msgs)
		if r.changed == nil {
			r.changed = make(chan struct{})
		}
		changed := r.changed
		r.mu.Unlock()
		for _, m := range fresh {
			if match == nil || match(m) {
				return m, nil
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

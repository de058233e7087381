package rafthttp

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// benchWindow is how many messages the benchmarks keep in flight: enough to
// keep batching going, well under the stream and receive queues (4096), so
// that nothing is dropped.
const benchWindow = 512

// countingRaft counts processed messages without keeping them. Each one
// frees a slot of the sender's window; done is closed at the want-th.
type countingRaft struct {
	want        int64
	n           atomic.Int64
	window      chan struct{}
	done        chan struct{}
	unreachable atomic.Int64
}

func newCountingRaft(want int) *countingRaft {
	return &countingRaft{want: int64(want), window: make(chan struct{}, benchWindow), done: make(chan struct{})}
}

func (r *countingRaft) Process(_ context.Context, m *raftpb.Message) error {
	<-r.window
	if r.n.Add(1) == r.want {
		close(r.done)
	}
	return nil
}

func (r *countingRaft) IsIDRemoved(uint64) bool                    { return false }
func (r *countingRaft) ReportUnreachable(uint64)                   { r.unreachable.Add(1) }
func (r *countingRaft) ReportSnapshot(uint64, raft.SnapshotStatus) {}

// benchPair starts two transports on loopback, connected both ways with
// every stream attached; b's raft counts what it receives. Everything is
// stopped when the benchmark run ends.
func benchPair(b *testing.B, recv *countingRaft) (*testNode, *testNode) {
	b.Helper()
	na := newNode(b, withID(1), withLogger(zap.NewNop()))
	nb := newNode(b, withID(2), withLogger(zap.NewNop()), withRaft(recv))
	connect(b, na, nb)
	waitStreams(b, na, nb)
	waitStreams(b, nb, na)
	return na, nb
}

// runWindowed sends b.N messages from a to the counting raft of b, at most
// benchWindow in flight, and waits until all are processed. next returns
// the i-th message; it may reuse a message benchWindow*2 sends later, when
// the first send has certainly been processed.
func runWindowed(b *testing.B, recv *countingRaft, a *testNode, next func(i int) *raftpb.Message) {
	b.Helper()
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	batch := make([]*raftpb.Message, 1)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		select {
		case recv.window <- struct{}{}:
		case <-timeout.C:
			b.Fatalf("timed out after %d of %d messages processed (%d dropped by the sender)",
				recv.n.Load(), b.N, a.raft.unreachableCount(2))
		}
		batch[0] = next(i)
		a.tr.Send(batch)
	}
	select {
	case <-recv.done:
	case <-timeout.C:
		b.Fatalf("timed out after %d of %d messages processed (%d dropped by the sender)",
			recv.n.Load(), b.N, a.raft.unreachableCount(2))
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
}

// BenchmarkSendMsgApp measures MsgApp from one transport to another over the
// msgappv2 stream: consecutive indexes in one term, so that every message
// after the first travels in the compact AppEntries form. Allocations are
// those of both ends together, per message.
func BenchmarkSendMsgApp(b *testing.B) {
	for _, bc := range []struct {
		name    string
		entries int
		size    int
	}{
		{name: "1x128B", entries: 1, size: 128},
		{name: "64x1KiB", entries: 64, size: 1 << 10},
	} {
		b.Run(bc.name, func(b *testing.B) {
			recv := newCountingRaft(b.N)
			a, _ := benchPair(b, recv)
			payload := make([]byte, bc.size)
			for i := range payload {
				payload[i] = byte(i)
			}
			// A ring of messages, renumbered in place for each send. A
			// slot comes back 2*benchWindow sends later; by then at most
			// benchWindow sends are outstanding, so its previous use has
			// been processed, and therefore encoded.
			ring := make([]*raftpb.Message, 2*benchWindow)
			for i := range ring {
				m := &raftpb.Message{Type: raftpb.MsgApp.Enum(), To: proto.Uint64(2), From: proto.Uint64(1),
					Term: proto.Uint64(1), LogTerm: proto.Uint64(1), Index: proto.Uint64(0), Commit: proto.Uint64(0)}
				for range bc.entries {
					m.Entries = append(m.Entries, &raftpb.Entry{Term: proto.Uint64(1), Index: proto.Uint64(0),
						Type: raftpb.EntryNormal.Enum(), Data: payload})
				}
				ring[i] = m
			}
			b.ReportAllocs()
			b.SetBytes(int64(bc.entries * bc.size))
			runWindowed(b, recv, a, func(i int) *raftpb.Message {
				m := ring[i%len(ring)]
				prev := uint64(i * bc.entries)
				*m.Index = prev
				*m.Commit = prev
				for j, e := range m.Entries {
					*e.Index = prev + uint64(j) + 1
				}
				return m
			})
		})
	}
}

// BenchmarkSendHeartbeat measures a small MsgHeartbeat from one transport to
// another over the message stream, one way.
func BenchmarkSendHeartbeat(b *testing.B) {
	recv := newCountingRaft(b.N)
	a, _ := benchPair(b, recv)
	// Never modified, so the same message can be sent again and again.
	hb := &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), To: proto.Uint64(2), From: proto.Uint64(1),
		Term: proto.Uint64(7), Commit: proto.Uint64(1234)}
	b.ReportAllocs()
	runWindowed(b, recv, a, func(int) *raftpb.Message { return hb })
}

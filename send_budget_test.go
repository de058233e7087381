package rafthttp

import (
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

// chargedMsg returns a message of type typ from `from` to `to` whose one
// entry (or, for a MsgSnap, snapshot) carries size bytes of its own: over
// smallSendBytes, it is charged to the send budget.
func chargedMsg(typ raftpb.MessageType, from, to, index uint64, size int) *raftpb.Message {
	m := &raftpb.Message{Type: typ.Enum(), From: proto.Uint64(from), To: proto.Uint64(to), Term: proto.Uint64(1),
		LogTerm: proto.Uint64(1), Index: proto.Uint64(index), Commit: proto.Uint64(index)}
	data := make([]byte, size)
	if typ == raftpb.MsgSnap {
		m.Snapshot = &raftpb.Snapshot{Data: data,
			Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(index), Term: proto.Uint64(1)}}
		return m
	}
	m.Entries = []*raftpb.Entry{{Term: proto.Uint64(1), Index: proto.Uint64(index + 1),
		Type: raftpb.EntryNormal.Enum(), Data: data}}
	return m
}

// TestSendCharge checks what a message is charged: nothing when small, and
// otherwise its encoded size give or take the per-message and per-entry
// constants that stand for tags and varints.
func TestSendCharge(t *testing.T) {
	entries := func(n, size int) *raftpb.Message {
		m := chargedMsg(raftpb.MsgApp, 1, 2, 1<<20, size)
		for i := 1; i < n; i++ {
			m.Entries = append(m.Entries, &raftpb.Entry{Term: proto.Uint64(1), Index: proto.Uint64(1<<20 + uint64(i) + 1),
				Type: raftpb.EntryNormal.Enum(), Data: make([]byte, size)})
		}
		return m
	}
	tests := []struct {
		name  string
		m     *raftpb.Message
		small bool
	}{
		{name: "heartbeat", m: newMsg(raftpb.MsgHeartbeat, 1, 2, 10, withCommit(9)), small: true},
		{name: "one-entry append", m: newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10, withEntry("put x=1")), small: true},
		{name: "append of 1 KiB", m: chargedMsg(raftpb.MsgApp, 1, 2, 7, 1<<10)},
		{name: "append of 64 entries of 1 KiB", m: entries(64, 1<<10)},
		{name: "append of 1 MiB", m: chargedMsg(raftpb.MsgApp, 1, 2, 7, 1<<20)},
		{name: "append of 64 empty entries", m: entries(64, 0)},
		{name: "proposal with a nil entry", m: func() *raftpb.Message {
			m := chargedMsg(raftpb.MsgProp, 1, 2, 7, 4<<10)
			m.Entries = append(m.Entries, nil)
			return m
		}()},
		{name: "snapshot of 64 KiB", m: chargedMsg(raftpb.MsgSnap, 1, 2, 7, 64<<10)},
		{name: "read index context of 2 KiB", m: func() *raftpb.Message {
			m := newMsg(raftpb.MsgReadIndex, 1, 2, 10, withCommit(1))
			m.Context = make([]byte, 2<<10)
			return m
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := sendCharge(tt.m)
			if tt.small {
				if got != 0 {
					t.Errorf("sendCharge = %d, want 0 for a small message", got)
				}
				return
			}
			size := int64(raftproto.MessageSize(tt.m))
			slack := int64(sendMessageOverhead + sendEntryOverhead*len(tt.m.Entries))
			if got < size || got > size+slack {
				t.Errorf("sendCharge = %d, want between the encoded size %d and %d", got, size, size+slack)
			}
		})
	}
}

// TestSendBudgetCharge checks the admission rule: a charge fits within the
// limit, or alone; small messages are never refused.
func TestSendBudgetCharge(t *testing.T) {
	type step struct {
		n      int64
		admit  bool
		inUse  int64 // after the step
		isFree bool  // a release of n rather than a charge
	}
	tests := []struct {
		name  string
		max   int64
		steps []step
	}{
		{"fits, then up to the limit exactly", 10_000, []step{
			{n: 4_000, admit: true, inUse: 4_000},
			{n: 6_000, admit: true, inUse: 10_000},
		}},
		{"over the limit is refused and leaves nothing charged", 10_000, []step{
			{n: 6_000, admit: true, inUse: 6_000},
			{n: 4_001, admit: false, inUse: 6_000},
		}},
		{"larger than the limit goes alone", 10_000, []step{
			{n: 50_000, admit: true, inUse: 50_000},
			{n: 2_000, admit: false, inUse: 50_000},
			{n: 50_000, isFree: true, inUse: 0},
			{n: 2_000, admit: true, inUse: 2_000},
		}},
		{"larger than the limit waits for an empty budget", 10_000, []step{
			{n: 2_000, admit: true, inUse: 2_000},
			{n: 50_000, admit: false, inUse: 2_000},
		}},
		{"small messages are admitted over the limit", 10_000, []step{
			{n: 10_000, admit: true, inUse: 10_000},
			{n: 0, admit: true, inUse: 10_000},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &sendBudget{max: tt.max}
			for i, s := range tt.steps {
				if s.isFree {
					b.release(s.n)
				} else if got := b.charge(s.n); got != s.admit {
					t.Fatalf("step %d: charge(%d) = %v, want %v", i, s.n, got, s.admit)
				}
				if got := b.inUse(); got != s.inUse {
					t.Fatalf("step %d: inUse = %d, want %d", i, got, s.inUse)
				}
			}
		})
	}
}

// TestSendBudgetLimit checks the limit each peer and remote gets from
// MaxPeerSendBytes: the default when zero, the field otherwise.
func TestSendBudgetLimit(t *testing.T) {
	tests := []struct {
		name  string
		field int
		want  int64
	}{
		{"zero means the default", 0, DefaultMaxPeerSendBytes},
		{"set", 3 << 20, 3 << 20},
		{"below the size of a message", 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, _ := newNode(t, htLocal(), withConfig(func(tr *Transport) { tr.MaxPeerSendBytes = tt.field })).parts()
			htAddPeer(t, tr)
			if err := tr.AddRemote(htStranger, []string{"http://" + freeAddr(t)}); err != nil {
				t.Fatal(err)
			}
			p, _ := tr.get(htPeerID)
			tr.mu.RLock()
			r := tr.remotes[htStranger]
			tr.mu.RUnlock()
			if p.queued.max != tt.want || r.queued.max != tt.want {
				t.Errorf("peer's limit %d, remote's %d, want %d", p.queued.max, r.queued.max, tt.want)
			}
		})
	}
}

// stallingResponse is a stream response whose writes wait until fail is
// closed and then fail: a connection that hangs, then breaks.
type stallingResponse struct {
	h            http.Header
	entered      chan struct{} // closed at the first write
	fail         chan struct{}
	enterOnce    sync.Once
	failOnce     sync.Once
	failAndClose func()
}

func newStallingResponse() *stallingResponse {
	r := &stallingResponse{h: http.Header{}, entered: make(chan struct{}), fail: make(chan struct{})}
	r.failAndClose = func() { r.failOnce.Do(func() { close(r.fail) }) }
	return r
}

func (r *stallingResponse) Header() http.Header { return r.h }
func (r *stallingResponse) WriteHeader(int)     {}
func (r *stallingResponse) Write([]byte) (int, error) {
	r.enterOnce.Do(func() { close(r.entered) })
	<-r.fail
	return 0, errBrokenConn
}
func (r *stallingResponse) FlushError() error {
	r.enterOnce.Do(func() { close(r.entered) })
	<-r.fail
	return errBrokenConn
}

// budgetEnv is what a case of TestSendBudgetBalancesOnEveryPath checks once
// its path has run: the budget it charged, and the drops raft was told of
// against those counted.
type budgetEnv struct {
	budget   *sendBudget
	raft     *fakeRaft
	id       uint64
	dropped  func() float64 // drops counted, paused ones aside
	reported int            // drops raft must have been told of
}

// sendQueueBytes reads rafthttp_send_queue_bytes for peer id.
func sendQueueBytes(t *testing.T, tr *Transport, id string) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 64)
	go func() {
		tr.metrics.queueDepth.Collect(ch)
		close(ch)
	}()
	got := -1.0
	for m := range ch {
		if m.Desc() != tr.metrics.queueDepth.bytesDesc {
			continue
		}
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		if pb.GetLabel()[0].GetValue() == id {
			got = pb.GetGauge().GetValue()
		}
	}
	return got
}

// stoppedPeer adds the peer b2 to tr and ends its goroutines, so that what
// Send queues stays queued until RemovePeer or Stop drains it.
func stoppedPeer(t *testing.T, tr *Transport) *peer {
	t.Helper()
	htAddPeer(t, tr)
	p, _ := tr.get(htPeerID)
	p.cancel()
	p.wg.Wait()
	return p
}

// stoppedRemote adds the remote b2 to tr and ends its pipeline's workers.
func stoppedRemote(t *testing.T, tr *Transport) *remote {
	t.Helper()
	if err := tr.AddRemote(htPeerID, []string{"http://" + freeAddr(t)}); err != nil {
		t.Fatal(err)
	}
	tr.mu.RLock()
	r := tr.remotes[htPeerID]
	tr.mu.RUnlock()
	r.cancel(nil)
	r.wg.Wait()
	return r
}

// peerDrops counts the drops of p: under its own label, and those of a
// RemovePeer, which are counted under Peer "unknown" (p's series go with
// it).
func peerDrops(t testing.TB, p *peer) func() float64 {
	return func() float64 {
		return float64(p.metrics.c.dropped.Load()) +
			metricValue(t, gathered(t, p.t.metrics.droppedMessages), "", map[string]string{"Peer": unknownPeerLabel, "Reason": dropRemoved})
	}
}

// TestSendBudgetBalancesOnEveryPath runs each way a message charged to a
// send budget can leave its queue, delivered or dropped, and checks that
// the budget is back at zero afterwards, and that every drop was reported
// to raft (paused ones aside, which never are).
func TestSendBudgetBalancesOnEveryPath(t *testing.T) {
	const size = 4 << 10 // charged: over smallSendBytes
	big := func(typ raftpb.MessageType, i uint64) *raftpb.Message {
		return chargedMsg(typ, htLocalID, htPeerID, i, size)
	}
	// pair starts nodes 1 and 2, connected, with every stream up; node 1
	// sends.
	pair := func(t *testing.T) (*testNode, *testNode, *peer) {
		a := newNode(t, withID(1))
		b := newNode(t, withID(2))
		connect(t, a, b)
		waitStreams(t, a, b)
		p, _ := a.tr.get(2)
		return a, b, p
	}
	delivered := func(typ raftpb.MessageType) func(t *testing.T) budgetEnv {
		return func(t *testing.T) budgetEnv {
			a, b, p := pair(t)
			a.tr.Send([]*raftpb.Message{chargedMsg(typ, 1, 2, 5, size)})
			if got := b.raft.recv(t); got.GetType() != typ {
				t.Fatalf("received %v, want %v", got.GetType(), typ)
			}
			return budgetEnv{budget: &p.queued, raft: a.raft, id: 2, dropped: peerDrops(t, p)}
		}
	}
	tests := []struct {
		name string
		run  func(t *testing.T) budgetEnv
	}{
		{"msgappv2 stream: written", delivered(raftpb.MsgApp)},
		{"message stream: written", delivered(raftpb.MsgProp)},
		{"pipeline: posted", delivered(raftpb.MsgSnap)},
		{"remote pipeline: posted", func(t *testing.T) budgetEnv {
			a := newNode(t, withID(1))
			b := newNode(t, withID(2))
			if err := a.tr.AddRemote(2, []string{b.url}); err != nil {
				t.Fatal(err)
			}
			a.tr.Send([]*raftpb.Message{chargedMsg(raftpb.MsgApp, 1, 2, 5, size)})
			b.raft.recv(t)
			a.tr.mu.RLock()
			r := a.tr.remotes[2]
			a.tr.mu.RUnlock()
			return budgetEnv{budget: &r.queued, raft: a.raft, id: 2,
				dropped: func() float64 { return float64(r.pipeline.metrics.c.dropped.Load()) }}
		}},
		{"stream write failed, the rest drained at detach", func(t *testing.T) budgetEnv {
			tr, fr := newNode(t, htLocal()).parts()
			htAddPeer(t, tr)
			p, _ := tr.get(htPeerID)
			w := p.writers[streamTypeMsgAppV2]
			resp := newStallingResponse()
			t.Cleanup(resp.failAndClose) // before Stop: a stalled write ignores aborts
			if !w.attach(newOutgoingConn(streamTypeMsgAppV2, resp)) {
				t.Fatal("attach refused")
			}
			waitFor(t, "the writer to attach", w.isWorking)
			tr.Send([]*raftpb.Message{big(raftpb.MsgApp, 1)})
			<-resp.entered // the batch is being written: the next wait in the queue
			tr.Send([]*raftpb.Message{big(raftpb.MsgApp, 2), big(raftpb.MsgApp, 3)})
			if got, want := p.queued.inUse(), 3*sendCharge(big(raftpb.MsgApp, 1)); got != want {
				t.Errorf("charged while the batch is stuck: %d, want %d", got, want)
			}
			resp.failAndClose()
			waitFor(t, "the writer to detach", func() bool { return !w.isWorking() })
			return budgetEnv{budget: &p.queued, raft: fr, id: htPeerID, dropped: peerDrops(t, p), reported: 3}
		}},
		{"queued after the writer detached", func(t *testing.T) budgetEnv {
			tr, fr := newNode(t, htLocal()).parts()
			htAddPeer(t, tr)
			p, _ := tr.get(htPeerID)
			w := p.writers[streamTypeMsgAppV2]
			if !w.attach(newOutgoingConn(streamTypeMsgAppV2, &brokenResponse{h: http.Header{}})) {
				t.Fatal("attach refused")
			}
			waitFor(t, "the writer to attach", w.isWorking)
			tr.Send([]*raftpb.Message{big(raftpb.MsgApp, 1)}) // fails, detaches
			waitFor(t, "the writer to detach", func() bool { return !w.isWorking() })
			// A Send that saw the writer working queues after it detached.
			w.working.Store(true)
			tr.Send([]*raftpb.Message{big(raftpb.MsgApp, 2)})
			w.working.Store(false)
			waitFor(t, "the late message to be dropped", func() bool { return fr.unreachableCount(htPeerID) == 2 })
			return budgetEnv{budget: &p.queued, raft: fr, id: htPeerID, dropped: peerDrops(t, p), reported: 2}
		}},
		{"queue full, the rest drained at RemovePeer", func(t *testing.T) budgetEnv {
			tr, fr := newNode(t, htLocal(), withConfig(func(tr *Transport) { tr.PipelineQueueSize = 1 })).parts()
			p := stoppedPeer(t, tr)
			tr.Send([]*raftpb.Message{big(raftpb.MsgApp, 1), big(raftpb.MsgApp, 2)})
			if got, want := p.queued.inUse(), sendCharge(big(raftpb.MsgApp, 1)); got != want {
				t.Errorf("charged with one queued, one refused for a full queue: %d, want %d", got, want)
			}
			tr.RemovePeer(htPeerID)
			return budgetEnv{budget: &p.queued, raft: fr, id: htPeerID, dropped: peerDrops(t, p), reported: 2}
		}},
		{"budget exceeded, the rest drained at RemovePeer", func(t *testing.T) budgetEnv {
			tr, fr := newNode(t, htLocal(), withConfig(func(tr *Transport) { tr.MaxPeerSendBytes = 6 << 10 })).parts()
			p := stoppedPeer(t, tr)
			// The heartbeat is small: never refused, never charged.
			hb := &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(htLocalID), To: proto.Uint64(htPeerID)}
			tr.Send([]*raftpb.Message{big(raftpb.MsgApp, 1), big(raftpb.MsgApp, 2), hb})
			want := sendCharge(big(raftpb.MsgApp, 1))
			if got := p.queued.inUse(); got != want {
				t.Errorf("charged with one queued, one refused for the budget: %d, want %d", got, want)
			}
			if got := metricValue(t, gathered(t, tr.metrics.droppedMessages), "", map[string]string{"Peer": p.idStr, "Reason": dropBudgetExceeded}); got != 1 {
				t.Errorf("dropped_messages_total{Reason=%s} = %v, want 1", dropBudgetExceeded, got)
			}
			if got := sendQueueBytes(t, tr, p.idStr); got != float64(want) {
				t.Errorf("rafthttp_send_queue_bytes = %v, want %d", got, want)
			}
			if st, _ := tr.PeerStatus(htPeerID); st.QueuedBytes != uint64(want) {
				t.Errorf("PeerStats.QueuedBytes = %d, want %d", st.QueuedBytes, want)
			}
			tr.RemovePeer(htPeerID)
			return budgetEnv{budget: &p.queued, raft: fr, id: htPeerID, dropped: peerDrops(t, p), reported: 3}
		}},
		{"queued on every channel at RemovePeer", func(t *testing.T) budgetEnv {
			tr, fr := newNode(t, htLocal()).parts()
			p := stoppedPeer(t, tr)
			p.writers[streamTypeMsgAppV2].working.Store(true)
			p.writers[streamTypeMessage].working.Store(true)
			tr.Send([]*raftpb.Message{big(raftpb.MsgApp, 1), big(raftpb.MsgProp, 2), big(raftpb.MsgSnap, 3)})
			for _, c := range []int{len(p.writers[streamTypeMsgAppV2].msgc), len(p.writers[streamTypeMessage].msgc), len(p.pipeline.msgc)} {
				if c != 1 {
					t.Fatalf("queues hold %d, %d and %d messages, want one each",
						len(p.writers[streamTypeMsgAppV2].msgc), len(p.writers[streamTypeMessage].msgc), len(p.pipeline.msgc))
				}
			}
			tr.RemovePeer(htPeerID)
			if got := fr.snapshotReports(); len(got) != 1 || got[0].status != raft.SnapshotFailure {
				t.Errorf("snapshot reports %v, want one failure", got)
			}
			return budgetEnv{budget: &p.queued, raft: fr, id: htPeerID, dropped: peerDrops(t, p), reported: 3}
		}},
		{"paused: never charged", func(t *testing.T) budgetEnv {
			tr, fr := newNode(t, htLocal()).parts()
			p := stoppedPeer(t, tr)
			tr.CutPeer(htPeerID)
			tr.Send([]*raftpb.Message{big(raftpb.MsgApp, 1)})
			// Counted (dropped_messages_total{Reason="paused"}) but, as
			// etcd's Pause, never reported: a test hook.
			return budgetEnv{budget: &p.queued, raft: fr, id: htPeerID, dropped: func() float64 { return 0 }}
		}},
		{"remote: queue full, the rest drained when retired", func(t *testing.T) budgetEnv {
			tr, fr := newNode(t, htLocal(), withConfig(func(tr *Transport) { tr.PipelineQueueSize = 1 })).parts()
			r := stoppedRemote(t, tr)
			tr.Send([]*raftpb.Message{big(raftpb.MsgApp, 1), big(raftpb.MsgApp, 2)})
			if got, want := r.queued.inUse(), sendCharge(big(raftpb.MsgApp, 1)); got != want {
				t.Errorf("charged with one queued, one refused for a full queue: %d, want %d", got, want)
			}
			r.retire()
			return budgetEnv{budget: &r.queued, raft: fr, id: htPeerID, reported: 2, dropped: func() float64 {
				return metricValue(t, gathered(t, tr.metrics.droppedMessages), "", map[string]string{"Peer": r.idStr}) +
					metricValue(t, gathered(t, tr.metrics.droppedMessages), "", map[string]string{"Peer": unknownPeerLabel})
			}}
		}},
		{"remote: budget exceeded, the rest drained at Stop", func(t *testing.T) budgetEnv {
			tr, fr := newNode(t, htLocal(), withConfig(func(tr *Transport) { tr.MaxPeerSendBytes = 6 << 10 })).parts()
			r := stoppedRemote(t, tr)
			tr.Send([]*raftpb.Message{big(raftpb.MsgApp, 1), big(raftpb.MsgApp, 2)})
			if got, want := r.queued.inUse(), sendCharge(big(raftpb.MsgApp, 1)); got != want {
				t.Errorf("charged with one queued, one refused for the budget: %d, want %d", got, want)
			}
			tr.Stop() // drops what is queued silently: raft is stopping too
			return budgetEnv{budget: &r.queued, raft: fr, id: htPeerID, reported: 1,
				dropped: func() float64 { return float64(r.pipeline.metrics.c.dropped.Load()) }}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := tt.run(t)
			waitFor(t, "the send budget to be given back", func() bool { return env.budget.inUse() == 0 })
			if got := env.raft.unreachableCount(env.id); got != env.reported {
				t.Errorf("raft told of %d drops, want %d", got, env.reported)
			}
			// raft is told before a drop is counted (drops.go): wait for
			// the count rather than look once.
			waitFor(t, fmt.Sprintf("%d drops to be counted", env.reported), func() bool {
				return env.dropped() == float64(env.reported)
			})
		})
	}
}

// BenchmarkSendCharge compares what Send pays to charge a message, with
// raftproto.MessageSize, the exact encoded size, for reference: the charge
// is computed twice per message (at Send and when the writer is done).
func BenchmarkSendCharge(b *testing.B) {
	for _, bc := range []struct {
		name          string
		entries, size int
	}{
		{"1x128B", 1, 128},
		{"64x1KiB", 64, 1 << 10},
	} {
		m := benchMsgApp(bc.entries, bc.size, 1<<20)
		b.Run(bc.name+"/sendCharge", func(b *testing.B) {
			var n int64
			for b.Loop() {
				n += sendCharge(m)
			}
			_ = n
		})
		b.Run(bc.name+"/MessageSize", func(b *testing.B) {
			var n int
			for b.Loop() {
				n += raftproto.MessageSize(m)
			}
			_ = n
		})
		b.Run(bc.name+"/charge+release", func(b *testing.B) {
			budget := &sendBudget{max: DefaultMaxPeerSendBytes}
			for b.Loop() {
				n := sendCharge(m)
				budget.charge(n)
				budget.release(n)
			}
		})
	}
}

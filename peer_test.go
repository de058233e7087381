package rafthttp

import (
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// TestPeerPick checks the channel choice of spec §4.2 for every combination
// of writer states: MsgSnap always by the pipeline; MsgApp by msgappv2 when
// it is up, else by the message stream, else the pipeline; anything else by
// the message stream when it is up, else the pipeline.
func TestPeerPick(t *testing.T) {
	type want struct {
		snap, app, prop, heartbeat string
	}
	tests := []struct {
		name                      string
		msgAppWorking, msgWorking bool
		want                      want
	}{
		{"both streams up", true, true,
			want{chanPipeline, chanStreamMsgAppV2, chanStreamMsg, chanStreamMsg}},
		{"msgappv2 only", true, false,
			want{chanPipeline, chanStreamMsgAppV2, chanPipeline, chanPipeline}},
		{"message stream only", false, true,
			want{chanPipeline, chanStreamMsg, chanStreamMsg, chanStreamMsg}},
		{"both streams down", false, false,
			want{chanPipeline, chanPipeline, chanPipeline, chanPipeline}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := &peer{
				pipeline:       &pipeline{msgc: make(chan *raftpb.Message, 1)},
				msgAppV2Writer: &streamWriter{msgc: make(chan *raftpb.Message, 1)},
				writer:         &streamWriter{msgc: make(chan *raftpb.Message, 1)},
			}
			p.msgAppV2Writer.working.Store(tc.msgAppWorking)
			p.writer.working.Store(tc.msgWorking)
			chans := map[string]chan<- *raftpb.Message{
				chanPipeline:       p.pipeline.msgc,
				chanStreamMsgAppV2: p.msgAppV2Writer.msgc,
				chanStreamMsg:      p.writer.msgc,
			}
			for _, c := range []struct {
				typ  raftpb.MessageType
				want string
			}{
				{raftpb.MsgSnap, tc.want.snap},
				{raftpb.MsgApp, tc.want.app},
				{raftpb.MsgProp, tc.want.prop},
				{raftpb.MsgHeartbeat, tc.want.heartbeat},
			} {
				ch, name := p.pick(newMsg(c.typ, 1, 2, 10, withCommit(1)))
				if name != c.want {
					t.Errorf("%v: got channel %q, want %q", c.typ, name, c.want)
				}
				if ch != chans[c.want] {
					t.Errorf("%v: got a queue other than the %q queue", c.typ, c.want)
				}
			}
		})
	}
}

// TestPeerCutMend checks CutPeer and MendPeer: while cut, messages are
// dropped without delivery and without a report to raft (etcd's semantics,
// these are test hooks), and counted; once mended, they flow again.
func TestPeerCutMend(t *testing.T) {
	a := newNode(t, withID(1))
	b := newNode(t, withID(2))
	connect(t, a, b)
	waitStreams(t, a, b)

	a.tr.CutPeer(2)
	const cut = 20
	for i := range cut {
		a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 2, 10, withCommit(uint64(i))), newMsg(raftpb.MsgApp, 1, 2, 10, withCommit(uint64(i))),
			newMsg(raftpb.MsgSnap, 1, 2, 10, withCommit(uint64(i)))})
	}
	if got := metricValue(t, gathered(t, a.tr.metrics.droppedMessages), "", map[string]string{"Peer": "2", "Reason": dropPaused}); got != 3*cut {
		t.Errorf("got %v messages counted as dropped while paused, want %d", got, 3*cut)
	}
	a.tr.MendPeer(2)
	// A marker sent after the mend, on the same stream as the cut
	// heartbeats: if any of those had been queued, it would arrive first.
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 2, 10, withCommit(1000))})
	if got := b.raft.recv(t); got.GetCommit() != 1000 {
		t.Errorf("got %v commit %d first after the mend, want the marker (commit 1000)", got.GetType(), got.GetCommit())
	}
	// The MsgApp and MsgSnap queues carry nothing from the cut either.
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, 1, 2, 10, withCommit(1001))})
	if got := b.raft.recv(t); got.GetType() != raftpb.MsgApp || got.GetCommit() != 1001 {
		t.Errorf("got %v commit %d, want MsgApp commit 1001", got.GetType(), got.GetCommit())
	}
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgSnap, 1, 2, 10, withCommit(1002))})
	if got := b.raft.recv(t); got.GetType() != raftpb.MsgSnap || got.GetCommit() != 1002 {
		t.Errorf("got %v commit %d, want MsgSnap commit 1002", got.GetType(), got.GetCommit())
	}
	if got := a.raft.unreachableCount(2); got != 0 {
		t.Errorf("got %d ReportUnreachable for paused drops, want 0", got)
	}
	waitFor(t, "the last snapshot's report", func() bool { return len(a.raft.snapshotReports()) > 0 })
	if got := a.raft.snapshotReports(); len(got) != 1 || got[0].status != raft.SnapshotFinish {
		t.Errorf("got snapshot reports %+v, want only the Finish of the last one", got)
	}
}

// TestPeerCutDropsReceived checks that a cut peer also drops what it
// receives on its streams, and receives again once mended.
func TestPeerCutDropsReceived(t *testing.T) {
	a := newNode(t, withID(1))
	b := newNode(t, withID(2))
	connectStreams(t, a, b)

	received := func() float64 {
		return metricValue(t, gathered(t, b.tr.metrics.receivedBytes), "", map[string]string{"From": "1"})
	}
	before := received()
	b.tr.CutPeer(1) // b drops what it reads from a's streams
	m := newMsg(raftpb.MsgHeartbeat, 1, 2, 10, withCommit(1))
	m.Context = make([]byte, 4096) // far more than link heartbeats add meanwhile
	a.tr.Send([]*raftpb.Message{m})
	// The frame was read (the received byte counter moved past it) but not
	// handed to raft.
	waitFor(t, "b to read the cut message", func() bool { return received() >= before+4096 })
	b.tr.MendPeer(1)
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 2, 10, withCommit(3))})
	if got := b.raft.recv(t); got.GetCommit() != 3 {
		t.Errorf("got %v commit %d first after the mend, want the heartbeat with commit 3", got.GetType(), got.GetCommit())
	}
}

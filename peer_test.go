package rafthttp

import (
	"net/url"
	"regexp"
	"runtime/pprof"
	"slices"
	"strings"
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
			p := &peer{pipeline: &pipeline{msgc: make(chan *raftpb.Message, 1)}}
			for _, typ := range streamTypes {
				p.writers[typ] = &streamWriter{msgc: make(chan *raftpb.Message, 1)}
			}
			p.writers[streamTypeMsgAppV2].working.Store(tc.msgAppWorking)
			p.writers[streamTypeMessage].working.Store(tc.msgWorking)
			chans := map[string]chan<- *raftpb.Message{
				chanPipeline:       p.pipeline.msgc,
				chanStreamMsgAppV2: p.writers[streamTypeMsgAppV2].msgc,
				chanStreamMsg:      p.writers[streamTypeMessage].msgc,
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

// TestPeerBuildThenStart checks that newPeer only builds a peer and start
// starts its goroutines, and that a peer stopping starts nothing, as
// goIfRunning does not: stop waits for every goroutine started, so a writer
// whose run has returned by then was started, and one whose run has not
// never was.
func TestPeerBuildThenStart(t *testing.T) {
	tests := []struct {
		name    string
		steps   func(p *peer)
		wantRan bool
	}{
		{name: "built and stopped", steps: func(p *peer) { p.stop() }, wantRan: false},
		{name: "started and stopped", steps: func(p *peer) { p.start(); p.stop() }, wantRan: true},
		{name: "started after stop", steps: func(p *peer) { p.stop(); p.start(); p.wg.Wait() }, wantRan: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr, _ := newNode(t, htLocal()).parts()
			p := newPeer(tr, htPeerID, []url.URL{{Scheme: "http", Host: freeAddr(t)}})
			tc.steps(p)
			for _, typ := range streamTypes {
				ran := false
				select {
				case <-p.writers[typ].done:
					ran = true
				default:
				}
				if ran != tc.wantRan {
					t.Errorf("%v writer ran: got %v, want %v", typ, ran, tc.wantRan)
				}
			}
		})
	}
}

// TestPeerQueueDepths checks what the queue collector samples: every queue
// of the peer under its rafthttp_queue_depth label, in a fixed order, and
// the bytes charged to the send budget. The peer is built, not started, so
// that nothing drains the queues.
func TestPeerQueueDepths(t *testing.T) {
	tr, _ := newNode(t, htLocal()).parts()
	p := newPeer(tr, htPeerID, []url.URL{{Scheme: "http", Host: freeAddr(t)}})
	t.Cleanup(p.stop)
	var charged int64
	queue := func(c chan<- *raftpb.Message, n int) {
		for range n {
			m := newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10, withEntry("put x=1"))
			if !p.queued.charge(sendCharge(m)) {
				t.Fatal("send budget refused a message")
			}
			charged += sendCharge(m)
			c <- m
		}
	}
	queue(p.writers[streamTypeMsgAppV2].msgc, 1)
	queue(p.writers[streamTypeMessage].msgc, 2)
	queue(p.pipeline.msgc, 3)
	for range 4 {
		p.readers[streamTypeMsgAppV2].recvc <- received{m: newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10, withEntry("put x=1"))}
	}
	for range 5 {
		p.readers[streamTypeMessage].recvc <- received{m: newMsg(raftpb.MsgHeartbeat, htPeerID, htLocalID, 10, withEntry("put x=1"))}
	}
	for range 6 {
		p.propc <- received{m: newMsg(raftpb.MsgProp, htPeerID, htLocalID, 10, withEntry("put x=1"))}
	}

	got, bytes := p.queueDepths(nil)
	want := []queueDepth{
		{"stream_msgappv2", 1}, {"stream_message", 2}, {"pipeline", 3},
		{"recv_msgappv2", 4}, {"recv_message", 5}, {"prop", 6},
	}
	if !slices.Equal(got, want) {
		t.Errorf("queue depths: got %v, want %v", got, want)
	}
	if bytes != charged {
		t.Errorf("send budget bytes: got %d, want %d", bytes, charged)
	}
}

// TestPeerGoroutineLabels: every long-lived goroutine of a peer carries
// profile labels naming the peer and its role, so that a goroutine dump or
// a CPU profile tells the loops of one peer from another's.
func TestPeerGoroutineLabels(t *testing.T) {
	tr, _ := newNode(t, htLocal()).parts()
	p := newPeer(tr, htPeerID, []url.URL{{Scheme: "http", Host: freeAddr(t)}})
	p.start()
	defer p.stop()
	want := []string{
		"peer pipeline",
		"process msgapp", "process message", "process proposals",
		"prober " + roundTripperNameRaftMessage, "prober " + roundTripperNameSnapshot,
		"stream-reader msgapp", "stream-reader message",
		"stream-writer msgapp", "stream-writer message",
	}
	slices.Sort(want)
	var got []string
	waitFor(t, "every role's goroutine to be labelled", func() bool {
		got = labelledRoles(t, formatID(htPeerID))
		return slices.Equal(got, want)
	})
}

// labelledRoles returns the sorted, distinct rafthttp.role labels of the
// running goroutines labelled with rafthttp.peer peer.
func labelledRoles(t *testing.T, peer string) []string {
	t.Helper()
	var b strings.Builder
	if err := pprof.Lookup("goroutine").WriteTo(&b, 1); err != nil {
		t.Fatal(err)
	}
	var roles []string
	for line := range strings.Lines(b.String()) {
		if !strings.HasPrefix(line, "# labels: ") || !strings.Contains(line, `"rafthttp.peer":"`+peer+`"`) {
			continue
		}
		if m := roleLabel.FindStringSubmatch(line); m != nil && !slices.Contains(roles, m[1]) {
			roles = append(roles, m[1])
		}
	}
	slices.Sort(roles)
	return roles
}

var roleLabel = regexp.MustCompile(`"rafthttp\.role":"([^"]+)"`)

package rafthttp

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// brokenResponse is a stream response whose every write and flush fails, as
// one whose connection broke.
type brokenResponse struct{ h http.Header }

var errBrokenConn = errors.New("broken connection")

func (b *brokenResponse) Header() http.Header       { return b.h }
func (b *brokenResponse) Write([]byte) (int, error) { return 0, errBrokenConn }
func (b *brokenResponse) WriteHeader(int)           {}
func (b *brokenResponse) FlushError() error         { return errBrokenConn }

// TestStreamWriterReportsMessageQueuedAfterDetach is the interleaving that
// stranded a message: Send sees the writer working and picks its queue, the
// writer detaches (its connection broke) and drains the queue, and only then
// does the message land in the queue. It must be reported, not left there.
func TestStreamWriterReportsMessageQueuedAfterDetach(t *testing.T) {
	tr, fr := newNode(t, htLocal()).parts()
	htAddPeer(t, tr)
	p, _ := tr.get(htPeerID)
	w := p.writers[streamTypeMessage]

	c := newOutgoingConn(streamTypeMessage, &brokenResponse{h: http.Header{}})
	if !w.attach(c) {
		t.Fatal("attach refused")
	}
	waitFor(t, "the writer to attach", w.isWorking)
	// A message sent now is written, fails, and detaches the writer.
	tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, htPeerID, htLocalID, 10)})
	waitFor(t, "the writer to detach", func() bool { return !w.isWorking() })
	<-c.released
	before := fr.unreachableCount(htPeerID)

	// The Send that picked the queue before the detach delivers now.
	w.msgc <- newMsg(raftpb.MsgHeartbeat, htPeerID, htLocalID, 10)
	waitFor(t, "the late message to be reported", func() bool { return fr.unreachableCount(htPeerID) == before+1 })
	if n := len(w.msgc); n != 0 {
		t.Errorf("%d messages left in the detached writer's queue", n)
	}
}

// TestRemovePeerReportsQueuedStreamMessages: messages queued on a peer's
// streams when RemovePeer stops it are reported to raft, one report each.
func TestRemovePeerReportsQueuedStreamMessages(t *testing.T) {
	tr, fr := newNode(t, htLocal()).parts()
	htAddPeer(t, tr)
	p, _ := tr.get(htPeerID)
	// No connection is attached: put messages in the queues as Sends
	// that picked them would, with the writers stopped first so that
	// nothing drains them before RemovePeer.
	p.cancel()
	<-p.writers[streamTypeMessage].done
	<-p.writers[streamTypeMsgAppV2].done
	for range 3 {
		p.writers[streamTypeMessage].msgc <- newMsg(raftpb.MsgHeartbeat, htPeerID, htLocalID, 10)
		p.writers[streamTypeMsgAppV2].msgc <- newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10, withEntry("put x=1"))
	}
	tr.RemovePeer(htPeerID)
	if got := fr.unreachableCount(htPeerID); got != 6 {
		t.Errorf("%d reports, want 6", got)
	}
}

// callbackRaft is a Raft that records its callbacks in flight and any that
// starts after the test declared the transport stopped. Process blocks until
// its context ends and then for linger more, as a raft node's Step can.
type callbackRaft struct {
	linger   time.Duration
	inflight atomic.Int64
	closed   atomic.Bool  // the transport's Stop has returned
	late     atomic.Int64 // callbacks started after closed
	calls    atomic.Int64
}

func (r *callbackRaft) enter() func() {
	r.calls.Add(1)
	if r.closed.Load() {
		r.late.Add(1)
	}
	r.inflight.Add(1)
	return func() { r.inflight.Add(-1) }
}

func (r *callbackRaft) Process(ctx context.Context, m *raftpb.Message) error {
	defer r.enter()()
	// Some messages are taken at once, others block until the context
	// ends, and the call then lingers.
	if m.GetCommit()%2 == 0 {
		return nil
	}
	<-ctx.Done()
	time.Sleep(r.linger) // a raft node finishing its step, not a wait for an event
	return ctx.Err()
}

func (r *callbackRaft) IsIDRemoved(uint64) bool {
	defer r.enter()()
	return false
}

func (r *callbackRaft) ReportUnreachable(uint64) { defer r.enter()() }

func (r *callbackRaft) ReportSnapshot(uint64, raft.SnapshotStatus) { defer r.enter()() }

// TestLifecycleStress drives one transport with Send, AddPeer, RemovePeer,
// UpdatePeer and SendSnapshot from several goroutines, with two peers
// sending to it, then stops it with two concurrent Stops while all that goes
// on. When either Stop returns, no callback of its Raft may be running, and
// none may start later. Run with -count=20.
func TestLifecycleStress(t *testing.T) {
	cr := &callbackRaft{linger: 5 * time.Millisecond}
	a := newNode(t, withID(1), withRaft(cr))
	b := newNode(t, withID(2))
	c := newNode(t, withID(3))
	connect(t, a, b, c)
	urls := map[uint64]string{2: b.url, 3: c.url}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var ops atomic.Int64
	loop := func(f func(r *rand.Rand)) {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(rand.Uint64(), 0))
			for ctx.Err() == nil {
				f(r)
				ops.Add(1)
			}
		})
	}
	msg := func(r *rand.Rand, from, to uint64) *raftpb.Message {
		typ := []raftpb.MessageType{raftpb.MsgApp, raftpb.MsgHeartbeat, raftpb.MsgSnap, raftpb.MsgVote}[r.IntN(4)]
		return &raftpb.Message{Type: typ.Enum(), From: proto.Uint64(from), To: proto.Uint64(to),
			Term: proto.Uint64(1), Commit: proto.Uint64(r.Uint64N(8))}
	}
	loop(func(r *rand.Rand) { a.tr.Send([]*raftpb.Message{msg(r, 1, 2+r.Uint64N(3))}) })
	loop(func(r *rand.Rand) {
		id := 2 + r.Uint64N(2)
		switch r.IntN(3) {
		case 0:
			a.tr.RemovePeer(id)
		case 1:
			_ = a.tr.AddPeer(id, []string{urls[id]})
		case 2:
			_ = a.tr.UpdatePeer(id, []string{urls[id]})
		}
	})
	loop(func(r *rand.Rand) {
		m := msg(r, 1, 2+r.Uint64N(2))
		m.Type = raftpb.MsgSnap.Enum()
		m.Snapshot = &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(1), Term: proto.Uint64(1)}}
		<-a.tr.SendSnapshot(SnapshotMessage{Message: m, Payload: nopReadCloser{}, PayloadSize: 0})
	})
	for _, n := range []*testNode{b, c} {
		loop(func(r *rand.Rand) {
			n.tr.Send([]*raftpb.Message{msg(r, n.tr.ID, 1)})
			if r.IntN(64) == 0 {
				time.Sleep(time.Millisecond) // pace, not a wait
			}
		})
	}

	// Let the traffic run, then stop with two concurrent Stops.
	waitFor(t, "traffic", func() bool { return ops.Load() > 2000 && cr.calls.Load() > 100 })
	var stops sync.WaitGroup
	for range 2 {
		stops.Go(func() {
			a.tr.Stop()
			if n := cr.inflight.Load(); n != 0 {
				t.Errorf("Stop returned with %d callbacks running", n)
			}
			cr.closed.Store(true)
		})
	}
	stops.Wait()
	// The peers keep sending to the stopped transport for a while.
	deadline := time.Now().Add(100 * time.Millisecond)
	for time.Now().Before(deadline) {
		if n := cr.late.Load(); n != 0 {
			break
		}
		time.Sleep(time.Millisecond) // an observation window
	}
	cancel()
	wg.Wait()
	if n := cr.late.Load(); n != 0 {
		t.Errorf("%d callbacks started after Stop returned", n)
	}
	t.Logf("%d operations, %d callbacks", ops.Load(), cr.calls.Load())
}

// nopReadCloser is an empty snapshot payload.
type nopReadCloser struct{}

func (nopReadCloser) Read([]byte) (int, error) { return 0, io.EOF }
func (nopReadCloser) Close() error             { return nil }

package rafthttp

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/protobuf/proto"
)

// recvErr waits for an error on c.
func recvErr(t *testing.T, c <-chan error) error {
	t.Helper()
	return receive(t, c, 10*time.Second, "an error on ErrorC")
}

// TestTransportRemovedMemberStream410 checks that a stream dial answered 410
// (the remote says we were removed) posts ErrMemberRemoved to ErrorC.
func TestTransportRemovedMemberStream410(t *testing.T) {
	errc := make(chan error, 1)
	a := newNode(t, withID(1), withConfig(func(tr *Transport) { tr.ErrorC = errc }))
	b := newNode(t, withID(2))
	b.raft.setRemoved(1)
	connect(t, a, b)
	if err := recvErr(t, errc); !errors.Is(err, ErrMemberRemoved) {
		t.Errorf("got %v on ErrorC, want ErrMemberRemoved", err)
	}
	if p, _ := b.tr.get(1); p.writers[streamTypeMessage].isWorking() || p.writers[streamTypeMsgAppV2].isWorking() {
		t.Error("b attached a stream from a removed member")
	}
}

// TestTransportClusterIDMismatch checks that members of different clusters
// never attach streams and never deliver messages to each other, and that
// this is not mistaken for a removal.
func TestTransportClusterIDMismatch(t *testing.T) {
	errc := make(chan error, 1)
	a := newNode(t, withID(1), withConfig(func(tr *Transport) { tr.ErrorC = errc }))
	b := newNode(t, withID(2), withClusterID(testClusterID+1))
	connect(t, a, b)

	pa, _ := a.tr.get(2)
	waitFor(t, "a's stream dial to be refused", func() bool {
		err := pa.status.lastError()
		return err != nil && strings.Contains(err.Error(), ErrClusterIDMismatch.Error())
	})
	// With no stream, the message goes by the pipeline and is refused too.
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 2, 10, withCommit(1))})
	waitFor(t, "the refused POST to be reported", func() bool { return a.raft.unreachableCount(2) > 0 })

	pb, _ := b.tr.get(1)
	for name, w := range map[string]*streamWriter{"a's message": pa.writers[streamTypeMessage], "a's msgapp": pa.writers[streamTypeMsgAppV2],
		"b's message": pb.writers[streamTypeMessage], "b's msgapp": pb.writers[streamTypeMsgAppV2]} {
		if w.isWorking() {
			t.Errorf("%s writer is attached across clusters", name)
		}
	}
	if n := len(b.raft.msgc); n != 0 {
		t.Errorf("b received %d messages from another cluster, want 0", n)
	}
	select {
	case err := <-errc:
		t.Errorf("got %v on ErrorC, want nothing for a cluster mismatch", err)
	default:
	}
}

// TestTransportRemovedMemberPipeline403 checks that a POST answered 403 posts
// ErrMemberRemoved to ErrorC and is reported as a failed delivery.
func TestTransportRemovedMemberPipeline403(t *testing.T) {
	errc := make(chan error, 1)
	a := newNode(t, withID(1), withConfig(func(tr *Transport) { tr.ErrorC = errc }))
	b := newNode(t, withID(2))
	b.raft.setProcess(func(context.Context, *raftpb.Message) error { return forbiddenError{} })
	// Only a knows b: no stream, so the message takes the pipeline.
	if err := a.tr.AddPeer(2, []string{b.url}); err != nil {
		t.Fatal(err)
	}
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, 1, 2, 10, withCommit(1))})
	if err := recvErr(t, errc); !errors.Is(err, ErrMemberRemoved) {
		t.Errorf("got %v on ErrorC, want ErrMemberRemoved", err)
	}
	waitFor(t, "the 403 to be reported", func() bool { return a.raft.unreachableCount(2) == 1 })
}

// TestTransportUpdatePeer checks that a peer first pointed at a dead address
// becomes reachable once UpdatePeer gives it the right URL. MsgSnap always
// takes the pipeline, so it shows which URL a uses; b's writers show where
// a's stream readers got through.
func TestTransportUpdatePeer(t *testing.T) {
	a := newNode(t, withID(1))
	b := newNode(t, withID(2))
	if err := a.tr.AddPeer(2, []string{"http://" + freeAddr(t)}); err != nil {
		t.Fatal(err)
	}
	if err := b.tr.AddPeer(1, []string{a.url}); err != nil {
		t.Fatal(err)
	}
	pb, _ := b.tr.get(1)

	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgSnap, 1, 2, 10, withCommit(1))})
	waitFor(t, "the send to the dead address to fail", func() bool { return len(a.raft.snapshotReports()) == 1 })
	if got := a.raft.snapshotReports()[0]; got.id != 2 || got.status != raft.SnapshotFailure {
		t.Errorf("got snapshot report %+v, want failure for 2", got)
	}
	if n := len(b.raft.msgc); n != 0 {
		t.Fatalf("b received %d messages sent to a dead address", n)
	}
	if pb.writers[streamTypeMessage].isWorking() || pb.writers[streamTypeMsgAppV2].isWorking() {
		t.Fatal("a's readers reached b through a dead address")
	}

	if err := a.tr.UpdatePeer(2, []string{b.url}); err != nil {
		t.Fatalf("UpdatePeer: %v", err)
	}
	waitStreams(t, b, a) // a's readers now reach b
	waitStreams(t, a, b)
	for i, typ := range []raftpb.MessageType{raftpb.MsgSnap, raftpb.MsgApp, raftpb.MsgVote} {
		a.tr.Send([]*raftpb.Message{newMsg(typ, 1, 2, 10, withCommit(uint64(10+i)))})
		if got := b.raft.recv(t); got.GetType() != typ || got.GetCommit() != uint64(10+i) {
			t.Errorf("got %v commit %d, want %v commit %d", got.GetType(), got.GetCommit(), typ, 10+i)
		}
	}
	waitFor(t, "the second snapshot report", func() bool { return len(a.raft.snapshotReports()) == 2 })
	if got := a.raft.snapshotReports()[1]; got.status != raft.SnapshotFinish {
		t.Errorf("got snapshot report %+v, want finish", got)
	}
}

// TestTransportPeerSecondURL checks that a peer whose first URL (in sorted
// order) is dead is reached through its second.
func TestTransportPeerSecondURL(t *testing.T) {
	a := newNode(t, withID(1))
	b := newNode(t, withID(2))
	var dead string
	for range 100 {
		if u := "http://" + freeAddr(t); u < b.url {
			dead = u
			break
		}
	}
	if dead == "" {
		t.Skip("found no free port that sorts before the live one")
	}
	if err := a.tr.AddPeer(2, []string{b.url, dead}); err != nil {
		t.Fatal(err)
	}
	if err := b.tr.AddPeer(1, []string{a.url}); err != nil {
		t.Fatal(err)
	}
	pa, _ := a.tr.get(2)
	if urls := pa.picker.urls(); len(urls) != 2 || urls[0].String() != dead {
		t.Fatalf("got URLs %v, want the dead %s first", urls, dead)
	}
	waitStreams(t, b, a) // a's readers rotated to the live URL
	// MsgSnap takes the pipeline, which shares the readers' picker.
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgSnap, 1, 2, 10, withCommit(5))})
	if got := b.raft.recv(t); got.GetType() != raftpb.MsgSnap || got.GetCommit() != 5 {
		t.Errorf("got %v commit %d, want MsgSnap commit 5", got.GetType(), got.GetCommit())
	}
	if u := pa.picker.pick(); u.String() != b.url {
		t.Errorf("picker settled on %s, want %s", u.String(), b.url)
	}
}

// TestTransportPeerErrors checks the errors of the membership methods.
func TestTransportPeerErrors(t *testing.T) {
	tr, _ := newNode(t, withID(1), unserved()).parts()
	if err := tr.UpdatePeer(7, []string{"http://127.0.0.1:1"}); !errors.Is(err, ErrMemberNotFound) {
		t.Errorf("UpdatePeer of an unknown id: got %v, want ErrMemberNotFound", err)
	}
	for _, urls := range [][]string{nil, {"127.0.0.1:2380"}, {"ftp://127.0.0.1:2380"}, {"http://127.0.0.1"}, {"http://127.0.0.1:2380/path"}} {
		if err := tr.AddPeer(2, urls); !errors.Is(err, ErrInvalidURL) {
			t.Errorf("AddPeer(%q): got %v, want ErrInvalidURL", urls, err)
		}
		if err := tr.AddRemote(2, urls); !errors.Is(err, ErrInvalidURL) {
			t.Errorf("AddRemote(%q): got %v, want ErrInvalidURL", urls, err)
		}
	}
	if _, ok := tr.get(2); ok {
		t.Error("a peer was added with invalid URLs")
	}
	if err := tr.AddPeer(2, []string{"http://127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	if err := tr.UpdatePeer(2, []string{"bad"}); !errors.Is(err, ErrInvalidURL) {
		t.Errorf("UpdatePeer with a bad URL: got %v, want ErrInvalidURL", err)
	}
	for _, id := range []uint64{0, 1} {
		if err := tr.AddPeer(id, []string{"http://127.0.0.1:1"}); err == nil {
			t.Errorf("AddPeer(%d): got nil error, want one", id)
		}
	}
	if err := tr.Start(); err == nil {
		t.Error("second Start: got nil error, want one")
	}
}

// TestTransportAfterStop checks that every method is safe after Stop.
func TestTransportAfterStop(t *testing.T) {
	tr, r := newNode(t, withID(1), unserved()).parts()
	if err := tr.AddPeer(2, []string{"http://127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	h := tr.Handler()
	tr.Stop()
	tr.Stop()

	if err := tr.AddPeer(3, []string{"http://127.0.0.1:1"}); !errors.Is(err, ErrStopped) {
		t.Errorf("AddPeer after Stop: got %v, want ErrStopped", err)
	}
	if err := tr.AddRemote(3, []string{"http://127.0.0.1:1"}); !errors.Is(err, ErrStopped) {
		t.Errorf("AddRemote after Stop: got %v, want ErrStopped", err)
	}
	if err := tr.UpdatePeer(2, []string{"http://127.0.0.1:1"}); err == nil {
		t.Error("UpdatePeer after Stop: got nil error, want one")
	}
	tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, 1, 2, 10, withCommit(1)), newMsg(raftpb.MsgSnap, 1, 2, 10, withCommit(2))})
	tr.RemovePeer(2)
	tr.RemoveAllPeers()
	tr.Pause()
	tr.Resume()
	tr.CutPeer(2)
	tr.MendPeer(2)
	if got := tr.ActiveSince(2); !got.IsZero() {
		t.Errorf("ActiveSince after Stop: got %v, want zero", got)
	}
	if got := tr.ActivePeers(); got != 0 {
		t.Errorf("ActivePeers after Stop: got %d, want 0", got)
	}
	if got := r.unreachableCount(2); got != 0 {
		t.Errorf("Send after Stop reported %d unreachable, want 0 (raft is shutting down)", got)
	}

	// The handler still answers without panicking.
	req := httptest.NewRequest(http.MethodGet, RaftStreamPrefix+"/message/2", nil)
	tr.setHeaders(req.Header)
	req.Header.Set(headerRaftTo, "1")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code == http.StatusOK {
		t.Errorf("stream GET after Stop: got 200, want a refusal")
	}
}

// TestTransportStartValidation checks that Start refuses bad configurations.
func TestTransportStartValidation(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Transport)
	}{
		{"zero ID", func(tr *Transport) { tr.ID = 0 }},
		{"zero ClusterID", func(tr *Transport) { tr.ClusterID = 0 }},
		{"nil Raft", func(tr *Transport) { tr.Raft = nil }},
		{"bad URL", func(tr *Transport) { tr.URLs = []string{"not a url"} }},
		{"URL with a path", func(tr *Transport) { tr.URLs = []string{"http://127.0.0.1:2380/x"} }},
		{"ServerVersion 2.3.0", func(tr *Transport) { tr.ServerVersion = "2.3.0" }},
		{"ServerVersion garbage", func(tr *Transport) { tr.ServerVersion = "garbage" }},
		{"ServerVersion with v prefix", func(tr *Transport) { tr.ServerVersion = "v3.7.0" }},
		{"MinClusterVersion garbage", func(tr *Transport) { tr.MinClusterVersion = "3.0" }},
		{"negative DialTimeout", func(tr *Transport) { tr.DialTimeout = -1 }},
		{"negative ConnReadTimeout", func(tr *Transport) { tr.ConnReadTimeout = -time.Second }},
		{"negative ConnWriteTimeout", func(tr *Transport) { tr.ConnWriteTimeout = -time.Second }},
		{"negative PipelineTimeout", func(tr *Transport) { tr.PipelineTimeout = -time.Second }},
		{"negative DialRetryMin", func(tr *Transport) { tr.DialRetryMin = -time.Second }},
		{"DialRetryMax below DialRetryMin", func(tr *Transport) { tr.DialRetryMin, tr.DialRetryMax = time.Second, time.Millisecond }},
		{"MaxMessageBytes too large", func(tr *Transport) { tr.MaxMessageBytes = 1 << 31 }},
		{"negative MaxMessageBytes", func(tr *Transport) { tr.MaxMessageBytes = -1 }},
		{"negative MaxPeerSendBytes", func(tr *Transport) { tr.MaxPeerSendBytes = -1 }},
		{"MaxPeerSendBytes too large", func(tr *Transport) { tr.MaxPeerSendBytes = 1 << 31 }},
		{"negative StreamQueueSize", func(tr *Transport) { tr.StreamQueueSize = -1 }},
		{"negative PipelineWorkers", func(tr *Transport) { tr.PipelineWorkers = -1 }},
	}
	valid := func() *Transport {
		return &Transport{ID: 1, ClusterID: testClusterID, Raft: newFakeRaft(), URLs: []string{"http://127.0.0.1:2380"}}
	}
	t.Run("valid", func(t *testing.T) {
		tr := valid()
		if err := tr.Start(); err != nil {
			t.Fatalf("Start: got %v, want nil", err)
		}
		tr.Stop()
	})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := valid()
			tc.mutate(tr)
			err := tr.Start()
			if err == nil {
				tr.Stop()
				t.Fatal("Start: got nil error, want one")
			}
			// A transport that failed to start is inert.
			if err := tr.AddPeer(2, []string{"http://127.0.0.1:1"}); err == nil {
				t.Error("AddPeer after a failed Start: got nil error, want one")
			}
			tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, 1, 2, 10, withCommit(1))})
			tr.Stop()
		})
	}
}

// TestTransportRemovePeerAndStopUnderLoad removes a peer and stops
// transports while messages flow in every direction, and checks that no
// goroutine is left behind and that the removed peer's metrics are gone.
func TestTransportRemovePeerAndStopUnderLoad(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	// b advertises no URLs, so a cannot turn it back into a remote from its
	// requests after the removal, and its metrics series stay gone.
	a := newNode(t, withID(1))
	b := newNode(t, withID(2), withConfig(func(tr *Transport) { tr.URLs = nil }))
	c := newNode(t, withID(3))
	nodes := []*testNode{a, b, c}
	connect(t, nodes...)
	for _, n := range nodes {
		for _, o := range nodes {
			if n != o {
				waitStreams(t, n, o)
			}
		}
	}
	var received [4]atomic.Int64 // by receiver
	for _, n := range nodes {
		id := n.tr.ID
		n.raft.setProcess(func(context.Context, *raftpb.Message) error {
			received[id].Add(1)
			return nil
		})
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		data := make([]byte, 512)
		// Bursts paced by a ticker, so that the flood does not starve the
		// transports' own goroutines on a small machine.
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for i := uint64(1); ; i++ {
			if i%8 == 0 {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
			for _, n := range nodes {
				for _, to := range []uint64{1, 2, 3} {
					if to == n.tr.ID {
						continue
					}
					n.tr.Send([]*raftpb.Message{
						{Type: raftpb.MsgApp.Enum(), From: proto.Uint64(n.tr.ID), To: proto.Uint64(to), Term: proto.Uint64(1),
							LogTerm: proto.Uint64(1), Index: proto.Uint64(i), Entries: []*raftpb.Entry{{Index: proto.Uint64(i + 1), Data: data}}},
						{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(n.tr.ID), To: proto.Uint64(to), Commit: proto.Uint64(i)},
					})
				}
			}
		}
	})
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	waitFor(t, "traffic to flow", func() bool { return received[2].Load() > 500 && received[3].Load() > 500 })
	if got := seriesNaming(t, gathered(t, a.tr.metrics.sentBytes), "2"); len(got) == 0 {
		t.Fatal("no metrics series for peer 2 before its removal; the check below would prove nothing")
	}
	start := time.Now()
	a.tr.RemovePeer(2)
	t.Logf("RemovePeer under load took %v", time.Since(start))
	if _, ok := a.tr.get(2); ok {
		t.Error("peer 2 is still there after RemovePeer")
	}
	a.tr.RemovePeer(2)  // again: a no-op
	a.tr.RemovePeer(42) // unknown: a no-op
	for _, col := range a.tr.metrics.collectors {
		if got := seriesNaming(t, gathered(t, col), "2"); len(got) != 0 {
			t.Errorf("series of the removed peer remain: %v", got)
		}
	}
	// The others keep talking.
	before := received[3].Load()
	waitFor(t, "traffic to c to go on", func() bool { return received[3].Load() > before+100 })

	start = time.Now()
	c.tr.Stop()
	t.Logf("Stop under load took %v", time.Since(start))
	// b's streams to a went with the removal; b reaches a by the pipeline.
	before = received[1].Load()
	waitFor(t, "traffic from b to a to go on", func() bool { return received[1].Load() > before+20 })

	close(stop)
	wg.Wait()
	for _, n := range nodes {
		n.close()
	}
	goleak.VerifyNone(t, ignore)
}

// TestTransportSendLocalTargets checks what Send does with the messages raft
// addresses to its local storage threads under AsyncStorageWrites: it skips
// them, reports nothing to raft, counts no drop, and warns at most once per
// warnInterval, while the rest of the same call is sent; and that no peer or
// remote can take those IDs.
func TestTransportSendLocalTargets(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	clock := newFakeClock()
	a := newNode(t, withID(1), withConfig(func(tr *Transport) {
		tr.Logger = zap.New(core)
		tr.logClock = clock.now
	}))
	b := newNode(t, withID(2))
	connect(t, a, b)
	const warning = "ignored message to a raft local storage thread"

	tests := []struct {
		name   string
		to     uint64
		typ    raftpb.MessageType
		target string // the warning's target field
	}{
		{"append thread", raft.LocalAppendThread, raftpb.MsgStorageAppend, "LocalAppendThread"},
		{"apply thread", raft.LocalApplyThread, raftpb.MsgStorageApply, "LocalApplyThread"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock.advance(warnInterval) // a line is due to this case
			logs.TakeAll()
			local := newMsg(tt.typ, 1, tt.to, 1)
			const sends = 3
			for i := range uint64(sends) {
				a.tr.Send([]*raftpb.Message{local, newMsg(raftpb.MsgHeartbeat, 1, 2, i)})
				recvFrom(t, b, 1, raftpb.MsgHeartbeat)
			}
			for _, id := range []uint64{tt.to, 1, 2} {
				if n := a.raft.unreachableCount(id); n != 0 {
					t.Errorf("ReportUnreachable(%x) called %d times, want 0", id, n)
				}
			}
			if got := metricValue(t, gathered(t, a.tr.metrics.droppedMessages), "", nil); got != 0 {
				t.Errorf("dropped_messages_total = %v, want 0", got)
			}

			lines := logs.FilterMessageSnippet(warning).All()
			if len(lines) != 1 {
				t.Fatalf("got %d warnings for %d sends, want 1", len(lines), sends)
			}
			if f := lines[0].ContextMap(); f["target"] != tt.target || f["type"] != tt.typ.String() {
				t.Errorf("warning fields = %v, want target %s and type %s", f, tt.target, tt.typ)
			}
			// The next line, once due, counts the sends held back.
			clock.advance(warnInterval)
			a.tr.Send([]*raftpb.Message{local})
			lines = logs.FilterMessageSnippet(warning).All()
			if len(lines) != 2 {
				t.Fatalf("got %d warnings after warnInterval, want 2", len(lines))
			}
			if got := lines[1].ContextMap()["suppressed"]; got != int64(sends-1) {
				t.Errorf("second warning suppressed = %v, want %d", got, sends-1)
			}

			for _, add := range []struct {
				name string
				fn   func(uint64, []string) error
			}{{"AddPeer", a.tr.AddPeer}, {"AddRemote", a.tr.AddRemote}} {
				if err := add.fn(tt.to, []string{b.url}); err == nil {
					t.Errorf("%s(%x): got nil error, want one", add.name, tt.to)
				}
			}
			if _, ok := a.tr.PeerStatus(tt.to); ok {
				t.Errorf("PeerStatus(%x) found a peer", tt.to)
			}
		})
	}
}

// TestTransportLifecycleErrors checks that calls out of order in the
// transport's lifecycle return the sentinels, so callers can tell them apart
// with errors.Is rather than by their text.
func TestTransportLifecycleErrors(t *testing.T) {
	urls := []string{"http://127.0.0.1:1"}
	tests := []struct {
		name  string
		start bool // Start the transport before the call
		call  func(tr *Transport) error
		want  error
	}{
		{name: "AddPeer before Start", call: func(tr *Transport) error { return tr.AddPeer(2, urls) }, want: ErrNotStarted},
		{name: "AddRemote before Start", call: func(tr *Transport) error { return tr.AddRemote(2, urls) }, want: ErrNotStarted},
		{name: "second Start", start: true, call: func(tr *Transport) error { return tr.Start() }, want: ErrAlreadyStarted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := &Transport{ID: 1, ClusterID: testClusterID, Raft: newFakeRaft()}
			if tc.start {
				if err := tr.Start(); err != nil {
					t.Fatalf("Start: %v", err)
				}
				t.Cleanup(tr.Stop)
			}
			if err := tc.call(tr); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

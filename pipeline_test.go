package rafthttp

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

// postLog records the POSTs a fake peer server receives.
type postLog struct {
	mu     sync.Mutex
	reqs   []*http.Request
	bodies [][]byte
}

func (l *postLog) add(r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reqs = append(l.reqs, r.Clone(r.Context()))
	l.bodies = append(l.bodies, body)
}

func (l *postLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.reqs)
}

// pipelinePeer starts a fake peer whose stream routes always answer 404
// (so that everything but the pipeline stays down) and whose POST /raft
// handler is post, and a transport with ID 1, adjusted by opts, that has it
// as peer 2. If opts put the transport on a memNet, the peer is there too.
func pipelinePeer(t *testing.T, post http.HandlerFunc, opts ...nodeOption) (*Transport, *fakeRaft) {
	t.Helper()
	h := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != RaftPrefix {
			w.Header().Set(headerServerVersion, DefaultServerVersion)
			http.Error(w, "error sender not found", http.StatusNotFound)
			return
		}
		post(w, r)
	}
	var srv *httptest.Server
	if mn := nodeOptions(opts).mem; mn != nil {
		srv = mn.fakePeer(t, h)
	} else {
		srv = newFakePeer(t, h)
	}
	tr, fr := newNode(t, append([]nodeOption{withID(1), unserved()}, opts...)...).parts()
	if err := tr.AddPeer(2, []string{srv.URL}); err != nil {
		t.Fatal(err)
	}
	return tr, fr
}

// TestPipelinePostRequest checks the POST a pipeline makes: path, method,
// headers and a body that is the message's protobuf encoding.
func TestPipelinePostRequest(t *testing.T) {
	var posts postLog
	tr, r := pipelinePeer(t, func(w http.ResponseWriter, r *http.Request) {
		posts.add(r)
		w.WriteHeader(http.StatusNoContent)
	}, withConfig(func(tr *Transport) {
		tr.ClusterID = 0xABCDEF
		tr.URLs = []string{"http://127.0.0.1:2380", "http://10.0.0.1:2380"}
	}))
	m := newMsg(raftpb.MsgSnap, 1, 2, 10, withCommit(7))
	m.Entries = []*raftpb.Entry{{Term: proto.Uint64(3), Index: proto.Uint64(11), Data: []byte("data")}}
	tr.Send([]*raftpb.Message{m})
	waitFor(t, "the POST to complete", func() bool { return len(r.snapshotReports()) == 1 })

	if n := posts.count(); n != 1 {
		t.Fatalf("got %d POSTs, want 1", n)
	}
	req, body := posts.reqs[0], posts.bodies[0]
	if req.Method != http.MethodPost || req.URL.Path != "/raft" {
		t.Errorf("got %s %s, want POST /raft", req.Method, req.URL.Path)
	}
	for h, want := range map[string]string{
		"Content-Type":          "application/protobuf",
		headerServerFrom:        "1",
		headerServerVersion:     DefaultServerVersion,
		headerMinClusterVersion: "3.0.0",
		headerClusterID:         "abcdef",
		headerPeerURLs:          "http://10.0.0.1:2380,http://127.0.0.1:2380",
	} {
		if got := req.Header.Get(h); got != want {
			t.Errorf("got %s %q, want %q", h, got, want)
		}
	}
	// With a Content-Length, as etcd sends it, although a MsgSnap's body
	// is read through the progress watch.
	if req.ContentLength != int64(len(body)) || len(req.TransferEncoding) != 0 {
		t.Errorf("got Content-Length %d and Transfer-Encoding %q for a %d-byte body, want the length and no chunking",
			req.ContentLength, req.TransferEncoding, len(body))
	}
	got := &raftpb.Message{}
	if err := proto.Unmarshal(body, got); err != nil {
		t.Fatalf("the body does not decode: %v", err)
	}
	if !proto.Equal(got, m) {
		t.Errorf("got body %v, want %v", got, m)
	}
	if got := r.snapshotReports()[0]; got.id != 2 || got.status != raft.SnapshotFinish {
		t.Errorf("got snapshot report %+v, want finish for 2", got)
	}
}

// TestPipelineResponseStatus checks what each answer means for delivery:
// only 204 is success; 200 and 201 are failures like 500 (spec §2.6).
func TestPipelineResponseStatus(t *testing.T) {
	tests := []struct {
		status int
		ok     bool
	}{
		{http.StatusNoContent, true},
		{http.StatusOK, false},
		{http.StatusCreated, false},
		{http.StatusInternalServerError, false},
		{http.StatusServiceUnavailable, false},
	}
	for _, tc := range tests {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			tr, r := pipelinePeer(t, func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(tc.status)
			})
			tr.Send([]*raftpb.Message{newMsg(raftpb.MsgSnap, 1, 2, 10, withCommit(1))})
			waitFor(t, "the snapshot report", func() bool { return len(r.snapshotReports()) == 1 })
			wantStatus, wantUnreachable := raft.SnapshotFinish, 0
			if !tc.ok {
				wantStatus, wantUnreachable = raft.SnapshotFailure, 1
			}
			if got := r.snapshotReports()[0]; got.id != 2 || got.status != wantStatus {
				t.Errorf("got snapshot report %+v, want %v for 2", got, wantStatus)
			}
			if got := r.unreachableCount(2); got != wantUnreachable {
				t.Errorf("got %d ReportUnreachable, want %d", got, wantUnreachable)
			}

			if tc.ok {
				return
			}
			// Any other message: only the unreachable report.
			tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 2, 10, withCommit(2))})
			waitFor(t, "the second unreachable report", func() bool { return r.unreachableCount(2) == 2 })
			if got := len(r.snapshotReports()); got != 1 {
				t.Errorf("got %d snapshot reports, want 1", got)
			}
		})
	}
}

// TestPipelineTimeoutCutsHungPost checks that PipelineTimeout cuts a POST
// the peer never answers, and that the worker goes on with the next
// message (spec §12 W10: etcd's workers hang).
//
// It runs in a synctest bubble, over a memNet: the timeouts are measured
// on the bubble's clock, which two loaded cores cannot stretch.
func TestPipelineTimeoutCutsHungPost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn := &memNet{}
		const timeout = 200 * time.Millisecond
		var posts atomic.Int32
		tr, r := pipelinePeer(t, func(w http.ResponseWriter, r *http.Request) {
			posts.Add(1)
			// Read the body first: only then does net/http watch the
			// connection and cancel the context when the client goes.
			_, _ = io.Copy(io.Discard, r.Body)
			<-r.Context().Done() // never answers
		}, withConfig(func(tr *Transport) {
			tr.PipelineTimeout = timeout
			tr.PipelineWorkers = 1
		}), onMemNet(mn))
		start := time.Now()
		tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, 1, 2, 10, withCommit(1)), newMsg(raftpb.MsgHeartbeat, 1, 2, 10, withCommit(2))})
		waitFor(t, "both POSTs to fail", func() bool { return r.unreachableCount(2) == 2 })
		took := time.Since(start)
		t.Logf("two hung POSTs failed after %v (timeout %v each)", took, timeout)
		if took < 2*timeout {
			t.Errorf("two sequential hung POSTs failed after %v, want at least %v", took, 2*timeout)
		}
		if took > 10*timeout {
			t.Errorf("two sequential hung POSTs failed after %v, want about %v", took, 2*timeout)
		}
		if got := posts.Load(); got != 2 {
			t.Errorf("the peer got %d POSTs, want 2", got)
		}
	})
}

// TestPipelineStopWithBlockedPosts checks that Stop returns promptly while
// every pipeline worker is stuck in a POST the peer does not answer.
func TestPipelineStopWithBlockedPosts(t *testing.T) {
	var posts atomic.Int32
	tr, r := pipelinePeer(t, func(w http.ResponseWriter, r *http.Request) {
		posts.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done() // never answers
	})
	for i := range 40 {
		tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, 1, 2, 10, withCommit(uint64(i)))})
	}
	waitFor(t, "every worker to be stuck in a POST", func() bool { return posts.Load() == DefaultPipelineWorkers })
	start := time.Now()
	tr.Stop()
	took := time.Since(start)
	t.Logf("Stop took %v", took)
	if took > time.Second {
		t.Errorf("Stop took %v, want under 1s", took)
	}
	if got := r.unreachableCount(2); got != 0 {
		t.Errorf("got %d ReportUnreachable for messages abandoned at Stop, want 0", got)
	}
}

// TestPipelineMsgSnapProgress checks that a MsgSnap sent by the pipeline,
// which has no overall timeout, is bounded by progress as a SendSnapshot
// body is: a peer that takes the body and never answers is given up on
// once the answer bound (SnapshotProgressTimeout plus a second per 10 MiB)
// has passed, and one that stops reading mid-body after
// SnapshotProgressTimeout without a byte moving; raft hears of the failure.
func TestPipelineMsgSnapProgress(t *testing.T) {
	const progress = 300 * time.Millisecond
	tests := []struct {
		name string
		data int   // bytes of Snapshot.Data
		read int64 // bytes of the body the peer reads before it hangs; -1: all
	}{
		{name: "peer reads the body and never answers", data: 1 << 10, read: -1},
		{name: "peer stops reading mid-body", data: 32 << 20, read: 1 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var posts atomic.Int32
			hang := make(chan struct{})
			tr, r := pipelinePeer(t, func(w http.ResponseWriter, r *http.Request) {
				posts.Add(1)
				if tc.read < 0 {
					_, _ = io.Copy(io.Discard, r.Body)
				} else {
					_, _ = io.CopyN(io.Discard, r.Body, tc.read)
				}
				// Never answers. Not r.Context(): net/http does not see
				// the client go while the body is unread.
				<-hang
			}, withConfig(func(tr *Transport) { tr.SnapshotProgressTimeout = progress }))
			t.Cleanup(func() { close(hang) }) // before the server closes (cleanups run last first)

			m := newMsg(raftpb.MsgSnap, 1, 2, 10, withCommit(1))
			m.Snapshot.Data = make([]byte, tc.data)
			bound := snapshotAnswerTimeout(progress, int64(raftproto.MessageSize(m)))
			start := time.Now()
			tr.Send([]*raftpb.Message{m})
			waitFor(t, "the snapshot to be reported", func() bool { return len(r.snapshotReports()) > 0 })
			took := time.Since(start)
			t.Logf("%d-byte MsgSnap: reported %v after Send (progress timeout %v, answer bound %v)",
				raftproto.MessageSize(m), took, progress, bound)
			if got, want := r.snapshotReports(), []snapshotReport{{2, raft.SnapshotFailure}}; !slices.Equal(got, want) {
				t.Errorf("snapshot reports = %v, want %v", got, want)
			}
			if n := r.unreachableCount(2); n != 1 {
				t.Errorf("ReportUnreachable called %d times, want 1", n)
			}
			if took < progress-50*time.Millisecond || took > bound+2*time.Second {
				t.Errorf("reported %v after Send, want between %v and %v", took, progress, bound+2*time.Second)
			}
			if got := metricValue(t, gathered(t, tr.metrics.droppedMessages), "", map[string]string{"Peer": "2", "Type": "MsgSnap", "Reason": dropSendFailed}); got != 1 {
				t.Errorf("%v MsgSnap drops counted as send_failed, want 1", got)
			}
			if got := posts.Load(); got != 1 {
				t.Errorf("the peer got %d POSTs, want 1", got)
			}
		})
	}
}

// TestPipelineStopReportsHeld checks what becomes of the messages a
// pipeline holds, one being posted to a peer that never answers (a MsgSnap,
// which no timeout cuts short here) and more queued behind it, when its
// peer stops: RemovePeer and RemoveAllPeers report each to raft (a MsgSnap
// as a failed snapshot too) and count it, before they return; at Stop
// nothing is reported, as etcd does, since raft stops too.
func TestPipelineStopReportsHeld(t *testing.T) {
	queued := []raftpb.MessageType{raftpb.MsgHeartbeat, raftpb.MsgSnap, raftpb.MsgApp, raftpb.MsgHeartbeat}
	held := 1 + len(queued)
	tests := []struct {
		name  string
		stop  func(tr *Transport)
		wantN int // reports (ReportUnreachable) and drops counted as removed
	}{
		{name: "RemovePeer", stop: func(tr *Transport) { tr.RemovePeer(2) }, wantN: held},
		{name: "RemoveAllPeers", stop: func(tr *Transport) { tr.RemoveAllPeers() }, wantN: held},
		{name: "Stop", stop: func(tr *Transport) { tr.Stop() }, wantN: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var posts atomic.Int32
			tr, r := pipelinePeer(t, func(w http.ResponseWriter, r *http.Request) {
				posts.Add(1)
				_, _ = io.Copy(io.Discard, r.Body)
				<-r.Context().Done() // never answers
			}, withConfig(func(tr *Transport) {
				tr.PipelineWorkers = 1
				tr.SnapshotProgressTimeout = time.Minute
			}))
			tr.Send([]*raftpb.Message{newMsg(raftpb.MsgSnap, 1, 2, 10, withCommit(1))})
			waitFor(t, "the MsgSnap to be posted", func() bool { return posts.Load() == 1 })
			for i, typ := range queued {
				tr.Send([]*raftpb.Message{newMsg(typ, 1, 2, 10, withCommit(uint64(2+i)))})
			}

			start := time.Now()
			tc.stop(tr)
			took := time.Since(start)
			unreachable, snaps := r.unreachableCount(2), r.snapshotReports()
			removed := metricValue(t, gathered(t, tr.metrics.droppedMessages), "", map[string]string{"Peer": unknownPeerLabel, "Reason": dropRemoved})
			t.Logf("%s returned after %v with %d messages held: %d ReportUnreachable, snapshot reports %v, %v drops counted as removed",
				tc.name, took, held, unreachable, snaps, removed)
			if took > time.Second {
				t.Errorf("%s took %v, want under 1s", tc.name, took)
			}
			if unreachable != tc.wantN {
				t.Errorf("ReportUnreachable called %d times, want %d", unreachable, tc.wantN)
			}
			var wantSnaps []snapshotReport
			if tc.wantN > 0 {
				wantSnaps = []snapshotReport{{2, raft.SnapshotFailure}, {2, raft.SnapshotFailure}}
			}
			if !slices.Equal(snaps, wantSnaps) {
				t.Errorf("snapshot reports = %v, want %v", snaps, wantSnaps)
			}
			if removed != float64(tc.wantN) {
				t.Errorf("%v drops counted as removed, want %d", removed, tc.wantN)
			}
			if got := posts.Load(); got != 1 {
				t.Errorf("the peer got %d POSTs, want 1 (the queued messages are not sent)", got)
			}
		})
	}
}

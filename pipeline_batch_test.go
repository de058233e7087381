package rafthttp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

// The tests of pipeline batches (pipeline_batch.go): assembly, the wire
// format, the handler, and what the sender reports for each outcome.

// batchMsg is a MsgApp to member 2 told apart by its Commit, with a
// payload of pad bytes.
func batchMsg(commit uint64, pad int) *raftpb.Message {
	m := newMsg(raftpb.MsgApp, 1, 2, 10, withCommit(commit))
	if pad > 0 {
		m.Entries = []*raftpb.Entry{{Term: proto.Uint64(1), Index: proto.Uint64(11), Data: make([]byte, pad)}}
	}
	return m
}

// commits returns the Commit of each message, for comparisons.
func commits(ms []*raftpb.Message) []uint64 {
	var cs []uint64
	for _, m := range ms {
		cs = append(cs, m.GetCommit())
	}
	return cs
}

// seq returns lo, lo+1, ..., hi.
func seq(lo, hi uint64) []uint64 {
	var s []uint64
	for i := lo; i <= hi; i++ {
		s = append(s, i)
	}
	return s
}

func TestBatchGather(t *testing.T) {
	snap := func(commit uint64) *raftpb.Message { return newMsg(raftpb.MsgSnap, 1, 2, 10, withCommit(commit)) }
	apps := func(lo, hi uint64, pad int) []*raftpb.Message {
		var ms []*raftpb.Message
		for i := lo; i <= hi; i++ {
			ms = append(ms, batchMsg(i, pad))
		}
		return ms
	}
	// big is a payload of which three frames fit batchMaxBytes, not four.
	const big = 300 << 10
	tests := []struct {
		name       string
		first      *raftpb.Message
		queued     []*raftpb.Message
		wantBatch  bool
		wantMsgs   []uint64 // the batch's, by Commit
		wantNext   uint64   // 0: none
		wantQueued []uint64 // left on the queue
	}{
		{name: "lone message", first: batchMsg(1, 0), wantBatch: false},
		{name: "takes what is queued, in order", first: batchMsg(1, 0), queued: apps(2, 6, 0),
			wantBatch: true, wantMsgs: seq(1, 6)},
		{name: "count bound", first: batchMsg(1, 0), queued: apps(2, 70, 0),
			wantBatch: true, wantMsgs: seq(1, batchMaxMessages), wantQueued: seq(batchMaxMessages+1, 70)},
		{name: "byte bound", first: batchMsg(1, big), queued: apps(2, 5, big),
			wantBatch: true, wantMsgs: seq(1, 3), wantNext: 4, wantQueued: seq(5, 5)},
		{name: "MsgSnap ends the batch", first: batchMsg(1, 0), queued: []*raftpb.Message{batchMsg(2, 0), snap(3), batchMsg(4, 0)},
			wantBatch: true, wantMsgs: seq(1, 2), wantNext: 3, wantQueued: seq(4, 4)},
		{name: "MsgSnap first", first: snap(1), queued: apps(2, 3, 0), wantBatch: false, wantQueued: seq(2, 3)},
		{name: "MsgSnap next leaves a lone message", first: batchMsg(1, 0), queued: []*raftpb.Message{snap(2), batchMsg(3, 0)},
			wantBatch: false, wantNext: 2, wantQueued: seq(3, 3)},
		{name: "first larger than a batch", first: batchMsg(1, batchMaxBytes), queued: apps(2, 3, 0), wantBatch: false, wantQueued: seq(2, 3)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pl := &pipeline{msgc: make(chan *raftpb.Message, 128)}
			for _, m := range tc.queued {
				pl.msgc <- m
			}
			var b batch
			got := b.gather(pl, tc.first)
			if got != tc.wantBatch {
				t.Errorf("gather = %v, want %v", got, tc.wantBatch)
			}
			if !slices.Equal(commits(b.msgs), tc.wantMsgs) {
				t.Errorf("batch %v, want %v", commits(b.msgs), tc.wantMsgs)
			}
			if got, want := b.next.GetCommit(), tc.wantNext; got != want {
				t.Errorf("next %d, want %d", got, want)
			}
			if got {
				n := 0
				for _, m := range b.msgs {
					n += frameHeaderLen + raftproto.MessageSize(m)
				}
				if b.bytes != n || n > batchMaxBytes {
					t.Errorf("bytes %d, want the frames' %d, at most %d", b.bytes, n, batchMaxBytes)
				}
			}
			var left []*raftpb.Message
			for len(pl.msgc) > 0 {
				left = append(left, <-pl.msgc)
			}
			if !slices.Equal(commits(left), tc.wantQueued) {
				t.Errorf("left queued %v, want %v", commits(left), tc.wantQueued)
			}
		})
	}
}

func TestBatchProcessedHeader(t *testing.T) {
	tests := []struct {
		name  string
		value string // "" : absent
		n     int
		want  int
	}{
		{name: "absent", n: 5, want: 0},
		{name: "zero", value: "0", n: 5, want: 0},
		{name: "some", value: "3", n: 5, want: 3},
		{name: "last", value: "4", n: 5, want: 4},
		{name: "all is not a failure's count", value: "5", n: 5, want: 0},
		{name: "more than sent", value: "9", n: 5, want: 0},
		{name: "negative", value: "-1", n: 5, want: 0},
		{name: "leading zero", value: "03", n: 5, want: 0},
		{name: "plus sign", value: "+3", n: 5, want: 0},
		{name: "not a number", value: "three", n: 5, want: 0},
		{name: "huge", value: "99999999999999999999", n: 5, want: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.value != "" {
				h.Set(headerBatchProcessed, tc.value)
			}
			if got := batchProcessed(h, tc.n); got != tc.want {
				t.Errorf("batchProcessed(%q, %d) = %d, want %d", tc.value, tc.n, got, tc.want)
			}
		})
	}
	if got := batchProcessed(nil, 5); got != 0 {
		t.Errorf("no answer: got %d, want 0", got)
	}
}

// frames encodes ms as a batch body.
func frames(ms ...*raftpb.Message) []byte {
	var b []byte
	for _, m := range ms {
		b = appendMessageFrame(b, m)
	}
	return b
}

func TestDecodeBatch(t *testing.T) {
	two := frames(batchMsg(1, 0), batchMsg(2, 5))
	many := make([]*raftpb.Message, batchMaxMessages+1)
	for i := range many {
		many[i] = batchMsg(uint64(i+1), 0)
	}
	tests := []struct {
		name    string
		body    []byte
		limit   uint64
		want    []uint64
		wantErr error
	}{
		{name: "two frames", body: two, limit: 1 << 20, want: []uint64{1, 2}},
		{name: "a message at the limit", body: two, limit: uint64(raftproto.MessageSize(batchMsg(2, 5))), want: []uint64{1, 2}},
		{name: "a message over the limit", body: two, limit: uint64(raftproto.MessageSize(batchMsg(2, 5)) - 1), wantErr: ErrExceedSizeLimit},
		{name: "empty", body: nil, limit: 1 << 20, wantErr: errBatchFrames},
		{name: "short header", body: two[:len(two)-raftproto.MessageSize(batchMsg(2, 5))-3], limit: 1 << 20, wantErr: errBatchFrames},
		{name: "truncated frame", body: two[:len(two)-1], limit: 1 << 20, wantErr: errBatchFrames},
		{name: "length beyond the body", body: binary.BigEndian.AppendUint64(nil, 1<<62), limit: 1 << 63, wantErr: errBatchFrames},
		{name: "length of 2^64-1", body: binary.BigEndian.AppendUint64(nil, ^uint64(0)), limit: ^uint64(0), wantErr: errBatchFrames},
		{name: "garbage protobuf", body: append(binary.BigEndian.AppendUint64(nil, 4), 0xff, 0xff, 0xff, 0xff), limit: 1 << 20, wantErr: raftproto.ErrMalformed},
		{name: "too many messages", body: frames(many...), limit: 1 << 20, wantErr: errBatchFrames},
		{name: "the most messages", body: frames(many[:batchMaxMessages]...), limit: 1 << 20, want: seq(1, batchMaxMessages)},
		{name: "empty messages", body: make([]byte, 16), limit: 1 << 20, want: []uint64{0, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ch := recvCharger{budget: newRecvBudget(64 << 20), ctx: context.Background()}
			msgs, fl, err := decodeBatch(tc.body, tc.limit, &ch, nil, nil)
			ch.refund()
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("decodeBatch: %v", err)
			}
			if !slices.Equal(commits(msgs), tc.want) {
				t.Errorf("got %v, want %v", commits(msgs), tc.want)
			}
			n := 0
			for _, l := range fl {
				n += l
			}
			if len(fl) != len(msgs) || n != len(tc.body) {
				t.Errorf("frame lengths %v for %d messages, sum %d; want one each, summing to the body's %d", fl, len(msgs), n, len(tc.body))
			}
		})
	}
}

// goldenBatch is the batch of testdata/wire/pipeline_batch.golden.
func goldenBatch() []*raftpb.Message {
	return []*raftpb.Message{goldenMsgApp(), {Type: raftpb.MsgHeartbeat.Enum(), To: proto.Uint64(2), From: proto.Uint64(1), Term: proto.Uint64(1), Commit: proto.Uint64(3)}}
}

// TestGoldenPipelineBatch pins the body of POST /raft/batch: what the
// sender encodes is the golden, and the golden decodes to the batch.
func TestGoldenPipelineBatch(t *testing.T) {
	want := goldenWire(t, "pipeline_batch.golden")
	if got := frames(goldenBatch()...); !bytes.Equal(got, want) {
		t.Errorf("encoded % x\nwant % x", got, want)
	}
	msgs, _, err := decodeBatch(want, DefaultMaxMessageBytes, &recvCharger{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 || !proto.Equal(msgs[0], goldenBatch()[0]) || !proto.Equal(msgs[1], goldenBatch()[1]) {
		t.Errorf("decoded %v, want %v", msgs, goldenBatch())
	}
}

// TestServeBatch is the table of POST /raft/batch requests and their
// answers; every refusal processes nothing.
func TestServeBatch(t *testing.T) {
	m := func(commit uint64) *raftpb.Message {
		return newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10, withCommit(commit), withEntry("put x=1"))
	}
	valid := []*raftpb.Message{m(1), m(2), m(3)}
	body := func(ms ...*raftpb.Message) func(*testing.T) io.Reader {
		return func(*testing.T) io.Reader { return bytes.NewReader(frames(ms...)) }
	}
	cid := withCID(nil)
	// gotCommits checks what raft got, in order.
	gotCommits := func(want ...uint64) func(t *testing.T, e *htEnv) {
		return func(t *testing.T, e *htEnv) {
			var got []uint64
			for len(e.raft.msgc) > 0 {
				got = append(got, (<-e.raft.msgc).GetCommit())
			}
			if !slices.Equal(got, want) {
				t.Errorf("Process got %v, want %v", got, want)
			}
		}
	}
	// failAt makes Process take messages until the one with Commit c,
	// which it refuses as etcd refuses a removed member's.
	failAt := func(c uint64) func(t *testing.T, e *htEnv) {
		return func(t *testing.T, e *htEnv) {
			e.raft.setProcess(func(_ context.Context, m *raftpb.Message) error {
				if m.GetCommit() == c {
					return htRemovedError{}
				}
				e.raft.msgc <- m
				return nil
			})
		}
	}
	badFrom := m(2)
	badFrom.From = proto.Uint64(htStranger)
	cases := []htCase{
		{name: "GET", method: http.MethodGet, wantCode: 405, wantBody: httpErr("Method Not Allowed"),
			wantHeader: map[string]string{"Allow": "POST"}, check: htNoProcess},
		{name: "success, in order", wantCode: 204, wantHeader: cid, check: gotCommits(1, 2, 3)},
		{name: "one message", body: body(m(7)), wantCode: 204, wantHeader: cid, check: gotCommits(7)},
		{name: "empty body", body: body(), wantCode: 400, wantBody: httpErr("error unmarshalling raft message batch"), wantHeader: cid, check: htNoProcess},
		{name: "truncated last frame", body: func(*testing.T) io.Reader {
			b := frames(valid...)
			return bytes.NewReader(b[:len(b)-2])
		}, wantCode: 400, wantBody: httpErr("error unmarshalling raft message batch"), wantHeader: cid, check: htNoProcess},
		{name: "garbage last frame", body: func(*testing.T) io.Reader {
			return bytes.NewReader(append(frames(valid...), 0, 0, 0, 0, 0, 0, 0, 2, 0xff, 0xff))
		}, wantCode: 400, wantBody: httpErr("error unmarshalling raft message batch"), wantHeader: cid, check: htNoProcess},
		{name: "a message over MaxMessageBytes", configure: func(tr *Transport) { tr.MaxMessageBytes = 1024 },
			body:     body(m(1), batchMsg(2, 2000)),
			wantCode: 413, wantBody: httpErr("raft message too large"), wantHeader: cid, check: htNoProcess},
		{name: "body over the batch bound", body: func(*testing.T) io.Reader {
			return bytes.NewReader(frames(batchMsg(1, batchMaxBytes/2), batchMsg(2, batchMaxBytes/2)))
		}, wantCode: 413, wantBody: httpErr("raft message batch too large"), wantHeader: cid, check: htNoProcess},
		{name: "body over the batch bound chunked", body: func(*testing.T) io.Reader {
			return htUnsized{bytes.NewReader(frames(batchMsg(1, batchMaxBytes/2), batchMsg(2, batchMaxBytes/2)))}
		}, wantCode: 413, wantBody: httpErr("raft message too large"), wantHeader: cid, check: htNoProcess},
		{name: "Process fails at the first", setup: failAt(1), wantCode: 403, wantBody: htRemovedBody,
			wantHeader: withCID(map[string]string{"Content-Type": "application/json", "X-Rafthttp-Batch-Processed": "0"}), check: gotCommits()},
		{name: "Process fails at the third", setup: failAt(3), wantCode: 403, wantBody: htRemovedBody,
			wantHeader: withCID(map[string]string{"Content-Type": "application/json", "X-Rafthttp-Batch-Processed": "2"}), check: gotCommits(1, 2)},
		{name: "success has no count", wantCode: 204, wantHeader: withCID(map[string]string{"X-Rafthttp-Batch-Processed": ""}), check: gotCommits(1, 2, 3)},
		{name: "a stranger's message is processed as from a single POST", body: body(m(1), badFrom), wantCode: 204, wantHeader: cid, check: gotCommits(1, 2)},
		{name: "other cluster", header: setHeader("X-Etcd-Cluster-ID", "beef1001"), wantCode: 412,
			wantBody: httpErr("cluster ID mismatch"), wantHeader: cid, check: htNoProcess},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			htRun(t, tc, htPipeline, http.MethodPost, "/raft/batch", body(valid...))
		})
	}
}

// batchPeer is a fake peer of ours for the sending side: it announces
// what announce says on every answer, refuses streams as a peer that does
// not know us yet, and records each POST's route and messages. Until
// release is closed, it holds the first POST, so that the test can queue
// messages behind it; answer, if set, answers each batch.
type batchPeer struct {
	announce string
	release  chan struct{}
	answer   func(w http.ResponseWriter, msgs []*raftpb.Message)

	mu    sync.Mutex
	posts []batchPost
	held  bool
}

// batchPost is one POST a batchPeer received.
type batchPost struct {
	route string
	msgs  []*raftpb.Message
}

func (p *batchPeer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p.announce != "" {
		w.Header().Set(headerFeatures, p.announce)
	}
	if r.Method != http.MethodPost {
		w.Header().Set(headerServerVersion, DefaultServerVersion)
		http.Error(w, "error sender not found", http.StatusNotFound)
		return
	}
	body, _ := io.ReadAll(r.Body)
	var msgs []*raftpb.Message
	switch r.URL.Path {
	case RaftPrefix:
		m := &raftpb.Message{}
		if err := proto.Unmarshal(body, m); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		msgs = []*raftpb.Message{m}
	case pipelineBatchPath:
		var err error
		if msgs, _, err = decodeBatch(body, DefaultMaxMessageBytes, &recvCharger{}, nil, nil); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	default:
		http.NotFound(w, r)
		return
	}
	p.mu.Lock()
	first := !p.held
	p.held = true
	p.posts = append(p.posts, batchPost{route: r.URL.Path, msgs: msgs})
	p.mu.Unlock()
	if first {
		<-p.release
	}
	if r.URL.Path == pipelineBatchPath && p.answer != nil {
		p.answer(w, msgs)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (p *batchPeer) received() []batchPost {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.posts)
}

// TestPipelineBatchSending: with one worker held on a first POST, ten
// messages queue behind it; what the worker then POSTs, and what the
// sender reports and counts, for each answer and each side's announcement.
func TestPipelineBatchSending(t *testing.T) {
	const queued = 10
	failing := func(status, processed string) func(w http.ResponseWriter, msgs []*raftpb.Message) {
		return func(w http.ResponseWriter, msgs []*raftpb.Message) {
			if processed != "" {
				w.Header().Set(headerBatchProcessed, processed)
			}
			http.Error(w, "error processing raft message", map[string]int{"500": 500, "403": 403}[status])
		}
	}
	tests := []struct {
		name      string
		local     *featureSet // nil: this version's
		announce  string
		answer    func(w http.ResponseWriter, msgs []*raftpb.Message)
		wantBatch bool
		wantLost  int // reported to raft
		wantFatal bool
	}{
		{name: "both announce", announce: oursAnnounce, wantBatch: true},
		{name: "peer announces nothing (etcd)", wantBatch: false},
		{name: "peer of the version before", announce: "crc32c-trailer,identity-refusal,snapshot-resume", wantBatch: false},
		{name: "we do not announce it", local: ptr(trailerOnly), announce: oursAnnounce, wantBatch: false},
		{name: "Process failed at the fourth", announce: oursAnnounce, answer: failing("500", "3"), wantBatch: true, wantLost: queued - 3},
		{name: "Process failed at the first", announce: oursAnnounce, answer: failing("500", "0"), wantBatch: true, wantLost: queued},
		{name: "failure without a count", announce: oursAnnounce, answer: failing("500", ""), wantBatch: true, wantLost: queued},
		{name: "count out of range", announce: oursAnnounce, answer: failing("500", "10"), wantBatch: true, wantLost: queued},
		{name: "removed at the sixth", announce: oursAnnounce, answer: failing("403", "5"), wantBatch: true, wantLost: queued - 5, wantFatal: true},
		{name: "connection cut", announce: oursAnnounce, answer: func(w http.ResponseWriter, _ []*raftpb.Message) {
			panic(http.ErrAbortHandler)
		}, wantBatch: true, wantLost: queued},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := &batchPeer{announce: tc.announce, release: make(chan struct{}), answer: tc.answer}
			srv := newFakePeer(t, fake.ServeHTTP)
			tr, r := newNode(t, withID(1), unserved(), withConfig(func(tr *Transport) {
				tr.PipelineWorkers = 1
				tr.announce = tc.local
				tr.ErrorC = make(chan error, 1)
			})).parts()
			if err := tr.AddPeer(2, []string{srv.URL}); err != nil {
				t.Fatal(err)
			}
			p, _ := tr.get(2)
			// What the peer announces is learnt from its answers (its
			// stream refusals say it too): wait for it, so that the
			// first message is the only one sent before it is known.
			waitFor(t, "the stream refusal", func() bool { return p.features.load().String() == tc.announce })
			tr.Send([]*raftpb.Message{batchMsg(0, 0)})
			waitFor(t, "the first POST", func() bool { return len(fake.received()) == 1 })
			for i := range uint64(queued) {
				tr.Send([]*raftpb.Message{batchMsg(i+1, 10)})
			}
			close(fake.release)
			want := 2 // the first message, then the batch
			if !tc.wantBatch {
				want = 1 + queued
			}
			waitFor(t, "the POSTs", func() bool {
				if n := len(fake.received()); n > want {
					t.Fatalf("%d POSTs, want %d", n, want)
				}
				return len(fake.received()) == want
			})
			waitFor(t, "the messages to be sent or reported", func() bool {
				st, _ := tr.PeerStatus(2)
				return st.MessagesSent+st.Dropped == 1+queued
			})
			posts := fake.received()
			var got []*raftpb.Message
			for i, post := range posts {
				wantRoute := RaftPrefix
				if tc.wantBatch && i == 1 {
					wantRoute = pipelineBatchPath
				}
				if post.route != wantRoute {
					t.Errorf("POST %d to %s, want %s", i, post.route, wantRoute)
				}
				got = append(got, post.msgs...)
			}
			if !slices.Equal(commits(got), seq(0, queued)) {
				t.Errorf("the peer got %v, want %v, once each in order", commits(got), seq(0, queued))
			}
			st, _ := tr.PeerStatus(2)
			if st.MessagesSent != uint64(1+queued-tc.wantLost) || st.Dropped != uint64(tc.wantLost) {
				t.Errorf("stats: %d sent, %d dropped; want %d, %d", st.MessagesSent, st.Dropped, 1+queued-tc.wantLost, tc.wantLost)
			}
			if got := r.unreachableCount(2); got != tc.wantLost {
				t.Errorf("ReportUnreachable called %d times, want %d", got, tc.wantLost)
			}
			failures := metricValue(t, gathered(t, tr.metrics.sentFailures), "", map[string]string{"To": "2"})
			dropped := metricValue(t, gathered(t, tr.metrics.droppedMessages), "", map[string]string{"Peer": "2", "Reason": dropSendFailed})
			if failures != float64(tc.wantLost) || dropped != float64(tc.wantLost) {
				t.Errorf("counted %v send failures and %v send_failed drops, want %d each", failures, dropped, tc.wantLost)
			}
			if tc.wantFatal {
				// Posted after the drops are reported: wait for it.
				if err := receive(t, tr.ErrorC, 10*time.Second, "ErrMemberRemoved"); !errors.Is(err, ErrMemberRemoved) {
					t.Errorf("ErrorC got %v, want ErrMemberRemoved", err)
				}
			}
			select {
			case err := <-tr.ErrorC:
				t.Errorf("ErrorC got %v, want nothing (more)", err)
			default:
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestPipelineBatchEndToEnd: between two transports of ours whose streams
// are refused, every message goes by the pipeline, in batches, to raft
// once each; when raft refuses one, the sender reports exactly those the
// receiver did not process.
func TestPipelineBatchEndToEnd(t *testing.T) {
	const queued = 20
	tests := []struct {
		name   string
		failAt uint64 // the Commit whose Process fails; 0: none
	}{
		{name: "all delivered"},
		{name: "Process fails in the batch", failAt: 8},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var batches atomic.Int32
			refuseStreams := func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodGet {
						// As a server of ours that does not know the dialer yet.
						w.Header().Set(headerFeatures, oursAnnounce)
						w.Header().Set(headerServerVersion, DefaultServerVersion)
						http.Error(w, "error sender not found", http.StatusNotFound)
						return
					}
					if r.URL.Path == pipelineBatchPath {
						batches.Add(1)
					}
					next.ServeHTTP(w, r)
				})
			}
			one := func(tr *Transport) { tr.PipelineWorkers = 1 }
			a := newNode(t, withID(1), withConfig(one), wrapHandler(refuseStreams))
			b := newNode(t, withID(2), withConfig(one), wrapHandler(refuseStreams))
			connect(t, a, b)
			waitFeatures(t, a, 2, featurePipelineBatch)

			release := make(chan struct{})
			var mu sync.Mutex
			var got []uint64
			b.raft.setProcess(func(ctx context.Context, m *raftpb.Message) error {
				if m.GetCommit() == 0 {
					<-release // hold the first POST while the rest queue
				}
				if tc.failAt != 0 && m.GetCommit() == tc.failAt {
					return fmt.Errorf("raft refuses %d", tc.failAt)
				}
				mu.Lock()
				got = append(got, m.GetCommit())
				mu.Unlock()
				return nil
			})
			a.tr.Send([]*raftpb.Message{batchMsg(0, 0)})
			waitFor(t, "the first message to be held", func() bool {
				st, _ := b.tr.PeerStatus(1)
				return st.MessagesReceived == 1
			})
			for i := range uint64(queued) {
				a.tr.Send([]*raftpb.Message{batchMsg(i+1, 100)})
			}
			close(release)
			waitFor(t, "every message sent or reported", func() bool {
				st, _ := a.tr.PeerStatus(2)
				return st.MessagesSent+st.Dropped == 1+queued
			})
			want := seq(0, queued)
			wantLost := 0
			if tc.failAt != 0 {
				want = seq(0, tc.failAt-1)
				wantLost = int(queued + 1 - tc.failAt)
			}
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(got, want) {
				t.Errorf("raft got %v, want %v", got, want)
			}
			if n := batches.Load(); n != 1 {
				t.Errorf("%d batch POSTs, want 1 (the %d queued messages)", n, queued)
			}
			if u := a.raft.unreachableCount(2); u != wantLost {
				t.Errorf("ReportUnreachable called %d times, want %d (the messages not processed)", u, wantLost)
			}
			if st, _ := a.tr.PeerStatus(2); st.Dropped != uint64(wantLost) {
				t.Errorf("%d drops counted, want %d", st.Dropped, wantLost)
			}
			if st, _ := b.tr.PeerStatus(1); st.MessagesReceived != uint64(len(want)+min(wantLost, 1)) {
				t.Errorf("receiver counted %d messages received, want %d (those handed to Process)", st.MessagesReceived, len(want)+min(wantLost, 1))
			}
		})
	}
}

// TestPipelineBatchMux: the Mux dispatches /raft/batch by cluster ID like
// every raft route, and refuses a batch for a cluster it does not serve.
func TestPipelineBatchMux(t *testing.T) {
	tests := []struct {
		name     string
		cluster  string
		wantCode int
		wantMsgs int
	}{
		{name: "served cluster", cluster: "beef1000", wantCode: http.StatusNoContent, wantMsgs: 2},
		{name: "other cluster", cluster: "beef1001", wantCode: http.StatusPreconditionFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr, r := newNode(t, htLocal()).parts()
			var m Mux
			if err := m.Add(tr); err != nil {
				t.Fatal(err)
			}
			body := frames(newMsg(raftpb.MsgHeartbeat, htPeerID, htLocalID, 0), newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10))
			req := httptest.NewRequest(http.MethodPost, pipelineBatchPath, bytes.NewReader(body))
			req.Header = htHeaders(htPipeline)
			req.Header.Set("X-Etcd-Cluster-ID", tc.cluster)
			rec := httptest.NewRecorder()
			m.ServeHTTP(rec, req)
			if rec.Code != tc.wantCode {
				t.Errorf("status %d, want %d (%q)", rec.Code, tc.wantCode, rec.Body.String())
			}
			if n := len(r.msgc); n != tc.wantMsgs {
				t.Errorf("raft got %d messages, want %d", n, tc.wantMsgs)
			}
		})
	}
}

// TestPipelineBatchNeedsRoom: a member announces pipeline-batch only if its
// receive budget can hold a whole batch, since a peer may send it one.
func TestPipelineBatchNeedsRoom(t *testing.T) {
	const small = 64 << 10 // MaxMessageBytes and MaxSnapshotEnvelopeBytes, below any budget tried
	for _, tc := range []struct {
		name       string
		maxReceive int
		want       bool
	}{
		{"default budget", 0, true},
		{"exactly a batch", batchMaxBytes, true},
		{"a byte short of a batch", batchMaxBytes - 1, false},
		{"a small budget", small, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &Transport{ID: 1, ClusterID: 1, Raft: newFakeRaft(), MaxMessageBytes: small, MaxSnapshotEnvelopeBytes: small, MaxReceiveBytes: tc.maxReceive}
			c, err := tr.validate()
			if err != nil {
				t.Fatalf("validate: %v", err)
			}
			has := c.features&(1<<featurePipelineBatch) != 0
			announced := parseFeatures(c.featuresHeader)&(1<<featurePipelineBatch) != 0
			if has != tc.want || announced != tc.want {
				t.Errorf("pipeline-batch in features %v, announced %v (%q); want %v", has, announced, c.featuresHeader, tc.want)
			}
		})
	}
}

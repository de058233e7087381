package rafthttp

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func TestTwoNodesExchangeMessages(t *testing.T) {
	a := newNode(t, withID(1))
	b := newNode(t, withID(2))
	connectStreams(t, a, b)

	types := []raftpb.MessageType{raftpb.MsgProp, raftpb.MsgApp, raftpb.MsgAppResp, raftpb.MsgVote,
		raftpb.MsgVoteResp, raftpb.MsgSnap, raftpb.MsgHeartbeat, raftpb.MsgHeartbeatResp}
	for _, typ := range types {
		m := &raftpb.Message{Type: typ.Enum(), To: proto.Uint64(2), From: proto.Uint64(1), Term: proto.Uint64(1),
			LogTerm: proto.Uint64(1), Index: proto.Uint64(3), Commit: proto.Uint64(3),
			Entries: []*raftpb.Entry{{Term: proto.Uint64(1), Index: proto.Uint64(4), Data: []byte("x")}}}
		if typ == raftpb.MsgSnap {
			m.Snapshot = &raftpb.Snapshot{Data: []byte("state"), Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(3), Term: proto.Uint64(1)}}
		}
		a.tr.Send([]*raftpb.Message{m})
		got := b.raft.recv(t)
		if got.GetType() != typ || got.GetFrom() != 1 || got.GetTo() != 2 {
			t.Errorf("got %v, want type %v from 1 to 2", got, typ)
		}
	}
}

// ---------------------------------------------------------------------------
// Helpers shared by the transport, stream, pipeline and peer tests.

// allMessageTypes returns every raft message type, in numeric order.
func allMessageTypes() []raftpb.MessageType {
	var types []raftpb.MessageType
	for v := range raftpb.MessageType_name {
		types = append(types, raftpb.MessageType(v))
	}
	slices.Sort(types)
	return types
}

// forbiddenError is what etcd's Process returns for a message from a removed
// member: the pipeline handler lets it answer 403.
type forbiddenError struct{}

func (forbiddenError) Error() string { return "message from removed member" }

func (forbiddenError) WriteTo(w http.ResponseWriter) {
	http.Error(w, "cannot process message from removed member", http.StatusForbidden)
}

// ---------------------------------------------------------------------------
// routeRecorder: a middleware that records what goes through the raft routes.

// routeRecorder sits in front of a transport's handler and records, per
// route, what the transport's server wrote on each stream it served (the
// bytes of messages from this node to the dialer) and the messages POSTed to
// /raft (messages from the sender to this node).
type routeRecorder struct {
	next http.Handler

	// refuseStreams makes every stream GET fail with 503 before it reaches
	// the transport, so no stream writer of this node ever attaches.
	refuseStreams atomic.Bool

	mu      sync.Mutex
	streams map[streamType][]*recordedStream
	posts   []*raftpb.Message
}

// recordedStream is what one stream response carried.
type recordedStream struct {
	status int
	buf    []byte
}

func newRouteRecorder(next http.Handler) *routeRecorder {
	return &routeRecorder{next: next, streams: map[streamType][]*recordedStream{}}
}

// wrapRecorder returns a wrap function for e2eOptions that installs a
// recorder and stores it in *rec.
func wrapRecorder(rec **routeRecorder) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		*rec = newRouteRecorder(h)
		return *rec
	}
}

func (rr *routeRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, RaftStreamPrefix+"/"):
		if rr.refuseStreams.Load() {
			w.Header().Set(headerServerVersion, DefaultServerVersion)
			http.Error(w, "streams refused by the test", http.StatusServiceUnavailable)
			return
		}
		typ := streamTypeMessage
		if strings.HasPrefix(r.URL.Path, RaftStreamPrefix+"/msgapp/") {
			typ = streamTypeMsgAppV2
		}
		s := &recordedStream{}
		rr.mu.Lock()
		rr.streams[typ] = append(rr.streams[typ], s)
		rr.mu.Unlock()
		rr.next.ServeHTTP(&recordingResponse{ResponseWriter: w, rr: rr, s: s}, r)
	case r.Method == http.MethodPost && r.URL.Path == RaftPrefix:
		body, err := io.ReadAll(r.Body)
		if err == nil {
			m := &raftpb.Message{}
			if proto.Unmarshal(body, m) == nil {
				rr.mu.Lock()
				rr.posts = append(rr.posts, m)
				rr.mu.Unlock()
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		rr.next.ServeHTTP(w, r)
	default:
		rr.next.ServeHTTP(w, r)
	}
}

// recordingResponse copies what the stream handler writes after a 200.
// Unwrap lets http.ResponseController reach the real writer's Flush and
// deadlines.
type recordingResponse struct {
	http.ResponseWriter
	rr *routeRecorder
	s  *recordedStream
}

func (w *recordingResponse) WriteHeader(code int) {
	w.rr.mu.Lock()
	if w.s.status == 0 {
		w.s.status = code
	}
	w.rr.mu.Unlock()
	w.ResponseWriter.WriteHeader(code)
}

func (w *recordingResponse) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.rr.mu.Lock()
	if w.s.status == 0 {
		w.s.status = http.StatusOK
	}
	if w.s.status == http.StatusOK {
		w.s.buf = append(w.s.buf, p[:n]...)
	}
	w.rr.mu.Unlock()
	return n, err
}

func (w *recordingResponse) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// streamBytes returns a copy of the bytes of every 200 stream response of
// type typ, one slice per connection.
func (rr *routeRecorder) streamBytes(typ streamType) [][]byte {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	var out [][]byte
	for _, s := range rr.streams[typ] {
		if s.status == http.StatusOK {
			out = append(out, bytes.Clone(s.buf))
		}
	}
	return out
}

// streamMessages decodes what this node wrote on its streams of type typ to
// the dialer dialer, link heartbeats left out. local is this node's ID.
func (rr *routeRecorder) streamMessages(t testing.TB, typ streamType, local, dialer uint64) []*raftpb.Message {
	t.Helper()
	var out []*raftpb.Message
	for _, b := range rr.streamBytes(typ) {
		var dec decoder
		if typ == streamTypeMsgAppV2 {
			dec = newMsgAppV2Decoder(bytes.NewReader(b), dialer, local, DefaultMaxMessageBytes)
		} else {
			dec = newMessageDecoder(bytes.NewReader(b), DefaultMaxMessageBytes)
		}
		for {
			m, _, err := dec.decode()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("decoding the recorded %s: %v", typ, err)
			}
			if !isLinkHeartbeat(m) {
				out = append(out, m)
			}
		}
	}
	return out
}

// postedMessages returns the messages POSTed to /raft so far.
func (rr *routeRecorder) postedMessages() []*raftpb.Message {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	return slices.Clone(rr.posts)
}

// msgAppV2RecordTypes parses raw msgappv2 stream bytes into the sequence of
// their record types (0x00 link heartbeat, 0x01 AppEntries, 0x02 MsgApp),
// independently of the production decoder.
func msgAppV2RecordTypes(b []byte) ([]byte, error) {
	var types []byte
	u64 := func() (uint64, error) {
		if len(b) < 8 {
			return 0, io.ErrUnexpectedEOF
		}
		v := binary.BigEndian.Uint64(b)
		b = b[8:]
		return v, nil
	}
	skip := func(n uint64) error {
		if uint64(len(b)) < n {
			return io.ErrUnexpectedEOF
		}
		b = b[n:]
		return nil
	}
	for len(b) > 0 {
		typ := b[0]
		b = b[1:]
		switch typ {
		case 0x00:
		case 0x01:
			count, err := u64()
			if err != nil {
				return nil, err
			}
			for range count {
				size, err := u64()
				if err != nil {
					return nil, err
				}
				if err := skip(size); err != nil {
					return nil, err
				}
			}
			if _, err := u64(); err != nil { // commit
				return nil, err
			}
		case 0x02:
			l, err := u64()
			if err != nil {
				return nil, err
			}
			if err := skip(l); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("unknown msgappv2 record type %#x", typ)
		}
		types = append(types, typ)
	}
	return types, nil
}

func messageTypes(msgs []*raftpb.Message) []raftpb.MessageType {
	out := make([]raftpb.MessageType, len(msgs))
	for i, m := range msgs {
		out[i] = m.GetType()
	}
	return out
}

// ---------------------------------------------------------------------------
// Which channel each message takes (spec §4.2).

// TestTransportChannelsStreamsUp checks, on the wire, that with both streams
// up MsgApp travels on msgappv2 only, MsgSnap on the pipeline, and every
// other type on the message stream.
func TestTransportChannelsStreamsUp(t *testing.T) {
	var recA, recB *routeRecorder
	a := newNode(t, withID(1), wrapHandler(wrapRecorder(&recA)))
	b := newNode(t, withID(2), wrapHandler(wrapRecorder(&recB)))
	connectStreams(t, a, b)

	var wantMsgApp, wantMessage, wantPipeline []raftpb.MessageType
	for i, typ := range allMessageTypes() {
		a.tr.Send([]*raftpb.Message{newMsg(typ, 1, 2, 10, withCommit(uint64(100+i)))})
		got := b.raft.recv(t)
		if got.GetType() != typ || got.GetCommit() != uint64(100+i) {
			t.Fatalf("got %v commit %d, want %v commit %d", got.GetType(), got.GetCommit(), typ, 100+i)
		}
		switch typ {
		case raftpb.MsgApp:
			wantMsgApp = append(wantMsgApp, typ)
		case raftpb.MsgSnap:
			wantPipeline = append(wantPipeline, typ)
		default:
			wantMessage = append(wantMessage, typ)
		}
	}

	// a's server served b's stream dials: it wrote a's messages to b.
	if got := messageTypes(recA.streamMessages(t, streamTypeMsgAppV2, 1, 2)); !slices.Equal(got, wantMsgApp) {
		t.Errorf("msgappv2 stream carried %v, want %v", got, wantMsgApp)
	}
	if got := messageTypes(recA.streamMessages(t, streamTypeMessage, 1, 2)); !slices.Equal(got, wantMessage) {
		t.Errorf("message stream carried %v, want %v", got, wantMessage)
	}
	// b's server received a's POSTs.
	if got := messageTypes(recB.postedMessages()); !slices.Equal(got, wantPipeline) {
		t.Errorf("pipeline carried %v, want %v", got, wantPipeline)
	}
	for _, m := range recB.postedMessages() {
		if m.GetFrom() != 1 || m.GetTo() != 2 {
			t.Errorf("POST carried a message from %d to %d, want from 1 to 2", m.GetFrom(), m.GetTo())
		}
	}
}

// TestTransportChannelsStreamsDown checks that everything, MsgApp included,
// goes by the pipeline while the sender's stream writers have no connection.
func TestTransportChannelsStreamsDown(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, a, b *testNode, recA *routeRecorder)
	}{
		{"peer added on the sender only", func(t *testing.T, a, b *testNode, _ *routeRecorder) {
			if err := a.tr.AddPeer(2, []string{b.url}); err != nil {
				t.Fatal(err)
			}
		}},
		{"stream GETs refused by the sender's server", func(t *testing.T, a, b *testNode, recA *routeRecorder) {
			recA.refuseStreams.Store(true)
			connect(t, a, b)
			// b's readers reached a and were refused: b's own writers
			// are attached (a dialled b), so b's side is up.
			waitStreams(t, b, a)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var recA, recB *routeRecorder
			a := newNode(t, withID(1), wrapHandler(wrapRecorder(&recA)))
			b := newNode(t, withID(2), wrapHandler(wrapRecorder(&recB)))
			tc.setup(t, a, b, recA)

			var want []raftpb.MessageType
			for i, typ := range allMessageTypes() {
				p, ok := a.tr.get(2)
				if !ok || p.writers[streamTypeMessage].isWorking() || p.writers[streamTypeMsgAppV2].isWorking() {
					t.Fatalf("a's writers to b are attached; the test needs them down")
				}
				a.tr.Send([]*raftpb.Message{newMsg(typ, 1, 2, 10, withCommit(uint64(100+i)))})
				got := b.raft.recv(t)
				if got.GetType() != typ || got.GetCommit() != uint64(100+i) {
					t.Fatalf("got %v commit %d, want %v commit %d", got.GetType(), got.GetCommit(), typ, 100+i)
				}
				want = append(want, typ)
			}
			if got := messageTypes(recB.postedMessages()); !slices.Equal(got, want) {
				t.Errorf("pipeline carried %v, want %v", got, want)
			}
			for _, typ := range []streamType{streamTypeMsgAppV2, streamTypeMessage} {
				if got := recA.streamMessages(t, typ, 1, 2); len(got) != 0 {
					t.Errorf("%s carried %v, want nothing", typ, messageTypes(got))
				}
			}
		})
	}
}

// TestTransportMsgAppV2Compact checks that consecutive MsgApps travel as
// AppEntries records after the first full one, and that the receiver
// rebuilds them exactly.
func TestTransportMsgAppV2Compact(t *testing.T) {
	var recA *routeRecorder
	a := newNode(t, withID(1), wrapHandler(wrapRecorder(&recA)))
	b := newNode(t, withID(2))
	connect(t, a, b)
	waitStreams(t, a, b)

	const term = 4
	var sent []*raftpb.Message
	index := uint64(20)
	for i, n := range []int{2, 1, 0, 3, 1} { // entries per MsgApp, an empty one included
		m := &raftpb.Message{Type: raftpb.MsgApp.Enum(), From: proto.Uint64(1), To: proto.Uint64(2),
			Term: proto.Uint64(term), LogTerm: proto.Uint64(term), Index: proto.Uint64(index), Commit: proto.Uint64(index - uint64(i))}
		for range n {
			index++
			m.Entries = append(m.Entries, &raftpb.Entry{Term: proto.Uint64(term), Index: proto.Uint64(index),
				Type: raftpb.EntryNormal.Enum(), Data: fmt.Appendf(nil, "entry %d", index)})
		}
		sent = append(sent, m)
	}
	for _, m := range sent {
		a.tr.Send([]*raftpb.Message{m})
		got := b.raft.recv(t)
		if got.GetType() != raftpb.MsgApp || got.GetFrom() != 1 || got.GetTo() != 2 || got.GetTerm() != m.GetTerm() ||
			got.GetLogTerm() != m.GetLogTerm() || got.GetIndex() != m.GetIndex() || got.GetCommit() != m.GetCommit() {
			t.Errorf("got %v from %d to %d term %d logterm %d index %d commit %d, want MsgApp from 1 to 2 term %d logterm %d index %d commit %d",
				got.GetType(), got.GetFrom(), got.GetTo(), got.GetTerm(), got.GetLogTerm(), got.GetIndex(), got.GetCommit(),
				m.GetTerm(), m.GetLogTerm(), m.GetIndex(), m.GetCommit())
		}
		if len(got.Entries) != len(m.Entries) {
			t.Fatalf("got %d entries, want %d", len(got.Entries), len(m.Entries))
		}
		for i, e := range m.Entries {
			g := got.Entries[i]
			if g.GetTerm() != e.GetTerm() || g.GetIndex() != e.GetIndex() || g.GetType() != e.GetType() || !bytes.Equal(g.Data, e.Data) {
				t.Errorf("entry %d: got %v, want %v", i, g, e)
			}
		}
	}

	var records []byte
	conns := recA.streamBytes(streamTypeMsgAppV2)
	if len(conns) != 1 {
		t.Fatalf("got %d msgappv2 connections, want 1", len(conns))
	}
	all, err := msgAppV2RecordTypes(conns[0])
	if err != nil {
		t.Fatalf("parsing the msgappv2 bytes: %v", err)
	}
	for _, r := range all {
		if r != msgAppV2LinkHeartbeat {
			records = append(records, r)
		}
	}
	want := []byte{0x02, 0x01, 0x01, 0x01, 0x01}
	if !bytes.Equal(records, want) {
		t.Errorf("got record types %x, want %x", records, want)
	}
}

// TestTransportMsgPropWhileRecvBlocked checks that a proposal reaches
// Process although Process is stuck on another message: proposals have
// their own queue and loop.
func TestTransportMsgPropWhileRecvBlocked(t *testing.T) {
	a := newNode(t, withID(1))
	b := newNode(t, withID(2))
	connect(t, a, b)
	waitStreams(t, a, b)

	release := make(chan struct{})
	blocked := make(chan raftpb.MessageType, 16)
	props := make(chan *raftpb.Message, 16)
	b.raft.setProcess(func(ctx context.Context, m *raftpb.Message) error {
		if m.GetType() == raftpb.MsgProp {
			props <- m
			return nil
		}
		blocked <- m.GetType()
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	t.Cleanup(func() { close(release) })

	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, 1, 2, 10, withCommit(1))})
	select {
	case typ := <-blocked:
		if typ != raftpb.MsgApp {
			t.Fatalf("got %v blocked in Process, want MsgApp", typ)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("MsgApp did not reach Process")
	}
	// More messages queue up behind the blocked one.
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 2, 10, withCommit(2)), newMsg(raftpb.MsgAppResp, 1, 2, 10, withCommit(3))})
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgProp, 1, 2, 10, withCommit(4))})
	select {
	case m := <-props:
		if m.GetCommit() != 4 || m.GetFrom() != 1 {
			t.Errorf("got MsgProp commit %d from %d, want commit 4 from 1", m.GetCommit(), m.GetFrom())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("MsgProp did not reach Process while another message was blocked in it")
	}
}

// TestTransportDropsAccounted floods a peer whose Process blocks and checks
// that every message is either received or counted as dropped, and that
// drops reach raft (ReportUnreachable; ReportSnapshot(Failure) for MsgSnap).
func TestTransportDropsAccounted(t *testing.T) {
	a := newNode(t, withID(1), withConfig(func(tr *Transport) {
		tr.StreamQueueSize = 4
		tr.PipelineQueueSize = 1
		tr.PipelineWorkers = 1
		tr.ConnWriteTimeout = time.Minute // the writer blocks while b does not read
	}))
	b := newNode(t, withID(2), withConfig(func(tr *Transport) { tr.RecvQueueSize = 1 }))
	connect(t, a, b)
	waitStreams(t, a, b)

	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseAll := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseAll)
	var gotApp, gotSnap atomic.Int64
	b.raft.setProcess(func(ctx context.Context, m *raftpb.Message) error {
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		if m.GetFrom() == 1 {
			switch m.GetType() {
			case raftpb.MsgApp:
				gotApp.Add(1)
			case raftpb.MsgSnap:
				gotSnap.Add(1)
			}
		}
		return nil
	})

	dropped := func(typ raftpb.MessageType) int64 {
		return int64(metricValue(t, gathered(t, a.tr.metrics.droppedMessages), "", map[string]string{"Peer": "2", "Type": typ.String()}))
	}

	// Large MsgApps fill the TCP buffers quickly; then a's writer blocks and
	// its small queue overflows.
	data := bytes.Repeat([]byte("x"), 64<<10)
	var sentApp int64
	for dropped(raftpb.MsgApp) < 10 {
		if sentApp == 4000 {
			t.Fatalf("no MsgApp dropped after %d sent", sentApp)
		}
		sentApp++
		a.tr.Send([]*raftpb.Message{{Type: raftpb.MsgApp.Enum(), From: proto.Uint64(1), To: proto.Uint64(2),
			Term: proto.Uint64(1), LogTerm: proto.Uint64(1), Index: proto.Uint64(uint64(sentApp)), Commit: proto.Uint64(1),
			Entries: []*raftpb.Entry{{Term: proto.Uint64(1), Index: proto.Uint64(uint64(sentApp + 1)), Data: data}}}})
	}
	// One pipeline worker, blocked in b's Process, and a queue of one: of
	// these snapshots, at least three are dropped.
	const sentSnap = 5
	for i := range sentSnap {
		a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgSnap, 1, 2, 10, withCommit(uint64(i)))})
	}
	if got := dropped(raftpb.MsgSnap); got < 3 {
		t.Errorf("got %d MsgSnap dropped, want at least 3", got)
	}
	releaseAll()

	waitFor(t, "every message received or dropped", func() bool {
		return gotApp.Load()+dropped(raftpb.MsgApp) == sentApp && gotSnap.Load()+dropped(raftpb.MsgSnap) == sentSnap
	})
	t.Logf("MsgApp: %d sent, %d received, %d dropped; MsgSnap: %d sent, %d received, %d dropped",
		sentApp, gotApp.Load(), dropped(raftpb.MsgApp), sentSnap, gotSnap.Load(), dropped(raftpb.MsgSnap))
	if got := a.raft.unreachableCount(2); got == 0 {
		t.Errorf("got %d ReportUnreachable(2), want some", got)
	}
	waitFor(t, "a snapshot report for every snapshot", func() bool { return len(a.raft.snapshotReports()) == sentSnap })
	var failures, finishes int64
	for _, r := range a.raft.snapshotReports() {
		switch {
		case r.id != 2:
			t.Errorf("got a snapshot report for %d, want 2", r.id)
		case r.status == raft.SnapshotFailure:
			failures++
		case r.status == raft.SnapshotFinish:
			finishes++
		}
	}
	if failures != dropped(raftpb.MsgSnap) || finishes != gotSnap.Load() {
		t.Errorf("got %d Failure and %d Finish reports, want %d and %d", failures, finishes, dropped(raftpb.MsgSnap), gotSnap.Load())
	}
}

// TestTransportReconnectAfterRestart restarts b on the same address and
// checks that a's streams come back and carry messages again.
func TestTransportReconnectAfterRestart(t *testing.T) {
	a := newNode(t, withID(1))
	b := newNode(t, withID(2))
	connectStreams(t, a, b)
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 2, 10, withCommit(1))})
	if got := b.raft.recv(t); got.GetCommit() != 1 {
		t.Fatalf("got commit %d, want 1", got.GetCommit())
	}

	addr := b.srv.Listener.Addr().String()
	b.close()
	waitFor(t, "a's writers to notice b went away", func() bool {
		p, _ := a.tr.get(2)
		return !p.writers[streamTypeMessage].isWorking() && !p.writers[streamTypeMsgAppV2].isWorking()
	})

	restart := time.Now()
	b2 := newNode(t, withID(2), listenOn(addr))
	if b2.url != b.url {
		t.Fatalf("got URL %s, want %s", b2.url, b.url)
	}
	if err := b2.tr.AddPeer(1, []string{a.url}); err != nil {
		t.Fatal(err)
	}
	waitStreams(t, a, b2) // b2 dialled a
	waitStreams(t, b2, a) // a redialled b2
	t.Logf("both directions' streams attached %v after the restart", time.Since(restart))

	for i, typ := range []raftpb.MessageType{raftpb.MsgApp, raftpb.MsgHeartbeat, raftpb.MsgVote} {
		a.tr.Send([]*raftpb.Message{newMsg(typ, 1, 2, 10, withCommit(uint64(10+i)))})
		if got := b2.raft.recv(t); got.GetType() != typ || got.GetCommit() != uint64(10+i) {
			t.Errorf("got %v commit %d, want %v commit %d", got.GetType(), got.GetCommit(), typ, 10+i)
		}
	}
	if n := len(b.raft.msgc); n != 0 {
		t.Errorf("the stopped b received %d more messages, want 0", n)
	}
	b2.tr.Send([]*raftpb.Message{{Type: raftpb.MsgAppResp.Enum(), From: proto.Uint64(2), To: proto.Uint64(1), Index: proto.Uint64(7)}})
	if got := a.raft.recv(t); got.GetType() != raftpb.MsgAppResp || got.GetFrom() != 2 {
		t.Errorf("got %v from %d, want MsgAppResp from 2", got.GetType(), got.GetFrom())
	}
}

package etcd37

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	etcdhttp "go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
	"github.com/raftkit/rafthttp/internal/rafttest"
)

// This file serves OUR Transport's handler the way etcd serves its own: on
// the listener etcd builds for its peer URLs (rafthttp.NewListener), which
// sets a deadline on every Read and Write of the connections it accepts.
// With such a listener Go's HTTP server ends the context of an idle stream
// request once the background read of its connection times out; the
// stream must carry on regardless.

// recordingRaft is the Raft of a listenerNode: it hands every message to
// msgc and counts the ReportUnreachable calls per peer.
type recordingRaft struct {
	msgc chan *raftpb.Message

	mu          sync.Mutex
	unreachable map[uint64]int
}

func newRecordingRaft() *recordingRaft {
	return &recordingRaft{msgc: make(chan *raftpb.Message, 64), unreachable: map[uint64]int{}}
}

func (r *recordingRaft) Process(ctx context.Context, m *raftpb.Message) error {
	select {
	case r.msgc <- m:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *recordingRaft) IsIDRemoved(uint64) bool { return false }

func (r *recordingRaft) ReportUnreachable(id uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unreachable[id]++
}

func (r *recordingRaft) ReportSnapshot(uint64, raft.SnapshotStatus) {}

func (r *recordingRaft) unreachableCount(id uint64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unreachable[id]
}

var _ rafthttp.Raft = (*recordingRaft)(nil)

// streamWatch sits in front of a Transport's handler and records, per
// stream type ("msgappv2", "message"), how many stream requests arrived,
// how many are being served, and how many bytes the stream writer wrote on
// their responses; and how many pipeline POSTs arrived.
type streamWatch struct {
	mu        sync.Mutex
	dials     map[string]int
	open      map[string]int
	written   map[string]int64
	pipelined int
}

func newStreamWatch() *streamWatch {
	return &streamWatch{dials: map[string]int{}, open: map[string]int{}, written: map[string]int64{}}
}

// streamSnapshot is what a streamWatch saw of one stream type.
type streamSnapshot struct {
	dials, open int
	written     int64
}

func (s *streamWatch) get(typ string) streamSnapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return streamSnapshot{dials: s.dials[typ], open: s.open[typ], written: s.written[typ]}
}

func (s *streamWatch) pipelineRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pipelined
}

func (s *streamWatch) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, ok := strings.CutPrefix(r.URL.Path, rafthttp.RaftStreamPrefix+"/")
		if !ok {
			if r.Method == http.MethodPost && r.URL.Path == rafthttp.RaftPrefix {
				s.mu.Lock()
				s.pipelined++
				s.mu.Unlock()
			}
			h.ServeHTTP(w, r)
			return
		}
		typ, _, _ := strings.Cut(rest, "/")
		s.mu.Lock()
		s.dials[typ]++
		s.open[typ]++
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			s.open[typ]--
			s.mu.Unlock()
		}()
		h.ServeHTTP(&countingWriter{ResponseWriter: w, add: func(n int) {
			s.mu.Lock()
			s.written[typ] += int64(n)
			s.mu.Unlock()
		}}, r)
	})
}

// countingWriter counts the body bytes written to a response. Unwrap lets
// http.ResponseController reach the server's writer for Flush and the
// deadlines.
type countingWriter struct {
	http.ResponseWriter
	add func(int)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.add(n)
	return n, err
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// listenerNode is one of our Transports, with default timeouts, behind an
// http.Server on etcd's peer listener for 127.0.0.1.
type listenerNode struct {
	id     uint64
	url    string
	tr     *rafthttp.Transport
	raft   *recordingRaft
	watch  *streamWatch
	srv    *http.Server
	served chan struct{} // closed when Serve returned
	logs   *logBuffer

	stopOnce sync.Once
}

func newListenerNode(t *testing.T, id uint64) *listenerNode {
	t.Helper()
	// An empty TLSInfo makes a plain TCP listener, with etcd's per-Read
	// and per-Write deadlines (rafthttp.ConnReadTimeout and
	// ConnWriteTimeout, 5 s each).
	ln, err := etcdhttp.NewListener(url.URL{Scheme: "http", Host: "127.0.0.1:0"}, &transport.TLSInfo{})
	if err != nil {
		t.Fatalf("NewListener: %v", err)
	}
	n := &listenerNode{id: id, url: "http://" + ln.Addr().String(), raft: newRecordingRaft(),
		watch: newStreamWatch(), served: make(chan struct{}), logs: &logBuffer{}}
	n.tr = &rafthttp.Transport{ID: id, ClusterID: clusterID, URLs: []string{n.url}, Raft: n.raft,
		Logger: newLogger(n.logs, fmt.Sprintf("ours-%d", id))}
	if err := n.tr.Start(); err != nil {
		ln.Close()
		t.Fatalf("Start: %v", err)
	}
	n.srv = &http.Server{Handler: mount(n.watch.wrap(n.tr.Handler()))}
	go func() {
		defer close(n.served)
		if err := n.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(n.logs, "Serve: %v\n", err)
		}
	}()
	t.Cleanup(func() {
		n.stop()
		if t.Failed() {
			t.Logf("logs of member %d:\n%s", n.id, n.logs)
		}
	})
	return n
}

// stop stops the transport, then closes the server and its connections
// and waits for Serve to return. Idempotent.
func (n *listenerNode) stop() {
	n.stopOnce.Do(func() {
		n.tr.Stop()
		n.srv.Close()
		<-n.served
	})
}

func (n *listenerNode) status(t *testing.T, peer uint64) rafthttp.PeerStats {
	t.Helper()
	s, ok := n.tr.PeerStatus(peer)
	if !ok {
		t.Fatalf("member %d: PeerStatus(%d): not a peer", n.id, peer)
	}
	return s
}

// streamTypes are the path segments of the two streams, as served.
var streamTypes = []string{"msgapp", "message"}

// attached reports whether both streams the peer dialled to n are being
// served and their writer has written on them: it has them.
func (n *listenerNode) attached() bool {
	for _, typ := range streamTypes {
		if s := n.watch.get(typ); s.open != 1 || s.written == 0 {
			return false
		}
	}
	return true
}

// exchange sends a MsgHeartbeat (message stream) and a MsgApp (msgappv2
// stream) from one node to the other and waits for both, checking that
// they arrived by the streams: no pipeline POST reached the receiver.
func exchange(t *testing.T, from, to *listenerNode, seq uint64) {
	t.Helper()
	before := to.watch.pipelineRequests()
	sent := []*raftpb.Message{
		{Type: raftpb.MsgHeartbeat.Enum(), To: proto.Uint64(to.id), From: proto.Uint64(from.id),
			Term: proto.Uint64(1), Commit: proto.Uint64(seq)},
		{Type: raftpb.MsgApp.Enum(), To: proto.Uint64(to.id), From: proto.Uint64(from.id),
			Term: proto.Uint64(1), LogTerm: proto.Uint64(1), Index: proto.Uint64(seq), Commit: proto.Uint64(seq),
			Entries: []*raftpb.Entry{{Term: proto.Uint64(1), Index: proto.Uint64(seq + 1), Data: []byte(fmt.Sprint("entry-", seq))}}},
	}
	from.tr.Send(sent)
	// The two streams are independent: the messages may arrive in either
	// order.
	pending := map[raftpb.MessageType]*raftpb.Message{}
	for _, m := range sent {
		pending[m.GetType()] = m
	}
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for len(pending) > 0 {
		select {
		case got := <-to.raft.msgc:
			want, ok := pending[got.GetType()]
			if !ok || got.GetFrom() != want.GetFrom() || got.GetTo() != want.GetTo() || got.GetIndex() != want.GetIndex() ||
				got.GetCommit() != want.GetCommit() || len(got.GetEntries()) != len(want.GetEntries()) {
				t.Fatalf("member %d received %v, want one of %v", to.id, got, sent)
			}
			delete(pending, got.GetType())
		case <-deadline.C:
			t.Fatalf("member %d did not receive %d of the messages from member %d in time", to.id, len(pending), from.id)
		}
	}
	if after := to.watch.pipelineRequests(); after != before {
		t.Errorf("member %d got %d pipeline requests while receiving from member %d, want 0: the streams were down",
			to.id, after-before, from.id)
	}
}

// TestOurHandlerOnEtcdListener serves two of our Transports on etcd's peer
// listener. An idle stream's request context ends there after
// ConnReadTimeout (the server's background read of the connection times
// out), yet the streams must survive two and a half such periods without
// a redial, and carry messages afterwards. When a peer really goes away,
// the other side must let go of its streams promptly.
func TestOurHandlerOnEtcdListener(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out 2.5 read timeouts of idleness (about 20 s in all)")
	}
	if etcdhttp.ConnReadTimeout > rafthttp.DefaultConnReadTimeout {
		t.Fatalf("etcd's listener read timeout %v is above our ConnReadTimeout %v", etcdhttp.ConnReadTimeout, rafthttp.DefaultConnReadTimeout)
	}
	a, b := newListenerNode(t, 1), newListenerNode(t, 2)
	if err := a.tr.AddPeer(b.id, []string{b.url}); err != nil {
		t.Fatalf("AddPeer: %v", err)
	}
	if err := b.tr.AddPeer(a.id, []string{a.url}); err != nil {
		t.Fatalf("AddPeer: %v", err)
	}
	type side struct{ local, remote *listenerNode }
	sides := []side{{a, b}, {b, a}}

	// Each member serves two streams to the other, written to by its
	// stream writers (heartbeats come every ConnReadTimeout/3 at worst).
	eventually(t, "both streams attached both ways", func() bool {
		return a.attached() && b.attached() && a.status(t, b.id).Active && b.status(t, a.id).Active
	})
	exchange(t, a, b, 10)
	exchange(t, b, a, 20)

	before := map[uint64]rafthttp.PeerStats{}
	streams := map[uint64]map[string]streamSnapshot{}
	for _, s := range sides {
		before[s.local.id] = s.local.status(t, s.remote.id)
		streams[s.local.id] = map[string]streamSnapshot{}
		for _, typ := range streamTypes {
			streams[s.local.id][typ] = s.local.watch.get(typ)
		}
	}

	// Stay idle: no message either way, only link heartbeats, for two
	// and a half times the listener's read timeout. The idleness is what
	// is under test, so this waits out a period rather than an event.
	idle := etcdhttp.ConnReadTimeout*2 + etcdhttp.ConnReadTimeout/2
	<-time.After(idle)

	for _, s := range sides {
		got := s.local.status(t, s.remote.id)
		was := before[s.local.id]
		if got.StreamReconnects != was.StreamReconnects {
			t.Errorf("member %d: StreamReconnects to %d: got %d after %v idle, want %d",
				s.local.id, s.remote.id, got.StreamReconnects, idle, was.StreamReconnects)
		}
		if !got.Active || !got.ActiveSince.Equal(was.ActiveSince) {
			t.Errorf("member %d: peer %d active %v since %v after %v idle, want active since %v (last error: %v)",
				s.local.id, s.remote.id, got.Active, got.ActiveSince, idle, was.ActiveSince, got.LastError)
		}
		for _, typ := range streamTypes {
			now, then := s.local.watch.get(typ), streams[s.local.id][typ]
			if now.dials != then.dials || now.open != 1 {
				t.Errorf("member %d: %s stream from %d: got %d requests (%d open), want %d (1 open): it was redialled",
					s.local.id, typ, s.remote.id, now.dials, now.open, then.dials)
			}
			if now.written <= then.written {
				t.Errorf("member %d: %s stream to %d: %d bytes written while idle, want link heartbeats",
					s.local.id, typ, s.remote.id, now.written-then.written)
			}
		}
	}
	exchange(t, a, b, 30)
	exchange(t, b, a, 40)
	if t.Failed() {
		return
	}

	// Now b really goes away. a must see b inactive within a few seconds
	// (its stream readers get EOF and cannot redial), and its writers
	// must let go of the streams b dialled (their handlers return),
	// telling raft. On this listener the request context of those streams
	// ended long ago, at the first read timeout, so a write must find the
	// connection closed: when a's readers lose their streams they have
	// a's writers probe at once and again 250 ms later, and the second
	// probe fails on b's reset. Two seconds leave ample margin.
	releaseLimit := 2 * time.Second
	unreachable := a.raft.unreachableCount(b.id)
	start := time.Now()
	b.stop()
	waitWithin(t, 5*time.Second, "member 1 to see member 2 inactive", func() bool {
		return !a.status(t, b.id).Active
	})
	inactive := time.Since(start)
	waitWithin(t, releaseLimit-time.Since(start), "member 1 to release the streams of the stopped member 2", func() bool {
		for _, typ := range streamTypes {
			if a.watch.get(typ).open != 0 {
				return false
			}
		}
		return true
	})
	released := time.Since(start)
	t.Logf("after the peer stopped: inactive in %v, streams released in %v",
		inactive.Round(time.Millisecond), released.Round(time.Millisecond))
	if got := a.raft.unreachableCount(b.id); got <= unreachable {
		t.Errorf("member 1 reported member 2 unreachable %d times after it stopped, want at least once", got-unreachable)
	}
	if s := a.status(t, b.id); s.LastError == nil {
		t.Errorf("member 1: LastError of member 2 is nil, want why it turned inactive")
	}
}

// waitWithin polls cond until it holds, failing the test if it does not
// within limit.
func waitWithin(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	rafttest.Eventually(t, limit, what, cond)
}

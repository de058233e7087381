package rafthttp

import (
	"context"
	"net"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap/zaptest"
)

// fakeRaft records what the transport hands to raft. Process sends every
// message to msgc (buffered generously) unless processFn overrides it.
type fakeRaft struct {
	msgc chan *raftpb.Message

	mu          sync.Mutex
	processFn   func(ctx context.Context, m *raftpb.Message) error
	removed     map[uint64]bool
	unreachable map[uint64]int
	snapshots   []snapshotReport
}

type snapshotReport struct {
	id     uint64
	status raft.SnapshotStatus
}

func newFakeRaft() *fakeRaft {
	return &fakeRaft{msgc: make(chan *raftpb.Message, 1<<16), removed: map[uint64]bool{}, unreachable: map[uint64]int{}}
}

func (r *fakeRaft) Process(ctx context.Context, m *raftpb.Message) error {
	r.mu.Lock()
	fn := r.processFn
	r.mu.Unlock()
	if fn != nil {
		return fn(ctx, m)
	}
	select {
	case r.msgc <- m:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *fakeRaft) IsIDRemoved(id uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.removed[id]
}

func (r *fakeRaft) ReportUnreachable(id uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unreachable[id]++
}

func (r *fakeRaft) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.snapshots = append(r.snapshots, snapshotReport{id, status})
}

func (r *fakeRaft) setProcess(fn func(ctx context.Context, m *raftpb.Message) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.processFn = fn
}

func (r *fakeRaft) setRemoved(id uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removed[id] = true
}

func (r *fakeRaft) unreachableCount(id uint64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unreachable[id]
}

func (r *fakeRaft) snapshotReports() []snapshotReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]snapshotReport(nil), r.snapshots...)
}

// recv waits for the next processed message.
func (r *fakeRaft) recv(t testing.TB) *raftpb.Message {
	t.Helper()
	select {
	case m := <-r.msgc:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for a message to reach raft")
		return nil
	}
}

// testNode is a Transport served by a real http.Server on 127.0.0.1.
type testNode struct {
	tr   *Transport
	raft *fakeRaft
	srv  *httptest.Server
	url  string
}

const testClusterID = 0x1000

// newTestNode starts a transport with id behind a real HTTP server, stopped
// at the end of the test. configure, if not nil, adjusts the transport
// before Start.
func newTestNode(t testing.TB, id uint64, configure func(*Transport)) *testNode {
	t.Helper()
	n := &testNode{raft: newFakeRaft()}
	n.tr = &Transport{ID: id, ClusterID: testClusterID, Raft: n.raft, Logger: zaptest.NewLogger(t),
		DialRetryMin: 10 * time.Millisecond, DialRetryMax: 100 * time.Millisecond}
	n.srv = httptest.NewUnstartedServer(nil)
	n.url = "http://" + n.srv.Listener.Addr().String()
	n.tr.URLs = []string{n.url}
	if configure != nil {
		configure(n.tr)
	}
	if err := n.tr.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	n.srv.Config.Handler = n.tr.Handler()
	n.srv.Start()
	t.Cleanup(n.close)
	return n
}

// close stops the transport, then the server (the order raftexample uses).
func (n *testNode) close() {
	n.tr.Stop()
	n.srv.CloseClientConnections()
	n.srv.Close()
}

// connect adds every node as a peer of every other.
func connect(t testing.TB, nodes ...*testNode) {
	t.Helper()
	for _, a := range nodes {
		for _, b := range nodes {
			if a == b {
				continue
			}
			if err := a.tr.AddPeer(b.tr.ID, []string{b.url}); err != nil {
				t.Fatalf("AddPeer: %v", err)
			}
		}
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitStreams waits until a's stream writers to each of peers have attached
// the streams the peer dialled, as PeerStats reports them: from then on,
// while they last, what a sends them leaves by the streams (a writer
// reports up only after the transport would pick it). It asks nothing of
// a's readers, which tests whose nodes cannot all reach each other do not
// wait for; waitStreamsUp does.
func waitStreams(t testing.TB, a *testNode, peers ...*testNode) {
	t.Helper()
	for _, b := range peers {
		waitFor(t, "streams to be attached", func() bool {
			s, ok := a.tr.PeerStatus(b.tr.ID)
			if !ok {
				return false
			}
			for _, st := range s.Streams {
				if !st.Writer.Up {
					return false
				}
			}
			return true
		})
	}
}

// waitStreamsUp waits until every node has both streams up in both
// directions with every other (PeerStats.StreamsUp).
func waitStreamsUp(t testing.TB, nodes ...*testNode) {
	t.Helper()
	for _, a := range nodes {
		for _, b := range nodes {
			if a == b {
				continue
			}
			waitFor(t, "streams to be up both ways", func() bool {
				s, ok := a.tr.PeerStatus(b.tr.ID)
				return ok && s.StreamsUp()
			})
		}
	}
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

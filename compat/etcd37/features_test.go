package etcd37

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/types"
	etcdhttp "go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	stats "go.etcd.io/etcd/server/v3/etcdserver/api/v2stats"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
)

// snapshotTap sits in front of a receiver's handler and records, for each
// snapshot POST, the extension headers it carried and, once the handler has
// read the body to its end, its trailer.
type snapshotTap struct {
	mu    sync.Mutex
	posts []snapshotSeen
}

type snapshotSeen struct {
	features string // X-Rafthttp-Features
	trailer  http.Header
}

func (s *snapshotTap) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r)
		if r.URL.Path != rafthttp.RaftSnapshotPrefix {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.posts = append(s.posts, snapshotSeen{features: r.Header.Get("X-Rafthttp-Features"),
			trailer: r.Trailer.Clone()}) // the server moves a declared Trailer header here
	})
}

func (s *snapshotTap) seen() []snapshotSeen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]snapshotSeen(nil), s.posts...)
}

// TestSnapshotFeatures sends a snapshot from our Transport to an etcd 3.7
// Transport and, as a control that the tap sees trailers, to one of ours.
// etcd announces no features, so we learn none of it and send it no
// CRC-32C trailer: the body is etcd's (chunked, no trailer), and etcd stores
// the payload and hands raft the MsgSnap. Ours announces the trailer and
// gets it.
func TestSnapshotFeatures(t *testing.T) {
	const (
		size  = 1<<20 + 7
		index = 12
	)
	for _, tc := range []struct {
		name         string
		receiver     kind
		wantFeatures string // what we learn of the receiver (PeerStats.Features)
		wantTrailer  bool
	}{
		{"to etcd", etcd, "", false},
		{"to ours", ours, "crc32c-trailer,identity-refusal,snapshot-resume,pipeline-batch", true}, // its DirSnapshotStore resumes
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tap := &snapshotTap{}
			recv := newRecordingRaft()
			srv := httptest.NewUnstartedServer(nil)
			recvURL := "http://" + srv.Listener.Addr().String()
			logs := &logBuffer{}
			lg := newLogger(logs, fmt.Sprintf("%s-2", tc.receiver))

			sender := newListenerNode(t, 1)
			var stored string
			var stop func() // the receiver's Transport
			switch tc.receiver {
			case etcd:
				tr := &etcdhttp.Transport{
					Logger:      lg,
					DialTimeout: 2 * time.Second,
					ID:          types.ID(2),
					URLs:        types.MustNewURLs([]string{recvURL}),
					ClusterID:   types.ID(clusterID),
					Raft:        recv,
					Snapshotter: snap.New(lg, dir),
					ServerStats: stats.NewServerStats("", "2"),
					LeaderStats: stats.NewLeaderStats(lg, "2"),
					ErrorC:      make(chan error, 1),
				}
				if err := tr.Start(); err != nil {
					t.Fatalf("Start: %v", err)
				}
				stop = tr.Stop
				tr.AddPeer(types.ID(1), []string{sender.url})
				srv.Config.Handler = mount(tap.wrap(tr.Handler()))
				// etcd's snapshotter names the file after the index.
				stored = filepath.Join(dir, fmt.Sprintf("%016x.snap.db", index))
			case ours:
				tr := &rafthttp.Transport{ID: 2, ClusterID: clusterID, Raft: recv, Logger: lg, URLs: []string{recvURL},
					SnapshotStore: rafthttp.DirSnapshotStore{Dir: dir}}
				if err := tr.Start(); err != nil {
					t.Fatalf("Start: %v", err)
				}
				stop = tr.Stop
				if err := tr.AddPeer(1, []string{sender.url}); err != nil {
					t.Fatal(err)
				}
				srv.Config.Handler = mount(tap.wrap(tr.Handler()))
				stored = rafthttp.DirSnapshotStore{Dir: dir}.Path(index)
			}
			srv.Start()
			// Both transports stop before the server closes, as etcd stops
			// them: etcd's stream handler ends only when its writer does.
			t.Cleanup(func() {
				sender.stop()
				stop()
				srv.CloseClientConnections()
				srv.Close()
				if t.Failed() {
					t.Logf("logs of the receiver:\n%s", logs)
				}
			})
			if err := sender.tr.AddPeer(2, []string{recvURL}); err != nil {
				t.Fatal(err)
			}
			// Once our readers have dialled the receiver's streams, we have
			// read its answers, and so its announcement (or its silence).
			eventually(t, "our streams from the receiver to be up", func() bool {
				s := sender.status(t, 2)
				return s.Streams[0].Reader.Up && s.Streams[1].Reader.Up
			})
			if got := sender.status(t, 2).Features; got != tc.wantFeatures {
				t.Errorf("PeerStats.Features = %q, want %q", got, tc.wantFeatures)
			}

			payload := make([]byte, size)
			rand.NewChaCha8([32]byte{7}).Read(payload)
			msg := &raftpb.Message{Type: raftpb.MsgSnap.Enum(), From: proto.Uint64(1), To: proto.Uint64(2), Term: proto.Uint64(2),
				Snapshot: &raftpb.Snapshot{Data: []byte("MEMBERS"), Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(index),
					Term: proto.Uint64(2), ConfState: &raftpb.ConfState{Voters: []uint64{1, 2}}}}}
			errc := sender.tr.SendSnapshot(rafthttp.SnapshotMessage{Message: msg,
				Payload: io.NopCloser(bytes.NewReader(payload)), PayloadSize: size})
			select {
			case err := <-errc:
				if err != nil {
					t.Fatalf("SendSnapshot: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("SendSnapshot did not finish in time")
			}

			select {
			case got := <-recv.msgc:
				if got.GetType() != raftpb.MsgSnap || got.GetSnapshot().GetMetadata().GetIndex() != index {
					t.Errorf("receiver's raft got %v, want the MsgSnap at index %d", got, index)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the receiver's raft got no MsgSnap")
			}
			data, err := os.ReadFile(stored)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(data, payload) {
				t.Errorf("receiver stored %d bytes, want the %d sent", len(data), len(payload))
			}

			posts := tap.seen()
			if len(posts) != 1 {
				t.Fatalf("receiver saw %d snapshot POSTs, want 1", len(posts))
			}
			p := posts[0]
			// We announce to every peer: etcd ignores the header. The
			// sender has no SnapshotStore, so it does not announce
			// resumable snapshots (nor resume: one POST).
			if want := "crc32c-trailer,identity-refusal,pipeline-batch"; p.features != want {
				t.Errorf("X-Rafthttp-Features = %q, want %q", p.features, want)
			}
			gotTrailer := len(p.trailer) > 0
			if gotTrailer != tc.wantTrailer {
				t.Errorf("trailer sent: %v (got %v), want %v", gotTrailer, p.trailer, tc.wantTrailer)
			}
			if tc.wantTrailer && p.trailer.Get("X-Rafthttp-Crc32c") == "" {
				t.Errorf("trailer %v carries no X-Rafthttp-Crc32c", p.trailer)
			}
		})
	}
}

// pipelineTap counts, in front of a receiver's handler, the single
// pipeline POSTs and the batch POSTs (ours only) it serves.
type pipelineTap struct {
	mu               sync.Mutex
	singles, batches int
}

func (p *pipelineTap) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			p.mu.Lock()
			switch r.URL.Path {
			case rafthttp.RaftPrefix:
				p.singles++
			case rafthttp.RaftPrefix + "/batch":
				p.batches++
			}
			p.mu.Unlock()
		}
		next.ServeHTTP(w, r)
	})
}

func (p *pipelineTap) counts() (singles, batches int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.singles, p.batches
}

// TestPipelineBatchNegotiation sends messages from our Transport by its
// pipeline (the receiver does not know us, so it refuses our stream dials
// with 404) to an etcd 3.7 Transport and, as a control, to one of ours,
// all in one Send, so that they queue together. etcd announces nothing: it
// gets one POST /raft per message, etcd's bytes. Ours announces
// pipeline-batch (on its 404s too) and gets batches. Every message
// reaches the receiver's raft once either way.
func TestPipelineBatchNegotiation(t *testing.T) {
	const n = 40 // within the pipeline's queue (64) and the recording raft's (64)
	for _, tc := range []struct {
		name         string
		receiver     kind
		wantFeatures string
		wantBatches  bool
	}{
		{"to etcd", etcd, "", false},
		{"to ours", ours, "crc32c-trailer,identity-refusal,pipeline-batch", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tap := &pipelineTap{}
			recv := newRecordingRaft()
			srv := httptest.NewUnstartedServer(nil)
			recvURL := "http://" + srv.Listener.Addr().String()
			logs := &logBuffer{}
			lg := newLogger(logs, fmt.Sprintf("%s-2", tc.receiver))
			sender := newListenerNode(t, 1)
			var stop func()
			switch tc.receiver {
			case etcd:
				tr := &etcdhttp.Transport{Logger: lg, DialTimeout: 2 * time.Second, ID: types.ID(2),
					URLs: types.MustNewURLs([]string{recvURL}), ClusterID: types.ID(clusterID), Raft: recv,
					ServerStats: stats.NewServerStats("", "2"), LeaderStats: stats.NewLeaderStats(lg, "2"), ErrorC: make(chan error, 1)}
				if err := tr.Start(); err != nil {
					t.Fatalf("Start: %v", err)
				}
				stop = tr.Stop
				srv.Config.Handler = mount(tap.wrap(tr.Handler()))
			case ours:
				tr := &rafthttp.Transport{ID: 2, ClusterID: clusterID, Raft: recv, Logger: lg, URLs: []string{recvURL}}
				if err := tr.Start(); err != nil {
					t.Fatalf("Start: %v", err)
				}
				stop = tr.Stop
				srv.Config.Handler = mount(tap.wrap(tr.Handler()))
			}
			srv.Start()
			t.Cleanup(func() {
				sender.stop()
				stop()
				srv.CloseClientConnections()
				srv.Close()
				if t.Failed() {
					t.Logf("logs of the receiver:\n%s", logs)
				}
			})
			if err := sender.tr.AddPeer(2, []string{recvURL}); err != nil {
				t.Fatal(err)
			}
			// A refused dial's answer is the receiver's announcement (etcd:
			// its silence, which is what we assume of a peer not heard
			// from).
			eventually(t, "the receiver's announcement", func() bool {
				return sender.status(t, 2).Features == tc.wantFeatures
			})
			msgs := make([]*raftpb.Message, n)
			for i := range msgs {
				msgs[i] = &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(1), To: proto.Uint64(2),
					Term: proto.Uint64(2), Commit: proto.Uint64(uint64(i + 1))}
			}
			sender.tr.Send(msgs)
			seen := map[uint64]bool{}
			for range n {
				select {
				case m := <-recv.msgc:
					if seen[m.GetCommit()] {
						t.Errorf("message %d delivered twice", m.GetCommit())
					}
					seen[m.GetCommit()] = true
				case <-time.After(20 * time.Second):
					t.Fatalf("the receiver's raft got %d of %d messages", len(seen), n)
				}
			}
			singles, batches := tap.counts()
			t.Logf("%d messages: %d POST /raft, %d POST /raft/batch", n, singles, batches)
			if tc.wantBatches != (batches > 0) {
				t.Errorf("%d batch POSTs, want some: %v", batches, tc.wantBatches)
			}
			if !tc.wantBatches && singles != n {
				t.Errorf("%d POST /raft, want one per message (%d)", singles, n)
			}
			if st := sender.status(t, 2); st.Dropped != 0 {
				t.Errorf("%d messages dropped, want none", st.Dropped)
			}
		})
	}
}

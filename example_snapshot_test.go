package rafthttp_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
)

// snapshotRaft is exampleRaft that also passes on what ReportSnapshot is
// told, which a real application hands to node.ReportSnapshot so that raft
// stops waiting for the snapshot and resumes replication to that member.
type snapshotRaft struct {
	*exampleRaft
	reports chan raft.SnapshotStatus
}

func (r *snapshotRaft) ReportSnapshot(_ uint64, status raft.SnapshotStatus) {
	select {
	case r.reports <- status:
	default: // the example reads one report; never block the transport
	}
}

// SendSnapshot streams a snapshot to a member: the MsgSnap first, then the
// payload (the application's state, etcd's database), read from an
// io.ReadCloser with constant memory whatever its size. The receiver's
// SnapshotStore, here a DirSnapshotStore, makes the payload durable before
// the receiver's raft gets the MsgSnap, and the sender's raft is told the
// outcome with ReportSnapshot.
//
// An application calls SendSnapshot, instead of Send, for the MsgSnap found
// in a Ready, with the payload of the snapshot raft names in it. The
// receiving member opens the file at DirSnapshotStore.Path(index) when it
// applies the snapshot.
func ExampleTransport_SendSnapshot() {
	const clusterID = 0x1000
	dir, err := os.MkdirTemp("", "rafthttp-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)

	r1 := &snapshotRaft{exampleRaft: newExampleRaft(), reports: make(chan raft.SnapshotStatus, 1)}
	r2 := newExampleRaft()
	store := rafthttp.DirSnapshotStore{Dir: dir}
	tr1 := &rafthttp.Transport{ID: 1, ClusterID: clusterID, Raft: r1}
	tr2 := &rafthttp.Transport{ID: 2, ClusterID: clusterID, Raft: r2, SnapshotStore: store}
	for _, tr := range []*rafthttp.Transport{tr1, tr2} {
		if err := tr.Start(); err != nil {
			fmt.Println(err)
			return
		}
	}
	srv1 := httptest.NewServer(tr1.Handler())
	defer srv1.Close()
	srv2 := httptest.NewServer(tr2.Handler())
	defer srv2.Close()
	// Deferred after the servers, so run before them: a transport lets go
	// of the streams it serves, then the server can close.
	defer tr1.Stop()
	defer tr2.Stop()
	if err := tr1.AddPeer(2, []string{srv2.URL}); err != nil {
		fmt.Println(err)
		return
	}
	if err := tr2.AddPeer(1, []string{srv1.URL}); err != nil {
		fmt.Println(err)
		return
	}

	// The MsgSnap raft put in member 1's Ready: the snapshot's metadata
	// (and, in Snapshot.Data, whatever small state the application keeps
	// there); the bulk of the state travels as the payload.
	m := &raftpb.Message{
		Type: raftpb.MsgSnap.Enum(), From: proto.Uint64(1), To: proto.Uint64(2), Term: proto.Uint64(3),
		Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
			Index: proto.Uint64(1200), Term: proto.Uint64(3),
			ConfState: &raftpb.ConfState{Voters: []uint64{1, 2}},
		}},
	}
	payload := bytes.Repeat([]byte("key=value\n"), 100_000) // 1,000,000 bytes
	errc := tr1.SendSnapshot(rafthttp.SnapshotMessage{
		Message:     m,
		Payload:     io.NopCloser(bytes.NewReader(payload)),
		PayloadSize: int64(len(payload)),
	})

	select {
	case err := <-errc:
		fmt.Println("SendSnapshot:", err)
	case <-time.After(10 * time.Second):
		fmt.Println("timed out")
		return
	}
	// The outcome reached raft before the channel.
	switch <-r1.reports {
	case raft.SnapshotFinish:
		fmt.Println("member 1's raft told: SnapshotFinish")
	case raft.SnapshotFailure:
		fmt.Println("member 1's raft told: SnapshotFailure")
	}
	// Member 2's raft got the MsgSnap once the payload was stored.
	got := <-r2.received
	md := got.GetSnapshot().GetMetadata()
	fmt.Printf("member 2's raft got %v from %d: index %d, term %d, voters %v\n",
		got.GetType(), got.GetFrom(), md.GetIndex(), md.GetTerm(), md.GetConfState().GetVoters())
	stored, err := os.ReadFile(store.Path(md.GetIndex()))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("stored %s: %d bytes, intact: %t\n",
		filepath.Base(store.Path(md.GetIndex())), len(stored), bytes.Equal(stored, payload))
	// Output:
	// SendSnapshot: <nil>
	// member 1's raft told: SnapshotFinish
	// member 2's raft got MsgSnap from 1: index 1200, term 3, voters [1 2]
	// stored 00000000000004b0.snap.db: 1000000 bytes, intact: true
}

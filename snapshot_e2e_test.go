package rafthttp

import (
	"bytes"
	"io"
	"os"
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func TestSnapshotSendReceive(t *testing.T) {
	dir := t.TempDir()
	a := newTestNode(t, 1, nil)
	b := newTestNode(t, 2, func(tr *Transport) { tr.SnapshotStore = DirSnapshotStore{Dir: dir} })
	connect(t, a, b)

	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	m := &raftpb.Message{Type: raftpb.MsgSnap.Enum(), To: proto.Uint64(2), From: proto.Uint64(1), Term: proto.Uint64(2),
		Snapshot: &raftpb.Snapshot{Data: []byte("MEMBERS"), Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(12), Term: proto.Uint64(2)}}}
	errc := a.tr.SendSnapshot(SnapshotMessage{Message: m, Payload: io.NopCloser(bytes.NewReader(payload)), PayloadSize: int64(len(payload))})
	if err := <-errc; err != nil {
		t.Fatalf("SendSnapshot: %v", err)
	}
	got := b.raft.recv(t)
	if got.GetType() != raftpb.MsgSnap || got.GetSnapshot().GetMetadata().GetIndex() != 12 {
		t.Errorf("raft got %v, want the MsgSnap at index 12", got)
	}
	data, err := os.ReadFile(DirSnapshotStore{Dir: dir}.Path(12))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, payload) {
		t.Errorf("stored %d bytes, want the %d sent", len(data), len(payload))
	}
	if reps := a.raft.snapshotReports(); len(reps) != 1 || reps[0] != (snapshotReport{2, raft.SnapshotFinish}) {
		t.Errorf("snapshot reports = %v, want one Finish for 2", reps)
	}
}

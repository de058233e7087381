package rafthttp

import (
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func TestTwoNodesExchangeMessages(t *testing.T) {
	a := newTestNode(t, 1, nil)
	b := newTestNode(t, 2, nil)
	connect(t, a, b)
	waitStreams(t, a, b)
	waitStreams(t, b, a)

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

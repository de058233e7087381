package raftproto

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"
)

// TestNewMsgApps: the msgappv2 decoder's MsgApps carry every field they
// were given, their entries are the ones given, and each costs exactly one
// allocation.
func TestNewMsgApps(t *testing.T) {
	e := entry(3, 11, "x")
	ents := []*raftpb.Entry{entry(3, 11, "a"), entry(3, 12, "b")}
	want := func(ents []*raftpb.Entry) *raftpb.Message {
		return &raftpb.Message{Type: raftpb.MsgApp.Enum(), To: proto.Uint64(2), From: proto.Uint64(1),
			Term: proto.Uint64(3), LogTerm: proto.Uint64(3), Index: proto.Uint64(10), Commit: proto.Uint64(9), Entries: ents}
	}
	tests := []struct {
		name string
		new  func() *raftpb.Message
		ents []*raftpb.Entry
	}{
		{"one entry", func() *raftpb.Message { return NewMsgApp1(2, 1, 3, 3, 10, 9, e) }, []*raftpb.Entry{e}},
		{"several entries", func() *raftpb.Message { return NewMsgApp(2, 1, 3, 3, 10, 9, ents) }, ents},
		{"no entries", func() *raftpb.Message { return NewMsgApp(2, 1, 3, 3, 10, 9, nil) }, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.new()
			if !proto.Equal(m, want(tc.ents)) {
				t.Fatalf("got %v, want %v", m, want(tc.ents))
			}
			for i := range tc.ents {
				if m.Entries[i] != tc.ents[i] {
					t.Fatalf("entry %d is not the one given", i)
				}
			}
			if n := testing.AllocsPerRun(100, func() { _ = tc.new() }); n != 1 {
				t.Errorf("%v allocations per message, want 1", n)
			}
		})
	}
}

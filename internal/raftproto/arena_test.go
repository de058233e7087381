package raftproto

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"
)

// TestArenaNewMsgApp1 rebuilds one-entry MsgApps from the arena: each is the
// message NewMsgApp builds, and their entries are their own.
func TestArenaNewMsgApp1(t *testing.T) {
	var a Arena
	for i := range 3 * ArenaBlocks {
		e := entry(3, uint64(11+i), "x")
		m := a.NewMsgApp1(2, 1, 3, 3, uint64(10+i), 9, e)
		want := newMsgApp(2, 1, 3, 3, uint64(10+i), 9, []*raftpb.Entry{e})
		if !proto.Equal(m, want) {
			t.Fatalf("message %d = %v, want %v", i, m, want)
		}
		if m.Entries[0] != e {
			t.Fatalf("message %d does not carry its entry", i)
		}
	}
}

// TestArenaNewMsgApp: messages of several entries from the arena equal
// newMsgApp's, and cost one allocation per ArenaBlocks of them.
func TestArenaNewMsgApp(t *testing.T) {
	var a Arena
	ents := []*raftpb.Entry{entry(3, 11, "a"), entry(3, 12, "b")}
	for i := range 3 * ArenaBlocks {
		m := a.NewMsgApp(2, 1, 3, 3, uint64(10+2*i), 9, ents)
		want := newMsgApp(2, 1, 3, 3, uint64(10+2*i), 9, ents)
		if !proto.Equal(m, want) {
			t.Fatalf("message %d = %v, want %v", i, m, want)
		}
	}
	if n := testing.AllocsPerRun(ArenaBlocks*10, func() { a.NewMsgApp(2, 1, 3, 3, 10, 9, nil) }); n > 1.0/ArenaBlocks+0.01 {
		t.Errorf("%v allocations per message, want 1/%d", n, ArenaBlocks)
	}
	if n := testing.AllocsPerRun(ArenaBlocks*10, func() { a.NewMsgApp1(2, 1, 3, 3, 10, 9, ents[0]) }); n > 1.0/ArenaBlocks+0.01 {
		t.Errorf("NewMsgApp1: %v allocations per message, want 1/%d", n, ArenaBlocks)
	}
}

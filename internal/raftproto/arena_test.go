package raftproto

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"
)

func TestArenaBytes(t *testing.T) {
	across := make([]int, ArenaChunk/1000+2) // pieces spanning two chunks
	for i := range across {
		across[i] = 1000
	}
	tests := []struct {
		name  string
		sizes []int
	}{
		{"small pieces", []int{10, 10, 100}},
		{"empty", []int{0, 5}},
		{"the largest carved", []int{ArenaMaxData, ArenaMaxData}},
		{"too large for the arena", []int{ArenaMaxData + 1, 3}},
		{"across chunks", across},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a Arena
			var got [][]byte
			for _, n := range tt.sizes {
				b := a.Bytes(n)
				if n > ArenaMaxData {
					if b != nil {
						t.Fatalf("Bytes(%d) = %d bytes, want nil", n, len(b))
					}
					continue
				}
				if len(b) != n || cap(b) != n {
					t.Fatalf("Bytes(%d): len %d cap %d, want both %d", n, len(b), cap(b), n)
				}
				for j := range b {
					b[j] = byte(len(got) + 1)
				}
				got = append(got, b)
			}
			// Growing one piece must not reach its neighbour.
			for i, b := range got {
				grown := append(b, 0xee)
				for j, other := range got {
					if j != i && len(other) > 0 && bytes.Contains(other, []byte{0xee}) {
						t.Fatalf("appending to piece %d changed piece %d", i, j)
					}
				}
				_ = grown
			}
			for i, b := range got {
				for _, c := range b {
					if c != byte(i+1) {
						t.Fatalf("piece %d overwritten: %x", i, b)
					}
				}
			}
		})
	}
}

func TestArenaNewMsgApp1(t *testing.T) {
	var a Arena
	var msgs []*raftpb.Message
	var wants []*raftpb.Message
	// More than a block's worth, with a malformed entry in between that
	// must neither consume a block nor leave anything behind in it.
	for i := range 3*ArenaBlocks + 1 {
		if i == ArenaBlocks/2 {
			if _, err := a.NewMsgApp1(2, 1, 3, 3, 99, 10, []byte{0x08, 0x07, 0x10, 0xff}); err == nil {
				t.Fatal("a malformed entry was accepted")
			}
		}
		e := entry(3, uint64(11+i), "")
		if i%2 == 0 {
			e.Data = []byte{byte(i), byte(i >> 8)}
			e.Type = raftpb.EntryConfChange.Enum()
		}
		m, err := a.NewMsgApp1(2, 1, 3, 3, uint64(10+i), 10, AppendEntry(nil, e))
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
		wants = append(wants, &raftpb.Message{Type: raftpb.MsgApp.Enum(), To: proto.Uint64(2), From: proto.Uint64(1),
			Term: proto.Uint64(3), LogTerm: proto.Uint64(3), Index: proto.Uint64(uint64(10 + i)), Commit: proto.Uint64(10),
			Entries: []*raftpb.Entry{e}})
	}
	for i := range msgs {
		if !proto.Equal(msgs[i], wants[i]) {
			t.Errorf("message %d = %v, want %v", i, msgs[i], wants[i])
		}
	}
	// Each message is its own: changing one leaves the others.
	*msgs[0].Index = 1000
	msgs[0].Entries[0].Data = append(msgs[0].Entries[0].Data, 1, 2, 3)
	if !proto.Equal(msgs[1], wants[1]) || !proto.Equal(msgs[2], wants[2]) {
		t.Error("changing one message changed its neighbours")
	}
}

func TestArenaAllocs(t *testing.T) {
	var a Arena
	buf := AppendEntry(nil, entry(2, 12, "0123456789abcdef"))
	n := testing.AllocsPerRun(ArenaBlocks*10, func() {
		data := a.Bytes(len(buf))
		copy(data, buf)
		if _, err := a.NewMsgApp1(2, 1, 3, 3, 11, 10, data); err != nil {
			t.Fatal(err)
		}
	})
	// One block allocation per ArenaBlocks messages, one chunk per
	// ArenaChunk bytes: AllocsPerRun's integer average is 0.
	if n != 0 {
		t.Errorf("%v allocations per message, want less than one", n)
	}
}

func TestArenaNewMsgApp(t *testing.T) {
	var a Arena
	var msgs []*raftpb.Message
	for i := range 2*ArenaBlocks + 3 {
		ents := []*raftpb.Entry{entry(3, uint64(11+2*i), "x"), entry(3, uint64(12+2*i), "")}
		m := a.NewMsgApp(2, 1, 3, 3, uint64(10+2*i), 9, ents)
		want := NewMsgApp(2, 1, 3, 3, uint64(10+2*i), 9, ents)
		if !proto.Equal(m, want) {
			t.Fatalf("message %d = %v, want %v", i, m, want)
		}
		msgs = append(msgs, m)
	}
	*msgs[0].Commit = 1000
	if msgs[1].GetCommit() != 9 {
		t.Error("changing one message changed its neighbour")
	}
	n := testing.AllocsPerRun(ArenaBlocks*10, func() { a.NewMsgApp(2, 1, 3, 3, 10, 9, nil) })
	if n != 0 {
		t.Errorf("%v allocations per message, want less than one", n)
	}
}

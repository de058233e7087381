package raftproto

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"unsafe"

	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func entry(term, index uint64, data string) *raftpb.Entry {
	e := &raftpb.Entry{Term: proto.Uint64(term), Index: proto.Uint64(index)}
	if data != "" {
		e.Data = []byte(data)
	}
	return e
}

// sampleMessages covers every field, presence of zero values and the shapes
// raft sends. The codec must agree with proto on each.
func sampleMessages() map[string]*raftpb.Message {
	return map[string]*raftpb.Message{
		"empty":     {},
		"heartbeat": {Type: raftpb.MsgHeartbeat.Enum()},
		"vote": {Type: raftpb.MsgVote.Enum(), To: proto.Uint64(2), From: proto.Uint64(1),
			Term: proto.Uint64(5)},
		"app": {Type: raftpb.MsgApp.Enum(), To: proto.Uint64(2), From: proto.Uint64(1),
			Term: proto.Uint64(1), LogTerm: proto.Uint64(1), Index: proto.Uint64(3),
			Commit: proto.Uint64(3), Entries: []*raftpb.Entry{entry(1, 4, "x")}},
		"zero values present": {Type: raftpb.MsgHup.Enum(), To: proto.Uint64(0), Reject: proto.Bool(false),
			Context: []byte{}, Vote: proto.Uint64(0), Entries: []*raftpb.Entry{{Type: raftpb.EntryNormal.Enum(), Data: []byte{}}}},
		"every field": {Type: raftpb.MsgAppResp.Enum(), To: proto.Uint64(1 << 63), From: proto.Uint64(300),
			Term: proto.Uint64(7), LogTerm: proto.Uint64(6), Index: proto.Uint64(1 << 40), Commit: proto.Uint64(99),
			Reject: proto.Bool(true), RejectHint: proto.Uint64(12), Context: []byte("ctx"), Vote: proto.Uint64(3),
			Entries: []*raftpb.Entry{entry(1, 2, "a"), {Type: raftpb.EntryConfChangeV2.Enum(), Term: proto.Uint64(1), Index: proto.Uint64(3)}}},
		"snapshot": {Type: raftpb.MsgSnap.Enum(), To: proto.Uint64(2), From: proto.Uint64(1), Term: proto.Uint64(2),
			Snapshot: &raftpb.Snapshot{Data: []byte("MEMBERS"), Metadata: &raftpb.SnapshotMetadata{
				Index: proto.Uint64(12), Term: proto.Uint64(2),
				ConfState: &raftpb.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4},
					VotersOutgoing: []uint64{1, 5}, LearnersNext: []uint64{6}, AutoLeave: proto.Bool(true)}}}},
		"empty snapshot": {Type: raftpb.MsgHeartbeat.Enum(), Snapshot: &raftpb.Snapshot{
			Metadata: &raftpb.SnapshotMetadata{ConfState: &raftpb.ConfState{AutoLeave: proto.Bool(false)},
				Index: proto.Uint64(0), Term: proto.Uint64(0)}}},
		"responses": {Type: raftpb.MsgStorageAppend.Enum(), Responses: []*raftpb.Message{
			{Type: raftpb.MsgStorageAppendResp.Enum(), To: proto.Uint64(1)}}},
		"many entries": func() *raftpb.Message {
			m := &raftpb.Message{Type: raftpb.MsgApp.Enum(), Term: proto.Uint64(3)}
			for i := range 64 {
				m.Entries = append(m.Entries, entry(3, uint64(100+i), strings.Repeat("d", 1024)))
			}
			return m
		}(),
	}
}

func TestEncodeMatchesProto(t *testing.T) {
	for name, m := range sampleMessages() {
		t.Run(name, func(t *testing.T) {
			want, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if got := MessageSize(m); got != len(want) {
				t.Errorf("MessageSize = %d, want %d", got, len(want))
			}
			if got := AppendMessage(nil, m); !bytes.Equal(got, want) {
				t.Errorf("AppendMessage = %x, want %x", got, want)
			}
		})
	}
}

func TestDecodeMatchesProto(t *testing.T) {
	for name, m := range sampleMessages() {
		t.Run(name, func(t *testing.T) {
			buf, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			got, err := UnmarshalMessage(buf)
			if m.Responses != nil {
				// Valid protobuf, but never raft's on the wire.
				if !errors.Is(err, ErrDegenerate) {
					t.Fatalf("UnmarshalMessage error %v, want ErrDegenerate", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("UnmarshalMessage: %v", err)
			}
			if !proto.Equal(got, m) {
				t.Errorf("got %v, want %v", got, m)
			}
		})
	}
}

// TestDecodeEtcdEncodings decodes the same MsgApp as etcd 3.5, 3.6 and 3.7
// encode it (spec §3) and checks that each yields the message raft expects.
func TestDecodeEtcdEncodings(t *testing.T) {
	prefix := "08 03 10 02 18 01 20 01 28 01 30 03"
	tests := []struct {
		name         string
		hex          string
		wantSnapshot bool
	}{
		{name: "3.7", hex: prefix + "3a 07 10 01 18 04 22 01 78 40 03"},
		{name: "3.5", hex: prefix + "3a 09 08 00 10 01 18 04 22 01 78 40 03 4a 0a 12 08 0a 02 28 00 10 00 18 00 50 00 58 00", wantSnapshot: true},
		{name: "3.6", hex: prefix + "3a 09 08 00 10 01 18 04 22 01 78 40 03 50 00 58 00 68 00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			buf := unhex(t, tc.hex)
			m, err := UnmarshalMessage(buf)
			if err != nil {
				t.Fatal(err)
			}
			want := new(raftpb.Message)
			if err := proto.Unmarshal(buf, want); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(m, want) {
				t.Errorf("got %v, want %v", m, want)
			}
			if m.GetType() != raftpb.MsgApp || m.GetTo() != 2 || m.GetFrom() != 1 || m.GetIndex() != 3 ||
				m.GetCommit() != 3 || len(m.Entries) != 1 || string(m.Entries[0].Data) != "x" || m.Entries[0].GetIndex() != 4 {
				t.Errorf("decoded %v", m)
			}
			if (m.Snapshot != nil) != tc.wantSnapshot {
				t.Errorf("snapshot present = %v, want %v", m.Snapshot != nil, tc.wantSnapshot)
			}
		})
	}
}

func TestDecodeMalformed(t *testing.T) {
	tests := []struct{ name, hex string }{
		{name: "truncated varint", hex: "08 ff"},
		{name: "length past end", hex: "3a 05 10 01"},
		{name: "field number zero", hex: "00 01"},
		{name: "bad entry", hex: "3a 02 10 ff"},
		{name: "bad snapshot", hex: "4a 02 12 05"},
		{name: "bad conf state", hex: "4a 04 12 02 0a 05"},
		{name: "stray end group", hex: "0c"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := UnmarshalMessage(unhex(t, tc.hex)); err == nil {
				t.Error("UnmarshalMessage succeeded, want an error")
			}
		})
	}
}

// TestDecodeAliasCapped checks that growing one decoded byte field cannot
// write over its neighbour in the shared buffer.
func TestDecodeAliasCapped(t *testing.T) {
	m := &raftpb.Message{Entries: []*raftpb.Entry{entry(1, 1, "aa"), entry(1, 2, "bb")}}
	got, err := UnmarshalMessage(AppendMessage(nil, m))
	if err != nil {
		t.Fatal(err)
	}
	_ = append(got.Entries[0].Data, 'X')
	if string(got.Entries[1].Data) != "bb" {
		t.Errorf("second entry data = %q, want %q", got.Entries[1].Data, "bb")
	}
}

// TestEntrySlot decodes entries of every size class through their slots:
// each round-trips, its Data aliases its own slot, and a slot is one
// allocation up to the largest inline class, two beyond.
func TestEntrySlot(t *testing.T) {
	tests := []struct {
		name      string
		data      int
		maxAllocs float64
	}{
		{name: "no data", data: -1, maxAllocs: 1},
		{name: "empty data", data: 0, maxAllocs: 1},
		{name: "1 byte", data: 1, maxAllocs: 1},
		{name: "100 bytes", data: 100, maxAllocs: 1},
		{name: "1 KiB", data: 1 << 10, maxAllocs: 1},
		{name: "largest inline", data: maxInline - 16, maxAllocs: 1},
		{name: "just over", data: maxInline, maxAllocs: 2},
		{name: "64 KiB", data: 64 << 10, maxAllocs: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := entry(2, 12, "")
			if tc.data >= 0 {
				e.Data = bytes.Repeat([]byte{'d'}, tc.data)
			}
			enc := AppendEntry(nil, e)
			slot := NewEntrySlot(len(enc))
			if len(slot.Buf) != len(enc) || cap(slot.Buf) != len(enc) {
				t.Fatalf("Buf len %d cap %d, want both %d", len(slot.Buf), cap(slot.Buf), len(enc))
			}
			copy(slot.Buf, enc)
			got, err := slot.Decode()
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, e) {
				t.Errorf("got %v, want %v", got, e)
			}
			if n := testing.AllocsPerRun(100, func() { _ = NewEntrySlot(len(enc)) }); n > tc.maxAllocs {
				t.Errorf("%v allocations, want at most %v", n, tc.maxAllocs)
			}
			if got, want := EntrySlotSize(len(enc)), int(unsafe.Sizeof(entryBlock{}))+len(enc); got < want || got > want+want/8+16 {
				t.Errorf("slot of %d bytes costs %d, want %d to an eighth more", len(enc), got, want)
			}
		})
	}
	t.Run("empty entry refused", func(t *testing.T) {
		if _, err := NewEntrySlot(0).Decode(); !errors.Is(err, ErrDegenerate) {
			t.Errorf("got %v, want ErrDegenerate", err)
		}
	})
	t.Run("malformed refused", func(t *testing.T) {
		s := NewEntrySlot(2)
		copy(s.Buf, []byte{0x10, 0xff})
		if _, err := s.Decode(); !errors.Is(err, ErrMalformed) {
			t.Errorf("got %v, want ErrMalformed", err)
		}
	})
}

func TestAllocs(t *testing.T) {
	msgs := sampleMessages()
	tests := []struct {
		name      string
		maxDecode float64
	}{
		{name: "vote", maxDecode: 1},
		{name: "app", maxDecode: 2},               // the message with its entry slice, the entry's slot
		{name: "many entries", maxDecode: 2 + 64}, // one slot per entry: a kept entry keeps nothing else
		{name: "snapshot", maxDecode: 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := msgs[tc.name]
			buf := make([]byte, 0, MessageSize(m))
			if n := testing.AllocsPerRun(100, func() { buf = AppendMessage(buf[:0], m) }); n != 0 {
				t.Errorf("encode allocs = %v, want 0", n)
			}
			enc := AppendMessage(nil, m)
			if n := testing.AllocsPerRun(100, func() { _, _ = UnmarshalMessage(enc) }); n > tc.maxDecode {
				t.Errorf("decode allocs = %v, want at most %v", n, tc.maxDecode)
			}
		})
	}
}

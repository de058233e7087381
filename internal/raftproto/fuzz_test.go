package raftproto

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"
)

// FuzzUnmarshalMessage checks the hand-written codec against protobuf-go on
// arbitrary bytes: decoding never panics, it agrees with proto.Unmarshal
// (DiscardUnknown) on success and failure, and re-encoding what it decoded
// gives exactly proto.Marshal's bytes.
func FuzzUnmarshalMessage(f *testing.F) {
	for _, m := range sampleMessages() {
		f.Add(AppendMessage(nil, m))
	}
	f.Add(unhex(f, "08 03 10 02 18 01 20 01 28 01 30 03 3a 09 08 00 10 01 18 04 22 01 78 40 03 4a 0a 12 08 0a 02 28 00 10 00 18 00 50 00 58 00"))
	f.Add(unhex(f, "4a 08 12 06 0a 04 0a 02 01 02")) // packed voters
	f.Fuzz(func(t *testing.T, buf []byte) {
		got, err := UnmarshalMessage(bytes.Clone(buf))
		want := new(raftpb.Message)
		werr := proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(buf, want)
		if (err == nil) != (werr == nil) {
			t.Fatalf("UnmarshalMessage error %v, proto.Unmarshal error %v", err, werr)
		}
		if err != nil {
			return
		}
		if !proto.Equal(got, want) {
			t.Fatalf("UnmarshalMessage = %v, proto.Unmarshal = %v", got, want)
		}
		enc := AppendMessage(nil, got)
		penc, err := proto.MarshalOptions{Deterministic: true}.Marshal(got)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(enc, penc) {
			t.Fatalf("AppendMessage = %x, proto.Marshal = %x", enc, penc)
		}
		if MessageSize(got) != len(enc) {
			t.Fatalf("MessageSize = %d, encoded %d bytes", MessageSize(got), len(enc))
		}
	})
}

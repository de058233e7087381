package raftproto

import (
	"bytes"
	"errors"
	"runtime"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"
)

// FuzzUnmarshalMessage checks the hand-written codec against protobuf-go on
// arbitrary bytes: decoding never panics, it agrees with proto.Unmarshal
// (DiscardUnknown) on success and failure (except that it refuses shapes
// raft never sends, ErrDegenerate), re-encoding what it decoded gives
// exactly proto.Marshal's bytes, and what it allocates, measured on the heap,
// stays within the documented bound.
func FuzzUnmarshalMessage(f *testing.F) {
	for _, m := range sampleMessages() {
		f.Add(AppendMessage(nil, m))
	}
	f.Add(unhex(f, "08 03 10 02 18 01 20 01 28 01 30 03 3a 09 08 00 10 01 18 04 22 01 78 40 03 4a 0a 12 08 0a 02 28 00 10 00 18 00 50 00 58 00"))
	f.Add(unhex(f, "4a 08 12 06 0a 04 0a 02 01 02")) // packed voters
	for _, buf := range amplifiers(32) {             // small: the fuzzer mutates them fast
		f.Add(buf)
	}
	f.Fuzz(func(t *testing.T, buf []byte) {
		checkCostBound(t, buf)
		got, err := UnmarshalMessage(bytes.Clone(buf))
		want := new(raftpb.Message)
		werr := proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(buf, want)
		if errors.Is(err, ErrDegenerate) {
			// protobuf may accept it; raft never sends it. But it must
			// really hold such a shape, found by a scan of our own.
			if !degenerateForTest(buf) {
				t.Fatalf("UnmarshalMessage refused %x as degenerate, which it is not", buf)
			}
			return
		}
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

// checkCostBound fails t if decoding buf allocates more than the documented
// bound, measured on the heap. Another goroutine of the fuzzing process may
// allocate during a measure, so only a bound exceeded three times in a row
// counts.
func checkCostBound(t *testing.T, buf []byte) {
	t.Helper()
	bound := uint64(costBound(len(buf)))
	var got uint64
	for range 3 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, _, _ = UnmarshalMessageCharged(buf, nil)
		runtime.ReadMemStats(&after)
		if got = after.TotalAlloc - before.TotalAlloc; got <= bound {
			return
		}
	}
	t.Fatalf("decoding %d bytes allocated %d, bound %d", len(buf), got, bound)
}

// degenerateForTest says, independently of the decoder, whether buf holds
// a shape raft never sends among its well-formed fields (the scan stops at
// the first malformed one): a Responses field, an entry with no field raft
// knows, or a repeated snapshot, snapshot metadata or conf state.
func degenerateForTest(buf []byte) bool {
	// fields calls f with the value of each length-delimited field of b,
	// up to the first malformed field.
	fields := func(b []byte, f func(num protowire.Number, v []byte)) {
		for len(b) > 0 {
			num, typ, n := protowire.ConsumeTag(b)
			if n < 0 {
				return
			}
			b = b[n:]
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return
			}
			if typ == protowire.BytesType {
				v, _ := protowire.ConsumeBytes(b)
				f(num, v)
			}
			b = b[m:]
		}
	}
	found, snaps := false, 0
	fields(buf, func(num protowire.Number, v []byte) {
		switch num {
		case 14:
			found = true
		case 7:
			var e raftpb.Entry
			if (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(v, &e) == nil && proto.Size(&e) == 0 {
				found = true
			}
		case 9:
			snaps++
			metas := 0
			fields(v, func(num protowire.Number, md []byte) {
				if num != 2 {
					return
				}
				metas++
				states := 0
				fields(md, func(num protowire.Number, _ []byte) {
					if num == 1 {
						states++
					}
				})
				found = found || states > 1
			})
			found = found || metas > 1
		}
	})
	return found || snaps > 1
}

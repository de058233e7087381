package rafthttp

import (
	"bytes"
	"fmt"
	"io"
	"runtime/debug"
	"testing"

	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"
)

// codecShapes are the MsgApp shapes the codec benchmarks and allocation
// tests measure: a small append and a batch.
var codecShapes = []struct {
	name    string
	entries int
	size    int
}{
	{name: "1x128B", entries: 1, size: 128},
	{name: "64x1KiB", entries: 64, size: 1 << 10},
}

// benchTerm and benchIndex place the benchmark log far from zero, so every
// index takes the same number of varint bytes for the whole run.
const (
	benchTerm  = 5
	benchIndex = 1 << 40
)

// benchMsgApp returns a MsgApp of n entries of size bytes that follows
// index in term benchTerm.
func benchMsgApp(n, size int, index uint64) *raftpb.Message {
	ents := make([]*raftpb.Entry, n)
	for i := range ents {
		ents[i] = wireEntry(benchTerm, index+1+uint64(i), bytes.Repeat([]byte{byte('a' + i%26)}, size))
	}
	return wireMsgApp(1, 2, benchTerm, benchTerm, index, index, ents...)
}

// renumber makes m continue at index: its Index and its entries' indexes.
func renumber(m *raftpb.Message, index uint64) {
	*m.Index = index
	for i, e := range m.Entries {
		*e.Index = index + 1 + uint64(i)
	}
}

// replayReader serves prefix once, then frames over and over.
type replayReader struct {
	prefix []byte
	frames []byte
	off    int
}

func (r *replayReader) Read(p []byte) (int, error) {
	n := copy(p, r.prefix)
	r.prefix = r.prefix[n:]
	for n < len(p) {
		k := copy(p[n:], r.frames[r.off:])
		n += k
		r.off = (r.off + k) % len(r.frames)
	}
	return n, nil
}

// recordCheckWriter discards what it is given, counting writes that do not
// start with the record type the benchmark means to measure.
type recordCheckWriter struct {
	want  byte
	wrong int
}

func (w *recordCheckWriter) Write(p []byte) (int, error) {
	if len(p) > 0 && p[0] != w.want {
		w.wrong++
	}
	return len(p), nil
}

// appEntriesRing returns one full MsgApp frame and then ring consecutive
// AppEntries frames, all of the given shape, as one encoder writes them.
func appEntriesRing(tb testing.TB, n, size, ring int) (full, entries []byte) {
	tb.Helper()
	m := benchMsgApp(n, size, benchIndex)
	msgs := []*raftpb.Message{m}
	for i := 1; i <= ring; i++ {
		next := proto.CloneOf(m)
		renumber(next, benchIndex+uint64(i*n))
		msgs = append(msgs, next)
	}
	frames := encodeFrames(tb, newMsgAppV2Encoder(io.Discard), msgs)
	for i, f := range frames[1:] {
		if f[0] != msgAppV2AppEntries {
			tb.Fatalf("frame %d: got %s, want %s", i+1, recordName(f[0]), recordName(msgAppV2AppEntries))
		}
	}
	return frames[0], bytes.Join(frames[1:], nil)
}

func BenchmarkMessageEncode(b *testing.B) {
	for _, s := range codecShapes {
		b.Run(s.name, func(b *testing.B) {
			m := benchMsgApp(s.entries, s.size, benchIndex)
			enc := newMessageEncoder(io.Discard)
			encode := func() {
				if err := enc.encode(m); err != nil {
					b.Fatal(err)
				}
				if err := enc.flush(); err != nil {
					b.Fatal(err)
				}
			}
			encode() // grow the buffer before measuring
			b.ReportAllocs()
			b.SetBytes(int64(len(messageFrameForTest(m))))
			for b.Loop() {
				encode()
			}
		})
	}
}

func BenchmarkMessageDecode(b *testing.B) {
	for _, s := range codecShapes {
		b.Run(s.name, func(b *testing.B) {
			frame := messageFrameForTest(benchMsgApp(s.entries, s.size, benchIndex))
			dec := newMessageDecoder(&replayReader{frames: frame}, DefaultMaxMessageBytes)
			b.ReportAllocs()
			b.SetBytes(int64(len(frame)))
			for b.Loop() {
				m, _, err := dec.decode()
				if err != nil {
					b.Fatal(err)
				}
				if len(m.Entries) != s.entries {
					b.Fatalf("got %d entries, want %d", len(m.Entries), s.entries)
				}
			}
		})
	}
}

func BenchmarkMsgAppV2Encode(b *testing.B) {
	for _, s := range codecShapes {
		// Each message continues the last: the AppEntries path.
		b.Run(s.name, func(b *testing.B) {
			m := benchMsgApp(s.entries, s.size, benchIndex)
			w := &recordCheckWriter{want: msgAppV2AppEntries}
			enc := newMsgAppV2Encoder(w)
			enc.state = msgAppV2State{term: benchTerm, index: benchIndex}
			index := uint64(benchIndex)
			encode := func() {
				renumber(m, index)
				index += uint64(s.entries)
				if err := enc.encode(m); err != nil {
					b.Fatal(err)
				}
				if err := enc.flush(); err != nil {
					b.Fatal(err)
				}
			}
			encode() // grow the buffer before measuring
			b.ReportAllocs()
			b.SetBytes(int64(1 + 8 + 8*s.entries + s.entries*proto.Size(m.Entries[0]) + 8))
			for b.Loop() {
				encode()
			}
			if w.wrong > 0 {
				b.Fatalf("%d writes were not AppEntries", w.wrong)
			}
		})
	}
	for _, s := range codecShapes {
		// The same message over and over never continues: the full path.
		b.Run("full/"+s.name, func(b *testing.B) {
			m := benchMsgApp(s.entries, s.size, benchIndex)
			w := &recordCheckWriter{want: msgAppV2MsgApp}
			enc := newMsgAppV2Encoder(w)
			encode := func() {
				if err := enc.encode(m); err != nil {
					b.Fatal(err)
				}
				if err := enc.flush(); err != nil {
					b.Fatal(err)
				}
			}
			encode() // grow the buffer before measuring
			b.ReportAllocs()
			b.SetBytes(int64(1 + len(messageFrameForTest(m))))
			for b.Loop() {
				encode()
			}
			if w.wrong > 0 {
				b.Fatalf("%d writes were not full MsgApps", w.wrong)
			}
		})
	}
}

func BenchmarkMsgAppV2Decode(b *testing.B) {
	const ring = 16
	for _, s := range codecShapes {
		b.Run(s.name, func(b *testing.B) {
			full, entries := appEntriesRing(b, s.entries, s.size, ring)
			dec := newMsgAppV2Decoder(&replayReader{prefix: full, frames: entries}, v2Local, v2Remote, DefaultMaxMessageBytes)
			if _, _, err := dec.decode(); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(entries) / ring))
			for b.Loop() {
				m, _, err := dec.decode()
				if err != nil {
					b.Fatal(err)
				}
				if len(m.Entries) != s.entries {
					b.Fatalf("got %d entries, want %d", len(m.Entries), s.entries)
				}
			}
		})
	}
	for _, s := range codecShapes {
		b.Run("full/"+s.name, func(b *testing.B) {
			frame := fullMsgAppRecord(messageFrameForTest(benchMsgApp(s.entries, s.size, benchIndex))[frameHeaderLen:])
			dec := newMsgAppV2Decoder(&replayReader{frames: frame}, v2Local, v2Remote, DefaultMaxMessageBytes)
			b.ReportAllocs()
			b.SetBytes(int64(len(frame)))
			for b.Loop() {
				m, _, err := dec.decode()
				if err != nil {
					b.Fatal(err)
				}
				if len(m.Entries) != s.entries {
					b.Fatalf("got %d entries, want %d", len(m.Entries), s.entries)
				}
			}
		})
	}
}

// TestEncodeAllocs checks that both encoders encode and flush without
// allocating once their buffer has grown.
func TestEncodeAllocs(t *testing.T) {
	for _, s := range codecShapes {
		t.Run(fmt.Sprintf("message/%s", s.name), func(t *testing.T) {
			m := benchMsgApp(s.entries, s.size, benchIndex)
			enc := newMessageEncoder(io.Discard)
			allocs := testing.AllocsPerRun(100, func() {
				if err := enc.encode(m); err != nil {
					t.Fatal(err)
				}
				if err := enc.flush(); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Errorf("got %v allocs per message, want 0", allocs)
			}
		})
		t.Run(fmt.Sprintf("msgappv2/%s", s.name), func(t *testing.T) {
			m := benchMsgApp(s.entries, s.size, benchIndex)
			w := &recordCheckWriter{want: msgAppV2AppEntries}
			enc := newMsgAppV2Encoder(w)
			enc.state = msgAppV2State{term: benchTerm, index: benchIndex}
			index := uint64(benchIndex)
			allocs := testing.AllocsPerRun(100, func() {
				renumber(m, index)
				index += uint64(s.entries)
				if err := enc.encode(m); err != nil {
					t.Fatal(err)
				}
				if err := enc.flush(); err != nil {
					t.Fatal(err)
				}
			})
			if w.wrong > 0 {
				t.Fatalf("%d writes were not AppEntries", w.wrong)
			}
			if allocs != 0 {
				t.Errorf("got %v allocs per message, want 0", allocs)
			}
		})
	}
}

// codecRaceEnabled reports whether the test binary was built with -race.
func codecRaceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// TestDecodeAllocs pins what decoding a MsgApp costs in allocations. Every
// entry lives in an allocation of its own, its bytes inline (see
// raftproto.EntrySlot), so that an entry raft keeps keeps nothing else
// alive: one allocation per entry. Besides: on the message stream the frame
// buffer, the message (with its entry pointer when it has one entry) and,
// for several entries, the entry pointers; on the msgappv2 stream the
// message (with its entry pointer when it has one entry) and, for several
// entries, their pointers.
//
// Under the race detector the bounds get one more, as they always had.
func TestDecodeAllocs(t *testing.T) {
	const ring = 4
	for _, s := range codecShapes {
		maxMessage, maxAppEntries := float64(3+s.entries), float64(2+s.entries)
		if s.entries == 1 {
			maxMessage, maxAppEntries = 3, 2
		}
		if codecRaceEnabled() {
			maxMessage++
			maxAppEntries++
		}
		t.Run(fmt.Sprintf("message/%s", s.name), func(t *testing.T) {
			frame := messageFrameForTest(benchMsgApp(s.entries, s.size, benchIndex))
			dec := newMessageDecoder(&replayReader{frames: frame}, DefaultMaxMessageBytes)
			allocs := testing.AllocsPerRun(100, func() {
				if _, _, err := dec.decode(); err != nil {
					t.Fatal(err)
				}
			})
			if allocs > maxMessage {
				t.Errorf("got %v allocs per MsgApp, want at most %v", allocs, maxMessage)
			}
		})
		t.Run(fmt.Sprintf("msgappv2/%s", s.name), func(t *testing.T) {
			full, entries := appEntriesRing(t, s.entries, s.size, ring)
			dec := newMsgAppV2Decoder(&replayReader{prefix: full, frames: entries}, v2Local, v2Remote, DefaultMaxMessageBytes)
			if _, _, err := dec.decode(); err != nil {
				t.Fatal(err)
			}
			allocs := testing.AllocsPerRun(100, func() {
				m, _, err := dec.decode()
				if err != nil {
					t.Fatal(err)
				}
				if len(m.Entries) != s.entries {
					t.Fatalf("got %d entries, want %d", len(m.Entries), s.entries)
				}
			})
			if allocs > maxAppEntries {
				t.Errorf("got %v allocs per AppEntries, want at most %v", allocs, maxAppEntries)
			}
		})
	}
}

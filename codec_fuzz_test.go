package rafthttp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

// fuzzLimit is the record limit the fuzzed decoders run with: small enough
// that the fuzzer reaches it, large enough for every seed.
const fuzzLimit = 1 << 20

// reencodeLimit is the limit of the decoders that read re-encoded messages.
// A canonical re-encoding can be longer than the bytes it came from (an enum
// written in 5 bytes is re-encoded sign-extended in 10), so it gets room.
const reencodeLimit = 64 << 20

// expectMessageFrame says what a message decoder must make of the stream
// rest, following spec §3.2 independently of the decoder: the frame length,
// or the error (io.EOF, io.ErrUnexpectedEOF, ErrExceedSizeLimit or
// ErrMalformedFrame).
func expectMessageFrame(rest []byte, limit uint64) (int, error) {
	switch {
	case len(rest) == 0:
		return 0, io.EOF
	case len(rest) < frameHeaderLen:
		return 0, io.ErrUnexpectedEOF
	}
	l := binary.BigEndian.Uint64(rest)
	if l > limit {
		return 0, ErrExceedSizeLimit
	}
	if uint64(len(rest)-frameHeaderLen) < l {
		return 0, io.ErrUnexpectedEOF
	}
	body := rest[frameHeaderLen : frameHeaderLen+int(l)]
	if err := proto.Unmarshal(body, new(raftpb.Message)); err != nil || degenerateForTest(body) {
		return 0, ErrMalformedFrame
	}
	return frameHeaderLen + int(l), nil
}

// degenerateForTest tells, independently of the decoder, whether a valid
// protobuf message has a shape raft never sends and our decoders refuse: an
// empty entry, a Responses field, or a repeated snapshot, snapshot metadata
// or conf state.
func degenerateForTest(msg []byte) bool {
	// fields returns the length-delimited values of field num in b.
	fields := func(b []byte, num protowire.Number) (vals [][]byte) {
		for len(b) > 0 {
			n, typ, k := protowire.ConsumeTag(b)
			b = b[k:]
			k = protowire.ConsumeFieldValue(n, typ, b)
			if n == num && typ == protowire.BytesType {
				v, _ := protowire.ConsumeBytes(b)
				vals = append(vals, v)
			}
			b = b[k:]
		}
		return vals
	}
	for _, e := range fields(msg, 7) {
		if emptyEntryForTest(e) {
			return true
		}
	}
	snaps := fields(msg, 9)
	if len(fields(msg, 14)) > 0 || len(snaps) > 1 {
		return true
	}
	for _, s := range snaps {
		mds := fields(s, 2)
		if len(mds) > 1 || (len(mds) == 1 && len(fields(mds[0], 1)) > 1) {
			return true
		}
	}
	return false
}

// emptyEntryForTest tells whether an entry's bytes hold no field raft knows.
func emptyEntryForTest(b []byte) bool {
	var e raftpb.Entry
	return proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, &e) == nil && proto.Size(&e) == 0
}

// checkDecodeAllocs decodes data to its end with a fresh decoder from dec
// and fails t if that allocates, measured on the heap, more than the bound
// a decoder keeps: MaxCostPerByte per input byte, plus the exact buffer of
// one announced frame (up to limit), plus its fixed buffers.
func checkDecodeAllocs(t *testing.T, data []byte, limit uint64, dec func(io.Reader) decoder) {
	t.Helper()
	d := dec(bytes.NewReader(data))
	bound := uint64(raftproto.MaxCostPerByte*len(data)) + limit + 64<<10
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for {
		if _, _, err := d.decode(); err != nil {
			break
		}
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > bound {
		t.Fatalf("decoding %d bytes allocated %d, bound %d", len(data), got, bound)
	}
}

// expectMsgAppV2Frame does for a msgappv2 stream what expectMessageFrame
// does for the message stream (spec §3.3). For an AppEntries record it also
// returns the entry count.
func expectMsgAppV2Frame(rest []byte, limit uint64) (n int, count uint64, err error) {
	limit = max(limit, 2*frameHeaderLen)
	if len(rest) == 0 {
		return 0, 0, io.EOF
	}
	switch rest[0] {
	case msgAppV2LinkHeartbeat:
		return 1, 0, nil
	case msgAppV2MsgApp:
		n, err := expectMessageFrame(rest[1:], limit)
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 1 + n, 0, err
	case msgAppV2AppEntries:
	default:
		return 0, 0, ErrMalformedFrame
	}
	b := rest[1:]
	next := func() (uint64, bool) {
		if len(b) < 8 {
			return 0, false
		}
		v := binary.BigEndian.Uint64(b)
		b = b[8:]
		return v, true
	}
	count, ok := next()
	if !ok {
		return 0, 0, io.ErrUnexpectedEOF
	}
	// The record's bytes: count, commit, and a size and the bytes per entry.
	total := uint64(16)
	if count > (limit-total)/8 {
		return 0, 0, ErrExceedSizeLimit
	}
	total += 8 * count
	var ents [][]byte
	for range count {
		size, ok := next()
		if !ok {
			return 0, 0, io.ErrUnexpectedEOF
		}
		if size > limit-total {
			return 0, 0, ErrExceedSizeLimit
		}
		total += size
		if uint64(len(b)) < size {
			return 0, 0, io.ErrUnexpectedEOF
		}
		ents = append(ents, b[:size])
		b = b[size:]
	}
	if _, ok := next(); !ok {
		return 0, 0, io.ErrUnexpectedEOF
	}
	for _, e := range ents {
		if err := proto.Unmarshal(e, new(raftpb.Entry)); err != nil || emptyEntryForTest(e) {
			return 0, 0, ErrMalformedFrame
		}
	}
	return 1 + int(total), count, nil
}

// stateAfterFull is the (term, index) a full MsgApp leaves on both ends
// (spec §3.3): its term, and the index of its last entry, or its Index when
// it has none.
func stateAfterFull(m *raftpb.Message) msgAppV2State {
	st := msgAppV2State{term: m.GetTerm(), index: m.GetIndex()}
	if ents := m.GetEntries(); len(ents) > 0 {
		st.index = ents[len(ents)-1].GetIndex()
	}
	return st
}

// checkDecodeError fails unless err is the error want classifies.
func checkDecodeError(t *testing.T, err, want error) {
	t.Helper()
	if want == nil {
		t.Fatalf("got error %v, want a message", err)
	}
	if !errors.Is(err, want) {
		t.Fatalf("got error %v, want %v", err, want)
	}
}

// messageFuzzSeeds are message-stream inputs: the goldens, and one each of
// the ways a stream goes wrong.
func messageFuzzSeeds(tb testing.TB) [][]byte {
	app := goldenWire(tb, "message_msgapp_v3.7.golden")
	garbage := append(frameHeaderForTest(3), 0xff, 0xff, 0xff)
	return [][]byte{
		goldenWire(tb, "message_heartbeat_v3.5.golden"),
		goldenWire(tb, "message_heartbeat_v3.6.golden"),
		goldenWire(tb, "message_heartbeat_v3.7.golden"),
		goldenWire(tb, "message_msgapp_v3.5.golden"),
		goldenWire(tb, "message_msgapp_v3.6.golden"),
		app,
		goldenWire(tb, "snapshot_envelope_v3.7.golden"),
		bytes.Join([][]byte{app, goldenWire(tb, "message_heartbeat_v3.7.golden"), app}, nil),
		app[:len(app)-3],
		frameHeaderForTest(fuzzLimit + 1),
		garbage,
	}
}

// FuzzMessageDecoder feeds arbitrary bytes to a message decoder. Decoding
// never panics and stays within its allocation bound; each frame is what spec §3.2 makes of it (a message, or the
// error class); and every decoded message re-encodes and decodes back equal.
func FuzzMessageDecoder(f *testing.F) {
	for _, s := range messageFuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkDecodeAllocs(t, data, fuzzLimit, func(r io.Reader) decoder { return newMessageDecoder(r, fuzzLimit) })
		dec := newMessageDecoder(bytes.NewReader(data), fuzzLimit)
		for off := 0; ; {
			m, n, err := dec.decode()
			wantN, wantErr := expectMessageFrame(data[off:], fuzzLimit)
			if err != nil {
				checkDecodeError(t, err, wantErr)
				return
			}
			if wantErr != nil {
				t.Fatalf("at offset %d: got %v, want error %v", off, m, wantErr)
			}
			if n != wantN {
				t.Fatalf("at offset %d: n got %d, want %d", off, n, wantN)
			}
			body := data[off+frameHeaderLen : off+n]
			off += n

			viaProto := new(raftpb.Message)
			if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, viaProto); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(m, viaProto) {
				t.Fatalf("decoded %v, proto.Unmarshal gives %v", m, viaProto)
			}

			var buf bytes.Buffer
			enc := newMessageEncoder(&buf)
			if err := enc.encode(m); err != nil {
				t.Fatalf("re-encode: %v", err)
			}
			if err := enc.flush(); err != nil {
				t.Fatalf("re-encode flush: %v", err)
			}
			again, _, err := newMessageDecoder(&buf, reencodeLimit).decode()
			if err != nil {
				t.Fatalf("decode of the re-encoded %v: %v", m, err)
			}
			if !proto.Equal(again, m) {
				t.Fatalf("round trip: got %v, want %v", again, m)
			}
		}
	})
}

// msgAppV2FuzzSeeds are msgappv2 inputs: the worked example, the TestMsgAppV2
// kind of sequence, and one each of the ways a stream goes wrong.
func msgAppV2FuzzSeeds(tb testing.TB) [][]byte {
	u64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	example := goldenWire(tb, "msgappv2_worked_example_v3.7.golden")
	seq := encodeFrames(tb, newMsgAppV2Encoder(io.Discard), []*raftpb.Message{
		linkHeartbeat,
		wireMsgApp(1, 2, 1, 1, 5, 5, wireEntry(1, 6, []byte("a"))),
		wireMsgApp(1, 2, 1, 1, 6, 6, wireEntry(1, 7, []byte("b")), wireEntry(1, 8, []byte("c"))),
		linkHeartbeat,
		wireMsgApp(1, 2, 2, 1, 8, 8, wireEntry(2, 9, []byte("d"))),
		wireMsgApp(1, 2, 2, 2, 9, 9),
	})
	return [][]byte{
		example,
		bytes.Join(seq, nil),
		example[:40],
		append([]byte{msgAppV2AppEntries}, u64(fuzzLimit)...),
		bytes.Join([][]byte{{msgAppV2AppEntries}, u64(1), u64(fuzzLimit)}, nil),
		append([]byte{msgAppV2MsgApp}, u64(fuzzLimit+1)...),
		{0x03},
	}
}

// FuzzMsgAppV2Decoder feeds arbitrary bytes to a msgappv2 decoder. Decoding
// never panics and stays within its allocation bound; each record is what spec §3.3 makes of it, with the state
// kept as the spec says; and the decoded sequence, sent through a new
// encoder/decoder pair, comes back as the spec's encoder rule predicts.
func FuzzMsgAppV2Decoder(f *testing.F) {
	for _, s := range msgAppV2FuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkDecodeAllocs(t, data, fuzzLimit, func(r io.Reader) decoder {
			return newMsgAppV2Decoder(r, v2Local, v2Remote, fuzzLimit)
		})
		dec := newMsgAppV2Decoder(bytes.NewReader(data), v2Local, v2Remote, fuzzLimit)
		var model msgAppV2State
		var decoded []*raftpb.Message
		for off := 0; ; {
			m, n, err := dec.decode()
			wantN, count, wantErr := expectMsgAppV2Frame(data[off:], fuzzLimit)
			if err != nil {
				checkDecodeError(t, err, wantErr)
				if off < len(data) && data[off] > msgAppV2MsgApp && !strings.Contains(err.Error(), "failed to parse type") {
					t.Fatalf("unknown record type %d: got %q, want it to mention %q", data[off], err, "failed to parse type")
				}
				break
			}
			if wantErr != nil {
				t.Fatalf("at offset %d: got %v, want error %v", off, m, wantErr)
			}
			if n != wantN {
				t.Fatalf("at offset %d: n got %d, want %d", off, n, wantN)
			}
			switch data[off] {
			case msgAppV2LinkHeartbeat:
				if !isLinkHeartbeat(m) {
					t.Fatalf("heartbeat record decoded to %v", m)
				}
			case msgAppV2AppEntries:
				if uint64(len(m.Entries)) != count {
					t.Fatalf("AppEntries of %d entries decoded to %d", count, len(m.Entries))
				}
				want := wireMsgApp(v2Remote, v2Local, model.term, model.term, model.index, m.GetCommit(), m.Entries...)
				if !proto.Equal(m, want) {
					t.Fatalf("AppEntries rebuilt as %v, want %v", m, want)
				}
				model.index += count
			case msgAppV2MsgApp:
				model = stateAfterFull(m)
			}
			if dec.state != model {
				t.Fatalf("at offset %d: decoder state %+v, want %+v", off, dec.state, model)
			}
			off += n
			decoded = append(decoded, m)
		}
		checkMsgAppV2Resend(t, decoded)
	})
}

// checkMsgAppV2Resend sends msgs through a new encoder/decoder pair and
// checks each record against the spec's encoder rule: link heartbeats as
// 0x00, messages continuing the connection's (term, index) as AppEntries,
// rebuilt from the state, and the rest as full messages, unchanged.
func checkMsgAppV2Resend(t *testing.T, msgs []*raftpb.Message) {
	t.Helper()
	if len(msgs) == 0 {
		return
	}
	frames := encodeFrames(t, newMsgAppV2Encoder(io.Discard), msgs)
	dec := newMsgAppV2Decoder(bytes.NewReader(bytes.Join(frames, nil)), v2Local, v2Remote, reencodeLimit)
	var st msgAppV2State
	for i, m := range msgs {
		got, n, err := dec.decode()
		if err != nil {
			t.Fatalf("re-decode %d (%v): %v", i, m, err)
		}
		if n != len(frames[i]) {
			t.Fatalf("re-decode %d: n got %d, want %d", i, n, len(frames[i]))
		}
		var record byte
		var want *raftpb.Message
		switch {
		case isLinkHeartbeat(m):
			record = msgAppV2LinkHeartbeat
		case m.GetIndex() == st.index && m.GetLogTerm() == st.term && m.GetLogTerm() == m.GetTerm():
			record = msgAppV2AppEntries
			want = wireMsgApp(v2Remote, v2Local, st.term, st.term, st.index, m.GetCommit(), m.Entries...)
			st.index += uint64(len(m.Entries))
		default:
			record = msgAppV2MsgApp
			want = m
			st = stateAfterFull(m)
		}
		if frames[i][0] != record {
			t.Fatalf("re-encode %d (%v): record got %s, want %s", i, m, recordName(frames[i][0]), recordName(record))
		}
		if want == nil {
			if !isLinkHeartbeat(got) {
				t.Fatalf("re-decode %d: got %v, want a link heartbeat", i, got)
			}
			continue
		}
		if !proto.Equal(got, want) {
			t.Fatalf("re-decode %d: got %v, want %v", i, got, want)
		}
	}
	if _, _, err := dec.decode(); err != io.EOF {
		t.Fatalf("re-decode past the end: got %v, want io.EOF", err)
	}
}

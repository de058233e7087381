package rafthttp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

// The msgappv2 tests run one connection dialled by member 2 (local) to
// member 1 (remote): the leader 1 sends MsgApps to 2.
const (
	v2Local  = 2
	v2Remote = 1
)

// appEntriesRecord builds an AppEntries record by hand: the count, each raw
// entry with its size, then commit.
func appEntriesRecord(commit uint64, ents ...[]byte) []byte {
	b := []byte{msgAppV2AppEntries}
	b = binary.BigEndian.AppendUint64(b, uint64(len(ents)))
	for _, e := range ents {
		b = binary.BigEndian.AppendUint64(b, uint64(len(e)))
		b = append(b, e...)
	}
	return binary.BigEndian.AppendUint64(b, commit)
}

// fullMsgAppRecord builds a full-MsgApp record around the protobuf body.
func fullMsgAppRecord(body []byte) []byte {
	b := binary.BigEndian.AppendUint64([]byte{msgAppV2MsgApp}, uint64(len(body)))
	return append(b, body...)
}

// encodeFrames encodes msgs through one encoder, flushing after each, and
// returns each message's frame.
func encodeFrames(tb testing.TB, enc *msgAppV2Encoder, msgs []*raftpb.Message) [][]byte {
	tb.Helper()
	var w recordingWriter
	enc.w = &w
	frames := make([][]byte, 0, len(msgs))
	for i, m := range msgs {
		if err := enc.encode(m); err != nil {
			tb.Fatalf("encode %d: %v", i, err)
		}
		if err := enc.flush(); err != nil {
			tb.Fatalf("flush %d: %v", i, err)
		}
		frames = append(frames, bytes.Join(w.writes, nil))
		w.writes = nil
	}
	return frames
}

// recordName names a record type byte in failure messages.
func recordName(typ byte) string {
	switch typ {
	case msgAppV2LinkHeartbeat:
		return "link heartbeat (0x00)"
	case msgAppV2AppEntries:
		return "AppEntries (0x01)"
	case msgAppV2MsgApp:
		return "full MsgApp (0x02)"
	}
	return "unknown"
}

// workedExample returns the three messages of the spec §3.3 worked example.
func workedExample() []*raftpb.Message {
	return []*raftpb.Message{
		wireMsgApp(1, 2, 2, 2, 10, 9, wireEntry(2, 11, []byte("a"))),
		wireMsgApp(1, 2, 2, 2, 11, 11, wireEntry(2, 12, []byte("b"))),
		linkHeartbeat,
	}
}

func TestGoldenMsgAppV2Encode(t *testing.T) {
	want := goldenWire(t, "msgappv2_worked_example_v3.7.golden")
	var w recordingWriter
	enc := newMsgAppV2Encoder(&w)
	wantStates := []msgAppV2State{{term: 2, index: 11}, {term: 2, index: 12}, {term: 2, index: 12}}
	wantBuffered := []int{32, 64, 65}
	for i, m := range workedExample() {
		if err := enc.encode(m); err != nil {
			t.Fatalf("encode %d: %v", i, err)
		}
		if enc.state != wantStates[i] {
			t.Errorf("after message %d: state got %+v, want %+v", i, enc.state, wantStates[i])
		}
		if got := enc.buffered(); got != wantBuffered[i] {
			t.Errorf("after message %d: buffered got %d, want %d", i, got, wantBuffered[i])
		}
	}
	if len(w.writes) != 0 {
		t.Fatalf("before flush: got %d writes, want 0", len(w.writes))
	}
	if err := enc.flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if got := w.written(); !bytes.Equal(got, want) {
		t.Errorf("got  % x\nwant % x", got, want)
	}
}

func TestGoldenMsgAppV2Decode(t *testing.T) {
	stream := goldenWire(t, "msgappv2_worked_example_v3.7.golden")
	for _, rc := range append([]struct {
		name string
		wrap func(io.Reader) io.Reader
	}{{name: "whole", wrap: func(r io.Reader) io.Reader { return r }}}, chunkedReaders...) {
		t.Run(rc.name, func(t *testing.T) {
			dec := newMsgAppV2Decoder(rc.wrap(bytes.NewReader(stream)), v2Local, v2Remote, DefaultMaxMessageBytes)
			want := []struct {
				msg   *raftpb.Message
				n     int
				state msgAppV2State
			}{
				{msg: workedExample()[0], n: 32, state: msgAppV2State{term: 2, index: 11}},
				// Rebuilt from the connection: From the remote, To us,
				// Term = LogTerm = 2, Index 11.
				{msg: wireMsgApp(v2Remote, v2Local, 2, 2, 11, 11, wireEntry(2, 12, []byte("b"))), n: 32, state: msgAppV2State{term: 2, index: 12}},
				{msg: linkHeartbeat, n: 1, state: msgAppV2State{term: 2, index: 12}},
			}
			for i, w := range want {
				m, n, err := dec.decode()
				if err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
				if !proto.Equal(m, w.msg) {
					t.Errorf("frame %d: got %v, want %v", i, m, w.msg)
				}
				if n != w.n {
					t.Errorf("frame %d: n got %d, want %d", i, n, w.n)
				}
				if dec.state != w.state {
					t.Errorf("frame %d: state got %+v, want %+v", i, dec.state, w.state)
				}
			}
			if _, _, err := dec.decode(); err != io.EOF {
				t.Errorf("after the last frame: got %v, want io.EOF", err)
			}
		})
	}
}

// TestMsgAppV2 sends the spec §11 sequence through one encoder/decoder pair:
// link heartbeats, a full MsgApp, consecutive MsgApps, a MsgApp after a
// heartbeat, a higher term, a new logTerm and empty MsgApps.
func TestMsgAppV2(t *testing.T) {
	steps := []struct {
		name   string
		msg    *raftpb.Message
		record byte
		state  msgAppV2State // after the message, at both ends
	}{
		{name: "heartbeat first", msg: linkHeartbeat, record: msgAppV2LinkHeartbeat},
		{name: "full MsgApp", msg: wireMsgApp(1, 2, 1, 1, 5, 5, wireEntry(1, 6, []byte("a"))),
			record: msgAppV2MsgApp, state: msgAppV2State{1, 6}},
		{name: "consecutive", msg: wireMsgApp(1, 2, 1, 1, 6, 6, wireEntry(1, 7, []byte("b")), wireEntry(1, 8, []byte("c"))),
			record: msgAppV2AppEntries, state: msgAppV2State{1, 8}},
		{name: "consecutive again", msg: wireMsgApp(1, 2, 1, 1, 8, 7, wireEntry(1, 9, []byte("d"))),
			record: msgAppV2AppEntries, state: msgAppV2State{1, 9}},
		{name: "heartbeat between", msg: linkHeartbeat, record: msgAppV2LinkHeartbeat, state: msgAppV2State{1, 9}},
		{name: "after heartbeat", msg: wireMsgApp(1, 2, 1, 1, 9, 9, wireEntry(1, 10, []byte("e"))),
			record: msgAppV2AppEntries, state: msgAppV2State{1, 10}},
		{name: "higher term", msg: wireMsgApp(1, 2, 2, 1, 10, 10, wireEntry(2, 11, []byte("f"))),
			record: msgAppV2MsgApp, state: msgAppV2State{2, 11}},
		{name: "consecutive in the new term", msg: wireMsgApp(1, 2, 2, 2, 11, 10, wireEntry(2, 12, []byte("g"))),
			record: msgAppV2AppEntries, state: msgAppV2State{2, 12}},
		{name: "new logTerm", msg: wireMsgApp(1, 2, 3, 3, 12, 12, wireEntry(3, 13, []byte("h"))),
			record: msgAppV2MsgApp, state: msgAppV2State{3, 13}},
		{name: "rewound index", msg: wireMsgApp(1, 2, 3, 3, 11, 12, wireEntry(3, 12, []byte("i"))),
			record: msgAppV2MsgApp, state: msgAppV2State{3, 12}},
		{name: "empty compressed", msg: wireMsgApp(1, 2, 3, 3, 12, 12),
			record: msgAppV2AppEntries, state: msgAppV2State{3, 12}},
		{name: "empty full", msg: wireMsgApp(1, 2, 4, 3, 12, 12),
			record: msgAppV2MsgApp, state: msgAppV2State{4, 12}},
		{name: "after empty full", msg: wireMsgApp(1, 2, 4, 4, 12, 12, wireEntry(4, 13, []byte("j"))),
			record: msgAppV2AppEntries, state: msgAppV2State{4, 13}},
		{name: "large entry", msg: wireMsgApp(1, 2, 4, 4, 13, 13, wireEntry(4, 14, bytes.Repeat([]byte("k"), 3*decoderBufSize))),
			record: msgAppV2AppEntries, state: msgAppV2State{4, 14}},
		{name: "heartbeat last", msg: linkHeartbeat, record: msgAppV2LinkHeartbeat, state: msgAppV2State{4, 14}},
	}

	enc := newMsgAppV2Encoder(io.Discard)
	msgs := make([]*raftpb.Message, len(steps))
	for i, s := range steps {
		msgs[i] = s.msg
	}
	frames := encodeFrames(t, enc, msgs)
	for _, rc := range append([]struct {
		name string
		wrap func(io.Reader) io.Reader
	}{{name: "whole", wrap: func(r io.Reader) io.Reader { return r }}}, chunkedReaders[0]) {
		t.Run(rc.name, func(t *testing.T) {
			dec := newMsgAppV2Decoder(rc.wrap(bytes.NewReader(bytes.Join(frames, nil))), v2Local, v2Remote, DefaultMaxMessageBytes)
			for i, s := range steps {
				if got := frames[i][0]; got != s.record {
					t.Errorf("%s: record got %s, want %s", s.name, recordName(got), recordName(s.record))
				}
				m, n, err := dec.decode()
				if err != nil {
					t.Fatalf("%s: decode: %v", s.name, err)
				}
				if n != len(frames[i]) {
					t.Errorf("%s: n got %d, want %d", s.name, n, len(frames[i]))
				}
				if !proto.Equal(m, s.msg) {
					t.Errorf("%s: got %v, want %v", s.name, m, s.msg)
				}
				if dec.state != s.state {
					t.Errorf("%s: decoder state got %+v, want %+v", s.name, dec.state, s.state)
				}
			}
			if _, _, err := dec.decode(); err != io.EOF {
				t.Errorf("after the last frame: got %v, want io.EOF", err)
			}
		})
	}
	if want := steps[len(steps)-1].state; enc.state != want {
		t.Errorf("encoder state at the end: got %+v, want %+v", enc.state, want)
	}
}

// TestMsgAppV2CompressedElidesFields checks what an AppEntries record drops:
// everything but the entries and commit, which the receiver rebuilds from
// the connection (spec §3.3).
func TestMsgAppV2CompressedElidesFields(t *testing.T) {
	enc := newMsgAppV2Encoder(io.Discard)
	enc.state = msgAppV2State{term: 5, index: 20}
	m := wireMsgApp(7, 9, 5, 5, 20, 19, wireEntry(5, 21, []byte("x")))
	m.Context = []byte("ctx")
	m.Reject = proto.Bool(true)
	m.RejectHint = proto.Uint64(3)
	m.Vote = proto.Uint64(4)
	frames := encodeFrames(t, enc, []*raftpb.Message{m})
	if got := frames[0][0]; got != msgAppV2AppEntries {
		t.Fatalf("record: got %s, want %s", recordName(got), recordName(msgAppV2AppEntries))
	}
	dec := newMsgAppV2Decoder(bytes.NewReader(frames[0]), v2Local, v2Remote, DefaultMaxMessageBytes)
	dec.state = msgAppV2State{term: 5, index: 20}
	got, _, err := dec.decode()
	if err != nil {
		t.Fatal(err)
	}
	want := wireMsgApp(v2Remote, v2Local, 5, 5, 20, 19, wireEntry(5, 21, []byte("x")))
	if !proto.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestMsgAppV2EncoderRecordType(t *testing.T) {
	tests := []struct {
		name      string
		state     msgAppV2State
		msg       *raftpb.Message
		record    byte
		wantState msgAppV2State
	}{
		{name: "link heartbeat", state: msgAppV2State{3, 7}, msg: linkHeartbeat,
			record: msgAppV2LinkHeartbeat, wantState: msgAppV2State{3, 7}},
		{name: "raft heartbeat is not a link heartbeat", state: msgAppV2State{3, 7},
			msg:    &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), To: proto.Uint64(2), From: proto.Uint64(1), Term: proto.Uint64(3)},
			record: msgAppV2MsgApp, wantState: msgAppV2State{3, 0}},
		{name: "continues", state: msgAppV2State{3, 7}, msg: wireMsgApp(1, 2, 3, 3, 7, 7, wireEntry(3, 8, nil), wireEntry(3, 9, nil)),
			record: msgAppV2AppEntries, wantState: msgAppV2State{3, 9}},
		{name: "continues with no entries", state: msgAppV2State{3, 7}, msg: wireMsgApp(1, 2, 3, 3, 7, 7),
			record: msgAppV2AppEntries, wantState: msgAppV2State{3, 7}},
		{name: "index behind", state: msgAppV2State{3, 7}, msg: wireMsgApp(1, 2, 3, 3, 6, 7, wireEntry(3, 7, nil)),
			record: msgAppV2MsgApp, wantState: msgAppV2State{3, 7}},
		{name: "index ahead", state: msgAppV2State{3, 7}, msg: wireMsgApp(1, 2, 3, 3, 8, 7, wireEntry(3, 9, nil)),
			record: msgAppV2MsgApp, wantState: msgAppV2State{3, 9}},
		{name: "logTerm differs from state", state: msgAppV2State{3, 7}, msg: wireMsgApp(1, 2, 3, 2, 7, 7, wireEntry(3, 8, nil)),
			record: msgAppV2MsgApp, wantState: msgAppV2State{3, 8}},
		{name: "term above logTerm", state: msgAppV2State{3, 7}, msg: wireMsgApp(1, 2, 4, 3, 7, 7, wireEntry(4, 8, nil)),
			record: msgAppV2MsgApp, wantState: msgAppV2State{4, 8}},
		{name: "full without entries takes Index", state: msgAppV2State{3, 7}, msg: wireMsgApp(1, 2, 4, 4, 5, 5),
			record: msgAppV2MsgApp, wantState: msgAppV2State{4, 5}},
		{name: "full takes the last entry's index", state: msgAppV2State{}, msg: wireMsgApp(1, 2, 1, 1, 5, 5, wireEntry(1, 6, nil), wireEntry(1, 9, nil)),
			record: msgAppV2MsgApp, wantState: msgAppV2State{1, 9}},
		// etcd's rule compares values: a term-0 MsgApp at index 0 continues
		// a fresh connection.
		{name: "zero MsgApp on a fresh connection", state: msgAppV2State{}, msg: wireMsgApp(1, 2, 0, 0, 0, 0, wireEntry(0, 1, nil)),
			record: msgAppV2AppEntries, wantState: msgAppV2State{0, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			enc := newMsgAppV2Encoder(io.Discard)
			enc.state = tc.state
			frames := encodeFrames(t, enc, []*raftpb.Message{tc.msg})
			if got := frames[0][0]; got != tc.record {
				t.Errorf("record: got %s, want %s", recordName(got), recordName(tc.record))
			}
			if enc.state != tc.wantState {
				t.Errorf("state: got %+v, want %+v", enc.state, tc.wantState)
			}
			dec := newMsgAppV2Decoder(bytes.NewReader(frames[0]), v2Local, v2Remote, DefaultMaxMessageBytes)
			dec.state = tc.state
			if _, _, err := dec.decode(); err != nil {
				t.Fatalf("decode: %v", err)
			}
			if dec.state != tc.wantState {
				t.Errorf("decoder state: got %+v, want %+v", dec.state, tc.wantState)
			}
		})
	}
}

func TestMsgAppV2DecodeErrors(t *testing.T) {
	const limit = 1 << 20
	entry := raftproto.AppendEntry(nil, wireEntry(1, 2, []byte("x")))
	full := fullMsgAppRecord(raftproto.AppendMessage(nil, goldenMsgApp()))
	u64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	tests := []struct {
		name     string
		input    []byte
		want     error
		wantText string
	}{
		{name: "empty stream", input: nil, want: io.EOF},
		{name: "unknown type 3", input: []byte{0x03}, want: ErrMalformedFrame, wantText: "failed to parse type 3"},
		{name: "unknown type 255", input: []byte{0xff, 0, 0}, want: ErrMalformedFrame, wantText: "failed to parse type 255"},
		{name: "full: type only", input: full[:1], want: io.ErrUnexpectedEOF},
		{name: "full: partial length", input: full[:5], want: io.ErrUnexpectedEOF},
		{name: "full: partial body", input: full[:len(full)-1], want: io.ErrUnexpectedEOF},
		{name: "full: over the limit", input: slices.Concat([]byte{msgAppV2MsgApp}, u64(limit+1)), want: ErrExceedSizeLimit},
		{name: "full: max length", input: slices.Concat([]byte{msgAppV2MsgApp}, u64(^uint64(0))), want: ErrExceedSizeLimit},
		{name: "full: garbage", input: fullMsgAppRecord([]byte{0xff, 0xff}), want: ErrMalformedFrame},
		{name: "entries: type only", input: []byte{msgAppV2AppEntries}, want: io.ErrUnexpectedEOF},
		{name: "entries: partial count", input: []byte{msgAppV2AppEntries, 0, 0}, want: io.ErrUnexpectedEOF},
		{name: "entries: no size", input: slices.Concat([]byte{msgAppV2AppEntries}, u64(1)), want: io.ErrUnexpectedEOF},
		{name: "entries: partial entry", input: slices.Concat([]byte{msgAppV2AppEntries}, u64(1), u64(7), entry[:3]), want: io.ErrUnexpectedEOF},
		{name: "entries: no commit", input: appEntriesRecord(9, entry)[:1+8+8+len(entry)], want: io.ErrUnexpectedEOF},
		{name: "entries: partial commit", input: appEntriesRecord(9)[:12], want: io.ErrUnexpectedEOF},
		{name: "entries: max count", input: slices.Concat([]byte{msgAppV2AppEntries}, u64(^uint64(0))), want: ErrExceedSizeLimit},
		{name: "entries: count over the limit", input: slices.Concat([]byte{msgAppV2AppEntries}, u64(limit/8)), want: ErrExceedSizeLimit},
		{name: "entries: max size", input: slices.Concat([]byte{msgAppV2AppEntries}, u64(1), u64(^uint64(0))), want: ErrExceedSizeLimit},
		{name: "entries: size over the limit", input: slices.Concat([]byte{msgAppV2AppEntries}, u64(1), u64(limit-8-8-8+1)), want: ErrExceedSizeLimit},
		{name: "entries: sizes add up over the limit",
			input: slices.Concat([]byte{msgAppV2AppEntries}, u64(2), u64(limit/2), make([]byte, limit/2), u64(limit/2)), want: ErrExceedSizeLimit},
		{name: "entries: garbage entry", input: appEntriesRecord(1, []byte{0x10, 0xff}), want: ErrMalformedFrame},
		{name: "entries: field number zero", input: appEntriesRecord(1, entry, []byte{0x00, 0x00}), want: ErrMalformedFrame},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dec := newMsgAppV2Decoder(bytes.NewReader(tc.input), v2Local, v2Remote, limit)
			m, _, err := dec.decode()
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, %v, want error %v", m, err, tc.want)
			}
			if tc.wantText != "" && !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("error %q: want it to mention %q", err, tc.wantText)
			}
		})
	}

	t.Run("entries: at the limit", func(t *testing.T) {
		// One entry filling the record to exactly the limit is accepted.
		data := make([]byte, limit-8-8-8-16)
		e := raftproto.AppendEntry(nil, &raftpb.Entry{Data: data})
		input := appEntriesRecord(3, e)
		dec := newMsgAppV2Decoder(bytes.NewReader(input), v2Local, v2Remote, uint64(len(input)-1))
		m, n, err := dec.decode()
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if n != len(input) {
			t.Errorf("n: got %d, want %d", n, len(input))
		}
		if got := len(m.Entries[0].GetData()); got != len(data) {
			t.Errorf("data: got %d bytes, want %d", got, len(data))
		}
		dec = newMsgAppV2Decoder(bytes.NewReader(input), v2Local, v2Remote, uint64(len(input)-2))
		if _, _, err := dec.decode(); !errors.Is(err, ErrExceedSizeLimit) {
			t.Errorf("one byte lower limit: got %v, want ErrExceedSizeLimit", err)
		}
	})

	t.Run("clean end between frames", func(t *testing.T) {
		input := slices.Concat(full, []byte{msgAppV2LinkHeartbeat}, appEntriesRecord(3, entry))
		dec := newMsgAppV2Decoder(bytes.NewReader(input), v2Local, v2Remote, limit)
		for i := range 3 {
			if _, _, err := dec.decode(); err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
		}
		if _, _, err := dec.decode(); err != io.EOF {
			t.Errorf("got %v, want io.EOF", err)
		}
	})
}

// TestMsgAppV2DecoderMinimumLimit checks that a limit below the smallest
// record still lets an empty AppEntries through.
func TestMsgAppV2DecoderMinimumLimit(t *testing.T) {
	tests := []struct {
		name  string
		input []byte
		want  error
	}{
		{name: "empty AppEntries", input: appEntriesRecord(4)},
		{name: "heartbeat", input: []byte{msgAppV2LinkHeartbeat}},
		{name: "one entry", input: appEntriesRecord(4, raftproto.AppendEntry(nil, wireEntry(1, 1, nil))), want: ErrExceedSizeLimit},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := newMsgAppV2Decoder(bytes.NewReader(tc.input), v2Local, v2Remote, 0).decode()
			if !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// TestMsgAppV2HostileSizes checks that counts and sizes read from the wire
// are bounded before anything is allocated for them, and that a count
// costs nothing ahead of its entries.
func TestMsgAppV2HostileSizes(t *testing.T) {
	u64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	tests := []struct {
		name     string
		limit    uint64
		input    []byte
		want     error
		maxAlloc uint64
	}{
		{name: "count over the limit", limit: 1 << 20,
			input: slices.Concat([]byte{msgAppV2AppEntries}, u64(1<<40)), want: ErrExceedSizeLimit, maxAlloc: 64 << 10},
		{name: "size over the limit", limit: 1 << 20,
			input: slices.Concat([]byte{msgAppV2AppEntries}, u64(1), u64(1<<40)), want: ErrExceedSizeLimit, maxAlloc: 64 << 10},
		{name: "full over the limit", limit: 1 << 20,
			input: slices.Concat([]byte{msgAppV2MsgApp}, u64(1<<40)), want: ErrExceedSizeLimit, maxAlloc: 64 << 10},
		{name: "large count within the limit, few entries", limit: DefaultMaxMessageBytes,
			input: slices.Concat([]byte{msgAppV2AppEntries}, u64(1<<20), u64(2), []byte{0x10, 0x01}, u64(2)), want: io.ErrUnexpectedEOF, maxAlloc: 64 << 10},
		{name: "500 MiB entry", limit: DefaultMaxMessageBytes,
			input: slices.Concat([]byte{msgAppV2AppEntries}, u64(1), u64(500<<20), []byte{1, 2, 3}), want: ErrExceedSizeLimit, maxAlloc: 64 << 10},
		{name: "500 MiB full", limit: DefaultMaxMessageBytes,
			input: slices.Concat([]byte{msgAppV2MsgApp}, u64(500<<20), []byte{1, 2, 3}), want: ErrExceedSizeLimit, maxAlloc: 64 << 10},
		{name: "8 MiB entry, few bytes", limit: DefaultMaxMessageBytes,
			input: slices.Concat([]byte{msgAppV2AppEntries}, u64(1), u64(8<<20), []byte{1, 2, 3}), want: io.ErrUnexpectedEOF, maxAlloc: 8<<20 + 64<<10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dec := newMsgAppV2Decoder(bytes.NewReader(tc.input), v2Local, v2Remote, tc.limit)
			var err error
			alloc := bytesAllocatedBy(func() { _, _, err = dec.decode() })
			if !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
			if alloc > tc.maxAlloc {
				t.Errorf("allocated %d bytes, want at most %d", alloc, tc.maxAlloc)
			}
		})
	}
}

func TestMsgAppV2EncoderBuffering(t *testing.T) {
	var w recordingWriter
	enc := newMsgAppV2Encoder(&w)
	for i, m := range workedExample() {
		if err := enc.encode(m); err != nil {
			t.Fatalf("encode %d: %v", i, err)
		}
	}
	if len(w.writes) != 0 {
		t.Fatalf("before flush: got %d writes, want 0", len(w.writes))
	}
	if got, want := enc.buffered(), 65; got != want {
		t.Errorf("buffered: got %d, want %d", got, want)
	}
	if err := enc.flush(); err != nil {
		t.Fatal(err)
	}
	if len(w.writes) != 1 {
		t.Errorf("flush: got %d writes, want 1", len(w.writes))
	}
	if got := enc.buffered(); got != 0 {
		t.Errorf("after flush: buffered got %d, want 0", got)
	}

	t.Run("large AppEntries writes through", func(t *testing.T) {
		var w recordingWriter
		enc := newMsgAppV2Encoder(&w)
		enc.state = msgAppV2State{term: 1, index: 1}
		big := wireMsgApp(1, 2, 1, 1, 1, 1, wireEntry(1, 2, make([]byte, encoderWriteThreshold)))
		if err := enc.encode(big); err != nil {
			t.Fatal(err)
		}
		if len(w.writes) != 1 || w.writes[0][0] != msgAppV2AppEntries {
			t.Errorf("got %d writes, want 1 AppEntries write", len(w.writes))
		}
		if got := enc.buffered(); got != 0 {
			t.Errorf("buffered: got %d, want 0", got)
		}
	})
}

// TestMsgAppV2DecodeOwnership checks that a decoded AppEntries message keeps
// its entries when the decoder reuses its scratch space for the next one.
func TestMsgAppV2DecodeOwnership(t *testing.T) {
	var buf bytes.Buffer
	enc := newMsgAppV2Encoder(&buf)
	msgs := []*raftpb.Message{
		wireMsgApp(1, 2, 1, 1, 0, 0, wireEntry(1, 1, []byte("one"))),
		wireMsgApp(1, 2, 1, 1, 1, 1, wireEntry(1, 2, []byte("two")), wireEntry(1, 3, []byte("three"))),
		wireMsgApp(1, 2, 1, 1, 3, 3, wireEntry(1, 4, []byte("four"))),
	}
	for _, m := range msgs {
		if err := enc.encode(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := enc.flush(); err != nil {
		t.Fatal(err)
	}
	dec := newMsgAppV2Decoder(&buf, v2Local, v2Remote, DefaultMaxMessageBytes)
	var got []*raftpb.Message
	for range msgs {
		m, _, err := dec.decode()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	for i := range msgs {
		if !proto.Equal(got[i], msgs[i]) {
			t.Errorf("message %d after later decodes: got %v, want %v", i, got[i], msgs[i])
		}
	}
	// Growing one entry's data must not write over its neighbour.
	got[1].Entries[0].Data = append(got[1].Entries[0].Data, '!')
	if d := string(got[1].Entries[1].Data); d != "three" {
		t.Errorf("neighbouring entry: got %q, want %q", d, "three")
	}
}

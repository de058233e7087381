package rafthttp

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

// parseWireHex decodes the hex text of a golden wire file: everything from a
// '#' to the end of its line is a comment, and whitespace is ignored.
func parseWireHex(text string) ([]byte, error) {
	var digits strings.Builder
	for line := range strings.Lines(text) {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		digits.WriteString(strings.Join(strings.Fields(line), ""))
	}
	return hex.DecodeString(digits.String())
}

// goldenWire returns the bytes of testdata/wire/name.
func goldenWire(tb testing.TB, name string) []byte {
	tb.Helper()
	text, err := os.ReadFile(filepath.Join("testdata", "wire", name))
	if err != nil {
		tb.Fatal(err)
	}
	b, err := parseWireHex(string(text))
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	return b
}

// wireEntry returns an entry with Term and Index set, and Data when data is
// not nil.
func wireEntry(term, index uint64, data []byte) *raftpb.Entry {
	return &raftpb.Entry{Term: proto.Uint64(term), Index: proto.Uint64(index), Data: data}
}

// wireMsgApp returns a MsgApp with every field raft sets on one.
func wireMsgApp(from, to, term, logTerm, index, commit uint64, ents ...*raftpb.Entry) *raftpb.Message {
	return &raftpb.Message{
		Type:    raftpb.MsgApp.Enum(),
		To:      proto.Uint64(to),
		From:    proto.Uint64(from),
		Term:    proto.Uint64(term),
		LogTerm: proto.Uint64(logTerm),
		Index:   proto.Uint64(index),
		Commit:  proto.Uint64(commit),
		Entries: ents,
	}
}

// messageFrameForTest returns the message-stream frame of m.
func messageFrameForTest(m *raftpb.Message) []byte {
	return appendMessageFrame(nil, m)
}

// frameHeaderForTest returns a message-stream length prefix announcing l bytes.
func frameHeaderForTest(l uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, l)
}

// raftView returns what raft sees of m: the same message with every field
// that holds its zero value removed, and a snapshot that holds nothing
// dropped. etcd versions differ only in which zero values they write (spec
// §3), so their encodings of one message have equal raft views.
func raftView(m *raftpb.Message) *raftpb.Message {
	if m == nil {
		return nil
	}
	nz := func(v uint64) *uint64 {
		if v == 0 {
			return nil
		}
		return proto.Uint64(v)
	}
	v := &raftpb.Message{
		To:         nz(m.GetTo()),
		From:       nz(m.GetFrom()),
		Term:       nz(m.GetTerm()),
		LogTerm:    nz(m.GetLogTerm()),
		Index:      nz(m.GetIndex()),
		Commit:     nz(m.GetCommit()),
		RejectHint: nz(m.GetRejectHint()),
		Vote:       nz(m.GetVote()),
	}
	if t := m.GetType(); t != 0 {
		v.Type = t.Enum()
	}
	if m.GetReject() {
		v.Reject = proto.Bool(true)
	}
	if len(m.GetContext()) > 0 {
		v.Context = m.GetContext()
	}
	for _, e := range m.GetEntries() {
		ve := &raftpb.Entry{Term: nz(e.GetTerm()), Index: nz(e.GetIndex())}
		if t := e.GetType(); t != 0 {
			ve.Type = t.Enum()
		}
		if len(e.GetData()) > 0 {
			ve.Data = e.GetData()
		}
		v.Entries = append(v.Entries, ve)
	}
	if s := m.GetSnapshot(); s != nil {
		md, cs := s.GetMetadata(), s.GetMetadata().GetConfState()
		empty := len(s.GetData()) == 0 && md.GetIndex() == 0 && md.GetTerm() == 0 &&
			len(cs.GetVoters()) == 0 && len(cs.GetLearners()) == 0 &&
			len(cs.GetVotersOutgoing()) == 0 && len(cs.GetLearnersNext()) == 0 && !cs.GetAutoLeave()
		if !empty {
			v.Snapshot = s
		}
	}
	for _, r := range m.GetResponses() {
		v.Responses = append(v.Responses, raftView(r))
	}
	return v
}

// recordingWriter records every Write it is given.
type recordingWriter struct {
	writes [][]byte
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, bytes.Clone(p))
	return len(p), nil
}

func (w *recordingWriter) written() []byte { return bytes.Join(w.writes, nil) }

// failingWriter fails every Write with err.
type failingWriter struct {
	err   error
	calls int
}

func (w *failingWriter) Write([]byte) (int, error) {
	w.calls++
	return 0, w.err
}

// chunkReader returns at most size bytes per Read, like an HTTP chunked body
// whose chunks fall anywhere in a frame.
type chunkReader struct {
	r    io.Reader
	size int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	return c.r.Read(p[:min(len(p), c.size)])
}

// bytesAllocatedBy returns how many heap bytes f allocated.
func bytesAllocatedBy(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// heartbeatGoldens are the message-stream link heartbeats of each etcd
// version.
var heartbeatGoldens = []string{
	"message_heartbeat_v3.5.golden",
	"message_heartbeat_v3.6.golden",
	"message_heartbeat_v3.7.golden",
}

// msgAppGoldens are one MsgApp as each etcd version frames it on the message
// stream.
var msgAppGoldens = []string{
	"message_msgapp_v3.5.golden",
	"message_msgapp_v3.6.golden",
	"message_msgapp_v3.7.golden",
}

// goldenMsgApp is the MsgApp of the message_msgapp goldens (spec §3).
func goldenMsgApp() *raftpb.Message {
	return wireMsgApp(1, 2, 1, 1, 3, 3, wireEntry(1, 4, []byte("x")))
}

func TestGoldenWireFiles(t *testing.T) {
	tests := []struct {
		name string
		file string
		want int // length in bytes
	}{
		{name: "heartbeat v3.5", file: "message_heartbeat_v3.5.golden", want: 8 + 30},
		{name: "heartbeat v3.6", file: "message_heartbeat_v3.6.golden", want: 8 + 20},
		{name: "heartbeat v3.7", file: "message_heartbeat_v3.7.golden", want: 8 + 2},
		{name: "MsgApp v3.5", file: "message_msgapp_v3.5.golden", want: 8 + 41},
		{name: "MsgApp v3.6", file: "message_msgapp_v3.6.golden", want: 8 + 31},
		{name: "MsgApp v3.7", file: "message_msgapp_v3.7.golden", want: 8 + 23},
		{name: "msgappv2 worked example", file: "msgappv2_worked_example_v3.7.golden", want: 32 + 32 + 1},
		{name: "pipeline MsgVote", file: "pipeline_msgvote_v3.7.golden", want: 8},
		{name: "snapshot envelope", file: "snapshot_envelope_v3.7.golden", want: 8 + 25 + 17},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := len(goldenWire(t, tc.file)); got != tc.want {
				t.Errorf("%s: got %d bytes, want %d", tc.file, got, tc.want)
			}
		})
	}
}

func TestGoldenParseWireHex(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    []byte
		wantErr bool
	}{
		{name: "empty", text: "", want: []byte{}},
		{name: "comments and spaces", text: "# head\n00 01\n\t02# tail\n  # indented\n0304\n", want: []byte{0, 1, 2, 3, 4}},
		{name: "odd digits", text: "0 1 2", wantErr: true},
		{name: "not hex", text: "zz", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseWireHex(tc.text)
			if gotErr := err != nil; gotErr != tc.wantErr {
				t.Fatalf("got error %v, want error %t", err, tc.wantErr)
			}
			if err == nil && !bytes.Equal(got, tc.want) {
				t.Errorf("got % x, want % x", got, tc.want)
			}
		})
	}
}

func TestGoldenMessageEncode(t *testing.T) {
	tests := []struct {
		name string
		file string
		msg  *raftpb.Message
	}{
		{name: "link heartbeat", file: "message_heartbeat_v3.7.golden", msg: linkHeartbeat},
		{name: "MsgApp", file: "message_msgapp_v3.7.golden", msg: goldenMsgApp()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := goldenWire(t, tc.file)
			var w recordingWriter
			enc := newMessageEncoder(&w)
			if err := enc.encode(tc.msg); err != nil {
				t.Fatalf("encode: %v", err)
			}
			if len(w.writes) != 0 {
				t.Errorf("before flush: got %d writes, want 0", len(w.writes))
			}
			if got := enc.buffered(); got != len(want) {
				t.Errorf("buffered: got %d, want %d", got, len(want))
			}
			if err := enc.flush(); err != nil {
				t.Fatalf("flush: %v", err)
			}
			if got := w.written(); !bytes.Equal(got, want) {
				t.Errorf("got % x\nwant % x", got, want)
			}
		})
	}
}

func TestGoldenLinkHeartbeatDecode(t *testing.T) {
	for _, file := range heartbeatGoldens {
		t.Run(file, func(t *testing.T) {
			frame := goldenWire(t, file)
			dec := newMessageDecoder(bytes.NewReader(frame), DefaultMaxMessageBytes)
			m, n, err := dec.decode()
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !isLinkHeartbeat(m) {
				t.Errorf("isLinkHeartbeat(%v): got false, want true", m)
			}
			if n != len(frame) {
				t.Errorf("n: got %d, want %d", n, len(frame))
			}
			if !proto.Equal(raftView(m), raftView(linkHeartbeat)) {
				t.Errorf("got %v, want the raft content of %v", m, linkHeartbeat)
			}
			if _, _, err := dec.decode(); err != io.EOF {
				t.Errorf("decode after the frame: got %v, want io.EOF", err)
			}
		})
	}
}

func TestMessageIsLinkHeartbeat(t *testing.T) {
	tests := []struct {
		name string
		msg  *raftpb.Message
		want bool
	}{
		{name: "link heartbeat", msg: linkHeartbeat, want: true},
		{name: "zeros written", msg: &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), To: proto.Uint64(0), From: proto.Uint64(0)}, want: true},
		{name: "with a term", msg: &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), Term: proto.Uint64(3)}, want: true},
		{name: "raft heartbeat", msg: &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), To: proto.Uint64(2), From: proto.Uint64(1)}, want: false},
		{name: "from only", msg: &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(1)}, want: false},
		{name: "to only", msg: &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), To: proto.Uint64(1)}, want: false},
		{name: "heartbeat response", msg: &raftpb.Message{Type: raftpb.MsgHeartbeatResp.Enum()}, want: false},
		{name: "empty message", msg: &raftpb.Message{}, want: false},
		{name: "nil", msg: nil, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := isLinkHeartbeat(tc.msg); got != tc.want {
				t.Errorf("isLinkHeartbeat(%v): got %t, want %t", tc.msg, got, tc.want)
			}
		})
	}
}

func TestGoldenMessageMsgAppDecode(t *testing.T) {
	want := goldenMsgApp()
	for _, file := range msgAppGoldens {
		t.Run(file, func(t *testing.T) {
			frame := goldenWire(t, file)
			dec := newMessageDecoder(bytes.NewReader(frame), DefaultMaxMessageBytes)
			m, n, err := dec.decode()
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if n != len(frame) {
				t.Errorf("n: got %d, want %d", n, len(frame))
			}
			if !proto.Equal(raftView(m), raftView(want)) {
				t.Errorf("raft content: got %v, want %v", raftView(m), raftView(want))
			}
			if isLinkHeartbeat(m) {
				t.Errorf("isLinkHeartbeat(%v): got true, want false", m)
			}
			if _, _, err := dec.decode(); err != io.EOF {
				t.Errorf("decode after the frame: got %v, want io.EOF", err)
			}
		})
	}

	// 3.7 writes exactly the fields that are set, so its frame decodes to the
	// very message that encodes to it.
	t.Run("v3.7 exact", func(t *testing.T) {
		dec := newMessageDecoder(bytes.NewReader(goldenWire(t, "message_msgapp_v3.7.golden")), DefaultMaxMessageBytes)
		m, _, err := dec.decode()
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if !proto.Equal(m, want) {
			t.Errorf("got %v, want %v", m, want)
		}
	})

	// 3.5 attaches an empty snapshot to every message; it must come through
	// as an empty snapshot, not as an error.
	t.Run("v3.5 empty snapshot", func(t *testing.T) {
		dec := newMessageDecoder(bytes.NewReader(goldenWire(t, "message_msgapp_v3.5.golden")), DefaultMaxMessageBytes)
		m, _, err := dec.decode()
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if m.GetSnapshot() == nil {
			t.Fatalf("snapshot: got nil, want the empty snapshot 3.5 sends")
		}
		if md := m.GetSnapshot().GetMetadata(); md.GetIndex() != 0 || md.GetTerm() != 0 {
			t.Errorf("snapshot metadata: got %v, want index 0 and term 0", md)
		}
	})
}

func TestGoldenPipelineBody(t *testing.T) {
	body := goldenWire(t, "pipeline_msgvote_v3.7.golden")
	want := &raftpb.Message{Type: raftpb.MsgVote.Enum(), To: proto.Uint64(2), From: proto.Uint64(1), Term: proto.Uint64(5)}
	if got := raftproto.AppendMessage(nil, want); !bytes.Equal(got, body) {
		t.Errorf("encode: got % x, want % x", got, body)
	}
	m, err := raftproto.UnmarshalMessage(bytes.Clone(body))
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if !proto.Equal(m, want) {
		t.Errorf("decode: got %v, want %v", m, want)
	}
}

func TestGoldenSnapshotEnvelope(t *testing.T) {
	body := goldenWire(t, "snapshot_envelope_v3.7.golden")
	const envelopeLen = 8 + 0x19
	want := &raftpb.Message{
		Type: raftpb.MsgSnap.Enum(), To: proto.Uint64(2), From: proto.Uint64(1), Term: proto.Uint64(2),
		Snapshot: &raftpb.Snapshot{
			Data:     []byte("MEMBERS"),
			Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(12), Term: proto.Uint64(2)},
		},
	}
	r := bytes.NewReader(body)
	var hdr [frameHeaderLen]byte
	m, n, err := readMessageFrame(r, hdr[:], DefaultMaxSnapshotEnvelopeBytes, nil)
	if err != nil {
		t.Fatalf("readMessageFrame: %v", err)
	}
	if n != envelopeLen {
		t.Errorf("n: got %d, want %d", n, envelopeLen)
	}
	if !proto.Equal(m, want) {
		t.Errorf("envelope: got %v, want %v", m, want)
	}
	db, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(db), "DBDATA-0123456789"; got != want {
		t.Errorf("database bytes: got %q, want %q", got, want)
	}
	if got := messageFrameForTest(want); !bytes.Equal(got, body[:envelopeLen]) {
		t.Errorf("encode: got % x, want % x", got, body[:envelopeLen])
	}

	t.Run("envelope above the snapshot limit", func(t *testing.T) {
		_, _, err := readMessageFrame(bytes.NewReader(body), hdr[:], 0x18, nil)
		if !errors.Is(err, ErrExceedSizeLimit) {
			t.Errorf("got %v, want ErrExceedSizeLimit", err)
		}
	})
}

// roundTripMessages are the messages the message-stream round trip carries:
// the shapes raft sends, with zero values present and absent.
func roundTripMessages() []struct {
	name string
	msg  *raftpb.Message
} {
	return []struct {
		name string
		msg  *raftpb.Message
	}{
		{name: "MsgApp", msg: wireMsgApp(1, 2, 5, 4, 9, 8, wireEntry(5, 10, []byte("some data")))},
		{name: "MsgProp multi-entry", msg: &raftpb.Message{
			Type: raftpb.MsgProp.Enum(), To: proto.Uint64(1), From: proto.Uint64(1),
			Entries: []*raftpb.Entry{
				{Data: []byte("a")},
				{Data: []byte("bb"), Type: raftpb.EntryConfChange.Enum()},
				{Data: bytes.Repeat([]byte("c"), 300)},
				{Type: raftpb.EntryNormal.Enum()},
			},
		}},
		{name: "MsgSnap", msg: &raftpb.Message{
			Type: raftpb.MsgSnap.Enum(), To: proto.Uint64(3), From: proto.Uint64(1), Term: proto.Uint64(7),
			Snapshot: &raftpb.Snapshot{
				Data: []byte("membership"),
				Metadata: &raftpb.SnapshotMetadata{
					ConfState: &raftpb.ConfState{
						Voters: []uint64{1, 2, 3}, Learners: []uint64{4}, VotersOutgoing: []uint64{1, 2},
						LearnersNext: []uint64{5}, AutoLeave: proto.Bool(true),
					},
					Index: proto.Uint64(1 << 40), Term: proto.Uint64(7),
				},
			},
		}},
		{name: "MsgAppResp reject", msg: &raftpb.Message{
			Type: raftpb.MsgAppResp.Enum(), To: proto.Uint64(1), From: proto.Uint64(2), Term: proto.Uint64(5),
			Index: proto.Uint64(9), Reject: proto.Bool(true), RejectHint: proto.Uint64(7), LogTerm: proto.Uint64(4),
		}},
		{name: "MsgHeartbeat with context", msg: &raftpb.Message{
			Type: raftpb.MsgHeartbeat.Enum(), To: proto.Uint64(2), From: proto.Uint64(1), Term: proto.Uint64(5),
			Commit: proto.Uint64(8), Context: []byte("read-index-ctx"),
		}},
		{name: "MsgVote with explicit zeros", msg: &raftpb.Message{
			Type: raftpb.MsgVote.Enum(), To: proto.Uint64(2), From: proto.Uint64(1), Term: proto.Uint64(5),
			LogTerm: proto.Uint64(0), Index: proto.Uint64(0), Commit: proto.Uint64(0), Reject: proto.Bool(false),
			Vote: proto.Uint64(0),
		}},
		{name: "MsgStorageAppend with responses", msg: &raftpb.Message{
			Type: raftpb.MsgStorageAppend.Enum(), To: proto.Uint64(1), From: proto.Uint64(1),
			Entries: []*raftpb.Entry{wireEntry(2, 3, []byte("e"))},
			Responses: []*raftpb.Message{
				{Type: raftpb.MsgStorageAppendResp.Enum(), To: proto.Uint64(1), Index: proto.Uint64(3)},
			},
		}},
		{name: "link heartbeat", msg: linkHeartbeat},
		{name: "empty", msg: &raftpb.Message{}},
		{name: "max values", msg: &raftpb.Message{
			Type: raftpb.MsgApp.Enum(), To: proto.Uint64(^uint64(0)), From: proto.Uint64(^uint64(0)),
			Term: proto.Uint64(^uint64(0)), Index: proto.Uint64(^uint64(0)),
		}},
	}
}

func TestMessageRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	enc := newMessageEncoder(&buf)
	cases := roundTripMessages()
	for _, tc := range cases {
		if err := enc.encode(tc.msg); err != nil {
			t.Fatalf("encode %s: %v", tc.name, err)
		}
	}
	if err := enc.flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	dec := newMessageDecoder(&buf, DefaultMaxMessageBytes)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, n, err := dec.decode()
			if tc.msg.Responses != nil {
				// Encodable, but raft's local messages never cross the
				// network: the decoder refuses them.
				if !errors.Is(err, ErrMalformedFrame) {
					t.Fatalf("decode: %v, want ErrMalformedFrame", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !proto.Equal(m, tc.msg) {
				t.Errorf("got %v, want %v", m, tc.msg)
			}
			if want := frameHeaderLen + proto.Size(tc.msg); n != want {
				t.Errorf("n: got %d, want %d", n, want)
			}
		})
	}
	if _, _, err := dec.decode(); err != io.EOF {
		t.Errorf("decode after the last frame: got %v, want io.EOF", err)
	}
}

func TestMessageRoundTripEveryType(t *testing.T) {
	for _, typ := range slices.Sorted(maps.Keys(raftpb.MessageType_name)) {
		mt := raftpb.MessageType(typ)
		t.Run(mt.String(), func(t *testing.T) {
			m := &raftpb.Message{Type: mt.Enum(), To: proto.Uint64(2), From: proto.Uint64(1), Term: proto.Uint64(3)}
			var buf bytes.Buffer
			enc := newMessageEncoder(&buf)
			if err := enc.encode(m); err != nil {
				t.Fatalf("encode: %v", err)
			}
			if err := enc.flush(); err != nil {
				t.Fatalf("flush: %v", err)
			}
			wire, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if want := append(frameHeaderForTest(uint64(len(wire))), wire...); !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("frame: got % x, want % x", buf.Bytes(), want)
			}
			got, _, err := newMessageDecoder(&buf, DefaultMaxMessageBytes).decode()
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !proto.Equal(got, m) {
				t.Errorf("got %v, want %v", got, m)
			}
		})
	}
}

func TestMessageDecodeLimit(t *testing.T) {
	m := wireMsgApp(1, 2, 1, 1, 3, 3, wireEntry(1, 4, bytes.Repeat([]byte("x"), 100)))
	frame := messageFrameForTest(m)
	size := uint64(len(frame) - frameHeaderLen)
	tests := []struct {
		name    string
		input   []byte
		limit   uint64
		wantErr error
	}{
		{name: "at the limit", input: frame, limit: size},
		{name: "one byte over", input: frame, limit: size - 1, wantErr: ErrExceedSizeLimit},
		{name: "zero limit", input: frame, limit: 0, wantErr: ErrExceedSizeLimit},
		{name: "empty frame at zero limit", input: frameHeaderForTest(0), limit: 0},
		{name: "max uint64 length", input: frameHeaderForTest(^uint64(0)), limit: DefaultMaxMessageBytes, wantErr: ErrExceedSizeLimit},
		{name: "just above the default", input: frameHeaderForTest(DefaultMaxMessageBytes + 1), limit: DefaultMaxMessageBytes, wantErr: ErrExceedSizeLimit},
		{name: "snapshot envelope limit", input: frameHeaderForTest(DefaultMaxSnapshotEnvelopeBytes + 1), limit: DefaultMaxSnapshotEnvelopeBytes, wantErr: ErrExceedSizeLimit},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := newMessageDecoder(bytes.NewReader(tc.input), tc.limit).decode()
			if tc.wantErr == nil {
				if err != nil {
					t.Errorf("got %v, want no error", err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("got %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// TestMessageDecodeHostileLength checks what an announced length costs: one
// over the limit nothing, one within it exactly its size, allocated once,
// whatever arrives.
func TestMessageDecodeHostileLength(t *testing.T) {
	tests := []struct {
		name      string
		announced uint64
		sent      int // body bytes that actually follow the header
		want      error
		maxAlloc  uint64 // bytes the decode may allocate
	}{
		{name: "500 MiB, over the limit", announced: 500 << 20, sent: 5, want: ErrExceedSizeLimit, maxAlloc: 64 << 10},
		{name: "8 MiB, a few bytes", announced: 8 << 20, sent: 5, want: io.ErrUnexpectedEOF, maxAlloc: 8<<20 + 64<<10},
		{name: "8 MiB, 3 MiB", announced: 8 << 20, sent: 3 << 20, want: io.ErrUnexpectedEOF, maxAlloc: 8<<20 + 64<<10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			input := append(frameHeaderForTest(tc.announced), make([]byte, tc.sent)...)
			dec := newMessageDecoder(bytes.NewReader(input), DefaultMaxMessageBytes)
			var err error
			alloc := bytesAllocatedBy(func() { _, _, err = dec.decode() })
			if !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
			if alloc > tc.maxAlloc {
				t.Errorf("allocated %d bytes for %d received, want at most %d", alloc, tc.sent, tc.maxAlloc)
			}
		})
	}
}

func TestFrameReadBytes(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		buf     []byte
		n       int
		want    string
		wantErr error
	}{
		{name: "exact", input: "abc", n: 3, want: "abc"},
		{name: "appends", input: "abc", buf: []byte("xy"), n: 3, want: "xyabc"},
		{name: "leaves the rest", input: "abcdef", n: 2, want: "ab"},
		{name: "zero", input: "abc", n: 0, want: ""},
		{name: "short", input: "ab", buf: []byte("x"), n: 3, want: "xab", wantErr: io.ErrUnexpectedEOF},
		{name: "nothing", input: "", n: 3, want: "", wantErr: io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readBytes(strings.NewReader(tc.input), tc.buf, tc.n)
			if err != tc.wantErr {
				t.Errorf("error: got %v, want %v", err, tc.wantErr)
			}
			if string(got) != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}

	t.Run("allocates once, exactly", func(t *testing.T) {
		const n = 300 << 10
		r := strings.NewReader(strings.Repeat("a", n))
		var got []byte
		allocs := testing.AllocsPerRun(1, func() {
			r.Reset(strings.Repeat("a", n))
			got, _ = readBytes(r, nil, n)
		})
		if len(got) != n || cap(got) > n+n/8 {
			t.Errorf("len %d cap %d, want %d and at most an eighth more", len(got), cap(got), n)
		}
		if allocs > 2 { // the buffer, and the test's own string
			t.Errorf("%v allocations, want the buffer's only", allocs)
		}
	})
}

func TestMessageDecodeTruncated(t *testing.T) {
	frame := messageFrameForTest(goldenMsgApp())
	tests := []struct {
		name  string
		input []byte
		want  error
	}{
		{name: "empty stream", input: nil, want: io.EOF},
		{name: "partial header", input: frame[:3], want: io.ErrUnexpectedEOF},
		{name: "header only", input: frame[:frameHeaderLen], want: io.ErrUnexpectedEOF},
		{name: "partial body", input: frame[:len(frame)-1], want: io.ErrUnexpectedEOF},
		{name: "frame then partial header", input: append(slices.Clone(frame), 0, 0), want: io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dec := newMessageDecoder(bytes.NewReader(tc.input), DefaultMaxMessageBytes)
			var err error
			for err == nil {
				_, _, err = dec.decode()
			}
			if err != tc.want {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}

	t.Run("clean end between frames", func(t *testing.T) {
		input := slices.Concat(frame, frame)
		dec := newMessageDecoder(bytes.NewReader(input), DefaultMaxMessageBytes)
		for i := range 2 {
			if _, _, err := dec.decode(); err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
		}
		if _, _, err := dec.decode(); err != io.EOF {
			t.Errorf("got %v, want io.EOF", err)
		}
	})
}

func TestMessageDecodeMalformed(t *testing.T) {
	tests := []struct {
		name string
		body []byte
	}{
		{name: "truncated varint", body: []byte{0x08, 0xff}},
		{name: "truncated length", body: []byte{0x3a, 0x05, 0x10}},
		{name: "field number zero", body: []byte{0x00, 0x01}},
		{name: "bad wire type", body: []byte{0x0f}},
		{name: "bad entry", body: []byte{0x3a, 0x02, 0x10, 0xff}},
		{name: "bad snapshot", body: []byte{0x4a, 0x01, 0xff}},
		{name: "all ff", body: bytes.Repeat([]byte{0xff}, 16)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			input := append(frameHeaderForTest(uint64(len(tc.body))), tc.body...)
			m, _, err := newMessageDecoder(bytes.NewReader(input), DefaultMaxMessageBytes).decode()
			if !errors.Is(err, ErrMalformedFrame) {
				t.Errorf("got %v, %v, want ErrMalformedFrame", m, err)
			}
		})
	}
}

func TestMessageEncoderBuffering(t *testing.T) {
	var w recordingWriter
	enc := newMessageEncoder(&w)
	msgs := []*raftpb.Message{linkHeartbeat, goldenMsgApp(), linkHeartbeat}
	var want []byte
	for i, m := range msgs {
		if err := enc.encode(m); err != nil {
			t.Fatalf("encode %d: %v", i, err)
		}
		want = append(want, messageFrameForTest(m)...)
		if got := enc.buffered(); got != len(want) {
			t.Errorf("after %d messages: buffered got %d, want %d", i+1, got, len(want))
		}
	}
	if len(w.writes) != 0 {
		t.Fatalf("before flush: got %d writes, want 0", len(w.writes))
	}
	if err := enc.flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if len(w.writes) != 1 {
		t.Errorf("flush: got %d writes, want 1", len(w.writes))
	}
	if got := w.written(); !bytes.Equal(got, want) {
		t.Errorf("got % x, want % x", got, want)
	}
	if got := enc.buffered(); got != 0 {
		t.Errorf("after flush: buffered got %d, want 0", got)
	}
	if err := enc.flush(); err != nil {
		t.Errorf("flush with nothing buffered: %v", err)
	}
	if len(w.writes) != 1 {
		t.Errorf("flush with nothing buffered: got %d writes, want 1", len(w.writes))
	}

	t.Run("large frame writes through", func(t *testing.T) {
		var w recordingWriter
		enc := newMessageEncoder(&w)
		big := wireMsgApp(1, 2, 1, 1, 1, 1, wireEntry(1, 2, make([]byte, encoderWriteThreshold)))
		if err := enc.encode(big); err != nil {
			t.Fatalf("encode: %v", err)
		}
		if len(w.writes) != 1 {
			t.Errorf("got %d writes, want 1", len(w.writes))
		}
		if got := enc.buffered(); got != 0 {
			t.Errorf("buffered: got %d, want 0", got)
		}
		if got, want := w.written(), messageFrameForTest(big); !bytes.Equal(got, want) {
			t.Errorf("got %d bytes, want the %d-byte frame", len(got), len(want))
		}
	})
}

func TestEncoderWriteError(t *testing.T) {
	errBroken := errors.New("broken pipe")
	big := wireMsgApp(1, 2, 7, 7, 1, 1, wireEntry(7, 2, make([]byte, encoderWriteThreshold)))
	tests := []struct {
		name       string
		newEncoder func(io.Writer) encoder
		msg        *raftpb.Message
		encodeErr  bool // the error must surface from encode, not flush
	}{
		{name: "message small", newEncoder: func(w io.Writer) encoder { return newMessageEncoder(w) }, msg: goldenMsgApp()},
		{name: "message large", newEncoder: func(w io.Writer) encoder { return newMessageEncoder(w) }, msg: big, encodeErr: true},
		{name: "msgappv2 heartbeat", newEncoder: func(w io.Writer) encoder { return newMsgAppV2Encoder(w) }, msg: linkHeartbeat},
		{name: "msgappv2 small", newEncoder: func(w io.Writer) encoder { return newMsgAppV2Encoder(w) }, msg: goldenMsgApp()},
		{name: "msgappv2 large", newEncoder: func(w io.Writer) encoder { return newMsgAppV2Encoder(w) }, msg: big, encodeErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := &failingWriter{err: errBroken}
			enc := tc.newEncoder(w)
			err := enc.encode(tc.msg)
			if tc.encodeErr {
				if !errors.Is(err, errBroken) {
					t.Fatalf("encode: got %v, want %v", err, errBroken)
				}
			} else {
				if err != nil {
					t.Fatalf("encode: got %v, want no error before flush", err)
				}
				if w.calls != 0 {
					t.Fatalf("encode: got %d writes, want 0", w.calls)
				}
				if err := enc.flush(); !errors.Is(err, errBroken) {
					t.Fatalf("flush: got %v, want %v", err, errBroken)
				}
			}
			if w.calls != 1 {
				t.Errorf("got %d writes, want 1", w.calls)
			}
			if got := enc.buffered(); got != 0 {
				t.Errorf("buffered after the failed write: got %d, want 0", got)
			}
		})
	}
}

// chunkedReaders wrap a stream so that frames straddle read boundaries
// anywhere (spec §3.4).
var chunkedReaders = []struct {
	name string
	wrap func(io.Reader) io.Reader
}{
	{name: "one byte", wrap: iotest.OneByteReader},
	{name: "half", wrap: iotest.HalfReader},
	{name: "data with EOF", wrap: iotest.DataErrReader},
	{name: "7-byte chunks", wrap: func(r io.Reader) io.Reader { return &chunkReader{r: r, size: 7} }},
	{name: "4093-byte chunks", wrap: func(r io.Reader) io.Reader { return &chunkReader{r: r, size: 4093} }},
}

func TestMessageDecodeChunked(t *testing.T) {
	msgs := []*raftpb.Message{
		linkHeartbeat,
		goldenMsgApp(),
		// Larger than the decoder's read buffer.
		wireMsgApp(1, 2, 1, 1, 4, 4, wireEntry(1, 5, bytes.Repeat([]byte("y"), 3*decoderBufSize+5)), wireEntry(1, 6, []byte("z"))),
		linkHeartbeat,
		roundTripMessages()[2].msg, // MsgSnap
	}
	var stream []byte
	for _, m := range msgs {
		stream = append(stream, messageFrameForTest(m)...)
	}
	for _, rc := range chunkedReaders {
		t.Run(rc.name, func(t *testing.T) {
			dec := newMessageDecoder(rc.wrap(bytes.NewReader(stream)), DefaultMaxMessageBytes)
			for i, want := range msgs {
				m, n, err := dec.decode()
				if err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				if !proto.Equal(m, want) {
					t.Errorf("message %d: got %v, want %v", i, m, want)
				}
				if wantN := frameHeaderLen + proto.Size(want); n != wantN {
					t.Errorf("message %d: n got %d, want %d", i, n, wantN)
				}
			}
			if _, _, err := dec.decode(); err != io.EOF {
				t.Errorf("after the last frame: got %v, want io.EOF", err)
			}
		})
	}
}

// TestMessageDecodeOwnership checks that decoded messages do not share
// memory with each other or with the decoder: changing one leaves the next
// intact.
func TestMessageDecodeOwnership(t *testing.T) {
	a := wireMsgApp(1, 2, 1, 1, 3, 3, wireEntry(1, 4, []byte("first")))
	b := wireMsgApp(1, 2, 1, 1, 4, 4, wireEntry(1, 5, []byte("second")))
	stream := slices.Concat(messageFrameForTest(a), messageFrameForTest(b))
	dec := newMessageDecoder(bytes.NewReader(stream), DefaultMaxMessageBytes)
	m1, _, err := dec.decode()
	if err != nil {
		t.Fatal(err)
	}
	m1.Entries[0].Data = append(m1.Entries[0].Data, "-grown"...)
	m2, _, err := dec.decode()
	if err != nil {
		t.Fatal(err)
	}
	copy(m2.Entries[0].Data, "XXXXXX")
	if got, want := string(m1.Entries[0].Data), "first-grown"; got != want {
		t.Errorf("first message data: got %q, want %q", got, want)
	}
	if got, want := m2.GetIndex(), uint64(4); got != want {
		t.Errorf("second message index: got %d, want %d", got, want)
	}
}

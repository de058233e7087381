package rafthttp

import (
	"bytes"
	"strings"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// TestStreamTypesList checks that streamTypes lists every constant once, in
// order: loops over a peer's streams go through it, and a type missing
// from it would never be started.
func TestStreamTypesList(t *testing.T) {
	if got, want := len(streamTypes), int(streamTypeEnd)-1; got != want {
		t.Fatalf("len(streamTypes): got %d, want %d", got, want)
	}
	for i, typ := range streamTypes {
		if want := streamType(i + 1); typ != want {
			t.Errorf("streamTypes[%d]: got %v, want %v", i, typ, want)
		}
	}
	if d := streams[0]; d.endpoint != "" || d.name != "" || d.newEncoder != nil {
		t.Errorf("streams[0], the invalid type's row: got endpoint %q, name %q, want it empty", d.endpoint, d.name)
	}
}

// TestStreamsTableRows checks that every row of the streams table is
// complete and that no two types share a name, a path or a queue label.
func TestStreamsTableRows(t *testing.T) {
	seen := map[string]streamType{}
	for _, typ := range streamTypes {
		t.Run(typ.String(), func(t *testing.T) {
			d := streams[typ]
			for _, f := range []struct{ field, v string }{
				{"endpoint", d.endpoint}, {"name", d.name}, {"channel", d.channel}, {"statsName", d.statsName},
				{"sendQueue", d.sendQueue}, {"recvQueue", d.recvQueue},
			} {
				if f.v == "" {
					t.Errorf("%s: got \"\", want a name", f.field)
					continue
				}
				key := f.field + "=" + f.v
				if other, ok := seen[key]; ok {
					t.Errorf("%s: got %q, which %v has too", f.field, f.v, other)
				}
				seen[key] = typ
			}
			if d.carries == 0 {
				t.Errorf("carries: got no message type, want some")
			}
			if d.newEncoder == nil || d.newDecoder == nil {
				t.Fatalf("newEncoder, newDecoder: got nil for one of them, want both set")
			}
			if got, ok := parseStreamType(d.endpoint); !ok || got != typ {
				t.Errorf("parseStreamType(%q): got (%v, %v), want (%v, true)", d.endpoint, got, ok, typ)
			}
		})
	}
}

// TestStreamsTableCodec checks that each row's encoder and decoder speak the
// same format: what the encoder writes of the messages the stream carries,
// link heartbeats included, the decoder reads back unchanged.
func TestStreamsTableCodec(t *testing.T) {
	for _, typ := range streamTypes {
		t.Run(typ.String(), func(t *testing.T) {
			d := streams[typ]
			var want []*raftpb.Message
			for _, mt := range []raftpb.MessageType{raftpb.MsgApp, raftpb.MsgHeartbeat, raftpb.MsgVote, raftpb.MsgProp} {
				if d.carries.has(mt) {
					want = append(want, newMsg(mt, htPeerID, htLocalID, 10, withEntry("put x=1")))
				}
			}
			want = append(want, linkHeartbeat)
			var buf bytes.Buffer
			enc := d.newEncoder(&buf)
			for _, m := range want {
				if err := enc.encode(m); err != nil {
					t.Fatalf("encode %v: %v", m.GetType(), err)
				}
			}
			if err := enc.flush(); err != nil {
				t.Fatalf("flush: %v", err)
			}
			dec := d.newDecoder(&buf, decoderConfig{local: htLocalID, remote: htPeerID, limit: DefaultMaxMessageBytes})
			for i, w := range want {
				got, _, err := dec.decode()
				if err != nil {
					t.Fatalf("decode %d: %v", i, err)
				}
				if !proto.Equal(got, w) {
					t.Errorf("decode %d: got %v, want %v", i, got, w)
				}
			}
		})
	}
}

// TestStreamsTableChoices pins what each stream type is today: which
// messages it carries, whether it is the bulk stream, and the HTTP client
// its reader dials with. These decide where a message goes and how the
// scheduler treats it, so a change here changes behaviour.
func TestStreamsTableChoices(t *testing.T) {
	tests := []struct {
		name        string
		typ         streamType
		carriesApp  bool
		carriesBeat bool
		bulk        bool
		client      rtKind
	}{
		{name: "msgappv2", typ: streamTypeMsgAppV2, carriesApp: true, carriesBeat: false, bulk: true, client: rtStream},
		{name: "message", typ: streamTypeMessage, carriesApp: true, carriesBeat: true, bulk: false, client: rtSlicedStream},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := streams[tc.typ]
			if got := d.carries.has(raftpb.MsgApp); got != tc.carriesApp {
				t.Errorf("carries(MsgApp): got %v, want %v", got, tc.carriesApp)
			}
			if got := d.carries.has(raftpb.MsgHeartbeat); got != tc.carriesBeat {
				t.Errorf("carries(MsgHeartbeat): got %v, want %v", got, tc.carriesBeat)
			}
			if d.bulk != tc.bulk {
				t.Errorf("bulk: got %v, want %v", d.bulk, tc.bulk)
			}
			if d.client != tc.client {
				t.Errorf("client: got %v, want %v", d.client, tc.client)
			}
		})
	}
}

// TestStreamTypeOutOfRange checks that a type past the table is invalid,
// like the zero type, rather than a panic.
func TestStreamTypeOutOfRange(t *testing.T) {
	for _, typ := range []streamType{0, streamTypeEnd, 255} {
		if got := typ.endpoint(); got != "" {
			t.Errorf("streamType(%d).endpoint(): got %q, want \"\"", typ, got)
		}
		if got := typ.String(); !strings.Contains(got, "unknown") {
			t.Errorf("streamType(%d).String(): got %q, want it to contain \"unknown\"", typ, got)
		}
	}
}

// TestMsgTypes checks the message type sets of the streams table, at the
// edges of the bit mask.
func TestMsgTypes(t *testing.T) {
	tests := []struct {
		name string
		set  msgTypes
		mt   raftpb.MessageType
		want bool
	}{
		{name: "all has MsgApp", set: allMsgTypes, mt: raftpb.MsgApp, want: true},
		{name: "all has a type past 63", set: allMsgTypes, mt: 100, want: true},
		{name: "MsgApp only has MsgApp", set: msgTypesOf(raftpb.MsgApp), mt: raftpb.MsgApp, want: true},
		{name: "MsgApp only lacks MsgHeartbeat", set: msgTypesOf(raftpb.MsgApp), mt: raftpb.MsgHeartbeat, want: false},
		{name: "MsgApp only lacks MsgHup (0)", set: msgTypesOf(raftpb.MsgApp), mt: raftpb.MsgHup, want: false},
		{name: "a set lacks a type past 63", set: msgTypesOf(raftpb.MsgApp, 63), mt: 64 + raftpb.MsgApp, want: false},
		{name: "a set lacks a negative type", set: msgTypesOf(raftpb.MsgApp), mt: -1, want: false},
		{name: "two types", set: msgTypesOf(raftpb.MsgApp, raftpb.MsgSnap), mt: raftpb.MsgSnap, want: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.set.has(tc.mt); got != tc.want {
				t.Errorf("has(%d): got %v, want %v", tc.mt, got, tc.want)
			}
		})
	}
}

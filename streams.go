package rafthttp

import (
	"io"
	"strconv"

	"go.etcd.io/raft/v3/raftpb"
)

// The stream types, and everything that differs between them.
//
// Each ordered pair of members keeps one long-lived stream of each type: the
// member that receives on it dials GET /raft/stream/{endpoint}/{its ID}, and
// the other writes frames into the response. The types differ only in what
// the streams table below says: the path segment, names in logs, stats and
// metrics, which messages they carry, the codec, the HTTP client the reader
// dials with, and whether the stream carries the bulk traffic (sched.go).
// The peer holds its writers and readers in arrays indexed by type, and
// walks them in streamTypes order.
//
// Adding a stream type is therefore one row in the streams table (with its
// constant and its place in streamTypes) plus a codec: an encoder and a
// decoder, as coder.go and msgappv2_codec.go are. Outside the table:
//
//   - PeerStats.Streams is an exported array with one element per type, and
//     grows with it.
//   - servesEtcdStreams says which older etcd releases serve the two etcd
//     types; none serves a new one. supportsStream assumes that
//     a remote at least as new as us serves every type, and etcd members
//     announce versions like ours: a type etcd does not serve must also be
//     dialled only when both sides announced a feature for it (features.go).

// streamType identifies one of the long-lived streams between each ordered
// pair of members. The zero value is deliberately invalid so that an unset
// field is never mistaken for a real stream.
type streamType uint8

// The stream types. Values start at 1: the zero value stays invalid. Their
// order is that of streamTypes.
const (
	// streamTypeMsgAppV2 carries only MsgApp and link heartbeats, with the
	// compact msgappv2 codec.
	streamTypeMsgAppV2 streamType = iota + 1
	// streamTypeMessage is the general stream: any raft message, framed with
	// the message codec.
	streamTypeMessage
	// streamTypeEnd is one past the last type: the length of arrays indexed
	// by streamType, whose element 0 stays unused.
	streamTypeEnd
)

// streamTypes lists every valid type, in the order of PeerStats.Streams.
// It is also the order in which a peer starts and stops its streams and in
// which pick offers a message to them: the first stream that carries the
// message and is up takes it.
var streamTypes = [...]streamType{streamTypeMsgAppV2, streamTypeMessage}

// streamDesc is what one stream type is: the row of the streams table.
type streamDesc struct {
	// endpoint is the path segment that selects the type in
	// /raft/stream/{endpoint}/{fromID}.
	endpoint string
	// name is etcd's name of the stream, used in logs, as the source of a
	// peer's inactive reason and in the stream reconnect counter's label,
	// so that operators see the same words as from etcd.
	name string
	// channel is etcd's name of the stream as the way a message left, in
	// drop warnings.
	channel string
	// statsName is the type in PeerStats.Streams (an exported constant).
	statsName string
	// sendQueue and recvQueue label the writer's and the reader's queues
	// in rafthttp_queue_depth.
	sendQueue, recvQueue string
	// carries is the set of message types the stream takes.
	carries msgTypes
	// newEncoder and newDecoder make the codec of one connection.
	newEncoder func(w io.Writer) encoder
	newDecoder func(r io.Reader, c decoderConfig) decoder
	// client is the kind of HTTP client the stream's reader dials with
	// (dial.go).
	client rtKind
	// bulk says the stream carries the bulk traffic: its writer and its
	// reader measure the rate they move it at, and stamp the bulk clock
	// while it is a bulk rate (sched.go, Transport.bulkYielder).
	bulk bool
}

// msgTypes is a set of raft message types: a bit per type below 64, and
// allMsgTypes for every type, those past 63 included. A bit mask rather
// than a function, since pick consults it for every message sent.
type msgTypes uint64

// allMsgTypes is the set of every message type.
const allMsgTypes = ^msgTypes(0)

// msgTypesOf returns the set of the given types, each below 64.
func msgTypesOf(mts ...raftpb.MessageType) msgTypes {
	var s msgTypes
	for _, mt := range mts {
		s |= 1 << uint(mt)
	}
	return s
}

// has reports whether mt is in s.
func (s msgTypes) has(mt raftpb.MessageType) bool {
	return s == allMsgTypes || (uint(mt) < 64 && s&(1<<uint(mt)) != 0)
}

// decoderConfig is what a stream's decoder is made from.
type decoderConfig struct {
	local, remote uint64      // the reading member's ID and the writing one's
	limit         uint64      // the largest message (or record) accepted
	charger       recvCharger // charges what is decoded to the receive budget
}

// streams is the table of stream types, indexed by streamType; element 0,
// the invalid type, is empty.
var streams = [streamTypeEnd]streamDesc{
	streamTypeMsgAppV2: {
		endpoint:   "msgapp",
		name:       "stream MsgApp v2",
		channel:    chanStreamMsgAppV2,
		statsName:  StreamMsgAppV2,
		sendQueue:  "stream_msgappv2",
		recvQueue:  "recv_msgappv2",
		carries:    msgTypesOf(raftpb.MsgApp),
		newEncoder: func(w io.Writer) encoder { return newMsgAppV2Encoder(w) },
		newDecoder: func(r io.Reader, c decoderConfig) decoder {
			d := newMsgAppV2Decoder(r, c.local, c.remote, c.limit)
			d.recvCharger = c.charger
			return d
		},
		// The bulk stream's reads need no slicing: they are the traffic
		// that keeps the cores busy.
		client: rtStream,
		bulk:   true,
	},
	streamTypeMessage: {
		endpoint:   "message",
		name:       "stream Message",
		channel:    chanStreamMsg,
		statsName:  StreamMessage,
		sendQueue:  "stream_message",
		recvQueue:  "recv_message",
		carries:    allMsgTypes,
		newEncoder: func(w io.Writer) encoder { return newMessageEncoder(w) },
		newDecoder: func(r io.Reader, c decoderConfig) decoder {
			d := newMessageDecoder(r, c.limit)
			d.recvCharger = c.charger
			return d
		},
		// Heartbeats and votes must not wait behind bulk traffic for the
		// network poller (sched.go).
		client: rtSlicedStream,
	},
}

// desc returns t's row of the streams table; an invalid t gets the empty
// row 0.
func (t streamType) desc() *streamDesc {
	if int(t) >= len(streams) {
		return &streams[0]
	}
	return &streams[t]
}

// endpoint returns the URL path segment that selects the stream type in
// /raft/stream/{segment}/{fromID}, or "" for an invalid type.
func (t streamType) endpoint() string { return t.desc().endpoint }

// String returns etcd's name for the stream type, as used in its logs and as
// the status source name, so operators see the same words for both.
func (t streamType) String() string {
	if name := t.desc().name; name != "" {
		return name
	}
	return "unknown stream type " + strconv.Itoa(int(t))
}

// statsName is the stream type's name in PeerStats.
func (t streamType) statsName() string { return t.desc().statsName }

// parseStreamType maps a URL path segment back to its stream type; ok is
// false for anything but a type's endpoint ("msgapp", "message").
func parseStreamType(seg string) (t streamType, ok bool) {
	for _, typ := range streamTypes {
		if streams[typ].endpoint == seg {
			return typ, true
		}
	}
	return 0, false
}

// servesEtcdStreams reports whether an etcd release, by major.minor, serves
// the two stream types (spec §6.2): 2.0 served none we speak, 2.1 to 2.3
// and 3.0 to 3.8 serve both. A release outside these is taken to serve
// nothing; 3.8 is there for the benefit of a local version configured above
// it.
func servesEtcdStreams(v semver) bool {
	switch v.major {
	case 2:
		return v.minor >= 1 && v.minor <= 3
	case 3:
		return v.minor <= 8
	default:
		return false
	}
}

// supportsStream reports whether a remote at version remote serves stream
// type t, from the point of view of a local member at version local (the
// dialer's check, spec §6.2): a remote at least as new as us (by
// major.minor) is assumed to serve both types; an older one must be a
// release that serves them (servesEtcdStreams). An invalid t is never
// supported.
func supportsStream(local, remote semver, t streamType) bool {
	if t.endpoint() == "" {
		return false
	}
	if compareMajorMinor(remote, local) >= 0 {
		return true
	}
	return servesEtcdStreams(remote)
}

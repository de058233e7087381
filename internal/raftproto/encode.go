// Package raftproto is a hand-written protobuf codec for raftpb.Message and
// raftpb.Entry, the two messages the transport moves.
//
// raft v3.7 generates raftpb with protobuf-go: every scalar is a pointer, so
// the generic unmarshaller allocates once per field and once per entry, and
// the generic marshaller walks reflection tables. On a raft transport those
// costs are per message and drive garbage-collection pauses, which is what
// stretches heartbeat tail latency under load. This package encodes with no
// allocation and decodes a message into a few blocks whatever the number of
// entries.
//
// The bytes it writes are exactly those of proto.Marshal for the same
// message: fields in field-number order, a field written only when it is
// present (pointer non-nil, bytes non-nil, list non-empty), repeated scalars
// unpacked as proto2 declares them. Unknown fields are not carried: raft never
// produces them, and the decoder drops them as proto's DiscardUnknown does.
package raftproto

import (
	"google.golang.org/protobuf/encoding/protowire"

	"go.etcd.io/raft/v3/raftpb"
)

// Single-byte tags (field number << 3 | wire type) of the fields we write,
// and that the decoders switch on. Every field number used by raftpb is
// below 16, so each tag is one byte.
const (
	wtVarint = 0
	wtBytes  = 2

	tagMsgType       = 1<<3 | wtVarint
	tagMsgTo         = 2<<3 | wtVarint
	tagMsgFrom       = 3<<3 | wtVarint
	tagMsgTerm       = 4<<3 | wtVarint
	tagMsgLogTerm    = 5<<3 | wtVarint
	tagMsgIndex      = 6<<3 | wtVarint
	tagMsgEntries    = 7<<3 | wtBytes
	tagMsgCommit     = 8<<3 | wtVarint
	tagMsgSnapshot   = 9<<3 | wtBytes
	tagMsgReject     = 10<<3 | wtVarint
	tagMsgRejectHint = 11<<3 | wtVarint
	tagMsgContext    = 12<<3 | wtBytes
	tagMsgVote       = 13<<3 | wtVarint
	tagMsgResponses  = 14<<3 | wtBytes

	tagEntType  = 1<<3 | wtVarint
	tagEntTerm  = 2<<3 | wtVarint
	tagEntIndex = 3<<3 | wtVarint
	tagEntData  = 4<<3 | wtBytes

	tagSnapData     = 1<<3 | wtBytes
	tagSnapMetadata = 2<<3 | wtBytes

	tagMetaConfState = 1<<3 | wtBytes
	tagMetaIndex     = 2<<3 | wtVarint
	tagMetaTerm      = 3<<3 | wtVarint

	tagCSVoters         = 1<<3 | wtVarint
	tagCSLearners       = 2<<3 | wtVarint
	tagCSVotersOutgoing = 3<<3 | wtVarint
	tagCSLearnersNext   = 4<<3 | wtVarint
	tagCSAutoLeave      = 5<<3 | wtVarint

	// The packed form of the conf state's lists, one length-delimited run
	// of varints: never written, but proto accepts it, so we read it.
	tagCSVotersPacked         = 1<<3 | wtBytes
	tagCSLearnersPacked       = 2<<3 | wtBytes
	tagCSVotersOutgoingPacked = 3<<3 | wtBytes
	tagCSLearnersNextPacked   = 4<<3 | wtBytes
)

// Each kind of optional field is encoded by one pair of helpers below, a
// size and an append, with the one-byte tags above. An absent field (a nil
// pointer or slice) takes no byte; a present one is written even when zero.

// sizeVarint is the encoded size of v.
func sizeVarint(v uint64) int { return protowire.SizeVarint(v) }

// enumVarint is how protobuf encodes an int32 enum: sign-extended to 64 bits.
func enumVarint(v int32) uint64 { return uint64(int64(v)) }

// sizeOptVarint is the encoded size of an optional varint field.
func sizeOptVarint(p *uint64) int {
	if p == nil {
		return 0
	}
	return 1 + sizeVarint(*p)
}

// appendOptVarint appends an optional varint field.
func appendOptVarint(b []byte, tag byte, p *uint64) []byte {
	if p == nil {
		return b
	}
	return protowire.AppendVarint(append(b, tag), *p)
}

// sizeOptEnum is the encoded size of an optional enum field.
func sizeOptEnum[E ~int32](p *E) int {
	if p == nil {
		return 0
	}
	return 1 + sizeVarint(enumVarint(int32(*p)))
}

// appendOptEnum appends an optional enum field.
func appendOptEnum[E ~int32](b []byte, tag byte, p *E) []byte {
	if p == nil {
		return b
	}
	return protowire.AppendVarint(append(b, tag), enumVarint(int32(*p)))
}

// sizeOptBool is the encoded size of an optional bool field: its tag and
// one byte.
func sizeOptBool(p *bool) int {
	if p == nil {
		return 0
	}
	return 2
}

// appendOptBool appends an optional bool field.
func appendOptBool(b []byte, tag byte, p *bool) []byte {
	if p == nil {
		return b
	}
	v := byte(0)
	if *p {
		v = 1
	}
	return append(b, tag, v)
}

// sizeLen is the encoded size of a length-delimited field of n bytes.
func sizeLen(n int) int { return 1 + sizeVarint(uint64(n)) + n }

// appendLen appends the tag and length of a length-delimited field of n
// bytes: the caller appends the n bytes next. A nil element of a repeated
// message field is written with n = 0, as proto writes an empty message.
func appendLen(b []byte, tag byte, n int) []byte {
	return protowire.AppendVarint(append(b, tag), uint64(n))
}

// sizeOptBytes is the encoded size of an optional bytes field.
func sizeOptBytes(v []byte) int {
	if v == nil {
		return 0
	}
	return sizeLen(len(v))
}

// appendOptBytes appends an optional bytes field.
func appendOptBytes(b []byte, tag byte, v []byte) []byte {
	if v == nil {
		return b
	}
	return append(appendLen(b, tag, len(v)), v...)
}

// EntrySize returns the encoded size of e, len(AppendEntry(nil, e)). A nil
// entry is an empty one, as proto encodes a nil element of a repeated
// message field.
func EntrySize(e *raftpb.Entry) int {
	if e == nil {
		return 0
	}
	return sizeOptEnum(e.Type) + sizeOptVarint(e.Term) + sizeOptVarint(e.Index) + sizeOptBytes(e.Data)
}

// AppendEntry appends the protobuf encoding of e to b: nothing for a nil
// entry (see EntrySize).
func AppendEntry(b []byte, e *raftpb.Entry) []byte {
	if e == nil {
		return b
	}
	b = appendOptEnum(b, tagEntType, e.Type)
	b = appendOptVarint(b, tagEntTerm, e.Term)
	b = appendOptVarint(b, tagEntIndex, e.Index)
	return appendOptBytes(b, tagEntData, e.Data)
}

// MessageSize returns the encoded size of m, len(AppendMessage(nil, m)).
func MessageSize(m *raftpb.Message) int {
	// The scalars, then the sub-messages: a size does not depend on order.
	n := sizeOptEnum(m.Type) + sizeOptVarint(m.To) + sizeOptVarint(m.From) + sizeOptVarint(m.Term) +
		sizeOptVarint(m.LogTerm) + sizeOptVarint(m.Index) + sizeOptVarint(m.Commit) +
		sizeOptBool(m.Reject) + sizeOptVarint(m.RejectHint) + sizeOptBytes(m.Context) + sizeOptVarint(m.Vote)
	for _, e := range m.Entries {
		n += sizeLen(EntrySize(e))
	}
	if m.Snapshot != nil {
		n += sizeLen(snapshotSize(m.Snapshot))
	}
	for _, r := range m.Responses {
		n += sizeLen(messageSizeOrZero(r))
	}
	return n
}

// messageSizeOrZero is MessageSize, and 0 for a nil message: an element of
// Responses, encoded as an empty message as proto does (see EntrySize).
func messageSizeOrZero(m *raftpb.Message) int {
	if m == nil {
		return 0
	}
	return MessageSize(m)
}

// AppendMessage appends the protobuf encoding of m to b. It allocates only
// when b lacks the capacity; callers size b with MessageSize.
func AppendMessage(b []byte, m *raftpb.Message) []byte {
	b = appendOptEnum(b, tagMsgType, m.Type)
	b = appendOptVarint(b, tagMsgTo, m.To)
	b = appendOptVarint(b, tagMsgFrom, m.From)
	b = appendOptVarint(b, tagMsgTerm, m.Term)
	b = appendOptVarint(b, tagMsgLogTerm, m.LogTerm)
	b = appendOptVarint(b, tagMsgIndex, m.Index)
	for _, e := range m.Entries {
		b = AppendEntry(appendLen(b, tagMsgEntries, EntrySize(e)), e)
	}
	b = appendOptVarint(b, tagMsgCommit, m.Commit)
	if m.Snapshot != nil {
		b = appendSnapshot(appendLen(b, tagMsgSnapshot, snapshotSize(m.Snapshot)), m.Snapshot)
	}
	b = appendOptBool(b, tagMsgReject, m.Reject)
	b = appendOptVarint(b, tagMsgRejectHint, m.RejectHint)
	b = appendOptBytes(b, tagMsgContext, m.Context)
	b = appendOptVarint(b, tagMsgVote, m.Vote)
	for _, r := range m.Responses {
		b = appendLen(b, tagMsgResponses, messageSizeOrZero(r))
		if r != nil {
			b = AppendMessage(b, r)
		}
	}
	return b
}

// snapshotSize is the encoded size of s.
func snapshotSize(s *raftpb.Snapshot) int {
	n := sizeOptBytes(s.Data)
	if s.Metadata != nil {
		n += sizeLen(metadataSize(s.Metadata))
	}
	return n
}

// appendSnapshot appends the encoding of s.
func appendSnapshot(b []byte, s *raftpb.Snapshot) []byte {
	b = appendOptBytes(b, tagSnapData, s.Data)
	if s.Metadata != nil {
		b = appendMetadata(appendLen(b, tagSnapMetadata, metadataSize(s.Metadata)), s.Metadata)
	}
	return b
}

// metadataSize is the encoded size of md.
func metadataSize(md *raftpb.SnapshotMetadata) int {
	n := sizeOptVarint(md.Index) + sizeOptVarint(md.Term)
	if md.ConfState != nil {
		n += sizeLen(confStateSize(md.ConfState))
	}
	return n
}

// appendMetadata appends the encoding of md.
func appendMetadata(b []byte, md *raftpb.SnapshotMetadata) []byte {
	if md.ConfState != nil {
		b = appendConfState(appendLen(b, tagMetaConfState, confStateSize(md.ConfState)), md.ConfState)
	}
	b = appendOptVarint(b, tagMetaIndex, md.Index)
	return appendOptVarint(b, tagMetaTerm, md.Term)
}

// sizeRepeated is the encoded size of a repeated varint field.
func sizeRepeated(vs []uint64) int {
	n := len(vs) // one tag byte each: proto2 repeated scalars are unpacked
	for _, v := range vs {
		n += sizeVarint(v)
	}
	return n
}

// appendRepeated appends a repeated varint field, one tag per value.
func appendRepeated(b []byte, tag byte, vs []uint64) []byte {
	for _, v := range vs {
		b = protowire.AppendVarint(append(b, tag), v)
	}
	return b
}

// confStateSize is the encoded size of cs.
func confStateSize(cs *raftpb.ConfState) int {
	return sizeRepeated(cs.Voters) + sizeRepeated(cs.Learners) +
		sizeRepeated(cs.VotersOutgoing) + sizeRepeated(cs.LearnersNext) + sizeOptBool(cs.AutoLeave)
}

// appendConfState appends the encoding of cs.
func appendConfState(b []byte, cs *raftpb.ConfState) []byte {
	b = appendRepeated(b, tagCSVoters, cs.Voters)
	b = appendRepeated(b, tagCSLearners, cs.Learners)
	b = appendRepeated(b, tagCSVotersOutgoing, cs.VotersOutgoing)
	b = appendRepeated(b, tagCSLearnersNext, cs.LearnersNext)
	return appendOptBool(b, tagCSAutoLeave, cs.AutoLeave)
}

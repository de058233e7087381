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

// Single-byte tags (field number << 3 | wire type) of the fields we write.
// Every field number used by raftpb is below 16, so each tag is one byte.
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
)

func sizeVarint(v uint64) int { return protowire.SizeVarint(v) }

// sizeOptVarint is the encoded size of an optional varint field with a
// one-byte tag: nothing when absent.
func sizeOptVarint(p *uint64) int {
	if p == nil {
		return 0
	}
	return 1 + sizeVarint(*p)
}

// enumVarint is how protobuf encodes an int32 enum: sign-extended to 64 bits.
func enumVarint(v int32) uint64 { return uint64(int64(v)) }

func sizeLen(n int) int { return 1 + sizeVarint(uint64(n)) + n }

// EntrySize returns the encoded size of e, len(AppendEntry(nil, e)).
func EntrySize(e *raftpb.Entry) int {
	n := 0
	if e.Type != nil {
		n += 1 + sizeVarint(enumVarint(int32(*e.Type)))
	}
	n += sizeOptVarint(e.Term)
	n += sizeOptVarint(e.Index)
	if e.Data != nil {
		n += sizeLen(len(e.Data))
	}
	return n
}

// AppendEntry appends the protobuf encoding of e to b.
func AppendEntry(b []byte, e *raftpb.Entry) []byte {
	if e.Type != nil {
		b = append(b, tagEntType)
		b = protowire.AppendVarint(b, enumVarint(int32(*e.Type)))
	}
	b = appendOptVarint(b, tagEntTerm, e.Term)
	b = appendOptVarint(b, tagEntIndex, e.Index)
	if e.Data != nil {
		b = append(b, tagEntData)
		b = protowire.AppendBytes(b, e.Data)
	}
	return b
}

func appendOptVarint(b []byte, tag byte, p *uint64) []byte {
	if p == nil {
		return b
	}
	b = append(b, tag)
	return protowire.AppendVarint(b, *p)
}

// MessageSize returns the encoded size of m, len(AppendMessage(nil, m)).
func MessageSize(m *raftpb.Message) int {
	n := 0
	if m.Type != nil {
		n += 1 + sizeVarint(enumVarint(int32(*m.Type)))
	}
	n += sizeOptVarint(m.To)
	n += sizeOptVarint(m.From)
	n += sizeOptVarint(m.Term)
	n += sizeOptVarint(m.LogTerm)
	n += sizeOptVarint(m.Index)
	for _, e := range m.Entries {
		n += sizeLen(entrySizeOrZero(e))
	}
	n += sizeOptVarint(m.Commit)
	if m.Snapshot != nil {
		n += sizeLen(snapshotSize(m.Snapshot))
	}
	if m.Reject != nil {
		n += 2
	}
	n += sizeOptVarint(m.RejectHint)
	if m.Context != nil {
		n += sizeLen(len(m.Context))
	}
	n += sizeOptVarint(m.Vote)
	for _, r := range m.Responses {
		n += sizeLen(messageSizeOrZero(r))
	}
	return n
}

// A nil element of a repeated message field is encoded by proto as an empty
// message; these helpers do the same instead of dereferencing nil.
func entrySizeOrZero(e *raftpb.Entry) int {
	if e == nil {
		return 0
	}
	return EntrySize(e)
}

func messageSizeOrZero(m *raftpb.Message) int {
	if m == nil {
		return 0
	}
	return MessageSize(m)
}

// AppendMessage appends the protobuf encoding of m to b. It allocates only
// when b lacks the capacity; callers size b with MessageSize.
func AppendMessage(b []byte, m *raftpb.Message) []byte {
	if m.Type != nil {
		b = append(b, tagMsgType)
		b = protowire.AppendVarint(b, enumVarint(int32(*m.Type)))
	}
	b = appendOptVarint(b, tagMsgTo, m.To)
	b = appendOptVarint(b, tagMsgFrom, m.From)
	b = appendOptVarint(b, tagMsgTerm, m.Term)
	b = appendOptVarint(b, tagMsgLogTerm, m.LogTerm)
	b = appendOptVarint(b, tagMsgIndex, m.Index)
	for _, e := range m.Entries {
		b = append(b, tagMsgEntries)
		if e == nil {
			b = append(b, 0)
			continue
		}
		b = protowire.AppendVarint(b, uint64(EntrySize(e)))
		b = AppendEntry(b, e)
	}
	b = appendOptVarint(b, tagMsgCommit, m.Commit)
	if m.Snapshot != nil {
		b = append(b, tagMsgSnapshot)
		b = protowire.AppendVarint(b, uint64(snapshotSize(m.Snapshot)))
		b = appendSnapshot(b, m.Snapshot)
	}
	if m.Reject != nil {
		b = append(b, tagMsgReject, 0)
		if *m.Reject {
			b[len(b)-1] = 1
		}
	}
	b = appendOptVarint(b, tagMsgRejectHint, m.RejectHint)
	if m.Context != nil {
		b = append(b, tagMsgContext)
		b = protowire.AppendBytes(b, m.Context)
	}
	b = appendOptVarint(b, tagMsgVote, m.Vote)
	for _, r := range m.Responses {
		b = append(b, tagMsgResponses)
		if r == nil {
			b = append(b, 0)
			continue
		}
		b = protowire.AppendVarint(b, uint64(MessageSize(r)))
		b = AppendMessage(b, r)
	}
	return b
}

func snapshotSize(s *raftpb.Snapshot) int {
	n := 0
	if s.Data != nil {
		n += sizeLen(len(s.Data))
	}
	if s.Metadata != nil {
		n += sizeLen(metadataSize(s.Metadata))
	}
	return n
}

func appendSnapshot(b []byte, s *raftpb.Snapshot) []byte {
	if s.Data != nil {
		b = append(b, tagSnapData)
		b = protowire.AppendBytes(b, s.Data)
	}
	if s.Metadata != nil {
		b = append(b, tagSnapMetadata)
		b = protowire.AppendVarint(b, uint64(metadataSize(s.Metadata)))
		b = appendMetadata(b, s.Metadata)
	}
	return b
}

func metadataSize(md *raftpb.SnapshotMetadata) int {
	n := 0
	if md.ConfState != nil {
		n += sizeLen(confStateSize(md.ConfState))
	}
	n += sizeOptVarint(md.Index)
	n += sizeOptVarint(md.Term)
	return n
}

func appendMetadata(b []byte, md *raftpb.SnapshotMetadata) []byte {
	if md.ConfState != nil {
		b = append(b, tagMetaConfState)
		b = protowire.AppendVarint(b, uint64(confStateSize(md.ConfState)))
		b = appendConfState(b, md.ConfState)
	}
	b = appendOptVarint(b, tagMetaIndex, md.Index)
	b = appendOptVarint(b, tagMetaTerm, md.Term)
	return b
}

func sizeRepeated(vs []uint64) int {
	n := len(vs) // one tag byte each: proto2 repeated scalars are unpacked
	for _, v := range vs {
		n += sizeVarint(v)
	}
	return n
}

func appendRepeated(b []byte, tag byte, vs []uint64) []byte {
	for _, v := range vs {
		b = append(b, tag)
		b = protowire.AppendVarint(b, v)
	}
	return b
}

func confStateSize(cs *raftpb.ConfState) int {
	n := sizeRepeated(cs.Voters) + sizeRepeated(cs.Learners) +
		sizeRepeated(cs.VotersOutgoing) + sizeRepeated(cs.LearnersNext)
	if cs.AutoLeave != nil {
		n += 2
	}
	return n
}

func appendConfState(b []byte, cs *raftpb.ConfState) []byte {
	b = appendRepeated(b, tagCSVoters, cs.Voters)
	b = appendRepeated(b, tagCSLearners, cs.Learners)
	b = appendRepeated(b, tagCSVotersOutgoing, cs.VotersOutgoing)
	b = appendRepeated(b, tagCSLearnersNext, cs.LearnersNext)
	if cs.AutoLeave != nil {
		b = append(b, tagCSAutoLeave, 0)
		if *cs.AutoLeave {
			b[len(b)-1] = 1
		}
	}
	return b
}

package raftproto

import (
	"errors"
	"fmt"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"

	"go.etcd.io/raft/v3/raftpb"
)

// ErrMalformed is returned for bytes that are not a valid protobuf encoding
// of the expected message.
var ErrMalformed = errors.New("raftproto: malformed protobuf")

// ErrDegenerate is returned for valid protobuf that raft never puts on the
// wire and that would cost far more to decode than it took to send: an
// empty entry, Responses (raft's local storage messages only), a repeated
// snapshot, snapshot metadata or conf state (which protobuf would merge). It
// wraps ErrMalformed.
var ErrDegenerate = fmt.Errorf("%w: a shape raft never sends", ErrMalformed)

// What decoding allocates, in bytes, for each piece of a message. Every
// allocation of the decoders is one of these or a multiple of them; an
// entry costs EntryCost of its encoding's size.
const (
	ptrSize = int(unsafe.Sizeof((*raftpb.Entry)(nil)))
	// MessageCost is a message without entries or snapshot.
	MessageCost = int(unsafe.Sizeof(msgBlock{}))
	// MessageCost1 is a message of exactly one entry, with its entry
	// pointer (the entry itself aside).
	MessageCost1 = int(unsafe.Sizeof(msg1Block{}))
	// snapshotCost is a snapshot with its metadata; each conf state ID
	// adds 8 bytes.
	snapshotCost = int(unsafe.Sizeof(snapBlock{}))
)

// The bound on what decoding allocates: at most MaxCostPerByte times the
// wire size plus MaxCostConst, whatever the field mix. The ratio comes from
// the smallest entry decoding accepts: four wire bytes (a field header and
// one non-empty field) for EntryCost(2) (136) bytes, its slot and pointer; a
// conf state ID costs 8 bytes for at least one wire byte. The constant
// covers the message block, one snapshot block and the allocator's rounding
// up to its size classes (at most an eighth, or a part of a page).
const (
	MaxCostPerByte = 36
	MaxCostConst   = 8 << 10
)

// A Charger accepts or refuses the cost of a decode before anything is
// allocated for it, so that a caller can hold what it receives to a budget.
type Charger interface {
	// Charge is called once per decode with the bytes the decode will
	// allocate; an error stops the decode and is returned as it is.
	Charge(cost int) error
}

// msgBlock holds a Message and the storage its scalar pointers point at, so
// the message and all its scalars cost one allocation.
type msgBlock struct {
	m                                                        raftpb.Message
	typ                                                      raftpb.MessageType
	to, from, term, logTerm, index, commit, rejectHint, vote uint64
	reject                                                   bool
}

// entryBlock does for an Entry what msgBlock does for a Message; a message's
// entries are allocated as one slice of blocks.
type entryBlock struct {
	e           raftpb.Entry
	typ         raftpb.EntryType
	term, index uint64
}

// snapBlock holds a Snapshot with its metadata and conf state in one block.
type snapBlock struct {
	s           raftpb.Snapshot
	md          raftpb.SnapshotMetadata
	cs          raftpb.ConfState
	index, term uint64
	autoLeave   bool
}

// consumeField validates the field at the start of b and returns its number,
// wire type, the length of its tag and its whole length. Field numbers beyond
// protobuf's range are rejected, as proto.Unmarshal rejects them.
func consumeField(b []byte) (num protowire.Number, typ protowire.Type, tagLen, n int) {
	num, typ, tagLen = protowire.ConsumeTag(b)
	if tagLen < 0 || num > protowire.MaxValidNumber {
		return 0, 0, 0, -1
	}
	m := protowire.ConsumeFieldValue(num, typ, b[tagLen:])
	if m < 0 {
		return 0, 0, 0, -1
	}
	return num, typ, tagLen, tagLen + m
}

// alias returns b as a slice whose capacity ends where it does, so that an
// append by the owner of a decoded field never writes over the bytes of the
// next field in the shared buffer.
func alias(b []byte) []byte { return b[:len(b):len(b)] }

// UnmarshalMessage decodes buf into a new Message. The message's context
// and snapshot data alias buf, so buf must not be reused: it becomes part of
// the message. Unknown fields are dropped, as
// proto.Unmarshal with DiscardUnknown does; enum values outside the known set
// are kept, as protobuf-go keeps them. Shapes raft never sends are refused
// with ErrDegenerate (see there), where proto.Unmarshal would accept them.
//
// Entry data is copied into each entry's own allocation (see EntrySlot), so
// that the entries raft keeps keep nothing else alive; the context and
// snapshot data alias buf. A message costs its block, its entry slice and
// one allocation per entry (two beyond 8 KiB), and its snapshot; in bytes,
// at most MaxCostPerByte*len(buf) + MaxCostConst.
func UnmarshalMessage(buf []byte) (*raftpb.Message, error) {
	m, _, err := UnmarshalMessageCharged(buf, nil)
	return m, err
}

// UnmarshalMessageCharged is UnmarshalMessage that first asks c, if not nil,
// to accept the decode's cost in bytes, once the whole of buf is validated
// and before anything is allocated. It returns the cost too.
func UnmarshalMessageCharged(buf []byte, c Charger) (*raftpb.Message, int, error) {
	nEnt, nSnap, nIDs, entCost := 0, 0, 0, 0
	for b := buf; len(b) > 0; {
		num, typ, tagLen, n := consumeField(b)
		if n < 0 {
			return nil, 0, ErrMalformed
		}
		if typ == protowire.BytesType {
			switch num {
			case 7:
				// Every entry raft makes has an index: an empty one is
				// not raft's, and would cost 60 times its two bytes.
				if n-tagLen <= 1 {
					return nil, 0, fmt.Errorf("%w: empty entry", ErrDegenerate)
				}
				nEnt++
				v, _ := protowire.ConsumeBytes(b[tagLen:])
				entCost += EntryCost(len(v))
			case 9:
				nSnap++
				v, _ := protowire.ConsumeBytes(b[tagLen:])
				ids, err := scanSnapshot(v)
				if err != nil {
					return nil, 0, err
				}
				nIDs += ids
			case 14:
				// Responses are for raft's local storage threads and
				// never cross the network.
				return nil, 0, fmt.Errorf("%w: responses", ErrDegenerate)
			}
		}
		b = b[n:]
	}
	if nSnap > 1 {
		return nil, 0, fmt.Errorf("%w: repeated snapshot", ErrDegenerate)
	}
	cost := MessageCost + entCost
	if nEnt == 1 {
		cost = MessageCost1 + entCost - ptrSize
	}
	if nSnap == 1 {
		cost += snapshotCost + 8*nIDs
	}
	if c != nil {
		if err := c.Charge(cost); err != nil {
			return nil, 0, err
		}
	}

	var blk *msgBlock
	switch nEnt {
	case 0:
		blk = new(msgBlock)
	case 1:
		b := new(msg1Block)
		blk = &b.msg
		blk.m.Entries = b.ptrs[:0]
	default:
		blk = new(msgBlock)
		blk.m.Entries = make([]*raftpb.Entry, 0, nEnt)
	}
	m := &blk.m
	for b := buf; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		b = b[n:] // the first pass validated every field
		switch {
		case typ == protowire.VarintType && num <= 13 && num != 7 && num != 9 && num != 12:
			v, n := protowire.ConsumeVarint(b)
			b = b[n:]
			switch num {
			case 1:
				blk.typ, m.Type = raftpb.MessageType(int32(v)), &blk.typ
			case 2:
				blk.to, m.To = v, &blk.to
			case 3:
				blk.from, m.From = v, &blk.from
			case 4:
				blk.term, m.Term = v, &blk.term
			case 5:
				blk.logTerm, m.LogTerm = v, &blk.logTerm
			case 6:
				blk.index, m.Index = v, &blk.index
			case 8:
				blk.commit, m.Commit = v, &blk.commit
			case 10:
				blk.reject, m.Reject = v != 0, &blk.reject
			case 11:
				blk.rejectHint, m.RejectHint = v, &blk.rejectHint
			case 13:
				blk.vote, m.Vote = v, &blk.vote
			}
		case typ == protowire.BytesType && (num == 7 || num == 9 || num == 12):
			v, n := protowire.ConsumeBytes(b)
			b = b[n:]
			switch num {
			case 7:
				// Each entry is copied into an allocation of its own,
				// so that a kept entry keeps neither buf nor its
				// neighbours alive (see EntrySlot).
				slot := NewEntrySlot(len(v))
				copy(slot.Buf, v)
				e, err := slot.Decode()
				if err != nil {
					return nil, 0, err
				}
				m.Entries = append(m.Entries, e)
			case 9:
				m.Snapshot = decodeSnapshot(v, nIDs)
			case 12:
				m.Context = alias(v)
			}
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			b = b[n:]
		}
	}
	return m, cost, nil
}

// setMsgApp makes blk a MsgApp with the given fields and returns it.
func (blk *msgBlock) setMsgApp(to, from, term, logTerm, index, commit uint64) *raftpb.Message {
	blk.typ, blk.to, blk.from, blk.term, blk.logTerm, blk.index, blk.commit =
		raftpb.MsgApp, to, from, term, logTerm, index, commit
	m := &blk.m
	m.Type, m.To, m.From, m.Term, m.LogTerm, m.Index, m.Commit =
		&blk.typ, &blk.to, &blk.from, &blk.term, &blk.logTerm, &blk.index, &blk.commit
	return m
}

// msg1Block holds a message of one entry and its entry slice (the entry
// lives in its own allocation: raft keeps it, and drops the message).
type msg1Block struct {
	msg  msgBlock
	ptrs [1]*raftpb.Entry
}

// decodeEntry decodes one entry into eb. An empty entry, or one of unknown
// fields only, is refused: raft gives every entry an index, and empty ones
// would let a few wire bytes cost EntryCost each.
func decodeEntry(eb *entryBlock, buf []byte) error {
	if len(buf) == 0 {
		return fmt.Errorf("%w: empty entry", ErrDegenerate)
	}
	e := &eb.e
	for b := buf; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num > protowire.MaxValidNumber {
			return ErrMalformed
		}
		b = b[n:]
		switch {
		case typ == protowire.VarintType && num >= 1 && num <= 3:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return ErrMalformed
			}
			b = b[n:]
			switch num {
			case 1:
				eb.typ, e.Type = raftpb.EntryType(int32(v)), &eb.typ
			case 2:
				eb.term, e.Term = v, &eb.term
			case 3:
				eb.index, e.Index = v, &eb.index
			}
		case typ == protowire.BytesType && num == 4:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return ErrMalformed
			}
			b = b[n:]
			e.Data = alias(v)
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return ErrMalformed
			}
			b = b[n:]
		}
	}
	if e.Type == nil && e.Term == nil && e.Index == nil && e.Data == nil {
		// Only unknown fields: it would re-encode as an empty entry.
		return fmt.Errorf("%w: empty entry", ErrDegenerate)
	}
	return nil
}

// scanSnapshot validates a Snapshot sub-message and counts the conf state
// IDs it holds, so that its decode can be charged and allocated at once.
// Repeated metadata or conf states, which proto would merge, are refused:
// raft sends each once.
func scanSnapshot(buf []byte) (ids int, err error) {
	nMeta := 0
	for b := buf; len(b) > 0; {
		num, typ, tagLen, n := consumeField(b)
		if n < 0 {
			return 0, ErrMalformed
		}
		if num == 2 && typ == protowire.BytesType {
			nMeta++
			v, _ := protowire.ConsumeBytes(b[tagLen:])
			c, k, err := scanMetadata(v)
			if err != nil {
				return 0, err
			}
			if c > 1 {
				return 0, fmt.Errorf("%w: repeated conf state", ErrDegenerate)
			}
			ids += k
		}
		b = b[n:]
	}
	if nMeta > 1 {
		return 0, fmt.Errorf("%w: repeated snapshot metadata", ErrDegenerate)
	}
	return ids, nil
}

// decodeSnapshot decodes a Snapshot sub-message that scanSnapshot accepted,
// holding nIDs conf state IDs. etcd 3.5 peers attach an empty one to every
// message, so it stays one allocation (two with IDs).
func decodeSnapshot(buf []byte, nIDs int) *raftpb.Snapshot {
	sb := new(snapBlock)
	var ids []uint64
	if nIDs > 0 {
		ids = make([]uint64, 0, nIDs)
	}
	for b := buf; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			b = b[n:]
			sb.s.Data = alias(v)
		case num == 2 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			b = b[n:]
			ids = decodeMetadata(sb, v, ids)
			sb.s.Metadata = &sb.md
		default:
			b = b[protowire.ConsumeFieldValue(num, typ, b):]
		}
	}
	return &sb.s
}

// scanMetadata validates a SnapshotMetadata and counts its conf states and
// the IDs they hold, so the decode pass can allocate once.
func scanMetadata(buf []byte) (confStates, ids int, err error) {
	for b := buf; len(b) > 0; {
		num, typ, tagLen, n := consumeField(b)
		if n < 0 {
			return 0, 0, ErrMalformed
		}
		if num == 1 && typ == protowire.BytesType {
			confStates++
			v, _ := protowire.ConsumeBytes(b[tagLen:])
			c, err := scanConfState(v)
			if err != nil {
				return 0, 0, err
			}
			ids += c
		}
		b = b[n:]
	}
	return confStates, ids, nil
}

// scanConfState validates a ConfState and counts the IDs in its four lists,
// packed or not.
func scanConfState(buf []byte) (int, error) {
	ids := 0
	for b := buf; len(b) > 0; {
		num, typ, tagLen, n := consumeField(b)
		if n < 0 {
			return 0, ErrMalformed
		}
		if num >= 1 && num <= 4 {
			switch typ {
			case protowire.VarintType:
				ids++
			case protowire.BytesType:
				v, _ := protowire.ConsumeBytes(b[tagLen:])
				for len(v) > 0 {
					_, k := protowire.ConsumeVarint(v)
					if k < 0 {
						return 0, ErrMalformed
					}
					v = v[k:]
					ids++
				}
			}
		}
		b = b[n:]
	}
	return ids, nil
}

// decodeMetadata fills sb's metadata from validated bytes, taking the conf
// state's IDs from ids (allocated by the caller with enough capacity).
func decodeMetadata(sb *snapBlock, buf []byte, ids []uint64) []uint64 {
	for b := buf; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			b = b[n:]
			ids = decodeConfState(sb, v, ids)
			sb.md.ConfState = &sb.cs
		case num == 2 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			b = b[n:]
			sb.index, sb.md.Index = v, &sb.index
		case num == 3 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			b = b[n:]
			sb.term, sb.md.Term = v, &sb.term
		default:
			b = b[protowire.ConsumeFieldValue(num, typ, b):]
		}
	}
	return ids
}

// decodeConfState fills sb's conf state. Each list is a sub-slice of ids with
// its capacity capped, so appending to one list cannot overwrite another.
func decodeConfState(sb *snapBlock, buf []byte, ids []uint64) []uint64 {
	// Entries of one list may be interleaved with others on the wire, so
	// gather list by list: one pass per list over a small message.
	lists := [4]*[]uint64{&sb.cs.Voters, &sb.cs.Learners, &sb.cs.VotersOutgoing, &sb.cs.LearnersNext}
	for i, dst := range lists {
		start := len(ids)
		want := protowire.Number(i + 1)
		for b := buf; len(b) > 0; {
			num, typ, n := protowire.ConsumeTag(b)
			b = b[n:]
			switch {
			case num == want && typ == protowire.VarintType:
				v, n := protowire.ConsumeVarint(b)
				b = b[n:]
				ids = append(ids, v)
			case num == want && typ == protowire.BytesType:
				v, n := protowire.ConsumeBytes(b)
				b = b[n:]
				for len(v) > 0 {
					x, k := protowire.ConsumeVarint(v)
					v = v[k:]
					ids = append(ids, x)
				}
			default:
				b = b[protowire.ConsumeFieldValue(num, typ, b):]
			}
		}
		if len(ids) > start {
			*dst = ids[start:len(ids):len(ids)]
		}
	}
	for b := buf; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		b = b[n:]
		if num == 5 && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			b = b[n:]
			sb.autoLeave, sb.cs.AutoLeave = v != 0, &sb.autoLeave
			continue
		}
		b = b[protowire.ConsumeFieldValue(num, typ, b):]
	}
	return ids
}

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

// fieldScanner reads an encoded message field by field, as bufio.Scanner
// reads lines: each call of next reads one field and leaves its tag and
// value in tag, v and data. It is the one place the decoders read protobuf;
// each decoder is a loop around it that dispatches on the encoder's tag
// constants.
//
// A scanner is declared before its loop, not in the for statement: next
// takes its address, and a for-statement variable whose address is taken
// is copied afresh at each iteration (Go 1.22 loop semantics), which made
// the conf state's decode a third slower.
type fieldScanner struct {
	b []byte // what is left to read
	// tag is the field's tag as the encoder writes it (field number << 3 |
	// wire type, see tagMsgType), so that the decoders and the encoder
	// share the schema's constants.
	tag uint64
	v   uint64 // a varint field's value
	// data is a length-delimited field's bytes, aliasing the scanned buffer.
	data []byte
	// bad is set when next stopped at malformed bytes rather than at the
	// end: a decoder checks it once, after its loop (a second pass over
	// fields a first pass validated need not).
	bad bool
}

// next reads the next field and reports whether there was one. Fields of
// other wire types than varint and length-delimited are validated and
// skipped, as proto.Unmarshal skips unknown fields, and field numbers beyond
// protobuf's range are refused, as proto.Unmarshal refuses them.
//
// It is one call per field, and reads inline the one-byte tag of every
// raftpb field: fewer calls than protowire's ConsumeTag, then a Consume call
// for the value.
func (s *fieldScanner) next() bool {
	b := s.b
	if len(b) == 0 {
		return false
	}
	tag, n := uint64(b[0]), 1
	if tag >= 0x80 {
		tag, n = protowire.ConsumeVarint(b)
	}
	num := protowire.Number(tag >> 3)
	if n < 0 || tag>>3 > uint64(protowire.MaxValidNumber) || num < protowire.MinValidNumber {
		return s.fail()
	}
	b = b[n:]
	switch typ := protowire.Type(tag & 7); typ {
	case protowire.VarintType:
		s.v, n = protowire.ConsumeVarint(b)
	case protowire.BytesType:
		s.data, n = protowire.ConsumeBytes(b)
	default:
		n = protowire.ConsumeFieldValue(num, typ, b)
	}
	if n < 0 {
		return s.fail()
	}
	s.tag, s.b = tag, b[n:]
	return true
}

// fail ends the scan at malformed bytes.
func (s *fieldScanner) fail() bool {
	s.b, s.bad = nil, true
	return false
}

// setOpt stores a decoded scalar in its block's slot and points the
// message's optional field at it: the scalars of a message live in the
// block the message does, so they cost no allocation of their own.
func setOpt[T any](slot *T, field **T, v T) {
	*slot = v
	*field = slot
}

// A fieldSetter stores a decoded field in its block B: v is a varint
// field's value, data a length-delimited field's bytes.
type fieldSetter[B any] func(blk *B, v uint64, data []byte)

// entryFields is the Entry's schema for its decoder, one line a field as in
// AppendEntry: by tag, what each field sets. A field without a setter is
// dropped.
var entryFields = [...]fieldSetter[entryBlock]{
	tagEntType:  func(eb *entryBlock, v uint64, _ []byte) { setOpt(&eb.typ, &eb.e.Type, raftpb.EntryType(int32(v))) },
	tagEntTerm:  func(eb *entryBlock, v uint64, _ []byte) { setOpt(&eb.term, &eb.e.Term, v) },
	tagEntIndex: func(eb *entryBlock, v uint64, _ []byte) { setOpt(&eb.index, &eb.e.Index, v) },
	tagEntData:  func(eb *entryBlock, _ uint64, data []byte) { eb.e.Data = alias(data) },
}

// msgFields is entryFields for the fields of a Message stored as they come;
// its entries and snapshot, decoded with what the first pass counted, are
// the decode loop's own.
var msgFields = [...]fieldSetter[msgBlock]{
	tagMsgType:       func(b *msgBlock, v uint64, _ []byte) { setOpt(&b.typ, &b.m.Type, raftpb.MessageType(int32(v))) },
	tagMsgTo:         func(b *msgBlock, v uint64, _ []byte) { setOpt(&b.to, &b.m.To, v) },
	tagMsgFrom:       func(b *msgBlock, v uint64, _ []byte) { setOpt(&b.from, &b.m.From, v) },
	tagMsgTerm:       func(b *msgBlock, v uint64, _ []byte) { setOpt(&b.term, &b.m.Term, v) },
	tagMsgLogTerm:    func(b *msgBlock, v uint64, _ []byte) { setOpt(&b.logTerm, &b.m.LogTerm, v) },
	tagMsgIndex:      func(b *msgBlock, v uint64, _ []byte) { setOpt(&b.index, &b.m.Index, v) },
	tagMsgCommit:     func(b *msgBlock, v uint64, _ []byte) { setOpt(&b.commit, &b.m.Commit, v) },
	tagMsgReject:     func(b *msgBlock, v uint64, _ []byte) { setOpt(&b.reject, &b.m.Reject, v != 0) },
	tagMsgRejectHint: func(b *msgBlock, v uint64, _ []byte) { setOpt(&b.rejectHint, &b.m.RejectHint, v) },
	tagMsgContext:    func(b *msgBlock, _ uint64, data []byte) { b.m.Context = alias(data) },
	tagMsgVote:       func(b *msgBlock, v uint64, _ []byte) { setOpt(&b.vote, &b.m.Vote, v) },
}

// setField stores the field fs has just read in blk, by the setter fields
// holds for its tag, and reports whether there was one.
func setField[B any](fields []fieldSetter[B], blk *B, fs *fieldScanner) bool {
	if fs.tag >= uint64(len(fields)) || fields[fs.tag] == nil {
		return false
	}
	fields[fs.tag](blk, fs.v, fs.data)
	return true
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
	fs := fieldScanner{b: buf}
	for fs.next() {
		switch fs.tag {
		case tagMsgEntries:
			// Every entry raft makes has an index: an empty one is not
			// raft's, and would cost 60 times its two bytes.
			if len(fs.data) == 0 {
				return nil, 0, fmt.Errorf("%w: empty entry", ErrDegenerate)
			}
			nEnt++
			entCost += EntryCost(len(fs.data))
		case tagMsgSnapshot:
			nSnap++
			ids, err := scanSnapshot(fs.data)
			if err != nil {
				return nil, 0, err
			}
			nIDs += ids
		case tagMsgResponses:
			// Responses are for raft's local storage threads and never
			// cross the network.
			return nil, 0, fmt.Errorf("%w: responses", ErrDegenerate)
		}
	}
	if fs.bad {
		return nil, 0, ErrMalformed
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
	// The first pass validated every field: this one need not check.
	fs = fieldScanner{b: buf}
	for fs.next() {
		if setField(msgFields[:], blk, &fs) {
			continue
		}
		switch fs.tag {
		case tagMsgEntries:
			// Each entry is copied into an allocation of its own, so
			// that a kept entry keeps neither buf nor its neighbours
			// alive (see EntrySlot).
			slot := NewEntrySlot(len(fs.data))
			copy(slot.Buf, fs.data)
			e, err := slot.Decode()
			if err != nil {
				return nil, 0, err
			}
			m.Entries = append(m.Entries, e)
		case tagMsgSnapshot:
			m.Snapshot = decodeSnapshot(fs.data, nIDs)
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
	fs := fieldScanner{b: buf}
	for fs.next() {
		setField(entryFields[:], eb, &fs)
	}
	if fs.bad {
		return ErrMalformed
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
	fs := fieldScanner{b: buf}
	for fs.next() {
		if fs.tag != tagSnapMetadata {
			continue
		}
		nMeta++
		c, k, err := scanMetadata(fs.data)
		if err != nil {
			return 0, err
		}
		if c > 1 {
			return 0, fmt.Errorf("%w: repeated conf state", ErrDegenerate)
		}
		ids += k
	}
	if fs.bad {
		return 0, ErrMalformed
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
	fs := fieldScanner{b: buf}
	for fs.next() {
		switch fs.tag {
		case tagSnapData:
			sb.s.Data = alias(fs.data)
		case tagSnapMetadata:
			ids = decodeMetadata(sb, fs.data, ids)
			sb.s.Metadata = &sb.md
		}
	}
	return &sb.s
}

// scanMetadata validates a SnapshotMetadata and counts its conf states and
// the IDs they hold, so the decode pass can allocate once.
func scanMetadata(buf []byte) (confStates, ids int, err error) {
	fs := fieldScanner{b: buf}
	for fs.next() {
		if fs.tag != tagMetaConfState {
			continue
		}
		confStates++
		c, err := scanConfState(fs.data)
		if err != nil {
			return 0, 0, err
		}
		ids += c
	}
	if fs.bad {
		return 0, 0, ErrMalformed
	}
	return confStates, ids, nil
}

// scanConfState validates a ConfState and counts the IDs in its four lists,
// packed or not.
func scanConfState(buf []byte) (int, error) {
	ids := 0
	fs := fieldScanner{b: buf}
	for fs.next() {
		switch fs.tag {
		case tagCSVoters, tagCSLearners, tagCSVotersOutgoing, tagCSLearnersNext:
			ids++
		case tagCSVotersPacked, tagCSLearnersPacked, tagCSVotersOutgoingPacked, tagCSLearnersNextPacked:
			n, ok := countVarints(fs.data)
			if !ok {
				return 0, ErrMalformed
			}
			ids += n
		}
	}
	if fs.bad {
		return 0, ErrMalformed
	}
	return ids, nil
}

// countVarints validates a packed run of varints and counts them.
func countVarints(b []byte) (n int, ok bool) {
	for len(b) > 0 {
		_, k := protowire.ConsumeVarint(b)
		if k < 0 {
			return 0, false
		}
		b = b[k:]
		n++
	}
	return n, true
}

// decodeMetadata fills sb's metadata from validated bytes, taking the conf
// state's IDs from ids (allocated by the caller with enough capacity).
func decodeMetadata(sb *snapBlock, buf []byte, ids []uint64) []uint64 {
	fs := fieldScanner{b: buf}
	for fs.next() {
		switch fs.tag {
		case tagMetaConfState:
			ids = decodeConfState(sb, fs.data, ids)
			sb.md.ConfState = &sb.cs
		case tagMetaIndex:
			setOpt(&sb.index, &sb.md.Index, fs.v)
		case tagMetaTerm:
			setOpt(&sb.term, &sb.md.Term, fs.v)
		}
	}
	return ids
}

// decodeConfState fills sb's conf state. Each list is a sub-slice of ids with
// its capacity capped, so appending to one list cannot overwrite another.
func decodeConfState(sb *snapBlock, buf []byte, ids []uint64) []uint64 {
	// Entries of one list may be interleaved with others on the wire, so
	// gather list by list: one pass per list over a small message.
	lists := [...]struct {
		tag, packed uint64
		dst         *[]uint64
	}{
		{tagCSVoters, tagCSVotersPacked, &sb.cs.Voters},
		{tagCSLearners, tagCSLearnersPacked, &sb.cs.Learners},
		{tagCSVotersOutgoing, tagCSVotersOutgoingPacked, &sb.cs.VotersOutgoing},
		{tagCSLearnersNext, tagCSLearnersNextPacked, &sb.cs.LearnersNext},
	}
	for _, l := range lists {
		start := len(ids)
		fs := fieldScanner{b: buf}
		for fs.next() {
			switch fs.tag {
			case l.tag:
				ids = append(ids, fs.v)
			case l.packed:
				for v := fs.data; len(v) > 0; {
					x, k := protowire.ConsumeVarint(v)
					v = v[k:]
					ids = append(ids, x)
				}
			}
		}
		if len(ids) > start {
			*l.dst = ids[start:len(ids):len(ids)]
		}
	}
	fs := fieldScanner{b: buf}
	for fs.next() {
		if fs.tag == tagCSAutoLeave {
			setOpt(&sb.autoLeave, &sb.cs.AutoLeave, fs.v != 0)
		}
	}
	return ids
}

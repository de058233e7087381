package rafthttp

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

// The msgappv2 stream (spec §3.3) carries MsgApp and link heartbeats. Each
// frame starts with a record type byte:
//
//	offset  size  content
//	0       1     record type
//	-- 0x00 link heartbeat: nothing follows
//	-- 0x01 AppEntries:
//	1       8     entry count N (big-endian)
//	        8+S   N times: entry size S, then S bytes of protobuf Entry
//	        8     commit index
//	-- 0x02 full MsgApp:
//	1       8     message length L
//	9       L     protobuf Message
//
// Encoder and decoder of one connection each track (term, index), starting
// at (0, 0). A MsgApp that continues exactly where the previous one ended, in
// the same term, travels as AppEntries: only its entries and commit index.
// The receiver rebuilds the rest from the state.
const (
	msgAppV2LinkHeartbeat byte = 0x00
	msgAppV2AppEntries    byte = 0x01
	msgAppV2MsgApp        byte = 0x02
)

// msgAppV2State is the (term, index) both ends of a msgappv2 connection keep
// in step: the term of the last full MsgApp and the index of the last entry
// sent.
type msgAppV2State struct {
	term, index uint64
}

// advance records what a full MsgApp leaves behind: its term, and its last
// entry's index, or its Index when it carries no entries.
func (s *msgAppV2State) advance(m *raftpb.Message) {
	s.term = m.GetTerm()
	if n := len(m.Entries); n > 0 {
		s.index = m.Entries[n-1].GetIndex()
	} else {
		s.index = m.GetIndex()
	}
}

// compact reports whether m continues the connection's log exactly, so that
// it can travel as AppEntries. This rule is what etcd's decoder assumes; it
// must stay byte-for-byte etcd's.
func (s *msgAppV2State) compact(m *raftpb.Message) bool {
	return m.GetIndex() == s.index && m.GetLogTerm() == s.term && m.GetLogTerm() == m.GetTerm()
}

// msgAppV2Encoder encodes the msgappv2 stream for one connection.
type msgAppV2Encoder struct {
	frameWriter
	state msgAppV2State
}

func newMsgAppV2Encoder(w io.Writer) *msgAppV2Encoder {
	return &msgAppV2Encoder{frameWriter: frameWriter{w: w}}
}

func (e *msgAppV2Encoder) encode(m *raftpb.Message) error {
	switch {
	case isLinkHeartbeat(m):
		e.buf = append(e.buf, msgAppV2LinkHeartbeat)
	case e.state.compact(m):
		b := append(e.buf, msgAppV2AppEntries)
		b = appendUint64(b, uint64(len(m.Entries)))
		for _, ent := range m.Entries { // a nil one is empty, as in proto
			b = raftproto.AppendEntry(appendUint64(b, uint64(raftproto.EntrySize(ent))), ent)
		}
		e.buf = appendUint64(b, m.GetCommit())
		e.state.index += uint64(len(m.Entries))
	default:
		e.buf = appendMessageFrame(append(e.buf, msgAppV2MsgApp), m)
		e.state.advance(m)
	}
	return e.maybeWrite()
}

// msgAppV2Decoder decodes the msgappv2 stream of one connection dialled from
// local to remote. AppEntries records do not carry From and To: they are the
// remote and local IDs the decoder was made with.
type msgAppV2Decoder struct {
	recvCharger
	r             *bufio.Reader
	local, remote uint64
	limit         uint64
	state         msgAppV2State
	hdr           [frameHeaderLen]byte
	scratch       []byte // raw entries of the AppEntries record being read
	ends          []int  // where each entry ends in scratch
}

// newMsgAppV2Decoder returns a decoder reading r. limit bounds the bytes of
// one record, as it bounds one message on the message stream.
func newMsgAppV2Decoder(r io.Reader, local, remote, limit uint64) *msgAppV2Decoder {
	// A record holds at least its count and commit; a smaller limit would
	// refuse everything.
	limit = max(limit, 2*frameHeaderLen)
	return &msgAppV2Decoder{r: bufio.NewReaderSize(r, decoderBufSize), local: local, remote: remote, limit: limit}
}

func (d *msgAppV2Decoder) decode() (*raftpb.Message, int, error) {
	typ, err := d.r.ReadByte()
	if err != nil {
		return nil, 0, err
	}
	switch typ {
	case msgAppV2LinkHeartbeat:
		return linkHeartbeat, 1, nil
	case msgAppV2AppEntries:
		m, n, err := d.decodeAppEntries()
		return m, 1 + n, err
	case msgAppV2MsgApp:
		m, n, err := readMessageFrame(d.r, d.hdr[:], d.limit, &d.recvCharger)
		if err != nil {
			return nil, 0, unexpectedEOF(err)
		}
		d.state.advance(m)
		return m, 1 + n, nil
	default:
		return nil, 0, fmt.Errorf("%w: failed to parse type %d in msgappv2 stream", ErrMalformedFrame, typ)
	}
}

// readUint64 reads a big-endian uint64 inside a record.
func (d *msgAppV2Decoder) readUint64() (uint64, error) {
	if _, err := io.ReadFull(d.r, d.hdr[:]); err != nil {
		return 0, unexpectedEOF(err)
	}
	return binary.BigEndian.Uint64(d.hdr[:]), nil
}

// readEntrySize reads the size of an AppEntries record's next entry,
// refusing one that would take the record, total bytes so far, over the
// limit before anything is allocated for it.
func (d *msgAppV2Decoder) readEntrySize(total uint64) (uint64, error) {
	size, err := d.readUint64()
	if err != nil {
		return 0, err
	}
	if size > d.limit-total {
		return 0, fmt.Errorf("msgappv2 entry of %d bytes after %d, limit %d: %w", size, total, d.limit, ErrExceedSizeLimit)
	}
	return size, nil
}

// decodeAppEntries reads an AppEntries record. The entries' raw bytes are
// gathered in reused scratch space (the stream's read buffer, as a frame is
// on the message stream); once the record is read, what the message will
// hold is charged, and each entry is copied into an allocation of its own
// (raftproto.EntrySlot), so that an entry raft keeps keeps nothing else
// alive. The count and every size are checked against the record limit
// before anything is allocated for them.
func (d *msgAppV2Decoder) decodeAppEntries() (*raftpb.Message, int, error) {
	count, err := d.readUint64()
	if err != nil {
		return nil, 0, err
	}
	total := uint64(2 * frameHeaderLen) // the count and the commit
	if count > (d.limit-total)/frameHeaderLen {
		return nil, 0, fmt.Errorf("msgappv2 record of %d entries, limit %d bytes: %w", count, d.limit, ErrExceedSizeLimit)
	}
	total += count * frameHeaderLen
	// What the entries will cost at least once decoded is known from the
	// count: refuse a record that cannot fit the budget before reading it.
	if err := d.fits(count*uint64(raftproto.EntryCost(0)) + total); err != nil {
		return nil, 0, err
	}
	if count == 1 {
		return d.decodeAppEntry(total)
	}
	scratch, ends := d.scratch[:0], d.ends[:0]
	defer func() {
		if cap(scratch) <= maxRetainedBuf {
			d.scratch = scratch[:0]
		}
		d.ends = ends[:0]
	}()
	cost := raftproto.MessageCost
	for range count {
		size, err := d.readEntrySize(total)
		if err != nil {
			return nil, 0, err
		}
		total += size
		if scratch, err = readBytes(d.r, scratch, int(size)); err != nil {
			return nil, 0, err
		}
		ends = append(ends, len(scratch))
		cost += raftproto.EntryCost(int(size))
	}
	commit, err := d.readUint64()
	if err != nil {
		return nil, 0, err
	}
	if err := d.Charge(cost); err != nil {
		return nil, 0, err
	}
	var ents []*raftpb.Entry
	if count > 0 {
		ents = make([]*raftpb.Entry, count)
		start := 0
		for i, end := range ends {
			slot := raftproto.NewEntrySlot(end - start)
			copy(slot.Buf, scratch[start:end])
			start = end
			if ents[i], err = slot.Decode(); err != nil {
				d.refund()
				return nil, 0, fmt.Errorf("%w: msgappv2 entry: %v", ErrMalformedFrame, err)
			}
		}
	}
	m := raftproto.NewMsgApp(d.local, d.remote, d.state.term, d.state.term, d.state.index, commit, ents)
	d.state.index += count
	return m, int(total), nil
}

// decodeAppEntry reads the rest of an AppEntries record of one entry, the
// common case, straight into the allocation the entry will live in
// (raftproto.EntrySlot: one allocation, two beyond 8 KiB), with no copy; the
// message with its entry slice is one more. total is the record's size so
// far, its entry excluded.
func (d *msgAppV2Decoder) decodeAppEntry(total uint64) (*raftpb.Message, int, error) {
	size, err := d.readEntrySize(total)
	if err != nil {
		return nil, 0, err
	}
	total += size
	// The message's block and the entry's slot, which holds its bytes.
	d.wire = 0
	if err := d.Charge(raftproto.MessageCost1 + raftproto.EntrySlotSize(int(size))); err != nil {
		return nil, 0, err
	}
	slot := raftproto.NewEntrySlot(int(size))
	if _, err := io.ReadFull(d.r, slot.Buf); err != nil {
		d.refund()
		return nil, 0, unexpectedEOF(err)
	}
	commit, err := d.readUint64()
	if err != nil {
		d.refund()
		return nil, 0, err
	}
	e, err := slot.Decode()
	if err != nil {
		d.refund()
		return nil, 0, fmt.Errorf("%w: msgappv2 entry: %v", ErrMalformedFrame, err)
	}
	m := raftproto.NewMsgApp1(d.local, d.remote, d.state.term, d.state.term, d.state.index, commit, e)
	d.state.index++
	return m, int(total), nil
}

func (d *msgAppV2Decoder) buffered() int { return d.r.Buffered() }

package raftproto

import "go.etcd.io/raft/v3/raftpb"

// Arena carves small decoded one-entry MsgApps, and the bytes of their
// entries, from larger allocations: one allocation per ArenaBlocks messages
// and one per ArenaChunk bytes of entries, instead of two per message; and
// the message blocks of MsgApps of more entries, ArenaBlocks at a time. It
// is for one decoder, not safe for concurrent use.
//
// The price is retention: a message, or an entry or its Data kept by raft or
// the application, keeps its whole block or chunk alive. Blocks and chunks
// hold consecutive messages of one stream, which raft keeps and releases in
// log order, so this stays near the memory the log needs anyway; an
// application that keeps a slice of one small entry's Data for long keeps up
// to ArenaChunk bytes.
type Arena struct {
	blocks []msgApp1Block
	msgs   []msgBlock // for messages of more entries
	chunk  []byte
}

const (
	ArenaBlocks  = 16      // messages per block allocation
	ArenaChunk   = 8 << 10 // bytes per chunk allocation
	ArenaMaxData = 1 << 10 // larger entries get their own allocation
)

// Bytes returns n bytes carved from the current chunk (a fresh one if it
// has too little left), with no room to grow into a neighbour; or nil if n
// is more than ArenaMaxData.
func (a *Arena) Bytes(n int) []byte {
	if n > ArenaMaxData {
		return nil
	}
	if len(a.chunk) < n {
		a.chunk = make([]byte, ArenaChunk)
	}
	b := a.chunk[:n:n]
	a.chunk = a.chunk[n:]
	return b
}

// NewMsgApp1 is NewMsgApp1 with the message block taken from the arena.
func (a *Arena) NewMsgApp1(to, from, term, logTerm, index, commit uint64, entry []byte) (*raftpb.Message, error) {
	if len(a.blocks) == 0 {
		a.blocks = make([]msgApp1Block, ArenaBlocks)
	}
	m, err := a.blocks[0].fill(to, from, term, logTerm, index, commit, entry)
	if err != nil {
		return nil, err // the block, zero again, serves the next message
	}
	a.blocks = a.blocks[1:]
	return m, nil
}

// NewMsgApp is NewMsgApp with the message block taken from the arena.
func (a *Arena) NewMsgApp(to, from, term, logTerm, index, commit uint64, ents []*raftpb.Entry) *raftpb.Message {
	if len(a.msgs) == 0 {
		a.msgs = make([]msgBlock, ArenaBlocks)
	}
	m := a.msgs[0].setMsgApp(to, from, term, logTerm, index, commit)
	a.msgs = a.msgs[1:]
	m.Entries = ents
	return m
}

package raftproto

import "go.etcd.io/raft/v3/raftpb"

// Arena carves the blocks of the MsgApps one msgappv2 decoder rebuilds,
// ArenaBlocks at a time, instead of one allocation per message. It is for
// one decoder, not safe for concurrent use.
//
// Only message blocks come from it: raft drops a message once it has
// stepped it, and keeps the entries, which live in allocations of their own
// (EntrySlot). An application that keeps a Message keeps its block's
// neighbours too: up to ArenaBlocks messages' blocks (about 4.5 KiB).
type Arena struct {
	msgs  []msgBlock  // for messages of several entries, or none
	msgs1 []msg1Block // for messages of one entry
}

// ArenaBlocks is how many message blocks one allocation holds.
const ArenaBlocks = 16

// NewMsgApp returns a MsgApp with the given fields set, the shape the
// msgappv2 decoder rebuilds from a compact AppEntries record. Its message
// block comes from the arena, so that consecutive messages share one
// allocation.
func (a *Arena) NewMsgApp(to, from, term, logTerm, index, commit uint64, ents []*raftpb.Entry) *raftpb.Message {
	if len(a.msgs) == 0 {
		a.msgs = make([]msgBlock, ArenaBlocks)
	}
	m := a.msgs[0].setMsgApp(to, from, term, logTerm, index, commit)
	a.msgs = a.msgs[1:]
	m.Entries = ents
	return m
}

// NewMsgApp1 returns a MsgApp carrying the one entry e, the most common
// append: its message block and its one-element entry slice both come from
// the arena.
func (a *Arena) NewMsgApp1(to, from, term, logTerm, index, commit uint64, e *raftpb.Entry) *raftpb.Message {
	if len(a.msgs1) == 0 {
		a.msgs1 = make([]msg1Block, ArenaBlocks)
	}
	b := &a.msgs1[0]
	a.msgs1 = a.msgs1[1:]
	m := b.msg.setMsgApp(to, from, term, logTerm, index, commit)
	b.ptrs[0] = e
	m.Entries = b.ptrs[:]
	return m
}

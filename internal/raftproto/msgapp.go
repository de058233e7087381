package raftproto

import "go.etcd.io/raft/v3/raftpb"

// The msgappv2 decoder rebuilds MsgApps from compact AppEntries records
// with these two constructors. Each message is one allocation of its own,
// the scalar fields' storage with it, so that raft, which drops a message
// once it has stepped it, frees it alone, and an application that keeps one
// keeps nothing else. (Blocks carved 16 at a time from a per-stream arena
// saved 0.9 allocations per message and 4-5 % of the CPU per 1x128 B
// message in compat/bench, but nothing measurable in its raft cluster,
// while making each message 16 bytes dearer and a kept message hold its
// neighbours: see compat/BENCHMARKS.md, issue 17.)

// NewMsgApp returns a MsgApp with the given fields set and ents as its
// entries.
func NewMsgApp(to, from, term, logTerm, index, commit uint64, ents []*raftpb.Entry) *raftpb.Message {
	b := new(msgBlock)
	m := b.setMsgApp(to, from, term, logTerm, index, commit)
	m.Entries = ents
	return m
}

// NewMsgApp1 returns a MsgApp carrying the one entry e, the most common
// append: the message and its one-element entry slice are one allocation.
func NewMsgApp1(to, from, term, logTerm, index, commit uint64, e *raftpb.Entry) *raftpb.Message {
	b := new(msg1Block)
	m := b.msg.setMsgApp(to, from, term, logTerm, index, commit)
	b.ptrs[0] = e
	m.Entries = b.ptrs[:]
	return m
}

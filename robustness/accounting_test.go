package robustness

import (
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"maps"
	"slices"
	"sync"

	"go.etcd.io/raft/v3/raftpb"
)

// tally counts the messages for one member. Sent is what the other
// members' Ready loops gave their transports for it (Send, and
// SendSnapshot), processed what its transport gave its Raft (Process),
// dropped what the transports counted as dropped on the way to it (the
// senders', or its own for proposals), snapFailed the SendSnapshots to it
// that ended in an error.
//
// Counts go by recipient, not by ordered pair: the receiving side sees the
// From of a message, not who sent it, and raft forwards proposals and read
// requests with their From unchanged (a follower that loses the lead passes
// a MsgReadIndex of member 3 on to member 3 itself).
type tally struct {
	sent, processed, dropped, snapFailed uint64
}

func (t tally) minus(o tally) tally {
	return tally{t.sent - o.sent, t.processed - o.processed, t.dropped - o.dropped, t.snapFailed - o.snapFailed}
}

// copies is how often one message content was sent to and processed by a
// member, and what it was, to describe it.
type copies struct {
	sent, processed         int
	typ                     raftpb.MessageType
	from, term, index, ents uint64
}

// accounting counts every message between the members of a run, by
// recipient and by content, over every incarnation of each member (a
// restarted member's messages add to the counts). It is safe for
// concurrent use.
type accounting struct {
	seed maphash.Seed

	mu       sync.Mutex
	byTo     map[uint64]*tally
	contents map[uint64]map[uint64]*copies // by recipient, then content hash
}

func newAccounting() *accounting {
	return &accounting{seed: maphash.MakeSeed(), byTo: map[uint64]*tally{}, contents: map[uint64]map[uint64]*copies{}}
}

// entryLocked returns the counts of m's content to member to; a.mu must be
// held.
func (a *accounting) entryLocked(to uint64, m *raftpb.Message) *copies {
	byHash := a.contents[to]
	if byHash == nil {
		byHash = map[uint64]*copies{}
		a.contents[to] = byHash
	}
	h := a.hash(m)
	c := byHash[h]
	if c == nil {
		c = &copies{typ: m.GetType(), from: m.GetFrom(), term: m.GetTerm(), index: m.GetIndex(), ents: uint64(len(m.GetEntries()))}
		if m.GetType() == raftpb.MsgSnap {
			c.index = m.GetSnapshot().GetMetadata().GetIndex()
		}
		byHash[h] = c
	}
	return c
}

func (a *accounting) tallyLocked(to uint64) *tally {
	t := a.byTo[to]
	if t == nil {
		t = &tally{}
		a.byTo[to] = t
	}
	return t
}

// sent counts the messages a member gave its transport.
func (a *accounting) sent(msgs []*raftpb.Message) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range msgs {
		a.tallyLocked(m.GetTo()).sent++
		a.entryLocked(m.GetTo(), m).sent++
	}
}

// processed counts a message to's transport gave its Raft.
func (a *accounting) processed(to uint64, m *raftpb.Message) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.tallyLocked(to).processed++
	a.entryLocked(to, m).processed++
}

// snapFailed counts a SendSnapshot to member to that failed.
func (a *accounting) snapFailed(to uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.tallyLocked(to).snapFailed++
}

// tallies returns the counts of every member, with the transports' drop
// counts as dropped.
func (a *accounting) tallies(dropped map[uint64]uint64) map[uint64]tally {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[uint64]tally{}
	for to, t := range a.byTo {
		out[to] = *t
	}
	for to, n := range dropped {
		t := out[to]
		t.dropped = n
		out[to] = t
	}
	return out
}

// extraDeliveries describes the messages processed more often than they
// were sent: delivered twice, or never sent (altered on the way). A
// transport that loses messages under faults still never does that.
func (a *accounting) extraDeliveries() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, to := range slices.Sorted(maps.Keys(a.contents)) {
		for _, c := range a.contents[to] {
			if c.processed > c.sent {
				out = append(out, fmt.Sprintf("to %d: %v from %d (term %d, index %d, %d entries) processed %d times, sent %d times",
					to, c.typ, c.from, c.term, c.index, c.ents, c.processed, c.sent))
			}
		}
	}
	slices.Sort(out)
	return out
}

// hash is a digest of every field of m that raft reads, so that the same
// message hashes the same whichever codec carried it (a field encoded as
// absent or as zero reads the same). Responses are left out: only local
// messages have them.
func (a *accounting) hash(m *raftpb.Message) uint64 {
	var h maphash.Hash
	h.SetSeed(a.seed)
	var b [8]byte
	u := func(v uint64) {
		binary.LittleEndian.PutUint64(b[:], v)
		h.Write(b[:])
	}
	bytes := func(p []byte) {
		u(uint64(len(p)))
		h.Write(p)
	}
	u(uint64(m.GetType()))
	u(m.GetTo())
	u(m.GetFrom())
	u(m.GetTerm())
	u(m.GetLogTerm())
	u(m.GetIndex())
	u(m.GetCommit())
	u(m.GetVote())
	if m.GetReject() {
		u(1)
	} else {
		u(0)
	}
	u(m.GetRejectHint())
	bytes(m.GetContext())
	u(uint64(len(m.GetEntries())))
	for _, e := range m.GetEntries() {
		u(e.GetTerm())
		u(e.GetIndex())
		u(uint64(e.GetType()))
		bytes(e.GetData())
	}
	if s := m.GetSnapshot(); s != nil {
		md := s.GetMetadata()
		u(md.GetIndex())
		u(md.GetTerm())
		cs := md.GetConfState()
		for _, ids := range [][]uint64{cs.GetVoters(), cs.GetLearners(), cs.GetVotersOutgoing(), cs.GetLearnersNext()} {
			u(uint64(len(ids)))
			for _, id := range ids {
				u(id)
			}
		}
		bytes(s.GetData())
	}
	return h.Sum64()
}

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

// pair is an ordered pair of members: the messages from sends to to.
type pair struct{ from, to uint64 }

func (p pair) String() string { return fmt.Sprintf("%d->%d", p.from, p.to) }

// tally counts a pair's messages. Sent is what the sender's Ready loop gave
// its transport (Send, and SendSnapshot), processed what the receiver's
// transport gave its Raft (Process), dropped what the transports counted as
// dropped (the sender's, or the receiver's for proposals), snapFailed the
// SendSnapshots that ended in an error.
type tally struct {
	sent, processed, dropped, snapFailed uint64
}

func (t tally) minus(o tally) tally {
	return tally{t.sent - o.sent, t.processed - o.processed, t.dropped - o.dropped, t.snapFailed - o.snapFailed}
}

// copies is how often one message content was sent and processed on a
// pair, and what it was, to describe it.
type copies struct {
	sent, processed    int
	typ                raftpb.MessageType
	term, index, count uint64 // count: its entries
}

// accounting counts every message between the members of a run, by pair
// and by content, over every incarnation of each member (a restarted
// member's messages add to its pair's counts). It is safe for concurrent
// use.
type accounting struct {
	seed maphash.Seed

	mu       sync.Mutex
	byPair   map[pair]*tally
	contents map[pair]map[uint64]*copies
}

func newAccounting() *accounting {
	return &accounting{seed: maphash.MakeSeed(), byPair: map[pair]*tally{}, contents: map[pair]map[uint64]*copies{}}
}

// entryLocked returns the counts of m's content on p; a.mu must be held.
func (a *accounting) entryLocked(p pair, m *raftpb.Message) *copies {
	byHash := a.contents[p]
	if byHash == nil {
		byHash = map[uint64]*copies{}
		a.contents[p] = byHash
	}
	h := a.hash(m)
	c := byHash[h]
	if c == nil {
		c = &copies{typ: m.GetType(), term: m.GetTerm(), index: m.GetIndex(), count: uint64(len(m.GetEntries()))}
		byHash[h] = c
	}
	return c
}

func (a *accounting) tallyLocked(p pair) *tally {
	t := a.byPair[p]
	if t == nil {
		t = &tally{}
		a.byPair[p] = t
	}
	return t
}

// sent counts the messages from gave its transport.
func (a *accounting) sent(from uint64, msgs []*raftpb.Message) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range msgs {
		p := pair{from, m.GetTo()}
		a.tallyLocked(p).sent++
		a.entryLocked(p, m).sent++
	}
}

// processed counts a message to's transport gave its Raft.
func (a *accounting) processed(to uint64, m *raftpb.Message) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := pair{m.GetFrom(), to}
	a.tallyLocked(p).processed++
	a.entryLocked(p, m).processed++
}

// snapFailed counts a SendSnapshot from from to to that failed.
func (a *accounting) snapFailed(from, to uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.tallyLocked(pair{from, to}).snapFailed++
}

// tallies returns the counts of every pair, with the transports' drop
// counts as dropped.
func (a *accounting) tallies(dropped map[pair]uint64) map[pair]tally {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[pair]tally{}
	for p, t := range a.byPair {
		out[p] = *t
	}
	for p, n := range dropped {
		t := out[p]
		t.dropped = n
		out[p] = t
	}
	return out
}

// extraDeliveries returns, for each pair, the messages processed more often
// than they were sent: delivered twice, or never sent (altered on the way).
// A transport that loses messages under faults still never does that.
func (a *accounting) extraDeliveries() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, p := range slices.SortedFunc(maps.Keys(a.contents), comparePairs) {
		for _, c := range a.contents[p] {
			if c.processed > c.sent {
				out = append(out, fmt.Sprintf("%v: %v (term %d, index %d, %d entries) processed %d times, sent %d times",
					p, c.typ, c.term, c.index, c.count, c.processed, c.sent))
			}
		}
	}
	slices.Sort(out)
	return out
}

func comparePairs(x, y pair) int {
	if x.from != y.from {
		return int(x.from) - int(y.from)
	}
	return int(x.to) - int(y.to)
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

package rafthttp

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/raftkit/rafthttp/internal/rafttest"
	"go.etcd.io/raft/v3"
)

// This file runs real go.etcd.io/raft/v3 nodes over the transport: each
// member has its own Transport behind its own HTTP server on 127.0.0.1, and
// its own Ready loop, as an application would.

// clusterTick is the raft tick of the test clusters: with ElectionTick 10 a
// follower campaigns after 100-200 ms without a leader.
const clusterTick = 10 * time.Millisecond

// The shared member is the Raft our Transport reports to.
var _ Raft = (*rafttest.Member)(nil)

// raftMember is one raft node with its Ready loop (rafttest.Member) on its
// own Transport behind its own HTTP server.
type raftMember struct {
	*rafttest.Member
	net *testNode
}

// memberOptions adjusts a member built by newRaftMember.
type memberOptions struct {
	// etcdRaft turns on CheckQuorum and PreVote, as etcd runs raft: a
	// leader that hears from no quorum steps down, and a member that
	// cannot win does not disrupt the others.
	etcdRaft bool
	// storage, if set, is the storage of a member that restarts from it
	// (raft.RestartNode) instead of starting anew.
	storage *raft.MemoryStorage
	// node adjusts the member's transport and server.
	node []nodeOption
}

// newRaftMember builds member id of a cluster of peers (or restarts it, see
// memberOptions), with its transport behind its own server; start runs its
// Ready loop.
func newRaftMember(t testing.TB, id uint64, peers []uint64, o memberOptions) *raftMember {
	t.Helper()
	m := rafttest.NewMember(t, id, peers, rafttest.Config{Tick: clusterTick, ElectionTick: 10,
		CheckQuorum: o.etcdRaft, PreVote: o.etcdRaft, Storage: o.storage})
	return &raftMember{Member: m, net: newNode(t, append([]nodeOption{withID(id), withRaft(m)}, o.node...)...)}
}

// start runs the Ready loop. The loop stops at the end of the test before
// the transport and the server, as an application shuts down.
func (m *raftMember) start() { m.Run(m.net.tr) }

// stop ends the member as a crash would, but cleanly: the Ready loop, the
// raft node, the transport, then the HTTP server. Idempotent.
func (m *raftMember) stop() {
	m.Stop()
	m.net.close()
}

// appliedData returns the data of the normal entries applied so far (the
// empty ones raft appends on taking the lead left out), and the loop's
// error.
func (m *raftMember) appliedData() ([]string, error) {
	var out []string
	for _, a := range m.Applied() {
		if a.Data != "" {
			out = append(out, a.Data)
		}
	}
	return out, m.Err()
}

// raftCluster is a set of members that know each other.
type raftCluster struct {
	t       testing.TB
	members map[uint64]*raftMember
}

// newRaftCluster starts n members with IDs 1..n, connects their transports
// and starts their Ready loops.
func newRaftCluster(t testing.TB, n int) *raftCluster {
	t.Helper()
	peers := make([]uint64, n)
	for i := range peers {
		peers[i] = uint64(i + 1)
	}
	c := &raftCluster{t: t, members: map[uint64]*raftMember{}}
	nets := make([]*testNode, 0, n)
	for _, id := range peers {
		m := newRaftMember(t, id, peers, memberOptions{})
		c.members[id] = m
		nets = append(nets, m.net)
	}
	connect(t, nets...)
	for _, m := range c.members {
		m.start()
	}
	return c
}

// live returns the members still running, by ID.
func (c *raftCluster) live() []*raftMember {
	var out []*raftMember
	for _, id := range slices.Sorted(maps.Keys(c.members)) {
		out = append(out, c.members[id])
	}
	return out
}

// crash stops a member and forgets it.
func (c *raftCluster) crash(id uint64) {
	c.members[id].stop()
	delete(c.members, id)
}

// agreedLeader returns the leader every live member follows, if they agree
// and that member says it leads.
func (c *raftCluster) agreedLeader() (uint64, bool) {
	var lead uint64
	for _, m := range c.live() {
		l := m.Lead()
		if l == 0 || (lead != 0 && l != lead) {
			return 0, false
		}
		lead = l
	}
	lm, ok := c.members[lead]
	return lead, ok && lm.IsLeader()
}

// waitLeader waits until the live members agree on a leader.
func (c *raftCluster) waitLeader() uint64 {
	c.t.Helper()
	var lead uint64
	waitFor(c.t, "the members to agree on a leader", func() bool {
		var ok bool
		lead, ok = c.agreedLeader()
		return ok
	})
	return lead
}

// maxTerm returns the highest term among the live members.
func (c *raftCluster) maxTerm() uint64 {
	var term uint64
	for _, m := range c.live() {
		term = max(term, m.Node().Status().GetTerm())
	}
	return term
}

// commit proposes every datum through via(i) and waits until every live
// member has applied all of them, in the same order. Proposals may be lost
// when the leader changes: only then are the missing ones proposed again,
// through the leader, so duplicates are possible only then. It returns the
// applied sequence all members share, and whether it re-proposed.
func (c *raftCluster) commit(data []string, via func(i int) *raftMember) ([]string, bool) {
	c.t.Helper()
	term := c.maxTerm()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i, d := range data {
		if err := via(i).Node().Propose(ctx, []byte(d)); err != nil {
			c.t.Logf("proposal %d through %d: %v", i, via(i).ID(), err)
		}
	}

	reproposed := false
	lastRound := time.Now()
	var seqs map[uint64][]string
	waitFor(c.t, fmt.Sprintf("%d proposals to be applied by every member", len(data)), func() bool {
		seqs = map[uint64][]string{}
		var missing []string
		for _, m := range c.live() {
			seq, err := m.appliedData()
			if err != nil {
				c.t.Fatalf("member %d: %v", m.ID(), err)
			}
			seqs[m.ID()] = seq
			have := map[string]bool{}
			for _, d := range seq {
				have[d] = true
			}
			for _, d := range data {
				if !have[d] && !slices.Contains(missing, d) {
					missing = append(missing, d)
				}
			}
		}
		if len(missing) == 0 {
			n := -1
			for _, seq := range seqs {
				if n >= 0 && len(seq) != n {
					return false
				}
				n = len(seq)
			}
			return true
		}
		if time.Since(lastRound) > time.Second && c.maxTerm() != term {
			lead, ok := c.agreedLeader()
			if ok {
				c.t.Logf("leader changed (term %d to %d): proposing %d lost proposals again through %d",
					term, c.maxTerm(), len(missing), lead)
				term, reproposed, lastRound = c.maxTerm(), true, time.Now()
				for _, d := range missing {
					if err := c.members[lead].Node().Propose(ctx, []byte(d)); err != nil {
						c.t.Logf("proposal again through %d: %v", lead, err)
					}
				}
			}
		}
		return false
	})

	var want []string
	for id, seq := range seqs {
		if want == nil {
			want = seq
			continue
		}
		if !slices.Equal(seq, want) {
			c.t.Fatalf("member %d applied %d entries differing from another member's %d: got %.80q, want %.80q",
				id, len(seq), len(want), seq, want)
		}
	}
	return want, reproposed
}

func proposals(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return out
}

// checkApplied checks that seq holds every datum of data, exactly once
// unless some were proposed twice.
func checkApplied(t *testing.T, seq, data []string, reproposed bool) {
	t.Helper()
	count := map[string]int{}
	for _, d := range seq {
		count[d]++
	}
	for _, d := range data {
		switch n := count[d]; {
		case n == 0:
			t.Errorf("%s: applied 0 times, want 1", d)
		case n > 1 && !reproposed:
			t.Errorf("%s: applied %d times, want 1", d, n)
		}
	}
}

// TestRaftClusterElectsAndCommits runs three raft nodes over the transport:
// they elect a leader and commit 1,000 proposals made through every node in
// turn (a follower forwards its proposals to the leader as MsgProp), and
// every node applies the same entries in the same order.
func TestRaftClusterElectsAndCommits(t *testing.T) {
	start := time.Now()
	c := newRaftCluster(t, 3)
	lead := c.waitLeader()
	elected := time.Since(start)
	t.Logf("elected leader %d in %v", lead, elected)

	const n = 1000
	data := proposals("p", n)
	members := c.live()
	start = time.Now()
	seq, reproposed := c.commit(data, func(i int) *raftMember { return members[i%len(members)] })
	took := time.Since(start)
	t.Logf("committed and applied %d proposals on 3 members in %v: %.0f proposals/s", n, took, n/took.Seconds())

	if !reproposed && len(seq) != n {
		t.Errorf("applied %d entries, want %d", len(seq), n)
	}
	checkApplied(t, seq, data, reproposed)
	// Proposals made through one member are applied in the order made:
	// raft keeps a member's forwarded proposals in order over one stream.
	if !reproposed {
		for _, m := range members {
			var mine []string
			for _, d := range seq {
				var i int
				if _, err := fmt.Sscanf(d, "p-%d", &i); err == nil && members[i%len(members)] == m {
					mine = append(mine, d)
				}
			}
			if !slices.IsSorted(mine) {
				t.Errorf("proposals through member %d applied out of order: %.80q", m.ID(), mine)
			}
		}
	}
}

// TestRaftClusterLeaderStopped stops the leader, transport and HTTP server
// included: the two others elect a new leader between them and still commit.
func TestRaftClusterLeaderStopped(t *testing.T) {
	if testing.Short() {
		t.Skip("elects twice")
	}
	c := newRaftCluster(t, 3)
	old := c.waitLeader()
	members := c.live()
	before, _ := c.commit(proposals("before", 100), func(i int) *raftMember { return members[i%len(members)] })
	oldApplied, _ := c.members[old].appliedData()

	stopped := time.Now()
	c.crash(old)
	lead := c.waitLeader()
	t.Logf("member %d elected in %v after leader %d stopped", lead, time.Since(stopped), old)
	if lead == old {
		t.Fatalf("got leader %d, want a member other than the stopped %d", lead, old)
	}

	survivors := c.live()
	if len(survivors) != 2 {
		t.Fatalf("got %d live members, want 2", len(survivors))
	}
	data := proposals("after", 100)
	seq, reproposed := c.commit(data, func(i int) *raftMember { return survivors[i%len(survivors)] })
	if !slices.Equal(seq[:min(len(before), len(seq))], before) {
		t.Errorf("survivors' first entries: got %.80q, want what was committed before, %.80q", seq, before)
	}
	if !slices.Equal(oldApplied, before) {
		t.Errorf("stopped leader applied %.80q, want %.80q", oldApplied, before)
	}
	checkApplied(t, seq[len(before):], data, reproposed)
}

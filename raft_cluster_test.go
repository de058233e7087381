package rafthttp

import (
	"context"
	"fmt"
	"io"
	"log"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// This file runs real go.etcd.io/raft/v3 nodes over the transport: each
// member has its own Transport behind its own HTTP server on 127.0.0.1, and
// its own Ready loop, as an application would.

// raftAdapter connects a Transport to a raft.Node.
type raftAdapter struct{ node raft.Node }

func (a *raftAdapter) Process(ctx context.Context, m *raftpb.Message) error {
	return a.node.Step(ctx, m)
}

func (a *raftAdapter) IsIDRemoved(uint64) bool { return false }

func (a *raftAdapter) ReportUnreachable(id uint64) { a.node.ReportUnreachable(id) }

func (a *raftAdapter) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	a.node.ReportSnapshot(id, status)
}

// clusterTick is the raft tick of the test clusters: with ElectionTick 10 a
// follower campaigns after 100-200 ms without a leader.
const clusterTick = 10 * time.Millisecond

// raftMember is one raft node with its transport and Ready loop. It records
// the data of the normal entries it applies, in order.
type raftMember struct {
	t       testing.TB
	id      uint64
	node    raft.Node
	storage *raft.MemoryStorage
	net     *testNode

	stopc    chan struct{}
	done     chan struct{}
	stopOnce sync.Once

	lead  atomic.Uint64 // leader as of the last SoftState
	state atomic.Uint64 // raft.StateType as of the last SoftState

	mu      sync.Mutex
	applied []string
	err     error // first storage or decoding error of the Ready loop
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
func newRaftMember(t testing.TB, id uint64, peers []raft.Peer, o memberOptions) *raftMember {
	t.Helper()
	storage := o.storage
	if storage == nil {
		storage = raft.NewMemoryStorage()
	}
	m := &raftMember{t: t, id: id, storage: storage, stopc: make(chan struct{}), done: make(chan struct{})}
	cfg := &raft.Config{
		ID:              id,
		ElectionTick:    10,
		HeartbeatTick:   1,
		Storage:         storage,
		MaxSizePerMsg:   1 << 20,
		MaxInflightMsgs: 256,
		CheckQuorum:     o.etcdRaft,
		PreVote:         o.etcdRaft,
		Logger:          &raft.DefaultLogger{Logger: log.New(io.Discard, "", 0)},
	}
	if o.storage != nil {
		m.node = raft.RestartNode(cfg)
	} else {
		m.node = raft.StartNode(cfg, peers)
	}
	// Registered first, so it runs last: covers a failing newNode.
	t.Cleanup(m.node.Stop)
	m.net = newNode(t, append([]nodeOption{withID(id), withRaft(&raftAdapter{node: m.node})}, o.node...)...)
	// Registered after newNode, so it runs first: the Ready loop and the
	// node stop before the transport and the server.
	t.Cleanup(m.stop)
	return m
}

// start runs the Ready loop.
func (m *raftMember) start() { go m.run() }

// stop ends the member as a crash would, but cleanly: the Ready loop, the
// raft node, the transport, then the HTTP server. Idempotent.
func (m *raftMember) stop() {
	m.stopOnce.Do(func() {
		close(m.stopc)
		<-m.done
		m.node.Stop()
		m.net.close()
	})
}

func (m *raftMember) run() {
	defer close(m.done)
	ticker := time.NewTicker(clusterTick)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
			m.node.Tick()
		case rd := <-m.node.Ready():
			if err := m.handleReady(rd); err != nil {
				m.mu.Lock()
				if m.err == nil {
					m.err = err
				}
				m.mu.Unlock()
			}
			m.node.Advance()
		case <-m.stopc:
			return
		}
	}
}

// handleReady persists, sends and applies one Ready, in the order raft's
// documentation prescribes.
func (m *raftMember) handleReady(rd raft.Ready) error {
	if rd.SoftState != nil {
		m.lead.Store(rd.SoftState.Lead)
		m.state.Store(uint64(rd.SoftState.RaftState))
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := m.storage.ApplySnapshot(rd.Snapshot); err != nil {
			return fmt.Errorf("ApplySnapshot: %w", err)
		}
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		if err := m.storage.SetHardState(rd.HardState); err != nil {
			return fmt.Errorf("SetHardState: %w", err)
		}
	}
	if err := m.storage.Append(rd.Entries); err != nil {
		return fmt.Errorf("Append: %w", err)
	}
	m.net.tr.Send(rd.Messages)
	for _, e := range rd.CommittedEntries {
		switch e.GetType() {
		case raftpb.EntryNormal:
			if len(e.GetData()) > 0 {
				m.mu.Lock()
				m.applied = append(m.applied, string(e.GetData()))
				m.mu.Unlock()
			}
		case raftpb.EntryConfChange:
			var cc raftpb.ConfChange
			if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
				return fmt.Errorf("entry %d: ConfChange: %w", e.GetIndex(), err)
			}
			m.node.ApplyConfChange(&cc)
		case raftpb.EntryConfChangeV2:
			var cc raftpb.ConfChangeV2
			if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
				return fmt.Errorf("entry %d: ConfChangeV2: %w", e.GetIndex(), err)
			}
			m.node.ApplyConfChange(&cc)
		}
	}
	return nil
}

// appliedData returns a copy of the data applied so far, and the loop's
// first error.
func (m *raftMember) appliedData() ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.applied), m.err
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
	peers := make([]raft.Peer, n)
	for i := range peers {
		peers[i] = raft.Peer{ID: uint64(i + 1)}
	}
	c := &raftCluster{t: t, members: map[uint64]*raftMember{}}
	nets := make([]*testNode, 0, n)
	for _, p := range peers {
		m := newRaftMember(t, p.ID, peers, memberOptions{})
		c.members[p.ID] = m
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
		l := m.lead.Load()
		if l == 0 || (lead != 0 && l != lead) {
			return 0, false
		}
		lead = l
	}
	lm, ok := c.members[lead]
	return lead, ok && raft.StateType(lm.state.Load()) == raft.StateLeader
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
		term = max(term, m.node.Status().GetTerm())
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
		if err := via(i).node.Propose(ctx, []byte(d)); err != nil {
			c.t.Logf("proposal %d through %d: %v", i, via(i).id, err)
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
				c.t.Fatalf("member %d: %v", m.id, err)
			}
			seqs[m.id] = seq
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
					if err := c.members[lead].node.Propose(ctx, []byte(d)); err != nil {
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
				t.Errorf("proposals through member %d applied out of order: %.80q", m.id, mine)
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

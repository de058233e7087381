package rafthttp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/goleak"

	"github.com/raftkit/rafthttp/internal/rafttest"
)

// This file runs many go.etcd.io/raft/v3 groups over few listeners: three
// hosts (processes), each one HTTP server with a Mux and one HostPool,
// serving one member of every group.

// groupMember is one member of one raft group: a raft node with its Ready
// loop (rafttest.Member) whose Process first checks that the message is
// of its group. Each group's members have IDs of their own (group<<8 |
// member), and each group's entries data of its own ("g<group>/..."), so
// that a message of another group, whatever its type, is told apart.
type groupMember struct {
	*rafttest.Member
	group   int
	members []uint64
	foreign *foreignLog
}

// foreignLog collects the messages that reached another group's Process.
type foreignLog struct {
	mu   sync.Mutex
	msgs []string
}

func (l *foreignLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, s)
}

func (l *foreignLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.msgs)
}

// errForeign refuses a message of another group.
var errForeign = errors.New("message of another raft group")

func (m *groupMember) Process(ctx context.Context, msg *raftpb.Message) error {
	if !m.ours(msg) {
		m.foreign.add(fmt.Sprintf("group %d member %x got %v from %x to %x", m.group, m.ID(), msg.GetType(), msg.GetFrom(), msg.GetTo()))
		return errForeign
	}
	return m.Member.Process(ctx, msg)
}

// ours says whether msg belongs to m's group: to m, from a member of the
// group, carrying only the group's data.
func (m *groupMember) ours(msg *raftpb.Message) bool {
	if msg.GetTo() != m.ID() || !slices.Contains(m.members, msg.GetFrom()) {
		return false
	}
	prefix := groupData(m.group, "")
	for _, e := range msg.GetEntries() {
		if e.GetType() == raftpb.EntryNormal && len(e.GetData()) > 0 && !strings.HasPrefix(string(e.GetData()), prefix) {
			return false
		}
	}
	return true
}

// groupData is the datum s of group g.
func groupData(g int, s string) string { return fmt.Sprintf("g%d/%s", g, s) }

// groupCluster is the cluster ID of group g, and groupMemberID the ID of
// its member i (1 to 3).
func groupCluster(g int) uint64     { return 0x5000 + uint64(g) }
func groupMemberID(g, i int) uint64 { return uint64(g)<<8 | uint64(i) }
func groupMemberIDs(g, n int) []uint64 {
	ids := make([]uint64, n)
	for i := range ids {
		ids[i] = groupMemberID(g, i+1)
	}
	return ids
}

// raftGroup is one group's members, one per host, and their Transports.
type raftGroup struct {
	g       int
	members []*groupMember
	trs     []*Transport
}

// startGroup starts group g with a member on each host, each behind the
// host's Mux and on its HostPool, and runs their Ready loops.
func startGroup(t *testing.T, hosts []*muxHost, g int, foreign *foreignLog) *raftGroup {
	t.Helper()
	ids := groupMemberIDs(g, len(hosts))
	rg := &raftGroup{g: g}
	for i, h := range hosts {
		m := &groupMember{Member: rafttest.NewMember(t, ids[i], ids, rafttest.Config{Tick: 10 * time.Millisecond,
			ElectionTick: 50, CheckQuorum: true, PreVote: true}), group: g, members: ids, foreign: foreign}
		rg.members = append(rg.members, m)
		rg.trs = append(rg.trs, h.addGroup(t, groupCluster(g), ids[i], m, func(tr *Transport) { tr.Logger = nil }))
	}
	for i, tr := range rg.trs {
		for j, h := range hosts {
			if i != j {
				addPeer(t, tr, ids[j], h.url)
			}
		}
	}
	for i, m := range rg.members {
		m.Run(rg.trs[i])
	}
	return rg
}

// stop takes the group off every host (Mux.Remove), then stops its
// Transports and raft members, as an application retiring a group does.
func (rg *raftGroup) stop(t *testing.T, hosts []*muxHost) {
	t.Helper()
	for i, h := range hosts {
		if !h.mux.Remove(groupCluster(rg.g)) {
			t.Errorf("group %d was not served on host %d", rg.g, i)
		}
	}
	for i, tr := range rg.trs {
		tr.Stop()
		rg.members[i].Stop()
	}
}

// commit proposes data (through any member: followers forward proposals
// to the leader) until every member has applied all of it.
func (rg *raftGroup) commit(t *testing.T, within time.Duration, data ...string) error {
	deadline := time.Now().Add(within)
	for {
		var missing []string
		for _, d := range data {
			if !rg.allHave(d) {
				missing = append(missing, d)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if f := rg.members[0].foreign.all(); len(f) > 0 {
			return fmt.Errorf("group %d: %d messages reached another group's raft, the first: %s", rg.g, len(f), f[0])
		}
		if time.Now().After(deadline) {
			var st []string
			for _, m := range rg.members {
				st = append(st, fmt.Sprintf("member %x: %d applied, lead %x, %v", m.ID(), len(m.Applied()), m.Lead(), m.State()))
			}
			return fmt.Errorf("group %d: %d of %d entries not applied by every member within %v: %s", rg.g, len(missing), len(data), within, strings.Join(st, "; "))
		}
		// Propose through a member that knows a leader: one without drops
		// proposals. What a leader change drops is proposed again.
		var via *groupMember
		for _, m := range rg.members {
			if m.Lead() != 0 {
				via = m
				break
			}
		}
		if via != nil {
			for _, d := range missing {
				ctx, cancel := context.WithTimeout(t.Context(), time.Second)
				_ = via.Node().Propose(ctx, []byte(d))
				cancel()
			}
		}
		// Give the proposals time to commit everywhere before proposing
		// them again.
		wait := time.Now().Add(2 * time.Second)
		for time.Now().Before(wait) && !rg.allHave(missing...) {
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// allHave says whether every member has applied data.
func (rg *raftGroup) allHave(data ...string) bool {
	for _, m := range rg.members {
		if !m.Has(data...) {
			return false
		}
	}
	return true
}

// checkApplied fails the test if a member applied data of another group,
// or if the members' applied sequences differ.
func (rg *raftGroup) checkApplied(t *testing.T) {
	t.Helper()
	prefix := groupData(rg.g, "")
	var first []rafttest.Applied
	for i, m := range rg.members {
		applied := m.Applied()
		for _, a := range applied {
			if a.Data != "" && !strings.HasPrefix(a.Data, prefix) {
				t.Errorf("group %d member %d applied %q, of another group", rg.g, i, a.Data)
			}
		}
		n := min(len(first), len(applied))
		if i > 0 && !slices.Equal(first[:n], applied[:n]) {
			t.Errorf("group %d: members 0 and %d applied different sequences", rg.g, i)
		}
		if i == 0 {
			first = applied
		}
	}
}

// TestManyGroups runs 20 raft groups of three members on three hosts, each
// host one listener (a Mux) and one HostPool: every group elects a leader
// and commits 100 proposals. Then, while 15 of them keep committing, 5 are
// taken off the hosts and stopped and 5 new ones are started, elect and
// commit 20 proposals. No message of a group ever reaches another group's
// raft, nothing of a stopped group is left running (goleak), and each
// group's members applied the same sequence of its own data.
func TestManyGroups(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 75 raft members")
	}
	// Registered first, so run last: after every cleanup of the test.
	t.Cleanup(func() { goleak.VerifyNone(t) })
	start := time.Now()
	const initial, churn, perGroup = 20, 5, 100
	hosts := make([]*muxHost, 3)
	// Host 0 refuses the message streams of group 0: what its member of
	// group 0 sends but appends (heartbeats, votes, responses) goes by
	// pipeline POSTs, so that both of the Mux's paths carry raft traffic.
	// (Appends keep their stream: posted by several workers at once, they
	// would arrive out of order, and raft would crawl.)
	var posts atomic.Int64
	for i := range hosts {
		opts := []muxHostOption{withPool(func(hp *HostPool) { hp.Logger = nil }), wrapMux(countPosts(&posts))}
		if i == 0 {
			opts = append(opts, wrapMux(refuseStreamsOf(groupCluster(0))))
		}
		hosts[i] = newMuxHost(t, opts...)
		hosts[i].mux.Logger = nil
	}
	foreign := &foreignLog{}
	groups := map[int]*raftGroup{}
	for g := range initial {
		groups[g] = startGroup(t, hosts, g, foreign)
	}
	var wg sync.WaitGroup
	errs := make(chan error, initial+churn)
	for g := range initial {
		wg.Go(func() {
			data := make([]string, perGroup)
			for i := range data {
				data[i] = groupData(g, fmt.Sprint(i))
			}
			errs <- groups[g].commit(t, time.Minute, data...)
		})
	}
	wg.Wait()
	for range initial {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d groups elected and committed %d proposals each in %v (%d pipeline POSTs)", initial, perGroup, time.Since(start), posts.Load())
	if posts.Load() < perGroup {
		t.Errorf("%d pipeline POSTs, want at least %d: host 0's member of group 0 sends its heartbeats or responses by pipeline", posts.Load(), perGroup)
	}

	// Traffic in the groups that stay, while others go and come.
	stable := initial - churn
	ctx, cancel := context.WithCancel(t.Context())
	var committed [initial]atomic.Int64
	for g := range stable {
		rg := groups[g]
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				if err := rg.commit(t, 20*time.Second, groupData(g, fmt.Sprint("t", n))); err != nil {
					errs <- err
					return
				}
				committed[g].Add(1)
			}
		})
	}
	churnStart := time.Now()
	var churned sync.WaitGroup
	leaving := make([]*raftGroup, churn)
	coming := make([]*raftGroup, churn)
	for i := range churn {
		leaving[i] = groups[stable+i]
		delete(groups, stable+i)
	}
	for i := range churn {
		churned.Go(func() { leaving[i].stop(t, hosts) })
		churned.Go(func() {
			g := initial + i
			coming[i] = startGroup(t, hosts, g, foreign)
			data := make([]string, 20)
			for j := range data {
				data[j] = groupData(g, fmt.Sprint(j))
			}
			if err := coming[i].commit(t, time.Minute, data...); err != nil {
				errs <- err
			}
		})
	}
	churned.Wait()
	for i, rg := range coming {
		groups[initial+i] = rg
	}
	for g := range stable {
		n := committed[g].Load()
		rafttest.Eventually(t, 30*time.Second, fmt.Sprintf("group %d to commit under the churn", g), func() bool {
			return committed[g].Load() > n
		})
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d groups stopped and %d started under traffic in %v; stable groups committed %v entries meanwhile",
		churn, churn, time.Since(churnStart), committedCounts(committed[:stable]))

	for _, h := range hosts {
		if got := h.mux.Groups(); len(got) != initial {
			t.Errorf("a host serves %d groups, want %d", len(got), initial)
		}
	}
	for _, rg := range groups {
		rg.checkApplied(t)
	}
	if f := foreign.all(); len(f) > 0 {
		t.Errorf("%d messages reached another group's raft, the first: %s", len(f), f[0])
	}
	t.Logf("done in %v", time.Since(start))
}

// refuseStreamsOf refuses the message stream requests of cluster.
func refuseStreamsOf(cluster uint64) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get(headerClusterID) == formatID(cluster) && strings.HasPrefix(r.URL.Path, RaftStreamPrefix+"/message/") {
				http.Error(w, "streams refused by the test", http.StatusServiceUnavailable)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

// countPosts counts the pipeline POSTs served in n.
func countPosts(n *atomic.Int64) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && r.URL.Path == RaftPrefix {
				n.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	}
}

func committedCounts(cs []atomic.Int64) []int64 {
	out := make([]int64, len(cs))
	for i := range cs {
		out[i] = cs[i].Load()
	}
	return out
}

package interop

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/raftkit/rafthttp"
	"github.com/raftkit/rafthttp/compat/peerkit"
	"github.com/raftkit/rafthttp/internal/rafttest"
)

// This file runs mixed raft clusters across processes: members in etcd
// peer programs run their line's raft library (3.5: go.etcd.io/etcd/raft/v3,
// 3.6: go.etcd.io/raft/v3 v3.6, 3.7: v3.7) on etcd's transport (peerkit's
// raftstart),
// members in the test process run go.etcd.io/raft/v3 v3.7 on ours.

// raftLines are the lines whose peer program can run a raft member.
var raftLines = map[string]bool{"3.5": true, "3.6": true, "3.7": true}

// Raft timing of every member: an election timeout of 0.5-1 s, long
// enough for a loaded two-core machine under the race detector.
const (
	raftTick     = 10 * time.Millisecond
	raftElection = 50
)

// appliedEntry is a committed normal entry as a member applied it; an
// etcd member reports its own as "applied" events.
type appliedEntry = rafttest.Applied

// raftMember is a member of a mixed cluster.
type raftMember interface {
	memberID() uint64
	kind() string
	url() string
	addPeer(t testing.TB, id uint64, url string)
	startRaft(t testing.TB, peers []uint64)
	// propose proposes data through this member; it fails if raft
	// dropped the proposal (no leader known).
	propose(t testing.TB, data string) error
	// leader is the member's view of the leader (0: none).
	leader(t testing.TB) uint64
	// transfer asks the member, if it leads, to hand the lead to to.
	transfer(t testing.TB, to uint64)
	applied() []appliedEntry
	stopRaft(t testing.TB)
}

// ---------------------------------------------------------------------------
// Our member: raft v3.7 on our Transport, in this process.

// ourMember is the shared raft member (rafttest.Member: node, storage,
// Ready loop) on our Transport, behind an httptest server.
type ourMember struct {
	*rafttest.Member
	tr   *rafthttp.Transport
	srv  *httptest.Server
	base string
}

// newOurMember starts member id of a new cluster of peers. Its node runs
// from the start, so that whatever the transport receives has a node to go
// to; it reaches its peers once they are added.
func newOurMember(t *testing.T, id uint64, peers []uint64) *ourMember {
	t.Helper()
	m := &ourMember{Member: rafttest.NewMember(t, id, peers, rafttest.Config{Tick: raftTick, ElectionTick: raftElection,
		CheckQuorum: true, PreVote: true})}
	m.srv = httptest.NewUnstartedServer(nil)
	m.base = "http://" + m.srv.Listener.Addr().String()
	m.tr = &rafthttp.Transport{
		ID:           id,
		ClusterID:    clusterID,
		Raft:         m.Member,
		Logger:       zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Named(fmt.Sprintf("ours-%d", id)),
		URLs:         []string{m.base},
		DialRetryMin: 50 * time.Millisecond,
		DialRetryMax: 200 * time.Millisecond,
	}
	if err := m.tr.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	mux := http.NewServeMux()
	mux.Handle(rafthttp.RaftPrefix, m.tr.Handler())
	mux.Handle(rafthttp.RaftPrefix+"/", m.tr.Handler())
	m.srv.Config.Handler = mux
	t.Cleanup(func() {
		m.tr.Stop()
		m.srv.CloseClientConnections()
		m.srv.Close()
	})
	m.srv.Start()
	// Run's cleanup, registered last, stops the Ready loop and the node
	// before the transport, and fails the test if the loop failed.
	m.Run(m.tr)
	return m
}

func (m *ourMember) memberID() uint64 { return m.ID() }
func (m *ourMember) kind() string     { return "ours" }
func (m *ourMember) url() string      { return m.base }

func (m *ourMember) addPeer(t testing.TB, id uint64, url string) {
	t.Helper()
	if err := m.tr.AddPeer(id, []string{url}); err != nil {
		t.Fatalf("AddPeer: %v", err)
	}
}

// startRaft does nothing: newOurMember started the node.
func (m *ourMember) startRaft(testing.TB, []uint64) {}

func (m *ourMember) propose(t testing.TB, data string) error {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	return m.Node().Propose(ctx, []byte(data))
}

func (m *ourMember) leader(testing.TB) uint64 { return m.Lead() }

func (m *ourMember) transfer(t testing.TB, to uint64) {
	m.Node().TransferLeadership(t.Context(), m.Lead(), to)
}

func (m *ourMember) applied() []appliedEntry { return m.Applied() }

// stopRaft stops the Ready loop and the node; the transport still runs.
func (m *ourMember) stopRaft(testing.TB) { m.Stop() }

// ---------------------------------------------------------------------------
// An etcd member: the line's raft on etcd's transport, in a peer program.

type etcdMember struct{ s *etcdSide }

func (m etcdMember) memberID() uint64 { return m.s.id() }
func (m etcdMember) kind() string     { return "etcd-" + m.s.version }
func (m etcdMember) url() string      { return m.s.url() }

func (m etcdMember) addPeer(t testing.TB, id uint64, url string) {
	t.Helper()
	m.s.addPeer(t, id, url)
}

func (m etcdMember) startRaft(t testing.TB, peers []uint64) {
	t.Helper()
	m.s.do(t, peerkit.Command{Op: "raftstart", Peers: peers, Election: raftElection, TickMS: int(raftTick / time.Millisecond)})
}

func (m etcdMember) propose(t testing.TB, data string) error {
	_, err := m.s.try(peerkit.Command{Op: "propose", Data: hex.EncodeToString([]byte(data))})
	if err != nil && !strings.Contains(err.Error(), "dropped") {
		t.Fatalf("etcd %s member %d, propose: %v", m.s.l.name, m.s.id(), err)
	}
	return err
}

func (m etcdMember) leader(t testing.TB) uint64 {
	t.Helper()
	return m.s.do(t, peerkit.Command{Op: "raftstatus"}).Lead
}

func (m etcdMember) transfer(t testing.TB, to uint64) {
	t.Helper()
	m.s.do(t, peerkit.Command{Op: "rafttransfer", ID: to})
}

func (m etcdMember) applied() []appliedEntry {
	var out []appliedEntry
	for _, e := range m.s.log().since(0, isEv("applied")) {
		d, err := hex.DecodeString(e.Data)
		if err != nil {
			d = []byte("bad hex: " + e.Data)
		}
		out = append(out, appliedEntry{Index: e.Index, Term: e.Term, Data: string(d)})
	}
	return out
}

func (m etcdMember) stopRaft(t testing.TB) {
	t.Helper()
	m.s.do(t, peerkit.Command{Op: "raftstop"})
}

// ---------------------------------------------------------------------------
// The cluster.

type raftCluster struct {
	members []raftMember
	stopped map[uint64]bool
}

func (c *raftCluster) running() []raftMember {
	var out []raftMember
	for _, m := range c.members {
		if !c.stopped[m.memberID()] {
			out = append(out, m)
		}
	}
	return out
}

// leader waits until the running members agree on a leader among them.
func (c *raftCluster) leader(t *testing.T) raftMember {
	t.Helper()
	var lead raftMember
	eventually(t, "the members to agree on a leader", func() bool {
		run := c.running()
		id := run[0].leader(t)
		for _, m := range run[1:] {
			if m.leader(t) != id {
				return false
			}
		}
		for _, m := range run {
			if m.memberID() == id {
				lead = m
				return true
			}
		}
		return false
	})
	return lead
}

// transferTo makes m the leader.
func (c *raftCluster) transferTo(t *testing.T, m raftMember) {
	t.Helper()
	eventually(t, fmt.Sprintf("member %d to take the lead", m.memberID()), func() bool {
		lead := c.leader(t)
		if lead.memberID() == m.memberID() {
			return true
		}
		lead.transfer(t, m.memberID())
		return false
	})
}

// has reports whether m applied every datum.
func has(m raftMember, data []string) bool {
	got := map[string]bool{}
	for _, e := range m.applied() {
		got[e.Data] = true
	}
	for _, d := range data {
		if !got[d] {
			return false
		}
	}
	return true
}

// commit proposes data, datum i through running member i mod n, and waits
// until every running member applied all of it. A proposal can be lost
// (dropped with no leader, or forwarded to a leader that just lost the
// lead): the data missing after a stall are proposed again, so a datum
// may be applied twice; the applied sequences are compared whole anyway.
func (c *raftCluster) commit(t *testing.T, data []string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	missing := data
	for round := 0; ; round++ {
		run := c.running()
		for i, d := range missing {
			if run[i%len(run)].propose(t, d) != nil {
				c.leader(t) // wait for one; what was lost is proposed again
			}
		}
		c.waitAll(data, 5*time.Second)
		if c.allHave(data) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the members did not apply all %d entries in 2 minutes (round %d)", len(data), round)
		}
		missing = slices.DeleteFunc(slices.Clone(data), func(d string) bool { return c.allHave([]string{d}) })
		t.Logf("round %d: %d entries missing, proposing them again", round, len(missing))
	}
}

// waitAll polls until every running member applied data, or for at most d.
func (c *raftCluster) waitAll(data []string, d time.Duration) {
	stall := time.NewTimer(d)
	defer stall.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !c.allHave(data) {
		select {
		case <-tick.C:
		case <-stall.C:
			return
		}
	}
}

func (c *raftCluster) allHave(data []string) bool {
	for _, m := range c.running() {
		if !has(m, data) {
			return false
		}
	}
	return true
}

// checkSame waits until the running members applied the same number of
// entries and compares their sequences entry by entry; a stopped member's
// must be a prefix.
func (c *raftCluster) checkSame(t *testing.T) []appliedEntry {
	t.Helper()
	run := c.running()
	eventually(t, "the members to apply the same number of entries", func() bool {
		n := len(run[0].applied())
		for _, m := range run[1:] {
			if len(m.applied()) != n {
				return false
			}
		}
		return true
	})
	want := run[0].applied()
	for _, m := range c.members {
		got := m.applied()
		if c.stopped[m.memberID()] && len(got) <= len(want) {
			want := want[:len(got)]
			if !slices.Equal(got, want) {
				t.Errorf("the stopped member %d (%s) applied a sequence that is not a prefix of member %d's", m.memberID(), m.kind(), run[0].memberID())
			}
			continue
		}
		if i := firstDiff(got, want); i >= 0 {
			t.Errorf("member %d (%s) and member %d (%s) differ at applied entry %d of %d/%d: got %+v, want %+v",
				m.memberID(), m.kind(), run[0].memberID(), run[0].kind(), i, len(got), len(want), at(got, i), at(want, i))
		}
	}
	return want
}

func firstDiff(a, b []appliedEntry) int {
	for i := range max(len(a), len(b)) {
		if i >= len(a) || i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return -1
}

func at(s []appliedEntry, i int) any {
	if i < len(s) {
		return s[i]
	}
	return "nothing"
}

// TestMixedRaftCluster: three raft members, some in etcd peer programs
// (etcd's transport, the line's raft library), the rest in this process
// (our transport, raft v3.7), elect a leader and commit 1,000 entries
// proposed through every member in turn; every member applies the same
// sequence of entries (index, term, data). Then the lead moves to a member
// of the majority's kind, its raft stops, the two survivors (one of each
// kind) elect a new leader and commit 100 more, and the stopped leader's
// sequence is a prefix of theirs.
func TestMixedRaftCluster(t *testing.T) {
	layouts := []struct {
		name  string
		kinds []string
	}{
		{"two-etcd-one-ours", []string{"etcd", "etcd", "ours"}},
		{"two-ours-one-etcd", []string{"ours", "ours", "etcd"}},
	}
	for _, l := range lines {
		if !raftLines[l.name] {
			continue
		}
		t.Run("etcd-"+l.name, func(t *testing.T) {
			t.Parallel()
			for _, lay := range layouts {
				t.Run(lay.name, func(t *testing.T) {
					t.Parallel()
					start := time.Now()
					c := &raftCluster{stopped: map[uint64]bool{}}
					var ids []uint64
					for i, k := range lay.kinds {
						id := uint64(i + 1)
						ids = append(ids, id)
						if k == "ours" {
							c.members = append(c.members, newOurMember(t, id, allIDs(len(lay.kinds))))
						} else {
							c.members = append(c.members, etcdMember{newEtcdSideID(t, l, clusterID, id)})
						}
					}
					for _, m := range c.members {
						m.startRaft(t, ids)
					}
					for _, a := range c.members {
						for _, b := range c.members {
							if a != b {
								a.addPeer(t, b.memberID(), b.url())
							}
						}
					}
					lead := c.leader(t)
					t.Logf("member %d (%s) leads after %v", lead.memberID(), lead.kind(), time.Since(start).Round(time.Millisecond))

					var data []string
					for i := range 1000 {
						data = append(data, fmt.Sprintf("entry-%04d", i))
					}
					start = time.Now()
					c.commit(t, data)
					got := c.checkSame(t)
					t.Logf("1,000 entries applied by all three members in %v (%d normal entries)", time.Since(start).Round(time.Millisecond), len(got))
					if t.Failed() {
						return
					}

					// Stop a leader of the majority's kind, so that the
					// survivors are one of each kind.
					lead = c.members[0]
					c.transferTo(t, lead)
					lead.stopRaft(t)
					c.stopped[lead.memberID()] = true
					start = time.Now()
					next := c.leader(t)
					t.Logf("member %d (%s) stopped; member %d (%s) leads after %v", lead.memberID(), lead.kind(),
						next.memberID(), next.kind(), time.Since(start).Round(time.Millisecond))
					var more []string
					for i := range 100 {
						more = append(more, fmt.Sprintf("after-%03d", i))
					}
					c.commit(t, more)
					c.checkSame(t)
				})
			}
		})
	}
}

func allIDs(n int) []uint64 {
	var ids []uint64
	for i := range n {
		ids = append(ids, uint64(i+1))
	}
	return ids
}

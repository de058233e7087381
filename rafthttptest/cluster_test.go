package rafthttptest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/goleak"

	"github.com/raftkit/rafthttp"
	"github.com/raftkit/rafthttp/internal/rafttest"
)

// readTimeout is the ConnReadTimeout of the clusters that are faulted:
// short, so that stalled streams are noticed quickly, long enough for
// -race on two loaded cores.
const readTimeout = 500 * time.Millisecond

// fast is Options.Configure for faulted clusters: short timeouts, quick
// redials.
func fast(tr *rafthttp.Transport) {
	tr.ConnReadTimeout = readTimeout
	tr.ConnWriteTimeout = 2 * readTimeout
	tr.PipelineTimeout = 2 * readTimeout
	tr.DialTimeout = readTimeout
	tr.DialRetryMin, tr.DialRetryMax = 10*time.Millisecond, 100*time.Millisecond
}

// waitConnected waits for every stream of c, failing the test after 10 s.
func waitConnected(t *testing.T, c *Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
}

// send sends a heartbeat of the given commit from from to to.
func send(c *Cluster, from, to, commit uint64) {
	c.Transport(from).Send([]*raftpb.Message{heartbeat(from, to, commit)})
}

// expectDelivered waits for the heartbeat of the given commit from from to
// reach to.
func expectDelivered(t *testing.T, c *Cluster, from, to, commit uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	m, err := c.Recorder(to).Wait(ctx, func(m *raftpb.Message) bool { return m.GetCommit() == commit })
	if err != nil {
		t.Fatalf("heartbeat %d from %d to %d: %v", commit, from, to, err)
	}
	if m.GetFrom() != from || m.GetTo() != to || m.GetType() != raftpb.MsgHeartbeat {
		t.Errorf("got %v from %d to %d, want MsgHeartbeat from %d to %d", m.GetType(), m.GetFrom(), m.GetTo(), from, to)
	}
}

// expectHeld checks that the heartbeat of the given commit does not reach
// to within d.
func expectHeld(t *testing.T, c *Cluster, to, commit uint64, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	if m, err := c.Recorder(to).Wait(ctx, func(m *raftpb.Message) bool { return m.GetCommit() == commit }); err == nil {
		t.Errorf("heartbeat %d reached %d from %d, want it held", commit, to, m.GetFrom())
	}
}

// TestStartClusterDelivers starts clusters of several sizes and checks
// that every member reaches every other, and what the accessors return.
func TestStartClusterDelivers(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
	}{
		{name: "one member", n: 1},
		{name: "two members", n: 2},
		{name: "three members", n: 3},
		{name: "five members", n: 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := StartCluster(t, tc.n, Options{})
			var want []uint64
			for i := range tc.n {
				want = append(want, uint64(i+1))
			}
			if got := c.IDs(); !slices.Equal(got, want) {
				t.Fatalf("IDs: got %v, want %v", got, want)
			}
			if got := c.Mesh().Members(); !slices.Equal(got, want) {
				t.Errorf("Mesh().Members(): got %v, want %v", got, want)
			}
			waitConnected(t, c)
			for _, from := range c.IDs() {
				tr := c.Transport(from)
				if tr.ID != from || tr.ClusterID != DefaultClusterID || !slices.Equal(tr.URLs, []string{c.URL(from)}) {
					t.Errorf("member %d: got ID %d, ClusterID %#x, URLs %v; want %d, %#x, [%s]",
						from, tr.ID, tr.ClusterID, tr.URLs, from, DefaultClusterID, c.URL(from))
				}
				if got := len(tr.Stats()); got != tc.n-1 {
					t.Errorf("member %d: got %d peers, want %d", from, got, tc.n-1)
				}
				for _, to := range c.IDs() {
					if from != to {
						send(c, from, to, from*100+to)
					}
				}
			}
			for _, from := range c.IDs() {
				for _, to := range c.IDs() {
					if from != to {
						expectDelivered(t, c, from, to, from*100+to)
					}
				}
			}
			// Every message went through the member's proxy.
			for _, from := range c.IDs() {
				for _, to := range c.IDs() {
					if p := c.Mesh().Proxy(from, to); from != to && p.Stats().Forwarded == 0 {
						t.Errorf("proxy (%d, %d) forwarded nothing", from, to)
					}
				}
			}
		})
	}
}

// TestClusterAccessorsUnknownMember checks what the accessors return for
// an ID that is not a member.
func TestClusterAccessorsUnknownMember(t *testing.T) {
	c := StartCluster(t, 2, Options{})
	for _, id := range []uint64{0, 3} {
		if c.Transport(id) != nil || c.Recorder(id) != nil || c.URL(id) != "" {
			t.Errorf("member %d: got a transport, recorder or URL, want none", id)
		}
	}
}

// TestClusterFaults checks that the mesh's faults reach the transports:
// a partitioned message is held, the others flow, and after the heal it
// is delivered.
func TestClusterFaults(t *testing.T) {
	for _, tc := range []struct {
		name      string
		fault     func(*Cluster) error
		held      [][2]uint64 // (from, to) pairs whose messages are held
		delivered [][2]uint64 // (from, to) pairs whose messages flow
	}{
		{
			name:      "isolate 3",
			fault:     func(c *Cluster) error { return c.Mesh().Isolate(3) },
			held:      [][2]uint64{{1, 3}, {3, 1}, {2, 3}, {3, 2}},
			delivered: [][2]uint64{{1, 2}, {2, 1}},
		},
		{
			name:      "one way, 1 to 2",
			fault:     func(c *Cluster) error { return c.Mesh().PartitionOneWay([]uint64{1}, []uint64{2}) },
			held:      [][2]uint64{{1, 2}},
			delivered: [][2]uint64{{2, 1}, {1, 3}, {3, 1}, {2, 3}, {3, 2}},
		},
		{
			name: "1 blackholed on the way to 2",
			fault: func(c *Cluster) error {
				c.Mesh().Proxy(1, 2).Blackhole(true) // 1's requests to 2 and 2's streams to 1
				c.Mesh().Proxy(2, 1).Blackhole(true)
				return nil
			},
			held:      [][2]uint64{{1, 2}, {2, 1}},
			delivered: [][2]uint64{{1, 3}, {3, 2}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := StartCluster(t, 3, Options{Configure: fast, Seed: 1})
			waitConnected(t, c)
			if err := tc.fault(c); err != nil {
				t.Fatal(err)
			}
			commit := uint64(1000)
			heldCommits := map[[2]uint64]uint64{}
			for _, p := range tc.held {
				commit++
				heldCommits[p] = commit
				send(c, p[0], p[1], commit)
			}
			for _, p := range tc.delivered {
				commit++
				send(c, p[0], p[1], commit)
				expectDelivered(t, c, p[0], p[1], commit)
			}
			for _, p := range tc.held {
				expectHeld(t, c, p[1], heldCommits[p], 200*time.Millisecond)
			}

			c.Mesh().Heal()
			// A message held by a partition may be delivered after the
			// heal, or lost with a stream that broke (and reported to
			// raft): a new one must get through.
			for _, p := range tc.held {
				commit++
				deadline := time.Now().Add(10 * time.Second)
				for {
					send(c, p[0], p[1], commit)
					ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
					_, err := c.Recorder(p[1]).Wait(ctx, func(m *raftpb.Message) bool { return m.GetCommit() == commit })
					cancel()
					if err == nil {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("after the heal, no message from %d reached %d in 10s", p[0], p[1])
					}
				}
			}
		})
	}
}

// TestStartClusterRaft runs a raft node per member (the Raft the user
// supplies): the members elect a leader and commit; with the leader
// isolated the others elect another and commit without it; after the heal
// the old leader applies what they committed.
func TestStartClusterRaft(t *testing.T) {
	ids := []uint64{1, 2, 3}
	members := map[uint64]*rafttest.Member{}
	c := StartCluster(t, len(ids), Options{
		Configure: fast,
		Raft: func(id uint64) rafthttp.Raft {
			m := rafttest.NewMember(t, id, ids, rafttest.Config{})
			members[id] = m
			return m
		},
	})
	for _, id := range ids {
		members[id].Run(c.Transport(id))
	}
	agreed := func(among ...uint64) (uint64, bool) {
		lead := members[among[0]].Lead()
		for _, id := range among {
			if l := members[id].Lead(); l == 0 || l != lead || !slices.Contains(among, l) {
				return 0, false
			}
		}
		return lead, true
	}
	waitLeader := func(among ...uint64) uint64 {
		var lead uint64
		rafttest.Eventually(t, 10*time.Second, fmt.Sprintf("members %v to agree on a leader among them", among), func() bool {
			var ok bool
			lead, ok = agreed(among...)
			return ok
		})
		return lead
	}
	// commit proposes data through the leader of among until every member
	// of among has applied it: a proposal may be dropped while the
	// leadership changes.
	commit := func(data string, among ...uint64) {
		t.Helper()
		last := time.Time{}
		rafttest.Eventually(t, 10*time.Second, fmt.Sprintf("%q to be applied by %v", data, among), func() bool {
			applied := true
			for _, id := range among {
				applied = applied && members[id].Has(data)
			}
			if !applied && time.Since(last) > 500*time.Millisecond {
				last = time.Now()
				if lead, ok := agreed(among...); ok {
					ctx, cancel := context.WithTimeout(t.Context(), time.Second)
					_ = members[lead].Node().Propose(ctx, []byte(data))
					cancel()
				}
			}
			return applied
		})
	}

	old := waitLeader(ids...)
	commit("before", ids...)
	if err := c.Mesh().Isolate(old); err != nil {
		t.Fatal(err)
	}
	rest := slices.DeleteFunc(slices.Clone(ids), func(id uint64) bool { return id == old })
	lead := waitLeader(rest...)
	commit("during", rest...)
	if members[old].Has("during") {
		t.Errorf("the isolated member %d applied what was committed without it", old)
	}
	c.Mesh().Heal()
	rafttest.Eventually(t, 10*time.Second, "the old leader to apply what the others committed", func() bool {
		return members[old].Has("during")
	})
	t.Logf("member %d led; isolated, the others elected %d and committed without it; after the heal it caught up", old, lead)
}

// TestNewClusterErrors checks what NewCluster refuses, and that it leaves
// nothing running when it fails part way.
func TestNewClusterErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		opts Options
		want string
	}{
		{name: "no member", n: 0, want: "at least 1 member"},
		{name: "negative", n: -1, want: "at least 1 member"},
		{
			name: "nil Raft for member 2",
			n:    3,
			opts: Options{Raft: func(id uint64) rafthttp.Raft {
				if id == 2 {
					return nil
				}
				return &Recorder{}
			}},
			want: "returned nil for member 2",
		},
		{
			name: "invalid Transport for member 3",
			n:    3,
			opts: Options{Configure: func(tr *rafthttp.Transport) {
				if tr.ID == 3 {
					tr.DialRetryMin = -time.Second
				}
			}},
			want: "member 3: rafthttp: invalid Transport: DialRetryMin must not be negative",
		},
		{
			name: "Configure drops the Raft",
			n:    2,
			opts: Options{Configure: func(tr *rafthttp.Transport) { tr.Raft = nil }},
			want: "member 1: rafthttp: invalid Transport: Raft must be set",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			c, err := NewCluster(tc.n, tc.opts)
			if err == nil {
				c.Close()
				t.Fatalf("got a cluster, want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestClusterClose checks that Close is idempotent and safe to call
// concurrently, and that it stops every transport.
func TestClusterClose(t *testing.T) {
	c, err := NewCluster(3, Options{})
	if err != nil {
		t.Fatal(err)
	}
	waitConnected(t, c)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(c.Close)
	}
	wg.Wait()
	c.Close()
	for _, id := range c.IDs() {
		if err := c.Transport(id).AddPeer(9, []string{"http://127.0.0.1:1"}); !errors.Is(err, rafthttp.ErrStopped) {
			t.Errorf("member %d: AddPeer after Close: got %v, want ErrStopped", id, err)
		}
	}
}

// TestWaitConnectedGivesUp checks that WaitConnected names a pair whose
// streams are down when its context ends: member 1 refuses the streams of
// member 2, which it takes for removed.
func TestWaitConnectedGivesUp(t *testing.T) {
	c := StartCluster(t, 2, Options{Raft: func(id uint64) rafthttp.Raft {
		r := &Recorder{}
		if id == 1 {
			r.SetRemoved(2)
		}
		return r
	}})
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	err := c.WaitConnected(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "members 1 and 2") {
		t.Errorf("got %v, want a deadline naming members 1 and 2", err)
	}
}

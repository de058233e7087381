package rafthttptest_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
	"github.com/raftkit/rafthttp/rafthttptest"
)

// heartbeat returns a MsgHeartbeat from from to to, told apart by commit.
func heartbeat(from, to, commit uint64) []*raftpb.Message {
	return []*raftpb.Message{{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(from), To: proto.Uint64(to),
		Commit: proto.Uint64(commit)}}
}

// Three members that record what they receive: member 1's messages reach
// member 3 until member 3 is isolated, and again after the heal.
func ExampleNewCluster() {
	c, err := rafthttptest.NewCluster(3, rafthttptest.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		fmt.Println(err)
		return
	}
	// received waits up to d for the heartbeat of the given commit to
	// reach member 3.
	received := func(commit uint64, d time.Duration) bool {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		_, err := c.Recorder(3).Wait(ctx, func(m *raftpb.Message) bool { return m.GetCommit() == commit })
		return err == nil
	}

	c.Transport(1).Send(heartbeat(1, 3, 1))
	fmt.Println("connected, 1 -> 3:", received(1, 10*time.Second))

	if err := c.Mesh().Isolate(3); err != nil {
		fmt.Println(err)
		return
	}
	c.Transport(1).Send(heartbeat(1, 3, 2))
	fmt.Println("3 isolated, 1 -> 3:", received(2, 300*time.Millisecond))

	// The partition held the heartbeat: it is delivered after the heal.
	c.Mesh().Heal()
	fmt.Println("healed, 1 -> 3:", received(2, 10*time.Second))
	// Output:
	// connected, 1 -> 3: true
	// 3 isolated, 1 -> 3: false
	// healed, 1 -> 3: true
}

// In a test, StartCluster fails the test if the cluster cannot start and
// stops it when the test ends. Options.Configure shortens the transports'
// timeouts, so that a stalled stream is noticed within half a second.
func ExampleStartCluster() {
	testSlowFollower := func(t *testing.T) {
		c := rafthttptest.StartCluster(t, 3, rafthttptest.Options{
			Seed: 1, // the jitter of the fault network
			Configure: func(tr *rafthttp.Transport) {
				tr.ConnReadTimeout = 500 * time.Millisecond
				tr.DialRetryMin, tr.DialRetryMax = 10*time.Millisecond, 100*time.Millisecond
			},
		})
		if err := c.WaitConnected(t.Context()); err != nil {
			t.Fatal(err)
		}
		// Member 3 behind a slow link, both ways.
		links, err := c.Mesh().Links(3)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range links {
			p.SetLatency(50*time.Millisecond, 10*time.Millisecond)
			p.SetBandwidth(64 << 10)
		}
		// ... run the application on c.Transport(1), c.Transport(2) and
		// c.Transport(3), and check what c.Recorder(id) received.
	}
	_ = testSlowFollower
}

// node is a raft member as an application builds one: a raft.Node on a
// MemoryStorage, the Raft of its transport, and a Ready loop that
// persists, sends through the transport and applies.
type node struct {
	raft.Node
	storage *raft.MemoryStorage
	stop    chan struct{}
	done    chan struct{}
}

func newNode(id uint64, peers []raft.Peer) *node {
	storage := raft.NewMemoryStorage()
	n := raft.StartNode(&raft.Config{
		ID: id, ElectionTick: 10, HeartbeatTick: 1, Storage: storage,
		MaxSizePerMsg: 1 << 20, MaxInflightMsgs: 256,
		Logger: &raft.DefaultLogger{Logger: log.New(io.Discard, "", 0)},
	}, peers)
	return &node{Node: n, storage: storage, stop: make(chan struct{}), done: make(chan struct{})}
}

// Process and IsIDRemoved complete the Raft interface: raft.Node's own
// ReportUnreachable and ReportSnapshot are the other two.
func (n *node) Process(ctx context.Context, m *raftpb.Message) error { return n.Step(ctx, m) }
func (n *node) IsIDRemoved(uint64) bool                              { return false }

// run is the Ready loop, sending through tr, until stopRun.
func (n *node) run(tr *rafthttp.Transport) {
	defer close(n.done)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			n.Tick()
		case rd := <-n.Ready():
			if !raft.IsEmptySnap(rd.Snapshot) {
				_ = n.storage.ApplySnapshot(rd.Snapshot)
			}
			if !raft.IsEmptyHardState(rd.HardState) {
				_ = n.storage.SetHardState(rd.HardState)
			}
			_ = n.storage.Append(rd.Entries)
			tr.Send(rd.Messages)
			for _, e := range rd.CommittedEntries {
				if e.GetType() == raftpb.EntryConfChange {
					var cc raftpb.ConfChange
					if proto.Unmarshal(e.GetData(), &cc) == nil {
						n.ApplyConfChange(&cc)
					}
				}
			}
			n.Advance()
		case <-n.stop:
			return
		}
	}
}

func (n *node) stopRun() {
	close(n.stop)
	<-n.done
}

// Three raft nodes, each the Raft of its member's transport: they elect a
// leader; isolated, the leader is replaced by the other two; after the heal
// all three follow one leader again.
func Example_raft() {
	peers := []raft.Peer{{ID: 1}, {ID: 2}, {ID: 3}}
	nodes := map[uint64]*node{}
	c, err := rafthttptest.NewCluster(3, rafthttptest.Options{
		Raft: func(id uint64) rafthttp.Raft {
			nodes[id] = newNode(id, peers)
			return nodes[id]
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for id, n := range nodes {
		go n.run(c.Transport(id))
	}
	defer func() {
		var wg sync.WaitGroup
		for _, n := range nodes {
			wg.Go(n.stopRun) // the Ready loops, then the transports, then raft
		}
		wg.Wait()
		c.Close()
		for _, n := range nodes {
			n.Stop()
		}
	}()

	// agreed polls the members ids until they follow one leader among
	// them, and returns it; 0 if they do not within 10 seconds.
	agreed := func(ids ...uint64) uint64 {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			lead := nodes[ids[0]].Status().Lead
			same := slices.Contains(ids, lead)
			for _, id := range ids {
				same = same && nodes[id].Status().Lead == lead
			}
			if same {
				return lead
			}
		}
		return 0
	}
	old := agreed(1, 2, 3)
	fmt.Println("a leader is elected:", old != 0)

	if err := c.Mesh().Isolate(old); err != nil {
		fmt.Println(err)
		return
	}
	var rest []uint64
	for _, id := range []uint64{1, 2, 3} {
		if id != old {
			rest = append(rest, id)
		}
	}
	lead := agreed(rest...)
	fmt.Println("leader isolated; the others elect another:", lead != 0 && lead != old)

	c.Mesh().Heal()
	fmt.Println("healed; all three follow one leader:", agreed(1, 2, 3) != 0)
	// Output:
	// a leader is elected: true
	// leader isolated; the others elect another: true
	// healed; all three follow one leader: true
}

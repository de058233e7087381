package robustness

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.uber.org/zap"

	"github.com/raftkit/rafthttp"
	"github.com/raftkit/rafthttp/faultnet"
)

// violation is a check that failed, with what it saw.
type violation struct {
	Check  string `json:"check"`
	Detail string `json:"detail"`
}

// cluster is the members of a run, their fault network and what the run
// observes of them. Members are started, stopped and restarted by the run
// (and its nemesis) only.
type cluster struct {
	cfg    runConfig
	ids    []uint64
	net    *faultnet.Network
	mesh   *faultnet.Mesh
	acct   *accounting
	tamper *tamper // nil: a working transport
	logger *zap.Logger

	snapshotsInstalled atomic.Int64 // snapshots raft handed a member
	snapshotsSent      atomic.Int64 // SendSnapshots that succeeded
	restarts           atomic.Int64

	mu         sync.Mutex
	nodes      map[uint64]*node // the running incarnations; nil: down
	disks      map[uint64]*disk
	addrs      map[uint64]string
	violations []violation
}

// newCluster starts the members of cfg, each with its disk under dir, and
// wires every pair through a fault network seeded by the run's seed.
func newCluster(cfg runConfig, dir string, logger *zap.Logger, tp *tamper) (*cluster, error) {
	c := &cluster{cfg: cfg, net: faultnet.New(cfg.Seed), acct: newAccounting(), tamper: tp, logger: logger,
		nodes: map[uint64]*node{}, disks: map[uint64]*disk{}, addrs: map[uint64]string{}}
	for i := range cfg.Members {
		c.ids = append(c.ids, uint64(i+1))
	}
	for _, id := range c.ids {
		d := &disk{storage: raft.NewMemoryStorage(), snapDir: filepath.Join(dir, fmt.Sprintf("member-%d", id))}
		if err := os.MkdirAll(d.snapDir, 0o755); err != nil {
			c.close()
			return nil, err
		}
		n, err := startNode(c, id, d, "", c.ids)
		if err != nil {
			c.close()
			return nil, err
		}
		c.disks[id], c.nodes[id], c.addrs[id] = d, n, n.addr
	}
	mesh, err := c.net.Mesh(c.addrs)
	if err != nil {
		c.close()
		return nil, err
	}
	c.mesh = mesh
	for _, id := range c.ids {
		if err := c.addPeers(c.nodes[id]); err != nil {
			c.close()
			return nil, err
		}
	}
	for _, id := range c.ids {
		go c.nodes[id].run()
	}
	return c, nil
}

// addPeers makes every other member a peer of n, through the mesh.
func (c *cluster) addPeers(n *node) error {
	for _, j := range c.ids {
		if j != n.id {
			if err := n.tr.AddPeer(j, []string{c.mesh.URL(n.id, j)}); err != nil {
				return fmt.Errorf("member %d: %w", n.id, err)
			}
		}
	}
	return nil
}

// violate records a failed check.
func (c *cluster) violate(check, detail string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.violations = append(c.violations, violation{check, detail})
}

// node returns the running incarnation of member id, nil if it is down.
func (c *cluster) node(id uint64) *node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[id]
}

// running returns the running incarnations, in ID order.
func (c *cluster) running() []*node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*node
	for _, id := range c.ids {
		if n := c.nodes[id]; n != nil {
			out = append(out, n)
		}
	}
	return out
}

// kill stops member id, as a crash would (its disk stays).
func (c *cluster) kill(id uint64) {
	c.mu.Lock()
	n := c.nodes[id]
	c.nodes[id] = nil
	c.mu.Unlock()
	if n != nil {
		n.stop()
	}
}

// restart starts a new incarnation of member id from its disk, on its
// address, if it is down.
func (c *cluster) restart(id uint64) error {
	if c.node(id) != nil {
		return nil
	}
	n, err := startNode(c, id, c.disks[id], c.addrs[id], nil)
	if err != nil {
		return err
	}
	if err := c.addPeers(n); err != nil {
		n.stop()
		return err
	}
	c.mu.Lock()
	c.nodes[id] = n
	c.mu.Unlock()
	c.restarts.Add(1)
	go n.run()
	return nil
}

// leader returns the member that leads at the highest term, 0 if none.
func (c *cluster) leader() uint64 {
	var lead, term uint64
	for _, n := range c.running() {
		if raft.StateType(n.role.Load()) != raft.StateLeader {
			continue
		}
		if t := n.rn.Status().GetTerm(); t > term {
			lead, term = n.id, t
		}
	}
	return lead
}

// pick returns a running member for a client: the leader half the time,
// any member otherwise (followers forward proposals and reads to it).
func (c *cluster) pick(rng *rand.Rand) *node {
	if rng.IntN(2) == 0 {
		if l := c.leader(); l != 0 {
			if n := c.node(l); n != nil {
				return n
			}
		}
	}
	nodes := c.running()
	if len(nodes) == 0 {
		return nil
	}
	return nodes[rng.IntN(len(nodes))]
}

// converged says whether every member is up, follows one leader, and has
// applied every entry that leader committed.
func (c *cluster) converged() bool {
	nodes := c.running()
	if len(nodes) != len(c.ids) {
		return false
	}
	lead := c.leader()
	if lead == 0 {
		return false
	}
	ln := c.node(lead)
	if ln == nil {
		return false
	}
	commit := ln.rn.Status().GetCommit()
	for _, n := range nodes {
		if n.lead.Load() != lead || n.appliedIndex() != commit {
			return false
		}
	}
	return true
}

// waitFor polls cond every 20 ms until it holds or timeout passes, and
// says whether it held.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			return cond()
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// freezeAll parks every member's Ready loop; the returned function resumes
// them.
func (c *cluster) freezeAll() (resume func()) {
	var resumes []chan struct{}
	for _, n := range c.running() {
		resumes = append(resumes, n.freeze())
	}
	return func() {
		for _, r := range resumes {
			close(r)
		}
	}
}

// pair is an ordered pair of members.
type pair struct{ from, to uint64 }

// quiesce waits until the members have converged with their Ready loops
// paused, and returns the function that resumes them: a member that
// converged and then received a late proposal, or a commit, before it was
// paused would be compared in the middle of it. It says false if they did
// not within timeout, and then resumes them itself.
func (c *cluster) quiesce(timeout time.Duration) (resume func(), ok bool) {
	deadline := time.Now().Add(timeout)
	for {
		if !waitFor(context.Background(), time.Until(deadline), c.converged) {
			return nil, false
		}
		resume = c.freezeAll()
		if c.converged() {
			return resume, true
		}
		resume()
	}
}

// accountingState is the accounting of every member at one moment, and
// the state of the stream connections each member writes to each peer on.
type accountingState struct {
	tallies map[uint64]tally
	writers map[pair][2]rafthttp.StreamState
}

// accountingNow reads the counts of every member: the test's, and the
// drops counted by the running transports.
func (c *cluster) accountingNow() (accountingState, error) {
	dropped := map[uint64]uint64{}
	writers := map[pair][2]rafthttp.StreamState{}
	for _, n := range c.running() {
		d, err := n.drops()
		if err != nil {
			return accountingState{}, err
		}
		for to, v := range d {
			dropped[to] += v
		}
		for _, j := range c.ids {
			if s, ok := n.tr.PeerStatus(j); ok {
				writers[pair{n.id, j}] = [2]rafthttp.StreamState{s.Streams[0].Writer, s.Streams[1].Writer}
			}
		}
	}
	return accountingState{tallies: c.acct.tallies(dropped), writers: writers}, nil
}

// snapshotsInFlight counts the SendSnapshots whose outcome is not in yet.
func (c *cluster) snapshotsInFlight() int64 {
	var sum int64
	for _, n := range c.running() {
		sum += n.snapsInFlight.Load()
	}
	return sum
}

// close stops every member, then the fault network.
func (c *cluster) close() {
	var wg sync.WaitGroup
	for _, n := range c.running() {
		wg.Go(n.stop)
	}
	wg.Wait()
	c.net.Close()
}

// others returns the members not in group, in ID order.
func (c *cluster) others(group []uint64) []uint64 {
	var out []uint64
	for _, id := range c.ids {
		if !slices.Contains(group, id) {
			out = append(out, id)
		}
	}
	return out
}

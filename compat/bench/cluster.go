package main

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/raftkit/rafthttp"
)

// cluster is n nodes of one kind (IDs 1 to n), each a peer of every other:
// the raft-cluster and many-peers scenarios.
type cluster struct {
	kind  kind
	nodes []*node // nodes[i] has ID i+1
	fail  *failures
}

// newCluster starts n nodes of kind k, with handler h(id) as node id's raft,
// makes each a peer of every other and waits until every stream between
// them is up. setup, if not nil, is called with each node before it has
// peers. Snapshots, which the scenarios do not send, would go to dir.
func newCluster(k kind, n int, dir string, h func(id uint64) handler, setup func(*node)) (*cluster, error) {
	c := &cluster{kind: k, fail: &failures{}}
	for i := range n {
		id := uint64(i + 1)
		nd, err := newNode(k, id, 0, dir, h(id), c.fail, false)
		if err != nil {
			c.stop()
			return nil, err
		}
		if setup != nil {
			setup(nd)
		}
		c.nodes = append(c.nodes, nd)
	}
	var errs []error
	for _, a := range c.nodes {
		for _, b := range c.nodes {
			if a != b {
				errs = append(errs, a.addPeer(b.id, b.url))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		c.stop()
		return nil, err
	}
	// Many nodes dial many streams at once: allow for it.
	err := waitUntil(10*time.Second+time.Duration(n)*time.Second, func() bool {
		for _, nd := range c.nodes {
			if !c.streamsUp(nd) {
				return false
			}
		}
		return true
	})
	if err != nil {
		var down []string
		for _, nd := range c.nodes {
			if !c.streamsUp(nd) {
				down = append(down, fmt.Sprint(nd.id))
			}
		}
		c.stop()
		return nil, fmt.Errorf("%s cluster of %d: streams not up at nodes %v: %w", k, n, down, err)
	}
	return c, nil
}

// peersOf returns the IDs of nd's peers.
func (c *cluster) peersOf(nd *node) []uint64 {
	ids := make([]uint64, 0, len(c.nodes)-1)
	for _, o := range c.nodes {
		if o != nd {
			ids = append(ids, o.id)
		}
	}
	return ids
}

// streamsUp reports whether nd has both streams with every peer up in both
// directions: as node.streamsUp, for every peer.
func (c *cluster) streamsUp(nd *node) bool {
	peers := c.peersOf(nd)
	if nd.ours != nil {
		for _, id := range peers {
			if s, ok := nd.ours.PeerStatus(id); !ok || !s.StreamsUp() {
				return false
			}
		}
		return true
	}
	for _, id := range peers {
		if nd.activeSince(id).IsZero() {
			return false
		}
	}
	return nd.tap.openStreams() >= int64(2*len(peers)) && nd.tap.msgAppV2Begun.Load() >= int64(len(peers))
}

// links is the number of ordered pairs of members: each is one peer of
// one transport.
func (c *cluster) links() int { return len(c.nodes) * (len(c.nodes) - 1) }

// stop stops every transport, then every server, each group at once.
func (c *cluster) stop() {
	var wg sync.WaitGroup
	for _, nd := range c.nodes {
		wg.Go(nd.stopTransport)
	}
	wg.Wait()
	for _, nd := range c.nodes {
		wg.Go(nd.close)
	}
	wg.Wait()
}

// clusterLinks is what must not change in a cluster while a measurement
// runs, as linkState for a pair: per node, pipeline POSTs served, stream
// handlers ended, peers reported unreachable, and for ours the state of
// every stream with every peer.
type clusterLinks struct {
	posts, ended, unreachable []int64
	streams                   []map[uint64][2]rafthttp.StreamStats
}

func (c *cluster) linkState() clusterLinks {
	n := len(c.nodes)
	s := clusterLinks{posts: make([]int64, n), ended: make([]int64, n), unreachable: make([]int64, n),
		streams: make([]map[uint64][2]rafthttp.StreamStats, n)}
	for i, nd := range c.nodes {
		s.posts[i] = nd.tap.pipelinePosts.Load() + nd.tap.batchPosts.Load()
		s.ended[i] = nd.tap.streamsEnded.Load()
		s.unreachable[i] = nd.raft.unreachable.Load()
		if nd.ours != nil {
			s.streams[i] = map[uint64][2]rafthttp.StreamStats{}
			for _, id := range c.peersOf(nd) {
				st, _ := nd.ours.PeerStatus(id)
				s.streams[i][id] = st.Streams
			}
		}
	}
	return s
}

// checkLinks reports what changed since before: every message must have
// gone by the streams, none of which may have reconnected, and no peer may
// have been reported unreachable.
func (c *cluster) checkLinks(before clusterLinks) error {
	after := c.linkState()
	var errs []error
	for i, nd := range c.nodes {
		if d := after.posts[i] - before.posts[i]; d != 0 {
			errs = append(errs, fmt.Errorf("node %d served %d pipeline POSTs during the measurement, want 0 (messages left the streams)", nd.id, d))
		}
		if d := after.ended[i] - before.ended[i]; d != 0 {
			errs = append(errs, fmt.Errorf("node %d: %d streams ended during the measurement, want 0", nd.id, d))
		}
		if d := after.unreachable[i] - before.unreachable[i]; d != 0 {
			errs = append(errs, fmt.Errorf("node %d reported a peer unreachable %d times during the measurement, want 0", nd.id, d))
		}
		for id, sts := range after.streams[i] {
			for j, st := range sts {
				was := before.streams[i][id][j]
				if !sameEnd(st.Writer, was.Writer) || !sameEnd(st.Reader, was.Reader) {
					errs = append(errs, fmt.Errorf("node %d, peer %d: %s stream changed during the measurement (writer %+v reader %+v, was %+v %+v)",
						nd.id, id, st.Type, st.Writer, st.Reader, was.Writer, was.Reader))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// Package rafthttptest starts clusters of rafthttp transports for the tests
// of applications built on them: each member is a started
// [rafthttp.Transport] served by a real HTTP server on 127.0.0.1, and every
// member reaches every other through a fault-injecting network
// ([faultnet.Mesh]), so that a test can partition the cluster, cut one
// direction, slow a member's links or stall its streams while the
// application runs on top.
//
// [StartCluster] is for tests: it fails the test if the cluster cannot
// start and stops it when the test ends. [NewCluster] does the same for
// code without a testing.TB (examples, benchmark harnesses), with
// [Cluster.Close] to stop it.
//
// Each member's [rafthttp.Raft] is the caller's (Options.Raft), typically a
// raft node with its Ready loop sending through [Cluster.Transport], or a
// [Recorder] that records what the transport delivers.
//
// A test that fails on a partition it did not expect should look at the
// timeouts first: the Transport's defaults are production's (a silent
// stream is noticed after ConnReadTimeout, 5 s); Options.Configure is the
// place to shorten them.
package rafthttptest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/raftkit/rafthttp"
	"github.com/raftkit/rafthttp/faultnet"
)

// DefaultClusterID is the cluster ID of the members when Options.ClusterID
// is zero: 0x1000, as in etcd's raftexample.
const DefaultClusterID = 0x1000

// Options configures a cluster. The zero value is a cluster of Recorders on
// transports with the library's defaults, and a fault network of seed 0.
type Options struct {
	// ClusterID is every member's Transport.ClusterID. Zero means
	// DefaultClusterID.
	ClusterID uint64
	// Seed seeds the jitter of the fault network (faultnet.New).
	Seed int64
	// Raft returns the Raft of member id. It is called once per member,
	// in ID order, before that member's transport starts; it must not
	// return nil. Nil means a new Recorder for each member.
	Raft func(id uint64) rafthttp.Raft
	// Configure, if not nil, is called with each member's Transport before
	// its Start, with ID, ClusterID, Raft and URLs (the member's own
	// address) already set: set timeouts, a Logger, a Registerer or a
	// SnapshotStore there. A Transport it leaves invalid makes the
	// cluster fail to start with Start's error.
	Configure func(tr *rafthttp.Transport)
}

// Cluster is n members, with IDs 1 to n, each a started Transport served
// by its own HTTP server, that reach each other through a faultnet.Mesh:
// member i has every other member j as a peer, at Mesh().URL(i, j). Its
// methods are safe for concurrent use.
type Cluster struct {
	net     *faultnet.Network
	mesh    *faultnet.Mesh
	ids     []uint64
	members map[uint64]*member

	closeOnce sync.Once
}

// member is one member's transport and server.
type member struct {
	tr     *rafthttp.Transport
	url    string
	srv    *http.Server
	served chan struct{} // closed when srv.Serve has returned
}

// StartCluster starts a cluster of n members for the test t, which it fails
// (with t.Fatal) if the cluster cannot start, and closes the cluster at the
// end of the test (t.Cleanup). The streams between members come up in the
// background; use Cluster.WaitConnected to wait for them.
func StartCluster(t testing.TB, n int, opts Options) *Cluster {
	t.Helper()
	c, err := NewCluster(n, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// NewCluster starts a cluster of n members, n at least 1: for each member in
// ID order it gets its Raft, listens on a free port of 127.0.0.1, starts
// its Transport and serves the transport's handler on /raft and /raft/ with
// the server rafthttp.NewServer builds; then it makes the mesh and adds
// every member as a peer of every other, through the mesh. On error,
// nothing it started is left running. The caller must Close the cluster.
func NewCluster(n int, opts Options) (*Cluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("rafthttptest: a cluster needs at least 1 member, not %d", n)
	}
	if opts.ClusterID == 0 {
		opts.ClusterID = DefaultClusterID
	}
	c := &Cluster{net: faultnet.New(opts.Seed), members: map[uint64]*member{}}
	if err := c.start(n, opts); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// start does NewCluster's work; Close undoes what it did, on error too.
func (c *Cluster) start(n int, opts Options) error {
	targets := map[uint64]string{}
	for i := range n {
		id := uint64(i + 1)
		var r rafthttp.Raft = &Recorder{}
		if opts.Raft != nil {
			if r = opts.Raft(id); r == nil {
				return fmt.Errorf("rafthttptest: Options.Raft returned nil for member %d", id)
			}
		}
		m, err := startMember(id, r, opts)
		if err != nil {
			return err
		}
		c.ids = append(c.ids, id)
		c.members[id] = m
		targets[id] = m.srvAddr()
	}
	mesh, err := c.net.Mesh(targets)
	if err != nil {
		return fmt.Errorf("rafthttptest: %w", err)
	}
	c.mesh = mesh
	for _, from := range c.ids {
		for _, to := range c.ids {
			if from == to {
				continue
			}
			if err := c.members[from].tr.AddPeer(to, []string{mesh.URL(from, to)}); err != nil {
				return fmt.Errorf("rafthttptest: member %d: %w", from, err)
			}
		}
	}
	return nil
}

// startMember starts the transport of member id and its server.
func startMember(id uint64, r rafthttp.Raft, opts Options) (*member, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("rafthttptest: member %d: %w", id, err)
	}
	m := &member{url: "http://" + ln.Addr().String(), served: make(chan struct{})}
	m.tr = &rafthttp.Transport{ID: id, ClusterID: opts.ClusterID, Raft: r, URLs: []string{m.url}}
	if opts.Configure != nil {
		opts.Configure(m.tr)
	}
	if err := m.tr.Start(); err != nil {
		ln.Close()
		return nil, fmt.Errorf("rafthttptest: member %d: %w", id, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/raft", m.tr.Handler())
	mux.Handle("/raft/", m.tr.Handler())
	m.srv = rafthttp.NewServer(mux)
	go func() {
		defer close(m.served)
		_ = m.srv.Serve(ln) // ends with http.ErrServerClosed at Close
	}()
	return m, nil
}

// srvAddr is the host:port the member's server listens on.
func (m *member) srvAddr() string { return m.url[len("http://"):] }

// Close stops the cluster: every transport (concurrently, each Stop
// returning once the transport's goroutines have ended), then every HTTP
// server, then the fault network. A transport lets go of the streams it
// serves before its server closes, as an application shuts down. The Raft
// of a member is not called once Close has returned. It is idempotent.
func (c *Cluster) Close() {
	c.closeOnce.Do(func() {
		var wg sync.WaitGroup
		for _, m := range c.members {
			wg.Go(m.tr.Stop)
		}
		wg.Wait()
		for _, m := range c.members {
			m.srv.Close()
			<-m.served
		}
		c.net.Close()
	})
}

// IDs returns the members' IDs, 1 to n.
func (c *Cluster) IDs() []uint64 { return append([]uint64(nil), c.ids...) }

// Transport returns the transport of member id, or nil if id is not a
// member. Its raft Ready loop sends through it.
func (c *Cluster) Transport(id uint64) *rafthttp.Transport {
	if m, ok := c.members[id]; ok {
		return m.tr
	}
	return nil
}

// Recorder returns the Raft of member id if it is a *Recorder (as it is
// when Options.Raft is nil), and nil otherwise.
func (c *Cluster) Recorder(id uint64) *Recorder {
	if m, ok := c.members[id]; ok {
		r, _ := m.tr.Raft.(*Recorder)
		return r
	}
	return nil
}

// URL returns the URL of member id's own HTTP server, which its peers do
// not use (they go through the mesh), or "" if id is not a member. It is
// also the member's Transport.URLs.
func (c *Cluster) URL(id uint64) string {
	if m, ok := c.members[id]; ok {
		return m.url
	}
	return ""
}

// Mesh returns the fault network between the members: Mesh().Proxy(i, j)
// is the proxy member i dials to reach member j.
func (c *Cluster) Mesh() *faultnet.Mesh { return c.mesh }

// Network returns the fault network the mesh is made on, to add proxies of
// one's own (a second URL for a member, say); they close with the cluster.
func (c *Cluster) Network() *faultnet.Network { return c.net }

// pollInterval is how often WaitConnected looks at the transports' state.
const pollInterval = 5 * time.Millisecond

// WaitConnected waits until every member has both streams up in both
// directions with every other (rafthttp.PeerStats.StreamsUp), the steady
// state in which messages leave by the streams. It returns an error naming
// a pair still down, wrapping ctx's error, if ctx ends first.
func (c *Cluster) WaitConnected(ctx context.Context) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		from, to, ok := c.firstDown()
		if ok {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("rafthttptest: streams between members %d and %d not up: %w", from, to, ctx.Err())
		}
	}
}

// firstDown returns the first pair, in ID order, whose streams are not all
// up; ok if there is none.
func (c *Cluster) firstDown() (from, to uint64, ok bool) {
	for _, from := range c.ids {
		for _, to := range c.ids {
			if from == to {
				continue
			}
			if s, found := c.members[from].tr.PeerStatus(to); !found || !s.StreamsUp() {
				return from, to, false
			}
		}
	}
	return 0, 0, true
}

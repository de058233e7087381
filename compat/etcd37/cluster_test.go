package etcd37

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/client/pkg/v3/types"
	etcdhttp "go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	stats "go.etcd.io/etcd/server/v3/etcdserver/api/v2stats"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/raftkit/rafthttp"
	"github.com/raftkit/rafthttp/internal/rafttest"
)

// This file runs mixed clusters of go.etcd.io/raft/v3 nodes in one process:
// each member has a raft.Node, a Ready loop, its own HTTP server on
// 127.0.0.1, and either our Transport or etcd 3.7's rafthttp.Transport.

const clusterID = 0x1000

// kind is the transport a member uses.
type kind string

const (
	ours kind = "ours"
	etcd kind = "etcd"
)

// netTransport is what a cluster needs of either transport; the member's
// Ready loop sends through the transport itself (rafttest.Sender).
type netTransport interface {
	addPeer(id uint64, url string)
	stop()
}

// The shared raft member is the Raft of both transports: their Raft
// interfaces have the same methods.
var (
	_ rafthttp.Raft = (*rafttest.Member)(nil)
	_ etcdhttp.Raft = (*rafttest.Member)(nil)
)

type ourTransport struct{ tr *rafthttp.Transport }

func (o ourTransport) addPeer(id uint64, u string) {
	if err := o.tr.AddPeer(id, []string{u}); err != nil {
		panic(err) // URLs come from httptest: cannot happen
	}
}
func (o ourTransport) stop() { o.tr.Stop() }

type etcdTransport struct{ tr *etcdhttp.Transport }

func (e etcdTransport) addPeer(id uint64, u string) { e.tr.AddPeer(types.ID(id), []string{u}) }
func (e etcdTransport) stop()                       { e.tr.Stop() }

// logBuffer collects a member's logs; the test prints them if it fails.
// (etcd's probers may log after Transport.Stop returns, so the logs cannot
// go to t.Log.)
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) Sync() error { return nil }

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLogger(b *logBuffer, name string) *zap.Logger {
	enc := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	return zap.New(zapcore.NewCore(enc, b, zap.WarnLevel)).Named(name)
}

// member is one raft member (node, storage and Ready loop: rafttest.Member,
// which records every committed entry, in order) on either transport,
// behind its own HTTP server.
type member struct {
	*rafttest.Member
	kind kind
	tr   netTransport
	srv  *httptest.Server
	url  string
	logs *logBuffer

	stopOnce sync.Once
}

// clusterTick and electionTick give an election timeout of 0.5-1 s: long
// enough that a loaded two-core machine running the race detector does
// not see spurious elections, short enough to fail over quickly.
const (
	clusterTick  = 10 * time.Millisecond
	electionTick = 50
)

func newMember(t *testing.T, id uint64, k kind, peers []uint64) *member {
	t.Helper()
	m := &member{kind: k, logs: &logBuffer{},
		Member: rafttest.NewMember(t, id, peers, rafttest.Config{Tick: clusterTick, ElectionTick: electionTick,
			CheckQuorum: true, PreVote: true})}
	lg := newLogger(m.logs, fmt.Sprintf("%s-%d", k, id))
	m.srv = httptest.NewUnstartedServer(nil)
	var sender rafttest.Sender
	switch k {
	case ours:
		m.url = "http://" + m.srv.Listener.Addr().String()
		tr := &rafthttp.Transport{ID: id, ClusterID: clusterID, Raft: m.Member, Logger: lg, URLs: []string{m.url}}
		if err := tr.Start(); err != nil {
			t.Fatalf("Start: %v", err)
		}
		m.tr, sender = ourTransport{tr}, tr
		m.srv.Config.Handler = mount(tr.Handler())
	case etcd:
		// Serve etcd's transport as etcd does: on its peer listener, with
		// per-Read and per-Write deadlines.
		m.srv.Listener.Close()
		ln, err := etcdhttp.NewListener(url.URL{Scheme: "http", Host: "127.0.0.1:0"}, &transport.TLSInfo{})
		if err != nil {
			t.Fatal(err)
		}
		m.srv.Listener = ln
		m.url = "http://" + ln.Addr().String()
		idStr := types.ID(id).String()
		tr := &etcdhttp.Transport{
			Logger:      lg,
			DialTimeout: 2 * time.Second,
			ID:          types.ID(id),
			URLs:        types.MustNewURLs([]string{m.url}),
			ClusterID:   types.ID(clusterID),
			Raft:        m.Member,
			Snapshotter: snap.New(lg, t.TempDir()),
			ServerStats: stats.NewServerStats("", idStr),
			LeaderStats: stats.NewLeaderStats(lg, idStr),
			ErrorC:      make(chan error, 1),
		}
		if err := tr.Start(); err != nil {
			t.Fatalf("Start: %v", err)
		}
		m.tr, sender = etcdTransport{tr}, tr
		m.srv.Config.Handler = mount(tr.Handler())
	}
	m.srv.Start()
	t.Cleanup(func() {
		m.stop()
		if t.Failed() {
			t.Logf("logs of %s member %d:\n%s", m.kind, m.ID(), m.logs)
		}
	})
	// Run's cleanup, registered last, stops the Ready loop and the node
	// first.
	m.Run(sender)
	return m
}

func mount(h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/raft", h)
	mux.Handle("/raft/", h)
	return mux
}

// stop ends the member as a crash would, but cleanly: the Ready loop, the
// raft node, the transport, then the HTTP server. Idempotent.
func (m *member) stop() {
	m.stopOnce.Do(func() {
		m.Stop()
		m.tr.stop()
		m.srv.CloseClientConnections()
		m.srv.Close()
	})
}

// cluster is a set of members, all peers of each other.
type cluster struct {
	members []*member
	stopped map[uint64]bool
}

func newCluster(t *testing.T, kinds []kind) *cluster {
	t.Helper()
	var peers []uint64
	for i := range kinds {
		peers = append(peers, uint64(i+1))
	}
	c := &cluster{stopped: map[uint64]bool{}}
	for i, k := range kinds {
		c.members = append(c.members, newMember(t, uint64(i+1), k, peers))
	}
	for _, a := range c.members {
		for _, b := range c.members {
			if a != b {
				a.tr.addPeer(b.ID(), b.url)
			}
		}
	}
	return c
}

func (c *cluster) running() []*member {
	var out []*member
	for _, m := range c.members {
		if !c.stopped[m.ID()] {
			out = append(out, m)
		}
	}
	return out
}

// leader waits until the running members agree on a leader among them.
func (c *cluster) leader(t *testing.T) *member {
	t.Helper()
	var lead *member
	eventually(t, "the cluster to agree on a leader", func() bool {
		run := c.running()
		for _, m := range run {
			if m.IsLeader() {
				for _, o := range run {
					if o.Lead() != m.ID() {
						return false
					}
				}
				lead = m
				return true
			}
		}
		return false
	})
	return lead
}

// transferTo makes m the leader.
func (c *cluster) transferTo(t *testing.T, m *member) {
	t.Helper()
	eventually(t, fmt.Sprintf("member %d to take the lead", m.ID()), func() bool {
		lead := c.leader(t)
		if lead == m {
			return true
		}
		lead.Node().TransferLeadership(t.Context(), lead.ID(), m.ID())
		return false
	})
}

// commit proposes data through the leader and waits until every running
// member has committed all of it. Proposals lost to a change of leader
// are proposed again, so a datum may be committed twice; the logs are
// compared whole anyway.
func (c *cluster) commit(t *testing.T, data []string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		lead := c.leader(t)
		missing := slices.DeleteFunc(slices.Clone(data), func(d string) bool { return lead.Has(d) })
		for _, d := range missing {
			err := lead.Node().Propose(t.Context(), []byte(d))
			if errors.Is(err, raft.ErrProposalDropped) {
				break // leadership changed: start over with the new leader
			}
			if err != nil {
				t.Fatalf("Propose: %v", err)
			}
		}
		// Wait for progress; give up on this round if it stalls.
		stall := time.NewTimer(5 * time.Second)
		tick := time.NewTicker(5 * time.Millisecond)
		done := false
		for !done {
			select {
			case <-tick.C:
				done = c.allHave(data)
			case <-stall.C:
				done = true
			}
		}
		stall.Stop()
		tick.Stop()
		if c.allHave(data) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cluster did not commit %d entries in time", len(data))
		}
	}
}

func (c *cluster) allHave(data []string) bool {
	for _, m := range c.running() {
		if !m.Has(data...) {
			return false
		}
	}
	return true
}

// eventually polls cond until it holds, failing the test after 30 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	rafttest.Eventually(t, 30*time.Second, what, cond)
}

func data(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%05d", prefix, i)
	}
	return out
}

// sameEntries compares two committed logs up to the shorter one's length,
// by index, term, type and data.
func sameEntries(a, b []*raftpb.Entry) error {
	for i := range min(len(a), len(b)) {
		x, y := a[i], b[i]
		if x.GetIndex() != y.GetIndex() || x.GetTerm() != y.GetTerm() || x.GetType() != y.GetType() || !bytes.Equal(x.GetData(), y.GetData()) {
			return fmt.Errorf("entry %d: got index %d term %d %q, want index %d term %d %q",
				i, x.GetIndex(), x.GetTerm(), x.GetData(), y.GetIndex(), y.GetTerm(), y.GetData())
		}
	}
	return nil
}

// TestMixedCluster runs three raft members, two on one transport and one on
// the other, with the lead on the majority transport: it must elect a
// leader, commit 10,000 entries, survive the leader being stopped (the two
// members left, one per transport, elect a new leader and commit more), and
// end with identical logs.
func TestMixedCluster(t *testing.T) {
	entries := 10000
	if testing.Short() {
		entries = 1000
	}
	for _, tc := range []struct {
		name  string
		kinds []kind
	}{
		{name: "two-etcd-one-ours", kinds: []kind{etcd, etcd, ours}},
		{name: "two-ours-one-etcd", kinds: []kind{ours, ours, etcd}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, tc.kinds)
			c.transferTo(t, c.members[0])
			start := time.Now()
			c.commit(t, data("before", entries))
			t.Logf("%d entries committed on all members in %v", entries, time.Since(start).Round(time.Millisecond))

			old := c.leader(t)
			old.stop()
			c.stopped[old.ID()] = true
			lead := c.leader(t)
			if lead == old {
				t.Fatalf("the stopped member %d is still the leader", old.ID())
			}
			c.commit(t, data("after", 100))

			// The survivors, one on each transport, must have the same
			// log, and the stopped leader's must be a prefix of it.
			run := c.running()
			eventually(t, "the survivors to commit the same number of entries", func() bool {
				return len(run[0].Committed()) == len(run[1].Committed())
			})
			if kinds := []kind{run[0].kind, run[1].kind}; kinds[0] == kinds[1] {
				t.Fatalf("survivors both use the %s transport, want one of each", kinds[0])
			}
			a, b := run[0].Committed(), run[1].Committed()
			if err := sameEntries(a, b); err != nil {
				t.Errorf("member %d's log vs member %d's: %v", run[0].ID(), run[1].ID(), err)
			}
			if err := sameEntries(old.Committed(), a); err != nil {
				t.Errorf("stopped leader %d's log vs member %d's: %v", old.ID(), run[0].ID(), err)
			}
			if len(old.Committed()) > len(a) {
				t.Errorf("the stopped leader committed %d entries, more than the survivors' %d", len(old.Committed()), len(a))
			}
			if want := entries + 100; len(a) < want {
				t.Errorf("the survivors committed %d entries, want at least %d", len(a), want)
			}
			for _, m := range c.members {
				if err := m.Err(); err != nil {
					t.Errorf("member %d: %v", m.ID(), err)
				}
			}
		})
	}
}

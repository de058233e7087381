package rafthttp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"

	"github.com/xiang90/probing"
	"go.uber.org/zap"
)

// Mux serves the raft routes of several Transports, one per raft group,
// behind one http.Handler, so that the groups of a process share one
// listener. Each group is its own cluster to its peers, etcd members
// included: every request they send carries the cluster ID
// (X-Etcd-Cluster-ID), and the Mux hands it to the Transport of that
// ClusterID, whose answer is the one it would give alone, byte for byte.
// Nothing changes on the wire.
//
//   - /raft/probing, which carries no cluster ID, is answered by the Mux
//     itself, once for all groups.
//   - A request for a cluster the Mux does not serve (or with no cluster
//     ID) gets what a Transport of another cluster answers: 405 for a
//     wrong method, 412 "incompatible version" if its versions rule it out
//     (judged against DefaultServerVersion and DefaultMinClusterVersion),
//     else 412 "cluster ID mismatch", as etcd answers; etcd's senders read
//     it as a refusal and retry. Unlike a Transport's, the answer names no
//     cluster ID and announces no feature.
//   - Groups are added (Add) and removed (Remove) while requests flow.
//
// Mount it, like a Transport's Handler, where it sees every path under
// /raft. The zero value is ready to use; set Logger before first use. All
// methods are safe for concurrent use.
//
// Outgoing traffic is not the Mux's: give the Transports one HostPool to
// share connections, probers and dial backoff per host. Metrics and Stats
// are per Transport: register each group's collectors on a registerer
// that labels them, prometheus.WrapRegistererWith(prometheus.Labels{"group":
// name}, reg), so that the groups' series, under the same names, differ by
// that label (or give each a MetricsNamespace of its own).
type Mux struct {
	// Logger receives the refusals of requests for clusters the Mux does
	// not serve, rate-limited per source. Nil means no logging.
	Logger *zap.Logger

	once     sync.Once
	lg       *zap.Logger
	warns    *warnLimits
	refusals http.Handler // the routes, for requests of no group
	// serverVersion and minClusterVersion are what the refusals judge a
	// request's versions against.
	serverVersion, minClusterVersion semver

	mu     sync.RWMutex
	groups map[string]*muxGroup // by cluster ID as requests carry it (formatID)
}

// muxGroup is a Transport served by a Mux.
type muxGroup struct {
	t       *Transport
	id      uint64
	handler http.Handler
	// ctx ends the group's requests when it is removed; inflight counts
	// them, so that Remove waits for them.
	ctx      context.Context
	cancel   context.CancelFunc
	inflight sync.WaitGroup
}

func (m *Mux) init() {
	m.once.Do(func() {
		m.lg = m.Logger
		if m.lg == nil {
			m.lg = zap.NewNop()
		}
		m.warns = newWarnLimits(nil)
		// Constants that parse: Start takes them when a Transport
		// leaves its versions zero.
		m.serverVersion, _ = parseSemver(DefaultServerVersion)
		m.minClusterVersion, _ = parseSemver(DefaultMinClusterVersion)
		mux := http.NewServeMux()
		mux.HandleFunc(RaftPrefix, m.refuse(http.MethodPost, false))
		mux.HandleFunc(RaftStreamPrefix+"/", m.refuse(http.MethodGet, true))
		mux.HandleFunc(RaftSnapshotPrefix, m.refuse(http.MethodPost, false))
		mux.HandleFunc(pipelineBatchPath, m.refuse(http.MethodPost, false))
		mux.HandleFunc(snapshotResumePath, m.refuse(http.MethodGet, false))
		mux.Handle(ProbingPrefix, probing.NewHandler())
		m.refusals = mux
		m.groups = map[string]*muxGroup{}
	})
}

// Add serves t, a started Transport, for requests that carry its
// ClusterID. It returns ErrNotStarted or ErrStopped for a Transport that
// is not running, and an error wrapping ErrGroupExists if the Mux already
// serves that cluster ID. Add does not take the Transport over: its owner
// still stops it, after removing it.
func (m *Mux) Add(t *Transport) error {
	m.init()
	if t == nil {
		return fmt.Errorf("rafthttp: Mux.Add: %w", ErrNotStarted)
	}
	t.mu.RLock()
	started, stopped, id := t.started, t.stopped, t.cfg.clusterID
	t.mu.RUnlock()
	switch {
	case !started:
		return fmt.Errorf("rafthttp: Mux.Add: %w", ErrNotStarted)
	case stopped:
		return fmt.Errorf("rafthttp: Mux.Add: %w", ErrStopped)
	}
	key := formatID(id)
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.groups[key]; ok {
		return fmt.Errorf("rafthttp: Mux.Add: cluster %s: %w", key, ErrGroupExists)
	}
	g := &muxGroup{t: t, id: id, handler: t.Handler()}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	m.groups[key] = g
	return nil
}

// Remove stops serving the group of clusterID, and reports whether the Mux
// served it. From the moment it is called, requests for that cluster are
// answered as for any cluster the Mux does not serve (412). The requests
// the group was serving are ended: their contexts are cancelled, so that
// the streams it served end (their dialers redial, and are refused) and
// a Raft.Process or SnapshotStore call in progress is told to give up,
// and Remove returns once every one has returned, as Transport.Stop waits
// for its own. The Transport itself goes on running, for its owner to
// stop (or to serve elsewhere, as when a group moves): its streams to
// peers, which it dials, are its own.
func (m *Mux) Remove(clusterID uint64) bool {
	m.init()
	m.mu.Lock()
	g, ok := m.groups[formatID(clusterID)]
	delete(m.groups, formatID(clusterID))
	m.mu.Unlock()
	if !ok {
		return false
	}
	g.cancel()
	// No request joins after the delete above: ServeHTTP counts a request
	// in under the read lock, while the group is in the map.
	g.inflight.Wait()
	return true
}

// Groups returns the cluster IDs the Mux serves, in increasing order.
func (m *Mux) Groups() []uint64 {
	m.init()
	m.mu.RLock()
	defer m.mu.RUnlock()
	ids := make([]uint64, 0, len(m.groups))
	for _, g := range m.groups {
		ids = append(ids, g.id)
	}
	slices.Sort(ids)
	return ids
}

// Transport returns the Transport serving clusterID, if any.
func (m *Mux) Transport(clusterID uint64) (*Transport, bool) {
	m.init()
	m.mu.RLock()
	defer m.mu.RUnlock()
	g, ok := m.groups[formatID(clusterID)]
	if !ok {
		return nil, false
	}
	return g.t, true
}

// ServeHTTP dispatches r to the group of its X-Etcd-Cluster-ID.
func (m *Mux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.init()
	if r.URL.Path == ProbingPrefix {
		m.refusals.ServeHTTP(w, r) // the probe handler, the same for all
		return
	}
	// Get, not a map index: the canonical key is "X-Etcd-Cluster-Id". The
	// ID is looked up as sent: etcd compares it as a string, so an
	// upper-case or zero-padded ID matches no group.
	key := r.Header.Get(headerClusterID)
	m.mu.RLock()
	g := m.groups[key]
	if g != nil {
		g.inflight.Add(1) // under the lock, so never after Remove's Wait began
	}
	m.mu.RUnlock()
	if g == nil {
		m.refusals.ServeHTTP(w, r)
		return
	}
	defer g.inflight.Done()
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	defer context.AfterFunc(g.ctx, func() { cancel(errGroupRemoved) })()
	g.handler.ServeHTTP(w, r.WithContext(ctx))
}

// errGroupRemoved is the cancellation cause of the requests of a group
// that Mux.Remove removed: a stream handler then has its writer let go of
// the connection, where a request's end otherwise only makes the writer
// probe it (the remote may still be reading).
var errGroupRemoved = errors.New("rafthttp: group removed from the Mux")

// refuse returns the handler of a raft route, whose method is method, for
// requests of no group: the answers of a Transport's admit (checkRequest)
// to a request from another cluster. stream says the route is a stream's,
// whose answers carry X-Server-Version after the method check.
func (m *Mux) refuse(method string, stream bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !allowMethod(w, r, method) {
			return
		}
		if stream {
			w.Header().Set(headerServerVersion, m.serverVersion.String())
		}
		rh := parseRequestHeaders(r.Header)
		if err := rh.checkVersions(m.serverVersion, m.minClusterVersion); err != nil {
			if n, ok := m.warns.allowFrom(warnVersion, r.RemoteAddr); ok {
				m.lg.Warn("failed version compatibility check",
					zap.String("local-member-server-version", m.serverVersion.String()),
					zap.String("remote-peer-server-name", clip(rh.rawFrom, clipPlain)),
					zap.String("remote-peer-server-version", clip(rh.rawServerVersion, clipPlain)),
					zap.String("remote-addr", clip(r.RemoteAddr, clipPlain)), zap.Error(err), suppressed(n))
			}
			http.Error(w, ErrIncompatibleVersion.Error(), http.StatusPreconditionFailed)
			return
		}
		if n, ok := m.warns.allowFrom(warnClusterID, r.RemoteAddr); ok {
			m.lg.Warn("request for a cluster this server does not serve",
				zap.String("remote-peer-cluster-id", clip(rh.clusterID, clipPlain)),
				zap.String("remote-addr", clip(r.RemoteAddr, clipPlain)), suppressed(n))
		}
		http.Error(w, ErrClusterIDMismatch.Error(), http.StatusPreconditionFailed)
	}
}

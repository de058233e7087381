package main

// The parts of the peer that depend on the etcd 3.5 line: raftpb is
// go.etcd.io/etcd/raft/v3's (gogo protobuf, messages passed by value).

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"go.etcd.io/etcd/api/v3/version"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	stats "go.etcd.io/etcd/server/v3/etcdserver/api/v2stats"
	"go.uber.org/zap"

	"github.com/raftkit/rafthttp/compat/peerkit"
)

// etcd is the peerkit.Adapter of this line.
type etcd struct{}

func (etcd) Version() string { return version.Version }

func (etcd) Start(cfg peerkit.Config, r peerkit.Raft) (peerkit.Transport, net.Listener, error) {
	if cfg.ReadTimeout > 0 {
		rafthttp.ConnReadTimeout = cfg.ReadTimeout // before NewListener, which uses it
	}
	zc := zap.NewDevelopmentConfig()
	zc.Level = zap.NewAtomicLevelAt(zap.InfoLevel)
	lg, err := zc.Build()
	if err != nil {
		return nil, nil, err
	}
	// The listener etcd serves its peers on, with its per-Read and
	// per-Write deadlines.
	ln, err := rafthttp.NewListener(url.URL{Scheme: "http", Host: "127.0.0.1:0"}, &transport.TLSInfo{})
	if err != nil {
		return nil, nil, err
	}
	id := types.ID(cfg.ID)
	tr := &rafthttp.Transport{
		Logger:      lg,
		DialTimeout: 2 * time.Second, // etcd's default: 1 s + the election timeout
		ID:          id,
		URLs:        types.MustNewURLs([]string{"http://" + ln.Addr().String()}),
		ClusterID:   types.ID(cfg.ClusterID),
		Raft:        etcdRaft{r},
		Snapshotter: snap.New(lg, cfg.SnapDir),
		ServerStats: stats.NewServerStats("", id.String()),
		LeaderStats: stats.NewLeaderStats(lg, id.String()),
		ErrorC:      make(chan error, 1),
	}
	if err := tr.Start(); err != nil {
		ln.Close()
		return nil, nil, err
	}
	return etcdTransport{tr}, ln, nil
}

// etcdRaft implements rafthttp.Raft over peerkit's.
type etcdRaft struct{ r peerkit.Raft }

func (e etcdRaft) Process(_ context.Context, m raftpb.Message) error {
	b, err := m.Marshal()
	if err != nil {
		return err
	}
	return e.r.Process(b)
}

func (e etcdRaft) IsIDRemoved(id uint64) bool  { return e.r.IsIDRemoved(id) }
func (e etcdRaft) ReportUnreachable(id uint64) { e.r.ReportUnreachable(id) }
func (e etcdRaft) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	e.r.ReportSnapshot(id, int(status))
}

// etcdTransport implements peerkit.Transport over etcd's.
type etcdTransport struct{ tr *rafthttp.Transport }

func (t etcdTransport) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(rafthttp.RaftPrefix, t.tr.Handler())
	mux.Handle(rafthttp.RaftPrefix+"/", t.tr.Handler())
	return mux
}

func (t etcdTransport) ErrorC() <-chan error             { return t.tr.ErrorC }
func (t etcdTransport) AddPeer(id uint64, urls []string) { t.tr.AddPeer(types.ID(id), urls) }
func (t etcdTransport) RemovePeer(id uint64)             { t.tr.RemovePeer(types.ID(id)) }
func (t etcdTransport) ActiveSince(id uint64) time.Time  { return t.tr.ActiveSince(types.ID(id)) }
func (t etcdTransport) ActivePeers() int                 { return t.tr.ActivePeers() }
func (t etcdTransport) Stop()                            { t.tr.Stop() }

func (t etcdTransport) Send(b []byte) error {
	var m raftpb.Message
	if err := m.Unmarshal(b); err != nil {
		return err
	}
	t.tr.Send([]raftpb.Message{m})
	return nil
}

func (t etcdTransport) SendSnapshot(b []byte, payload io.ReadCloser, size int64) (<-chan bool, error) {
	var m raftpb.Message
	if err := m.Unmarshal(b); err != nil {
		return nil, err
	}
	sm := snap.NewMessage(m, payload, size)
	t.tr.SendSnapshot(*sm)
	return sm.CloseNotify(), nil
}

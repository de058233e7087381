package rafthttp

import (
	"context"
	"net/url"
	"sync"
	"sync/atomic"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// remote is a member we can reach but have not added as a peer: a pipeline
// and nothing else (spec §4.7). A new member uses remotes to answer members
// it learns of before its own membership catches up.
type remote struct {
	t        *Transport
	id       uint64
	idStr    string
	lg       *zap.Logger
	status   *peerStatus
	pipeline *pipeline
	paused   atomic.Bool
	drops    logLimiter // rate-limits drop warnings (warnlog.go)

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startRemote(t *Transport, id uint64, urls []url.URL) *remote {
	idStr := formatID(id)
	lg := t.lg.With(zap.String("local-member-id", t.cfg.idStr), zap.String("remote-peer-id", idStr))
	// A remote's activity is its own: it is not a peer, and ActivePeers
	// does not count it.
	status := newPeerStatus(lg, t.warns.now, t.metrics, t.cfg.idStr, idStr)
	r := &remote{t: t, id: id, idStr: idStr, lg: lg, status: status,
		pipeline: newPipeline(t, id, lg, status, newURLPicker(urls), t.metrics.forPeer(idStr))}
	var ctx context.Context
	ctx, r.cancel = context.WithCancel(t.ctx)
	r.pipeline.start(ctx, &r.wg)
	return r
}

// send queues m on the pipeline, or drops it and tells raft. Unlike etcd,
// which drops remote messages silently, a drop here is reported like any
// other.
func (r *remote) send(m *raftpb.Message) {
	if r.paused.Load() {
		r.pipeline.metrics.drop(m.GetType(), dropPaused)
		return
	}
	select {
	case r.pipeline.msgc <- m:
		return
	default:
	}
	r.t.reportUnreachable(r.id)
	if m.GetType() == raftpb.MsgSnap {
		r.t.reportSnapshot(r.id, raft.SnapshotFailure)
	}
	r.pipeline.metrics.sentFailures.Inc()
	r.pipeline.metrics.drop(m.GetType(), dropQueueFull)
	if n, ok := r.drops.allow(r.t.warns.now); ok {
		msg := "dropped Raft message since sending buffer is full (overloaded network)"
		if r.status.isActive() {
			msg = "dropped internal Raft message since sending buffer is full (overloaded network)"
		}
		r.lg.Warn(msg, zap.Stringer("message-type", m.GetType()), suppressed(n))
	}
}

func (r *remote) pause()  { r.paused.Store(true) }
func (r *remote) resume() { r.paused.Store(false) }

// stop ends the pipeline's workers and waits for them.
func (r *remote) stop() {
	r.cancel()
	r.wg.Wait()
}

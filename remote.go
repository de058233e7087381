package rafthttp

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// remote is a member we can reach but have not added as a peer: a pipeline
// and nothing else (spec §4.7). A new member uses remotes to answer members
// it learns of before its own membership catches up.
//
// A remote is either the user's (AddRemote), kept until Stop, or learnt
// from a request's X-Server-From and X-PeerURLs. Anyone who passes the
// request checks can name any ID (with PeerIdentity set, only the one its
// certificate speaks for), so the learnt ones are bounded
// (maxRequestRemotes), expire when idle (requestRemoteIdleTimeout) and give
// way, least recently used first, to new ones: a flood of made-up IDs can
// cost us a bounded number of goroutines, but cannot keep a real member
// from being learnt.
type remote struct {
	t        *Transport
	id       uint64
	idStr    string
	lg       *zap.Logger
	status   *peerStatus
	pipeline *pipeline
	paused   atomic.Bool
	drops    logLimiter // rate-limits drop warnings (warnlog.go)
	// queued is the send budget (send_budget.go), as a peer's: a remote
	// that reads slowly must not hold more than a peer could.
	queued sendBudget
	// clients are the HTTP clients the remote is dialled with, as a
	// peer's (its pipeline's only).
	clients *clients

	// lastUsed is when a request from the member, or a Send to it, last
	// came (monoNanos). An atomic, so that Send stamps it under
	// the read lock it already holds.
	lastUsed atomic.Int64
	// fromRequest says the remote was learnt from a request: it counts
	// against the cap and may be retired. AddRemote clears it. Guarded by
	// t.mu.
	fromRequest bool
	// urlsKey is the rendering (urlsString) of the URLs the remote sends
	// to, so that a request naming other URLs is noticed cheaply. Guarded
	// by t.mu.
	urlsKey string

	ctx    context.Context // the pipeline's, cancelled by stop and retire
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup
}

// maxRequestRemotes caps the remotes learnt from requests (see
// addRemoteFromHeader) that exist at once, counting those still stopping,
// so that their goroutines (PipelineWorkers each) stay bounded whatever
// requests come in. When a request names a new member and the cap is
// reached, the least recently used learnt remote is stopped to make room:
// a member that talks to us, or that raft answers, stays; made-up IDs that
// nobody uses go first. Remotes added with AddRemote are neither counted
// nor ever evicted.
const maxRequestRemotes = 64

// requestRemoteIdleTimeout is how long a remote learnt from a request lives
// with no request from it and no Send to it. A member that is really joining
// talks to us at least every heartbeat; one that has been silent this long
// has joined as a peer, gone, or never existed. Its goroutines are not
// kept on the off chance.
const requestRemoteIdleTimeout = 5 * time.Minute

// errTooManyRemotes refuses a remote learnt from a request when the cap is
// reached and every learnt remote is already being stopped by other
// requests: a moment's state under a flood, which the member's next request
// gets past.
var errTooManyRemotes = errors.New("rafthttp: too many remotes created from requests")

// errRemoteRetired is the cancellation cause of a learnt remote stopped
// before Stop (idle, or evicted for another): what it was sending is
// reported to raft as dropped, where Stop drops silently.
var errRemoteRetired = errors.New("rafthttp: remote learnt from a request retired")

// newRemote builds a remote and starts nothing: start does. fromRequest
// says it is learnt from a request (see remote.fromRequest).
func newRemote(t *Transport, id uint64, urls []url.URL, fromRequest bool) *remote {
	idStr := formatID(id)
	lg := t.lg.With(zap.String("local-member-id", t.cfg.idStr), zap.String("remote-peer-id", idStr))
	// A remote's activity is its own: it is not a peer, and ActivePeers
	// does not count it. A learnt remote's transitions are logged only at
	// Error: requests can make any number of them over time, and a line
	// each would let a flood fill the logs. (One AddRemote adopts stays
	// quiet.)
	statusLg := lg
	if fromRequest {
		statusLg = lg.WithOptions(zap.IncreaseLevel(zapcore.ErrorLevel))
	}
	status := newPeerStatus(statusLg, t.warns.now, t.metrics, t.cfg.idStr, idStr)
	r := &remote{t: t, id: id, idStr: idStr, lg: lg, status: status, fromRequest: fromRequest, urlsKey: urlsString(urls),
		pipeline: newPipeline(t, id, lg, status, newURLPicker(urls), t.metrics.forPeer(idStr), dropRetired),
		clients:  t.clientsFor(id, false)}
	r.pipeline.rt = r.clients.pipeline
	r.queued.max = int64(t.cfg.maxPeerSendBytes)
	r.pipeline.budget = &r.queued
	r.touch()
	r.ctx, r.cancel = context.WithCancelCause(t.ctx)
	return r
}

// start starts the pipeline's workers. It is called once, before stop or
// retire.
func (r *remote) start() { r.pipeline.start(r.ctx, &r.wg, "remote") }

// touch records that the remote is in use.
func (r *remote) touch() { r.lastUsed.Store(monoNanos()) }

// send queues m on the pipeline, charging it to the remote's send budget,
// or drops it and tells raft (reportDrop). Unlike etcd, which drops remote
// messages silently, a drop here is reported like any other. It never
// blocks, and, as peer.send, reports whether it dropped m for a full queue,
// so that Send yields to the pipeline's workers.
func (r *remote) send(m *raftpb.Message) (full bool) {
	r.touch()
	if r.paused.Load() {
		r.t.reportDrop(r.id, m.GetType(), dropPaused, pausedDrop(&r.pipeline.metrics))
		return false
	}
	c := r.pipeline.msgc
	// A full queue is seen without taking the channel's lock, as in
	// peer.send.
	if len(c) == cap(c) {
		r.t.reportDrop(r.id, m.GetType(), dropQueueFull, r.sendDrop())
		return true
	}
	n := sendCharge(m)
	if !r.queued.charge(n) {
		r.t.reportDrop(r.id, m.GetType(), dropBudgetExceeded, r.sendDrop())
		return false
	}
	select {
	case c <- m:
		return false
	default:
		r.queued.release(n)
		r.t.reportDrop(r.id, m.GetType(), dropQueueFull, r.sendDrop())
		return true
	}
}

// stop ends the pipeline's workers and waits for them. What is queued is
// dropped unreported: the transport is stopping. Its charges are given
// back all the same, so that the budget's accounting balances on every
// path.
func (r *remote) stop() {
	r.cancel(nil)
	r.wg.Wait()
	for len(r.pipeline.msgc) > 0 {
		r.queued.releaseMsg(<-r.pipeline.msgc)
	}
	r.t.closeIdleConnectionsOf(r.clients)
}

// retire stops a learnt remote taken out of t.remotes while the transport
// runs on: its workers end and are waited for, and every message it still
// held, queued or being posted, is reported to raft as dropped, as a full
// queue's would be.
func (r *remote) retire() {
	r.cancel(errRemoteRetired)
	r.wg.Wait()
	r.pipeline.drain() // releases and reports what it held; silent if Stop has begun
	r.status.release()
	r.t.closeIdleConnectionsOf(r.clients)
}

// AddRemote adds a member that is not (yet) a peer, reachable only through a
// pipeline: a new member uses remotes to reach members it has not added as
// peers. Remotes added here are the user's: not counted against
// maxRequestRemotes, never evicted, and kept until Stop. It does nothing if
// a peer or one of the user's remotes with that id exists. A remote with
// that id learnt from a request is adopted: it becomes the user's and sends
// to urls from now on (a request can claim any ID, so the URLs it gave are
// not trusted over the user's). It returns ErrStopped after Stop.
func (t *Transport) AddRemote(id uint64, urls []string) error {
	return t.addMember(id, urls, t.checkRemoteIDLocked, func(us []url.URL) {
		if r, ok := t.remotes[id]; ok {
			if r.fromRequest {
				r.fromRequest = false
				t.requestRemotes--
				t.setRemoteURLsLocked(r, us, urlsString(us))
				t.lg.Info("adopted remote peer learnt from a request", zap.String("local-member-id", t.cfg.idStr),
					zap.String("remote-peer-id", r.idStr), zap.String("remote-peer-urls", r.urlsKey))
			}
			return
		}
		r := newRemote(t, id, us, false)
		r.start()
		t.remotes[id] = r
		t.lg.Info("added new remote peer", zap.String("local-member-id", t.cfg.idStr),
			zap.String("remote-peer-id", formatID(id)), zap.String("remote-peer-urls", urlsString(us)))
	})
}

// checkRemoteIDLocked returns why id cannot become a remote now, if it
// cannot. t.mu must be held.
func (t *Transport) checkRemoteIDLocked(id uint64) error {
	if err := t.usableLocked(); err != nil {
		return err
	}
	if id == 0 || id == t.cfg.id || raft.IsLocalMsgTarget(id) { // see AddPeer
		return fmt.Errorf("rafthttp: AddRemote: invalid member ID %s", formatID(id))
	}
	return nil
}

// addRequestRemote makes id, named by a request, reachable at us, within
// maxRequestRemotes. A request from a member we know already only marks it
// used (and moves a learnt remote to the URLs the request gives, so that a
// forged request cannot point a real member's remote elsewhere for good: the
// member's own next request puts it back). At the cap, the least recently
// used learnt remote is stopped first and its place handed over, so the
// learnt remotes alive or stopping never exceed the cap.
func (t *Transport) addRequestRemote(id uint64, us []url.URL) error {
	if err := t.checkIdentityURLs(us); err != nil {
		return err
	}
	key := urlsString(us)
	// The common case, a member we know, under the read lock only.
	t.mu.RLock()
	known := t.refreshRemoteLocked(id, key, nil)
	t.mu.RUnlock()
	if known {
		return nil
	}

	t.mu.Lock()
	if err := t.checkRemoteIDLocked(id); err != nil {
		t.mu.Unlock()
		return err
	}
	if t.refreshRemoteLocked(id, key, us) {
		t.mu.Unlock()
		return nil
	}
	evicted := false
	if t.requestRemotes < t.cfg.maxRequestRemotes {
		t.requestRemotes++
	} else {
		victim := t.leastRecentlyUsedLocked()
		if victim == nil {
			t.mu.Unlock()
			return errTooManyRemotes
		}
		// The victim's place is ours: it is not given back to the count,
		// so no one else can start a remote while this one stops.
		delete(t.remotes, victim.id)
		t.bg.Add(1) // Stop waits for the retirement
		t.mu.Unlock()
		victim.retire()
		t.bg.Done()
		if n, ok := t.evictLog.allow(t.warns.now); ok {
			t.lg.Warn("closed the least recently used remote learnt from a request, to make room for a new one",
				zap.String("local-member-id", t.cfg.idStr), zap.String("closed-remote-peer-id", victim.idStr),
				zap.String("new-remote-peer-id", formatID(id)), zap.Int("max-request-remotes", t.cfg.maxRequestRemotes),
				suppressed(n))
		}
		t.mu.Lock()
		t.forgetRemoteLocked(victim.id)
		err := t.checkRemoteIDLocked(id)
		if err != nil || t.refreshRemoteLocked(id, key, us) {
			t.requestRemotes-- // not needed after all
			t.mu.Unlock()
			return err
		}
		evicted = true
	}
	r := newRemote(t, id, us, true)
	r.start()
	t.remotes[id] = r
	if !t.janitorRunning {
		t.janitorRunning = true
		t.bg.Go(t.expireIdleRemotes)
	}
	t.mu.Unlock()
	lvl := zap.InfoLevel
	if evicted {
		lvl = zap.DebugLevel // a flood would log every request
	}
	if ce := t.lg.Check(lvl, "added new remote peer learnt from a request"); ce != nil {
		ce.Write(zap.String("local-member-id", t.cfg.idStr), zap.String("remote-peer-id", formatID(id)),
			zap.String("remote-peer-urls", key))
	}
	return nil
}

// refreshRemoteLocked reports whether id is a peer or remote already. If it
// is a learnt remote, it marks it used and, if us is not nil, moves it to us
// when key differs from its URLs (with us nil, a difference reports false:
// the caller must come back with the write lock). t.mu must be held, for
// writing if us is not nil.
func (t *Transport) refreshRemoteLocked(id uint64, key string, us []url.URL) bool {
	if _, ok := t.peers[id]; ok {
		return true
	}
	r, ok := t.remotes[id]
	if !ok {
		return false
	}
	if !r.fromRequest {
		return true
	}
	if r.urlsKey != key {
		if us == nil {
			return false
		}
		t.setRemoteURLsLocked(r, us, key)
		t.lg.Info("updated URLs of remote peer learnt from a request", zap.String("local-member-id", t.cfg.idStr),
			zap.String("remote-peer-id", r.idStr), zap.String("remote-peer-urls", key))
	}
	r.touch()
	return true
}

// setRemoteURLsLocked points r at us, rendered as key. t.mu must be held
// for writing.
func (t *Transport) setRemoteURLsLocked(r *remote, us []url.URL, key string) {
	if r.urlsKey == key {
		return
	}
	r.pipeline.picker.update(us)
	r.urlsKey = key
}

// leastRecentlyUsedLocked returns the learnt remote used longest ago, nil if
// there is none. A scan: there are at most maxRequestRemotes of them, and it
// runs only when a new one is needed at the cap. t.mu must be held.
func (t *Transport) leastRecentlyUsedLocked() *remote {
	var lru *remote
	for _, r := range t.remotes {
		if r.fromRequest && (lru == nil || r.lastUsed.Load() < lru.lastUsed.Load()) {
			lru = r
		}
	}
	return lru
}

// forgetRemoteLocked deletes the metric series of a retired remote, unless a
// peer or a new remote with its id owns them now: made-up IDs come and go,
// and their series must go with them. t.mu must be held for writing.
func (t *Transport) forgetRemoteLocked(id uint64) {
	if _, ok := t.peers[id]; ok {
		return
	}
	if _, ok := t.remotes[id]; ok {
		return
	}
	t.metrics.forgetPeer(t.cfg.idStr, formatID(id))
}

// expireIdleRemotes is the janitor: it retires learnt remotes idle for
// requestRemoteIdleTimeout, waking when the next could expire. It runs only
// while learnt remotes exist (addRequestRemote starts it) and under t.bg,
// so Stop waits for it.
func (t *Transport) expireIdleRemotes() {
	timer := time.NewTimer(t.cfg.requestRemoteIdle)
	defer timer.Stop()
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-timer.C:
		}
		next, more := t.sweepIdleRemotes(monoNanos())
		if !more {
			return
		}
		timer.Reset(next)
	}
}

// sweepIdleRemotes retires the learnt remotes unused since now minus the
// idle timeout and returns how long until the next of the others could
// expire. With none left it returns more false, and the janitor ends (the
// next learnt remote starts another).
func (t *Transport) sweepIdleRemotes(now int64) (next time.Duration, more bool) {
	idle := t.cfg.requestRemoteIdle
	next = idle
	var expired []*remote
	t.mu.Lock()
	for id, r := range t.remotes {
		if !r.fromRequest {
			continue
		}
		left := idle - time.Duration(now-r.lastUsed.Load())
		if left <= 0 {
			expired = append(expired, r)
			delete(t.remotes, id)
			continue
		}
		more = true
		next = min(next, left)
	}
	if !more {
		t.janitorRunning = false
	}
	t.mu.Unlock()
	if len(expired) == 0 {
		return next, more
	}
	for _, r := range expired {
		r.retire()
		r.lg.Info("closed idle remote peer learnt from a request", zap.Duration("idle-timeout", idle))
	}
	t.mu.Lock()
	for _, r := range expired {
		t.requestRemotes--
		t.forgetRemoteLocked(r.id)
	}
	t.mu.Unlock()
	return next, more
}

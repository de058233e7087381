package rafthttp

import (
	"context"
	"net/url"
	"runtime/pprof"
	"sync"
	"sync/atomic"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// Names of the channels a message can leave by, as etcd logs them.
const (
	chanStreamMsgAppV2 = "streamMsgAppV2"
	chanStreamMsg      = "streamMsg"
	chanPipeline       = "pipeline"
)

// peer is one remote member: a stream writer per stream type (serving the
// streams the member dials to us), a stream reader per type (dialling the
// streams it serves us), its pipeline, and the loops that hand received
// messages to raft (one per stream, one for proposals). It owns all of
// their goroutines; stop ends them and waits.
type peer struct {
	t       *Transport
	id      uint64
	idStr   string
	lg      *zap.Logger
	status  *peerStatus
	picker  *urlPicker
	metrics peerMetrics

	// writers and readers are indexed by streamType (element 0 is nil);
	// walk them through streamTypes.
	writers  [streamTypeEnd]*streamWriter
	readers  [streamTypeEnd]*streamReader
	pipeline *pipeline
	probers  [2]*prober // over the stream and the pipeline round trippers; none with a HostPool
	// hosts are the HostPool's hosts the peer's URLs are at, whose
	// probers it reads (hostpool.go). Guarded by mu.
	hosts map[string]*poolHost
	// clients are the HTTP clients the peer is dialled with: the
	// Transport's, or with PeerIdentity on its own (clientsFor).
	clients *clients

	// Each stream reader has its own receive queue (streamReader.recvc),
	// so appends backed up on the msgappv2 stream do not delay heartbeats
	// and votes on the message stream. propc carries proposals from both,
	// so that a raft without a leader, which blocks proposals, cannot hold
	// up the rest.
	propc chan received

	// queued is the send budget (send_budget.go): the bytes of the
	// messages queued to this peer and not yet written.
	queued sendBudget

	// features is what the member last announced (features.go).
	features peerFeatures

	paused atomic.Bool
	// Limiters of the warnings this peer can set off (warnlog.go).
	drops       logLimiter  // messages dropped, sent or received
	processErrs logLimiter  // Raft.Process failures
	refused     logLimiter  // stream dials refused (410, 412)
	snapFails   logLimiter  // snapshot sends failed
	identityLog logLimiter  // messages on our streams from another member (identity.go)
	snapSending atomic.Bool // a snapshot to this peer is in flight
	// resumeBad is the snapshot whose partial payload the peer holds is
	// not ours (snapshot_resume.go): the next send of it starts from
	// zero. Only the snapshot send in flight touches it.
	resumeBad snapshotID

	mu       sync.Mutex // guards stopping against wg.Go
	stopping bool

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
}

// newPeer builds a peer and starts nothing: start does. A peer built and
// never started may still be stopped.
func newPeer(t *Transport, id uint64, urls []url.URL) *peer {
	idStr := formatID(id)
	lg := t.lg.With(zap.String("local-member-id", t.cfg.idStr), zap.String("remote-peer-id", idStr))
	p := &peer{
		t:       t,
		id:      id,
		idStr:   idStr,
		lg:      lg,
		status:  newPeerStatus(t.lg, t.warns.now, t.metrics, t.cfg.idStr, idStr),
		picker:  newURLPicker(urls),
		metrics: t.metrics.forPeer(idStr),
		propc:   make(chan received, t.cfg.propQueue),
	}
	p.queued.max = int64(t.cfg.maxPeerSendBytes)
	p.ctx, p.cancel = context.WithCancel(t.ctx)
	p.clients = t.clientsFor(id, true)
	p.pipeline = newPipeline(t, id, lg, p.status, p.picker, p.metrics, dropRemoved)
	p.pipeline.rt = p.clients.pipeline
	p.pipeline.budget = &p.queued
	p.pipeline.features = &p.features
	for _, typ := range streamTypes {
		p.writers[typ] = newStreamWriter(p, typ)
		p.readers[typ] = newStreamReader(p, typ)
	}
	if t.cfg.pool == nil {
		p.probers = [2]*prober{
			// The stream prober dials as the msgappv2 reader does: a fresh
			// connection with per-Read/Write deadlines.
			newProber(p, roundTripperNameRaftMessage, p.clients.streams[streamTypeMsgAppV2]),
			newProber(p, roundTripperNameSnapshot, p.clients.pipeline),
		}
	}
	return p
}

// start starts the peer's goroutines: the pipeline's workers, a writer and
// a reader per stream type, a loop handing each stream's messages to raft
// and one for proposals, and the probers. Once the peer is stopping, it
// starts nothing (see goIfRunning).
func (p *peer) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping {
		return
	}
	p.lg.Info("starting remote peer")
	p.pipeline.start(p.ctx, &p.wg, "peer")
	for _, typ := range streamTypes {
		w := p.writers[typ]
		goLabelled(&p.wg, p.idStr, "stream-writer "+typ.endpoint(), func() { w.run(p.ctx) })
	}
	for _, typ := range streamTypes {
		r := p.readers[typ]
		goLabelled(&p.wg, p.idStr, "stream-reader "+typ.endpoint(), func() { r.run(p.ctx) })
	}
	for _, typ := range streamTypes {
		c := p.readers[typ].recvc
		goLabelled(&p.wg, p.idStr, "process "+typ.endpoint(), func() { p.processLoop(c) })
	}
	goLabelled(&p.wg, p.idStr, "process proposals", func() { p.processLoop(p.propc) })
	for _, pr := range p.probers {
		if pr != nil { // none with a HostPool: the pool probes the peer's hosts
			goLabelled(&p.wg, p.idStr, "prober "+pr.name, func() { pr.run(p.ctx) })
		}
	}
	p.joinHostsLocked(p.picker.urls()) // a new peer is at no host yet
	p.lg.Info("started remote peer")
}

// goLabelled runs fn in a goroutine of wg whose profile labels name the
// peer (rafthttp.peer, its hex ID) and what the goroutine does
// (rafthttp.role), so that CPU profiles, goroutine dumps and execution
// traces tell a peer's loops apart; goroutines fn starts inherit them. The
// labels cost one small allocation when the goroutine starts, nothing
// after.
func goLabelled(wg *sync.WaitGroup, peerID, role string, fn func()) {
	wg.Go(func() {
		pprof.Do(context.Background(), pprof.Labels("rafthttp.peer", peerID, "rafthttp.role", role),
			func(context.Context) { fn() })
	})
}

// received is a message on its way to Process, with what it holds of the
// receive budget (released once Process returns).
type received struct {
	m      *raftpb.Message
	charge int64
}

// processLoop hands the messages of one receive queue to raft, one at a
// time, yielding its P while bulk traffic flows (sched.go).
func (p *peer) processLoop(c chan received) {
	y := p.t.processYielder()
	for {
		y.tick()
		var rm received
		// Take what is queued without a two-case select, the cheaper path
		// under load; wait for more or for the end otherwise.
		select {
		case rm = <-c:
		default:
			select {
			case rm = <-c:
			case <-p.ctx.Done():
				return
			}
		}
		p.process(rm)
	}
}

// process hands rm to raft and gives back what it holds of the receive
// budget; a failure is logged (rate-limited).
func (p *peer) process(rm received) {
	m := rm.m
	err := p.t.Raft.Process(p.ctx, m)
	p.t.budget.release(rm.charge)
	if err != nil && p.ctx.Err() == nil {
		// A stopped raft fails every message: rate-limit.
		if n, ok := p.processErrs.allow(p.t.warns.now); ok {
			p.lg.Warn("failed to process Raft message", zap.Stringer("message-type", m.GetType()),
				zap.Error(err), suppressed(n))
		}
	}
}

// send queues m on the channel pick chooses, charging it to the peer's send
// budget, or drops it and tells raft (reportDrop). It never blocks; it
// reports whether it dropped m for a full queue.
func (p *peer) send(m *raftpb.Message) (full bool) {
	if p.paused.Load() {
		p.t.reportDrop(p.id, m.GetType(), dropPaused, pausedDrop(&p.metrics))
		return false
	}
	c, name := p.pick(m)
	// A full queue is seen without taking the channel's lock: a flood of
	// sends to a full queue otherwise contends for it with the writer
	// draining the queue (compat/bench, open loop).
	if len(c) == cap(c) {
		p.t.reportDrop(p.id, m.GetType(), dropQueueFull, p.sendDrop(name))
		return true
	}
	n := sendCharge(m)
	if !p.queued.charge(n) {
		// Not a full queue: the writer is held up by the network, and
		// yielding to it would not help.
		p.t.reportDrop(p.id, m.GetType(), dropBudgetExceeded, p.sendDrop(name))
		return false
	}
	select {
	case c <- m:
		return false
	default:
		p.queued.release(n)
		p.t.reportDrop(p.id, m.GetType(), dropQueueFull, p.sendDrop(name))
		return true
	}
}

// pick chooses how m leaves (spec §4.2): a MsgSnap by the pipeline, so that
// a large snapshot never holds up a stream; otherwise by the first stream,
// in streamTypes order, that carries m and is up (a MsgApp by msgappv2, else
// anything by the message stream); else the pipeline.
func (p *peer) pick(m *raftpb.Message) (chan<- *raftpb.Message, string) {
	mt := m.GetType()
	if mt == raftpb.MsgSnap {
		return p.pipeline.msgc, chanPipeline
	}
	for typ := streamType(1); typ < streamTypeEnd; typ++ { // streamTypes, without bounds checks
		if d, w := &streams[typ], p.writers[typ]; d.carries.has(mt) && w.isWorking() {
			return w.msgc, d.channel
		}
	}
	return p.pipeline.msgc, chanPipeline
}

// attachOutgoingConn hands a stream the remote dialled to the writer of its
// type. It returns false if the peer has stopped.
func (p *peer) attachOutgoingConn(c *outgoingConn) bool {
	if c.typ.endpoint() == "" {
		return false
	}
	return p.writers[c.typ].attach(c)
}

// pokeWriters asks every stream writer to probe its connection soon (see
// streamWriter.poke).
func (p *peer) pokeWriters() {
	for _, typ := range streamTypes {
		p.writers[typ].poke()
	}
}

// queueDepth is the length of one of a peer's queues, under its name in
// rafthttp_queue_depth.
type queueDepth struct {
	name string
	n    int
}

// queueDepths appends the length of each of the peer's queues to qs, and
// returns it with the bytes charged to its send budget: what the metrics
// collector samples at scrape time.
func (p *peer) queueDepths(qs []queueDepth) ([]queueDepth, int64) {
	for _, typ := range streamTypes {
		qs = append(qs, queueDepth{streams[typ].sendQueue, len(p.writers[typ].msgc)})
	}
	qs = append(qs, queueDepth{"pipeline", len(p.pipeline.msgc)})
	for _, typ := range streamTypes {
		qs = append(qs, queueDepth{streams[typ].recvQueue, len(p.readers[typ].recvc)})
	}
	qs = append(qs, queueDepth{"prop", len(p.propc)})
	return qs, p.queued.inUse()
}

// goIfRunning starts fn as one of the peer's goroutines, unless the peer is
// stopping: a goroutine must never be added to a WaitGroup being waited on.
// role names it in profiles (goLabelled).
func (p *peer) goIfRunning(role string, fn func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping {
		return false
	}
	goLabelled(&p.wg, p.idStr, role, fn)
	return true
}

func (p *peer) update(urls []url.URL) {
	p.picker.update(urls)
	p.joinHosts(urls)
}

// stop ends every goroutine of the peer and waits for them; the stream
// connections it writes to are released to their handlers. Idempotent.
func (p *peer) stop() {
	p.stopOnce.Do(func() {
		p.lg.Info("stopping remote peer")
		p.mu.Lock()
		p.stopping = true
		p.mu.Unlock()
		p.cancel()
		for _, typ := range streamTypes {
			p.writers[typ].abort()
		}
		p.wg.Wait()
		p.leaveHosts()
		// Messages still queued for the streams or on the pipeline will
		// never be sent: raft is told of each (not once Stop has begun).
		for _, typ := range streamTypes {
			w := p.writers[typ]
			for len(w.msgc) > 0 {
				m := <-w.msgc
				p.queued.releaseMsg(m)
				p.pipeline.abandon(m)
			}
		}
		p.pipeline.drain() // releases what its queue held, too
		p.t.closeIdleConnectionsOf(p.clients)
		// What is still received will never be processed: give back what
		// it holds of the receive budget.
		for _, typ := range streamTypes {
			p.releaseReceived(p.readers[typ].recvc)
		}
		p.releaseReceived(p.propc)
		p.lg.Info("stopped remote peer")
	})
}

// releaseReceived empties c, a receive queue of the stopped peer, giving
// back what its messages hold of the receive budget.
func (p *peer) releaseReceived(c chan received) {
	for len(c) > 0 {
		p.t.budget.release((<-c).charge)
	}
}

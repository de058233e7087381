package rafthttp

import (
	"context"
	"net/url"
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

// peer is one remote member: its two stream writers (serving the streams the
// member dials to us), its two stream readers (dialling the streams it
// serves us), its pipeline, and the two loops that hand received messages to
// raft. It owns all of their goroutines; stop ends them and waits.
type peer struct {
	t       *Transport
	id      uint64
	idStr   string
	lg      *zap.Logger
	status  *peerStatus
	picker  *urlPicker
	metrics peerMetrics

	msgAppV2Writer *streamWriter
	writer         *streamWriter
	pipeline       *pipeline
	msgAppV2Reader *streamReader
	msgAppReader   *streamReader
	probers        [2]*prober // over the stream and the pipeline round trippers

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
	snapSending atomic.Bool // a snapshot to this peer is in flight

	mu       sync.Mutex // guards stopping against wg.Go
	stopping bool

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
}

// startPeer builds a peer and starts its goroutines.
func startPeer(t *Transport, id uint64, urls []url.URL) *peer {
	idStr := formatID(id)
	lg := t.lg.With(zap.String("local-member-id", t.cfg.idStr), zap.String("remote-peer-id", idStr))
	lg.Info("starting remote peer")
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
	p.pipeline = newPipeline(t, id, lg, p.status, p.picker, p.metrics, dropRemoved)
	p.pipeline.budget = &p.queued
	p.pipeline.features = &p.features
	p.msgAppV2Writer = newStreamWriter(p, streamTypeMsgAppV2)
	p.writer = newStreamWriter(p, streamTypeMessage)
	p.msgAppV2Reader = newStreamReader(p, streamTypeMsgAppV2)
	p.msgAppReader = newStreamReader(p, streamTypeMessage)
	p.probers = [2]*prober{
		newProber(p, roundTripperNameRaftMessage, t.streamRt),
		newProber(p, roundTripperNameSnapshot, t.pipelineRt),
	}

	p.pipeline.start(p.ctx, &p.wg)
	p.wg.Go(func() { p.msgAppV2Writer.run(p.ctx) })
	p.wg.Go(func() { p.writer.run(p.ctx) })
	p.wg.Go(func() { p.msgAppV2Reader.run(p.ctx) })
	p.wg.Go(func() { p.msgAppReader.run(p.ctx) })
	p.wg.Go(func() { p.processLoop(p.msgAppV2Reader.recvc, yielder{clock: t.bulk}) })
	p.wg.Go(func() { p.processLoop(p.msgAppReader.recvc, yielder{}) })
	p.wg.Go(func() { p.processLoop(p.propc, yielder{}) })
	for _, pr := range p.probers {
		p.wg.Go(func() { pr.run(p.ctx) })
	}
	lg.Info("started remote peer")
	return p
}

// received is a message on its way to Process, with what it holds of the
// receive budget (released once Process returns).
type received struct {
	m      *raftpb.Message
	charge int64
}

// processLoop hands the messages of one receive queue to raft, one at a time,
// yielding its P on y's schedule.
func (p *peer) processLoop(c chan received, y yielder) {
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
// a large snapshot never holds up a stream; a MsgApp by the msgappv2 stream
// when it is up; anything by the message stream when it is up; else the
// pipeline.
func (p *peer) pick(m *raftpb.Message) (chan<- *raftpb.Message, string) {
	switch {
	case m.GetType() == raftpb.MsgSnap:
		return p.pipeline.msgc, chanPipeline
	case m.GetType() == raftpb.MsgApp && p.msgAppV2Writer.isWorking():
		return p.msgAppV2Writer.msgc, chanStreamMsgAppV2
	case p.writer.isWorking():
		return p.writer.msgc, chanStreamMsg
	default:
		return p.pipeline.msgc, chanPipeline
	}
}

// attachOutgoingConn hands a stream the remote dialled to the writer of its
// type. It returns false if the peer has stopped.
func (p *peer) attachOutgoingConn(c *outgoingConn) bool {
	switch c.typ {
	case streamTypeMsgAppV2:
		return p.msgAppV2Writer.attach(c)
	case streamTypeMessage:
		return p.writer.attach(c)
	}
	return false
}

// goIfRunning starts fn as one of the peer's goroutines, unless the peer is
// stopping: a goroutine must never be added to a WaitGroup being waited on.
func (p *peer) goIfRunning(fn func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping {
		return false
	}
	p.wg.Go(fn)
	return true
}

func (p *peer) update(urls []url.URL) { p.picker.update(urls) }

func (p *peer) pause()  { p.paused.Store(true) }
func (p *peer) resume() { p.paused.Store(false) }

// stop ends every goroutine of the peer and waits for them; the stream
// connections it writes to are released to their handlers. Idempotent.
func (p *peer) stop() {
	p.stopOnce.Do(func() {
		p.lg.Info("stopping remote peer")
		p.mu.Lock()
		p.stopping = true
		p.mu.Unlock()
		p.cancel()
		p.msgAppV2Writer.abort()
		p.writer.abort()
		p.wg.Wait()
		// Messages still queued for the streams or on the pipeline will
		// never be sent: raft is told of each (not once Stop has begun).
		for _, w := range []*streamWriter{p.msgAppV2Writer, p.writer} {
			for len(w.msgc) > 0 {
				m := <-w.msgc
				p.queued.releaseMsg(m)
				p.pipeline.abandon(m)
			}
		}
		p.pipeline.drain() // releases what its queue held, too
		// What is still received will never be processed: give back what
		// it holds of the receive budget.
		for _, c := range []chan received{p.msgAppV2Reader.recvc, p.msgAppReader.recvc, p.propc} {
			for len(c) > 0 {
				p.t.budget.release((<-c).charge)
			}
		}
		p.lg.Info("stopped remote peer")
	})
}

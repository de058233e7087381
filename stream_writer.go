package rafthttp

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// maxBatch bounds how many queued messages a stream writer encodes before it
// flushes, etcd's streamBufSize/2: a writer that never finds its queue empty
// still flushes regularly.
const maxBatch = 2048

// outgoingConn is a stream a remote member dialled to us: the response of a
// GET /raft/stream/... that its handler keeps open. The handler and the
// stream writer share it: the writer writes frames until it lets go of it
// (release), and the handler may not return before then, because an
// http.ResponseWriter must not be used after its handler returns.
type outgoingConn struct {
	typ streamType
	w   io.Writer
	rc  *http.ResponseController

	gone      chan struct{} // closed by the handler when the remote went away
	released  chan struct{} // closed by the writer when it stopped using w
	goneOnce  sync.Once
	relseOnce sync.Once

	mu       sync.Mutex // orders abort against the deadline a flush sets
	aborted  bool
	deadline time.Time // the write deadline last set
}

func newOutgoingConn(typ streamType, w http.ResponseWriter) *outgoingConn {
	return &outgoingConn{typ: typ, w: w, rc: http.NewResponseController(w),
		gone: make(chan struct{}), released: make(chan struct{})}
}

// remoteGone tells the writer that the request ended.
func (c *outgoingConn) remoteGone() { c.goneOnce.Do(func() { close(c.gone) }) }

// release gives the connection back to its handler, which then returns and
// so closes the response.
func (c *outgoingConn) release() { c.relseOnce.Do(func() { close(c.released) }) }

// errStreamAborted fails the writes of a stream whose peer is stopping.
var errStreamAborted = errors.New("rafthttp: stream aborted: the peer is stopping")

// arm gives the writes that follow at least three quarters of timeout to
// complete. The writer arms the connection before each batch, since an
// encoder may write through before the batch's flush. The deadline moves
// only when less than that is left: setting it costs a timer update, and a
// stream of small batches would pay it per message.
func (c *outgoingConn) arm(timeout time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		return errStreamAborted
	}
	now := time.Now()
	if c.deadline.Sub(now) > timeout*3/4 {
		return nil
	}
	c.deadline = now.Add(timeout)
	// Not every ResponseWriter supports deadlines (an httptest recorder
	// does not); a writer that cannot time out still works.
	if err := c.rc.SetWriteDeadline(c.deadline); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

// abort makes a write blocked on a peer that does not read fail now rather
// than at its deadline, so that stopping a peer is prompt. Safe to call from
// any goroutine.
func (c *outgoingConn) abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.aborted = true
	_ = c.rc.SetWriteDeadline(time.Now())
}

// streamWriter writes one stream type to one peer: it owns the connection the
// peer dialled, encodes queued messages in batches, flushes once per batch,
// and sends link heartbeats on an idle connection. It is the connection's only
// writer.
type streamWriter struct {
	p     *peer
	typ   streamType
	msgc  chan *raftpb.Message
	connc chan *outgoingConn
	done  chan struct{} // closed when run returns
	pokec chan struct{} // asks for a probe of the connection (capacity 1)

	working atomic.Bool                  // a connection is attached
	cur     atomic.Pointer[outgoingConn] // the attached connection, for abort
}

// abort fails the current connection's writes at once; see
// outgoingConn.abort. The owner calls it when stopping, before waiting for
// run to return.
func (w *streamWriter) abort() {
	if c := w.cur.Load(); c != nil {
		c.abort()
	}
}

func newStreamWriter(p *peer, typ streamType) *streamWriter {
	return &streamWriter{
		p:     p,
		typ:   typ,
		msgc:  make(chan *raftpb.Message, p.t.cfg.streamQueue),
		connc: make(chan *outgoingConn),
		done:  make(chan struct{}),
		pokec: make(chan struct{}, 1),
	}
}

// poke asks the writer to probe its connection soon: the peer's stream
// reader just lost its own connection, a hint that the remote may be gone,
// which a writer otherwise learns only from a failing write. It never
// blocks.
func (w *streamWriter) poke() {
	select {
	case w.pokec <- struct{}{}:
	default:
	}
}

func (w *streamWriter) isWorking() bool { return w.working.Load() }

// attach hands the writer a new connection, replacing the current one. It
// returns false, leaving c to the caller, if the writer has stopped.
func (w *streamWriter) attach(c *outgoingConn) bool {
	select {
	case w.connc <- c:
		return true
	case <-w.done:
		return false
	}
}

// newEncoder returns the encoder of the writer's stream type over c.
func (w *streamWriter) newEncoder(c *outgoingConn) encoder {
	return w.typ.desc().newEncoder(c.w)
}

// probeCause is why the writer probes its connection; it decides what the
// probe's outcome leads to.
type probeCause uint8

const (
	probeNone      probeCause = iota // no probe under way
	probeHeartbeat                   // an idle heartbeat tick
	probeGone                        // the connection's request ended
	probePoke                        // the peer's stream reader lost its stream
	probeReprobe                     // the reprobe timer fired
)

// writerStep is what run does after a batch or a probe is written, in field
// order. The zero step does nothing.
type writerStep struct {
	// lost are the types of the failed batch's messages, each reported
	// lost (dropSendFailed). Valid until the state's next event.
	lost []raftpb.MessageType
	// err, if not nil, failed the connection: run lets go of it, as a
	// failure of action ("write" or "heartbeat"), and drops what is queued.
	err    error
	action string
	// rearm (re)starts the reprobe timer, at reprobeDelay.
	rearm bool
}

// writerState makes a stream writer's decisions: when a batch ends, when an
// idle connection needs a heartbeat, how a connection whose request ended
// is probed, and what a failure drops. It has no goroutine, channel or
// clock: run, the writer's goroutine, tells it what happened and does what
// it answers, so that the decisions can be tested without a connection.
type writerState struct {
	attached  bool       // a connection is attached
	busy      bool       // a batch was written since the last heartbeat tick
	awaitGone bool       // the attached connection's request is not yet seen to end
	reprobes  int        // probes still to make on the reprobe timer, armed while > 0
	probing   probeCause // the probe being written, if any
	conns     int        // connections attached so far
	failLost  int        // messages the last failure lost with its batch
	// The types of the batch being written, so that a failed write counts
	// what it lost. Reused: no allocation per batch.
	batch []raftpb.MessageType
}

// newWriterState returns the state of a writer with no connection yet.
func newWriterState() writerState {
	return writerState{batch: make([]raftpb.MessageType, 0, 64)}
}

// wantsTicks says whether run waits for heartbeat ticks: while a
// connection is attached. (The queue, by contrast, is always read.)
func (s *writerState) wantsTicks() bool { return s.attached }

// wantsGone says whether run waits for the attached connection's request
// to end: until it is seen to.
func (s *writerState) wantsGone() bool { return s.awaitGone }

// wantsReprobe says whether run waits for the reprobe timer: while it is
// armed.
func (s *writerState) wantsReprobe() bool { return s.reprobes > 0 }

// detach forgets the connection and everything armed for it.
func (s *writerState) detach() {
	s.attached, s.busy, s.awaitGone, s.reprobes, s.probing = false, false, false, 0, probeNone
	s.batch = s.batch[:0]
}

// onAttach takes a new connection. replace says the current one must be
// let go first (a replacement, not a failure), reconnect that this is not
// the writer's first connection.
func (s *writerState) onAttach() (replace, reconnect bool) {
	replace = s.attached
	s.detach()
	s.attached, s.awaitGone = true, true
	s.conns++
	return replace, s.conns > 1
}

// onStop says whether a connection is attached, to be let go as the
// writer stops.
func (s *writerState) onStop() (release bool) {
	release = s.attached
	s.detach()
	return release
}

// onMessage takes a message of type typ off the queue. With no connection
// it returns false: the message is discarded and reported lost (a Send
// that saw the writer working may queue one just after it detached), never
// kept for a later connection. Otherwise it joins the batch, to be encoded.
func (s *writerState) onMessage(typ raftpb.MessageType) bool {
	if !s.attached {
		return false
	}
	s.batch = append(s.batch, typ)
	return true
}

// takeMore says whether the batch may take another queued message before
// it is flushed. run flushes when it may not, or when the queue is empty:
// a writer that never finds its queue empty still flushes every maxBatch
// messages.
func (s *writerState) takeMore() bool { return len(s.batch) < maxBatch }

// onWritten ends the batch: err is nil if it was encoded and flushed.
func (s *writerState) onWritten(err error) writerStep {
	if err == nil {
		s.batch = s.batch[:0]
		s.busy = true
		return writerStep{}
	}
	// The batch may have reached the peer in part; it counts as lost, each
	// message reported: a report for a message that did arrive costs raft
	// a probe, a message lost unreported costs it a stall.
	st := writerStep{lost: s.batch, err: err, action: "write"}
	s.failLost = len(s.batch)
	s.detach()
	return st
}

// onTick takes a heartbeat tick and says whether to probe: not when a
// batch was written since the last tick, since traffic proves the link as
// well as a heartbeat does.
func (s *writerState) onTick() (probe bool) {
	if !s.attached {
		return false
	}
	if s.busy {
		s.busy = false
		return false
	}
	s.probing = probeHeartbeat
	return true
}

// onGone takes the end of the connection's request and says to probe it.
// Usually the remote went away, but a server whose listener sets a deadline
// on every read (etcd's peer listener does) also ends it when the idle
// stream's read times out. So the connection is probed now and, if that
// succeeds, maxReprobes times more every reprobeDelay (see onProbed): a
// closed connection fails the write after the one that drew the remote's
// reset, a live one carries on, its fate left to its writes from there.
func (s *writerState) onGone() (probe bool) {
	if !s.awaitGone {
		return false
	}
	s.awaitGone = false
	s.probing = probeGone
	return true
}

// onPoke takes a hint that the remote may be gone (the peer's reader lost
// its stream) and says whether to probe as for onGone: not with no
// connection, nor while reprobes are under way.
func (s *writerState) onPoke() (probe bool) {
	if !s.attached || s.reprobes > 0 {
		return false
	}
	s.probing = probePoke
	return true
}

// onReprobe takes the reprobe timer's firing and says to probe.
func (s *writerState) onReprobe() (probe bool) {
	if s.reprobes == 0 {
		return false
	}
	s.probing = probeReprobe
	return true
}

// onProbed takes the outcome of the probe that onTick, onGone, onPoke or
// onReprobe asked for. A failure detaches, as a failure of the heartbeat or
// of a write; a success after the request ended or a poke arms maxReprobes
// reprobes, and each reprobe that succeeds rearms the timer until none is
// left.
func (s *writerState) onProbed(err error) writerStep {
	cause := s.probing
	s.probing = probeNone
	if err != nil {
		action := "write"
		if cause == probeHeartbeat {
			action = "heartbeat"
		}
		s.failLost = 0
		s.detach()
		return writerStep{err: err, action: action}
	}
	switch cause {
	case probeGone, probePoke:
		s.reprobes = maxReprobes
		return writerStep{rearm: true}
	case probeReprobe:
		s.reprobes--
		return writerStep{rearm: s.reprobes > 0}
	}
	return writerStep{}
}

// onDrained takes how many queued messages a failure dropped after its
// batch, and says whether raft must still be told that the peer is
// unreachable: only if no message was lost, since each lost message was
// reported and a failed link must be heard of either way.
func (s *writerState) onDrained(n int) (reportUnreachable bool) {
	lost := s.failLost + n
	s.failLost = 0
	return lost == 0
}

// run is the writer's goroutine: it waits for the queue, a connection, the
// heartbeat and reprobe timers, a poke or the end, tells writerState, and
// does the writes, reports and bookkeeping the state's answers call for.
func (w *streamWriter) run(ctx context.Context) {
	defer close(w.done)
	t := w.p.t
	lg := w.p.lg.With(zap.Stringer("stream-writer-type", w.typ))
	lg.Info("started stream writer with remote peer")

	// Link heartbeats go out every third of the read timeout, so that a
	// reader sees one well before it gives up on the connection.
	heartbeat := time.NewTicker(t.cfg.readTimeout / 3)
	defer heartbeat.Stop()

	var (
		conn *outgoingConn
		enc  encoder
		s    = newWriterState()
		// What the batch's messages not yet written were charged to the
		// peer's send budget.
		batchBytes int64
		reprobe    = time.NewTimer(time.Hour)
		y          = w.p.t.bulkYielder(w.typ)
		// The remote can lose or replace its stream as often as it
		// likes (a GET each time): rate-limit the lines that say so.
		churnLog logLimiter
	)
	reprobe.Stop()
	defer reprobe.Stop()
	// release lets go of the connection the state has detached from.
	release := func() {
		w.p.status.writer(w.typ).down() // before working: PeerStats never says up while pick says down
		w.working.Store(false)
		w.cur.Store(nil)
		conn.release()
		conn, enc = nil, nil
	}
	// do carries out a step of the state.
	do := func(st writerStep) {
		for _, typ := range st.lost {
			w.lost(typ, dropSendFailed)
		}
		if st.err == nil {
			if st.rearm {
				reprobe.Reset(reprobeDelay)
			}
			return
		}
		release()
		w.p.status.deactivate(failureType{source: w.typ.String(), action: st.action}, st.err.Error())
		w.p.metrics.sentFailures.Inc()
		if n, ok := churnLog.allow(t.warns.now); ok {
			lg.Warn("lost TCP streaming connection with remote peer", zap.Error(st.err), suppressed(n))
		}
		// Whatever was queued for the connection is not coming back: drop
		// it now and tell raft, rather than deliver it late on a later
		// connection.
		drained := 0
		for {
			select {
			case m := <-w.msgc:
				w.discard(m, dropConnClosed)
				drained++
				continue
			default:
			}
			break
		}
		if s.onDrained(drained) {
			t.reportUnreachable(w.p.id)
		}
	}

	for {
		var (
			heartbeatc, reprobec <-chan time.Time
			gone                 chan struct{}
		)
		if s.wantsTicks() {
			heartbeatc = heartbeat.C
		}
		if s.wantsGone() {
			gone = conn.gone
		}
		if s.wantsReprobe() {
			reprobec = reprobe.C
		}
		select {
		// The queue is read whether a connection is attached or not, so
		// that what is queued while none is gets reported (onMessage).
		case m := <-w.msgc:
			if !s.onMessage(m.GetType()) {
				w.discard(m, dropConnClosed)
				continue
			}
			size := sendSize(m)
			y.add(size)
			batchBytes = chargeOfSize(size)
			err := conn.arm(t.cfg.writeTimeout)
			if err == nil {
				err = enc.encode(m)
			}
			// Encode what else is queued, then write it all at once.
			for err == nil && s.takeMore() {
				if enc.buffered() == 0 {
					// The encoder wrote through: what the batch
					// encoded so far is written, and its charge goes
					// back now, not at the end of a batch that a
					// sender keeping the queue full can make last.
					w.p.queued.release(batchBytes)
					batchBytes = 0
				}
				y.tick()
				select {
				case m = <-w.msgc:
					s.onMessage(m.GetType()) // attached: it joins the batch
					size := sendSize(m)
					y.add(size)
					n := chargeOfSize(size)
					batchBytes += n
					if n > 0 {
						// A batch of large messages can take longer
						// than the write timeout to a follower that
						// reads slowly but steadily: the timeout
						// bounds each write, not the batch. (Small
						// messages skip the clock: arm costs a lock.)
						err = conn.arm(t.cfg.writeTimeout)
					}
					if err == nil {
						err = enc.encode(m)
					}
					continue
				default:
				}
				break
			}
			if err == nil {
				err = w.flush(conn, enc, len(s.batch))
			}
			w.p.queued.release(batchBytes) // written, or lost by the step
			do(s.onWritten(err))

		case <-heartbeatc:
			if s.onTick() {
				do(s.onProbed(w.probe(conn, enc)))
			}

		case <-gone:
			if s.onGone() {
				do(s.onProbed(w.probe(conn, enc)))
			}

		case <-reprobec:
			if s.onReprobe() {
				do(s.onProbed(w.probe(conn, enc)))
			}

		case <-w.pokec:
			if s.onPoke() {
				do(s.onProbed(w.probe(conn, enc)))
			}

		case c := <-w.connc:
			replace, reconnect := s.onAttach()
			if replace {
				if n, ok := churnLog.allow(t.warns.now); ok {
					lg.Warn("closed TCP streaming connection with remote peer", zap.String("reason", "replaced by a new connection"), suppressed(n))
				}
				release()
			}
			conn, enc = c, w.newEncoder(c)
			if reconnect {
				w.p.metrics.reconnect("writer " + w.typ.String())
			}
			w.cur.Store(c)
			w.working.Store(true)
			w.p.status.writer(w.typ).up()
			w.p.status.activate()
			lg.Info("established TCP streaming connection with remote peer")

		case <-ctx.Done():
			if s.onStop() {
				release()
				lg.Info("stopped TCP streaming connection with remote peer")
			}
			return
		}
	}
}

// reprobeDelay is how long after a probe of a stream whose request ended,
// or whose peer's reader lost its stream, the writer probes again: time for
// a closed connection's reset to come back. It probes maxReprobes times
// more, so that a remote still closing its side when the first probe went
// out is caught too (seen when a peer stops: its writers let go of their
// streams before its readers close theirs).
const (
	reprobeDelay = 250 * time.Millisecond
	maxReprobes  = 4
)

// lost reports a message of type typ the writer will not deliver
// (reportDrop), one report per message. It is not counted as a send
// failure: the writer counts one per lost connection.
func (w *streamWriter) lost(typ raftpb.MessageType, reason string) {
	w.p.t.reportDrop(w.p.id, typ, reason, &dropSite{metrics: &w.p.metrics})
}

// discard drops m, taken off the queue and never to be written: what it was
// charged goes back to the peer's send budget (first, so that raft, told
// at once, finds room for what it sends instead), and it is lost.
func (w *streamWriter) discard(m *raftpb.Message, reason string) {
	w.p.queued.releaseMsg(m)
	w.lost(m.GetType(), reason)
}

// probe writes a link heartbeat and flushes it.
func (w *streamWriter) probe(c *outgoingConn, enc encoder) error {
	err := c.arm(w.p.t.cfg.writeTimeout)
	if err == nil {
		err = enc.encode(linkHeartbeat)
	}
	if err == nil {
		err = w.flush(c, enc, 0)
	}
	return err
}

// flush writes what enc buffered and pushes it to the network, counting the
// bytes as etcd does (per flush, heartbeats included).
func (w *streamWriter) flush(c *outgoingConn, enc encoder, msgs int) error {
	n := enc.buffered()
	if err := enc.flush(); err != nil {
		return err
	}
	if err := c.rc.Flush(); err != nil {
		return err
	}
	w.p.metrics.sent(msgs, n)
	return nil
}

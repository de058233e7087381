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

func (w *streamWriter) newEncoder(c *outgoingConn) encoder {
	if w.typ == streamTypeMsgAppV2 {
		return newMsgAppV2Encoder(c.w)
	}
	return newMessageEncoder(c.w)
}

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
		// The queue is always read, a connection attached or not: a
		// Send that saw this writer working may queue a message just
		// after it detached, and that message must be reported, not
		// left in the queue.
		msgc       = w.msgc
		heartbeatc <-chan time.Time // nil while no connection is attached
		gone       chan struct{}    // likewise
		busy       bool             // wrote since the last tick
		attached   int              // connections attached so far
		// The types of the batch being written, so that a failed write
		// counts what it lost. Reused: no allocation per batch.
		batchTypes = make([]raftpb.MessageType, 0, 64)
		// What the batch's messages not yet written were charged to the
		// peer's send budget.
		batchBytes int64
		reprobe    = time.NewTimer(time.Hour)
		reprobec   <-chan time.Time // armed after a first probe succeeded
		reprobes   int              // probes still to make after that
		y          = w.p.t.bulkYielder(w.typ)
		// The remote can lose or replace its stream as often as it
		// likes (a GET each time): rate-limit the lines that say so.
		churnLog logLimiter
	)
	reprobe.Stop()
	defer reprobe.Stop()
	// detach lets go of the connection. reason, if not nil, is its
	// failure, and lost how many messages of the failed write were
	// reported already.
	detach := func(reason error, action string, lost int) {
		w.p.status.writer(w.typ).down() // before working: PeerStats never says up while pick says down
		w.working.Store(false)
		w.cur.Store(nil)
		conn.release()
		conn, enc, heartbeatc, gone, reprobec = nil, nil, nil, nil, nil
		if reason == nil {
			return
		}
		w.p.status.deactivate(failureType{source: w.typ.String(), action: action}, reason.Error())
		w.p.metrics.sentFailures.Inc()
		if n, ok := churnLog.allow(t.warns.now); ok {
			lg.Warn("lost TCP streaming connection with remote peer", zap.Error(reason), suppressed(n))
		}
		// Whatever was queued for the connection is not coming back: drop
		// it now and tell raft, rather than deliver it late on a later
		// connection.
		for {
			select {
			case m := <-w.msgc:
				w.discard(m, dropConnClosed)
				lost++
				continue
			default:
			}
			break
		}
		if lost == 0 {
			// No message was lost with it, but raft should still hear
			// that the peer's link failed, as it would from a drop.
			t.reportUnreachable(w.p.id)
		}
	}

	for {
		select {
		case m := <-msgc:
			if conn == nil {
				// Queued while the writer detached (see msgc).
				w.discard(m, dropConnClosed)
				continue
			}
			batchTypes = append(batchTypes[:0], m.GetType())
			batchBytes = sendCharge(m)
			err := conn.arm(t.cfg.writeTimeout)
			if err == nil {
				err = enc.encode(m)
			}
			// Encode what else is queued, then write it all at once.
			for err == nil && len(batchTypes) < maxBatch {
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
				case m = <-msgc:
					batchTypes = append(batchTypes, m.GetType())
					n := sendCharge(m)
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
				err = w.flush(conn, enc, len(batchTypes))
			}
			w.p.queued.release(batchBytes) // written, or lost below
			if err != nil {
				// The batch may have reached the peer in part; count it
				// all as lost, and tell raft of each: a report for a
				// message that did arrive costs raft a probe, a message
				// lost unreported costs it a stall.
				for _, typ := range batchTypes {
					w.lost(typ, dropSendFailed)
				}
				detach(err, "write", len(batchTypes))
				continue
			}
			busy = true

		case <-heartbeatc:
			if busy {
				// Traffic proves the link as well as a heartbeat does.
				busy = false
				continue
			}
			if err := w.probe(conn, enc); err != nil {
				detach(err, "heartbeat", 0)
			}

		case <-gone:
			// The request's context ended. Usually the remote went away,
			// but a server whose listener sets a deadline on every read
			// (etcd's peer listener does) also ends it when the idle
			// stream's read times out. Probe with a link heartbeat, now and
			// a few times more over the next second: a closed connection
			// fails the write after the one that drew the remote's reset,
			// a live one carries on, its fate left to its writes from
			// here.
			gone = nil
			if err := w.probe(conn, enc); err != nil {
				detach(err, "write", 0)
				continue
			}
			reprobes = maxReprobes
			reprobe.Reset(reprobeDelay)
			reprobec = reprobe.C

		case <-reprobec:
			reprobec = nil
			if err := w.probe(conn, enc); err != nil {
				detach(err, "write", 0)
				continue
			}
			if reprobes--; reprobes > 0 {
				reprobe.Reset(reprobeDelay)
				reprobec = reprobe.C
			}

		case <-w.pokec:
			if conn == nil || reprobec != nil {
				continue
			}
			if err := w.probe(conn, enc); err != nil {
				detach(err, "write", 0)
				continue
			}
			reprobes = maxReprobes
			reprobe.Reset(reprobeDelay)
			reprobec = reprobe.C

		case c := <-w.connc:
			if conn != nil {
				if n, ok := churnLog.allow(t.warns.now); ok {
					lg.Warn("closed TCP streaming connection with remote peer", zap.String("reason", "replaced by a new connection"), suppressed(n))
				}
				detach(nil, "", 0)
			}
			conn, enc, heartbeatc, gone, reprobec = c, w.newEncoder(c), heartbeat.C, c.gone, nil
			busy = false
			attached++
			if attached > 1 {
				w.p.metrics.reconnect("writer " + w.typ.String())
			}
			w.cur.Store(c)
			w.working.Store(true)
			w.p.status.writer(w.typ).up()
			w.p.status.activate()
			lg.Info("established TCP streaming connection with remote peer")

		case <-ctx.Done():
			if conn != nil {
				detach(nil, "", 0)
				lg.Info("stopped TCP streaming connection with remote peer")
			}
			return
		}
	}
}

// recvFlushEvery bounds how many received messages a stream reader counts
// before publishing them to its metrics.
const recvFlushEvery = 256

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
